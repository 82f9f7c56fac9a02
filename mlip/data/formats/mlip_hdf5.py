"""mlip's own HDF5 files as an input format (to merge or re-compress files)."""

from __future__ import annotations

import os
from collections.abc import Iterator

from mlip.data.formats.values import existing_file
from mlip.data.structure import Structure


def read_mlip_hdf5(path: str | os.PathLike, *, subset: str | None = None) -> Iterator[Structure]:
    """Structures of an mlip HDF5 file, via `StructureReader`; ``subset`` relabels them all."""
    from mlip.data.reader import StructureReader

    with StructureReader(existing_file(path)) as reader:
        for structure in reader:
            if subset is not None:
                structure.subset = subset
            yield structure
