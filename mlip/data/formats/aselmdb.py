"""fairchem's ASE-LMDB shards (``*.aselmdb``: OMol25, OMat24, ...), read and written without fairchem."""

from __future__ import annotations

import os
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np

from mlip.data.errors import MLIPDataError
from mlip.data.formats.labels import LabelKeys, structure_from_row
from mlip.data.formats.values import FieldError, existing_file, located, validated
from mlip.data.structure import Structure
from mlip.files import atomic_path

#: Keys the ASE-LMDB format reserves for bookkeeping; every other key is a row id.
ASELMDB_RESERVED_KEYS = ("nextid", "metadata", "deleted_ids")


def read_aselmdb(
    path: str | os.PathLike,
    *,
    keys: LabelKeys | None = None,
    subset: str | None = None,
    found_keys: Counter | None = None,
) -> Iterator[Structure]:
    """Structures of a fairchem ASE-LMDB shard (``*.aselmdb``, e.g. OMol25), without fairchem.

    Layout (fairchem's ``LMDBDatabase`` / ase-db-backends): one LMDB environment in a single
    file (``subdir=False``); each row is stored under the ASCII key ``str(row_id)`` (ids count
    from 1) as zlib-compressed JSON of the ASE row dict, arrays either ASE-encoded
    (``{"__ndarray__": [shape, dtype, flat]}``) or plain nested lists (older orjson writer).
    The keys ``nextid``, ``metadata`` and ``deleted_ids`` are bookkeeping and skipped. Rows are
    read in increasing id order. OMol25 keeps ``charge`` and ``spin`` (multiplicity) in the
    row's ``data``; key-value pairs are searched too. The id is ``"<file name>:<row id>"``.
    ``keys``, ``subset``, ``found_keys``: as for `read_ase`.
    """
    import lmdb

    keys = keys or LabelKeys()
    path = existing_file(path)
    try:
        environment = lmdb.open(
            str(path), subdir=False, readonly=True, lock=False, readahead=False, meminit=False
        )
    except lmdb.Error as error:
        raise MLIPDataError(f"not a readable LMDB file: {error}", path) from None
    try:
        with environment.begin(write=False) as transaction:
            for index, row_id in enumerate(_aselmdb_row_ids(transaction, path)):
                structure_id = f"{path.name}:{row_id}"
                with located(path, index, structure_id, record="row"):
                    row = _decode_aselmdb_row(transaction.get(str(row_id).encode("ascii")))
                    structure = structure_from_row(
                        row, row.get("data"), row.get("key_value_pairs"), keys, structure_id, subset, found_keys
                    )
                yield validated(structure, path, index)
    finally:
        environment.close()


def _decode_aselmdb_row(value: bytes) -> Mapping:
    """One stored row: zlib-compressed JSON, arrays ASE-encoded or as plain lists."""
    from ase.io.jsonio import decode

    try:
        row = decode(zlib.decompress(value).decode("utf-8"))
    except (zlib.error, UnicodeDecodeError, ValueError, TypeError) as error:
        raise FieldError("row", f"not zlib-compressed JSON ({error})") from None
    if not isinstance(row, Mapping):
        raise FieldError("row", f"not a JSON object but {type(row).__name__}")
    return row


def _aselmdb_row_ids(transaction, path: Path) -> list[int]:
    """Row ids stored in an ASE-LMDB transaction, in increasing order (bookkeeping keys skipped)."""
    import lmdb

    row_ids = []
    try:
        for key in transaction.cursor().iternext(keys=True, values=False):
            name = bytes(key).decode("ascii", errors="replace")
            if name in ASELMDB_RESERVED_KEYS:
                continue
            if not name.isdigit():
                raise MLIPDataError(f"unexpected key {name!r} (row keys are integers)", path, field="key")
            row_ids.append(int(name))
    except lmdb.Error as error:
        raise MLIPDataError(f"corrupt LMDB file: {error}", path) from None
    return sorted(row_ids)


def write_aselmdb(
    path: str | os.PathLike, atoms_list: Iterable, *, info_as: str = "data"
) -> int:
    """Write `ase.Atoms` as an ASE-LMDB shard in fairchem's layout (see `read_aselmdb`).

    Each row holds the atoms' geometry and calculator results; ``atoms.info`` goes to the row's
    ``data`` (as OMol25 does) or, with ``info_as="key_value_pairs"``, to its key-value pairs.
    Written to a temporary file and renamed, so a failure leaves no partial shard. Returns the
    number of rows.
    """
    import lmdb
    from ase.db.row import AtomsRow
    from ase.io.jsonio import encode

    if info_as not in ("data", "key_value_pairs"):
        raise ValueError(f"info_as must be 'data' or 'key_value_pairs', got {info_as!r}")
    n_rows = 0
    with atomic_path(path) as temporary:
        environment = lmdb.open(str(temporary), subdir=False, map_size=2**36, lock=False, meminit=False)
        try:
            with environment.begin(write=True) as transaction:
                for n_rows, atoms in enumerate(atoms_list, start=1):
                    row = AtomsRow(atoms)
                    record = {name: value for name, value in row.__dict__.items() if not name.startswith("_")}
                    record.pop("id", None)
                    record["cell"] = np.asarray(record["cell"])
                    record[info_as] = dict(atoms.info)
                    transaction.put(str(n_rows).encode("ascii"), zlib.compress(encode(record).encode("utf-8")))
                transaction.put(b"nextid", zlib.compress(encode(n_rows + 1).encode("utf-8")))
        finally:
            environment.close()
    return n_rows
