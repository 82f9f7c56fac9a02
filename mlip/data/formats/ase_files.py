"""Any file `ase.io.iread` understands: extxyz, ASE trajectories, OUTCAR, vasprun.xml, ..."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator

from mlip.data.formats.labels import LabelKeys, structure_from_atoms
from mlip.data.formats.values import existing_file, located, numbered, validated
from mlip.data.structure import Structure


def read_ase(
    path: str | os.PathLike,
    *,
    format: str | None = None,
    keys: LabelKeys | None = None,
    subset: str | None = None,
    found_keys: Counter | None = None,
) -> Iterator[Structure]:
    """Structures of any file `ase.io.iread` reads (``format=None``: ASE guesses).

    Labels come from ``atoms.info`` / ``atoms.arrays`` under the `LabelKeys` ``keys`` (e.g.
    ``LabelKeys(energy="REF_energy")``; None: the defaults), else from the attached
    calculator's results (ASE's extxyz reader moves ``energy``, ``forces``, ``stress`` there).
    ``subset`` fixes the subset label of every structure; otherwise it is read from
    ``keys.subset`` (default: ``subset``, then ``config_type``). The id is ``atoms.info["id"]``
    or ``"<file name>:<index>"``. ``found_keys`` (a Counter), if given, receives per label
    (``"energy"``, ``"forces"``, ``"stress"``, ``"magmom"``, ``"partial_charges"``,
    ``"charge"``, ``"spin"``, ``"subset"``) the number of structures in which its key was found.
    """
    import ase.io

    keys = keys or LabelKeys()
    path = existing_file(path)
    frames = ase.io.iread(path, index=":", format=format)
    for index, atoms in numbered(frames, path, "ASE could not parse it"):
        with located(path, index, atoms.info.get(keys.id), record="atoms"):
            structure = structure_from_atoms(atoms, keys, f"{path.name}:{index}", subset, found_keys)
        yield validated(structure, path, index)


def read_extxyz(path: str | os.PathLike, **options) -> Iterator[Structure]:
    """`read_ase` with ASE's extended-XYZ parser."""
    return read_ase(path, format="extxyz", **options)
