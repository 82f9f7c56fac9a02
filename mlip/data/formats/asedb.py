"""ASE databases (``ase.db.connect``: SQLite ``*.db``, JSON, ...)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator

from mlip.data.errors import MLIPDataError
from mlip.data.formats.labels import LabelKeys, structure_from_row
from mlip.data.formats.values import existing_file, located, numbered, validated
from mlip.data.structure import Structure


def read_asedb(
    path: str | os.PathLike,
    *,
    keys: LabelKeys | None = None,
    subset: str | None = None,
    found_keys: Counter | None = None,
) -> Iterator[Structure]:
    """Structures of an ASE database (``ase.db.connect``), in row order.

    Labels are looked up in the row's ``data``, then its key-value pairs, then its calculator
    columns. Note that ASE's SQLite rows carry a built-in ``charge`` column (the sum of initial
    charges) that hides a key-value pair named ``charge``: store the total charge in ``data``
    or under another key (``LabelKeys(charge="total_charge")``). The id is
    ``"<file name>:<row id>"`` unless the row has an ``id`` entry in ``data``. ``keys``,
    ``subset``, ``found_keys``: as for `read_ase`.
    """
    import ase.db

    keys = keys or LabelKeys()
    path = existing_file(path)
    try:
        database = ase.db.connect(path)
        rows = database.select()
    except Exception as error:
        raise MLIPDataError(f"not a readable ASE database: {error}", path) from None
    for index, row in numbered(rows, path, "ASE could not read the row"):
        columns = {name: value for name, value in row.__dict__.items() if not name.startswith("_")}
        columns.pop("id", None)  # the row id is not a structure label
        structure_id = f"{path.name}:{row.id}"
        with located(path, index, structure_id, record="row"):
            structure = structure_from_row(
                columns, dict(row.data), row.key_value_pairs, keys, structure_id, subset, found_keys
            )
        yield validated(structure, path, index)
