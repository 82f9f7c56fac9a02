"""Value parsers shared by every format reader, and how their errors are located.

A parser turns one input value into one checked NumPy value (or None when the label is absent)
and raises `FieldError` naming the field; `located` turns that into an `MLIPDataError` naming
the input file, the structure index (and id) and the field.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from mlip.constants import MAX_ATOMIC_NUMBER, is_integer
from mlip.data.errors import MLIPDataError
from mlip.data.schema import validate_structure
from mlip.data.structure import Structure


class FieldError(Exception):
    """A problem with one field of one input structure; `located` adds the file and structure."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


#: What a parser may raise on a value of an unexpected type (a list where an object belongs, ...).
TYPE_CONFUSIONS = (TypeError, AttributeError, KeyError, IndexError, ValueError)


@contextmanager
def located(path: str | os.PathLike, index: int, structure_id: str | None = None, record: str = "-"):
    """Turn a `FieldError` raised inside into an `MLIPDataError` naming file and structure.

    A safety net catches what the parsers did not foresee (a value of a type no check expects)
    and reports it as an error in ``record`` (the input's unit: ``frame``, ``row``, ...),
    located in the same way, rather than as a traceback.
    """
    try:
        yield
    except FieldError as error:
        raise MLIPDataError(
            error.reason, path, index=index, structure_id=structure_id, field=error.field
        ) from None
    except MLIPDataError:
        raise
    except TYPE_CONFUSIONS as error:
        raise MLIPDataError(
            f"unexpected value ({type(error).__name__}: {error})", path, index=index,
            structure_id=structure_id, field=record,
        ) from None


# --------------------------------------------------------------------------------------------
# Value parsers: one input value -> one checked NumPy value (or None when the label is absent)
# --------------------------------------------------------------------------------------------


def is_missing(value: Any) -> bool:
    """None, and MACE's "None" placeholder string, mean "no label"."""
    if value is None:
        return True
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return isinstance(value, str) and value == "None"


def float_array(value: Any, field: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise FieldError(field, f"not numeric ({error})") from None
    if not np.all(np.isfinite(array)):
        raise FieldError(field, "contains NaN or infinite values")
    return array


def number(value: Any, field: str) -> float | None:
    """One finite number (a total energy in eV, a MACE label weight), or None when absent."""
    if is_missing(value):
        return None
    array = float_array(value, field)
    if array.size != 1:
        raise FieldError(field, f"expected one number, got shape {array.shape}")
    return float(array.reshape(()))



def per_atom_vectors(value: Any, n_atoms: int, field: str) -> np.ndarray | None:
    """(n_atoms, 3) array (forces, positions), or None."""
    if is_missing(value):
        return None
    array = float_array(value, field)
    if array.shape != (n_atoms, 3):
        raise FieldError(field, f"expected shape ({n_atoms}, 3) for {n_atoms} atoms, got {array.shape}")
    return array


def per_atom_scalars(value: Any, n_atoms: int, field: str) -> np.ndarray | None:
    """(n_atoms,) array (magnetic moments, partial charges), or None."""
    if is_missing(value):
        return None
    array = float_array(value, field)
    if array.shape != (n_atoms,):
        raise FieldError(field, f"expected shape ({n_atoms},) for {n_atoms} atoms, got {array.shape}")
    return array


def stress_tensor(value: Any, field: str) -> np.ndarray | None:
    """Full (3, 3) stress from Voigt-6 (xx, yy, zz, yz, xz, xy), 9 values or a 3x3 matrix."""
    if is_missing(value):
        return None
    array = float_array(value, field)
    if array.size == 6:
        xx, yy, zz, yz, xz, xy = array.reshape(6)
        return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    if array.size == 9:
        return array.reshape(3, 3)
    raise FieldError(field, f"expected 6 (Voigt), 9 or 3x3 values, got shape {array.shape}")


def integer(value: Any, field: str, default: int) -> int:
    """An integer-valued label (total charge, multiplicity); `default` when absent."""
    if is_missing(value):
        return default
    array = float_array(value, field)
    if array.size != 1 or not is_integer(float(array.reshape(()))):
        raise FieldError(field, f"expected an integer, got {value!r}")
    return int(array.reshape(()))


def atomic_number_array(value: Any, field: str) -> np.ndarray:
    if is_missing(value):
        raise FieldError(field, "missing")
    try:
        numbers = np.asarray(value).reshape(-1)
        integral = numbers.astype(np.int64)
    except (TypeError, ValueError) as error:
        raise FieldError(field, f"not integer atomic numbers ({error})") from None
    if numbers.size == 0:
        raise FieldError(field, "structure has no atoms")
    if not np.array_equal(integral, numbers) or integral.min() < 1 or integral.max() > MAX_ATOMIC_NUMBER:
        raise FieldError(field, f"atomic numbers must be integers in 1..{MAX_ATOMIC_NUMBER}")
    return integral


def text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.shape == ():
        return text(value.item())
    return str(value)


def cell_and_pbc(cell: Any, pbc: Any) -> tuple[np.ndarray | None, np.ndarray]:
    """Cell in Å (None for a non-periodic structure) and (3,) periodicity flags."""
    if isinstance(cell, Mapping):  # ASE's Cell.todict(): {"array": ..., "pbc": ...}
        cell = cell.get("array")
    flags = pbc_flags(pbc)
    if not flags.any():
        return None, flags
    if is_missing(cell):
        raise FieldError("cell", "periodic structure without a cell")
    cell_array = float_array(cell, "cell")
    if cell_array.size != 9:
        raise FieldError("cell", f"expected a 3x3 cell, got shape {cell_array.shape}")
    cell_array = cell_array.reshape(3, 3)
    for axis in np.flatnonzero(flags):
        if not np.any(cell_array[axis]):
            raise FieldError("cell", f"lattice vector {axis} is zero along a periodic direction")
    return cell_array, flags


def pbc_flags(pbc: Any) -> np.ndarray:
    """(3,) periodicity flags from one boolean or three (also 0/1); None means not periodic."""
    if pbc is None:
        return np.zeros(3, dtype=bool)
    flags = np.asarray(pbc).reshape(-1)
    if flags.size not in (1, 3) or flags.dtype.kind not in "biu" or not np.isin(flags, (0, 1)).all():
        raise FieldError("pbc", f"expected one or three booleans, got {pbc!r}")
    return np.broadcast_to(flags.astype(bool), (3,)).copy()


def mapping_or_none(value: Any, field: str) -> Mapping | None:
    """A label dictionary (a row's ``data`` or key-value pairs), or None when absent."""
    if value is None or isinstance(value, Mapping):
        return value
    raise FieldError(field, f"expected an object of labels, got {type(value).__name__}")


def validated(structure: Structure, path: Path, index: int) -> Structure:
    """The structure, after the schema's checks (errors name the input file and index)."""
    validate_structure(structure, index, str(path))
    return structure


def existing_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise MLIPDataError("no such file", path)
    return path


def numbered(items: Iterator, path: Path, failure: str) -> Iterator[tuple[int, Any]]:
    """(index, item) pairs of an iterator whose ``next`` may raise anything (ASE's parsers do):
    such an error becomes an `MLIPDataError` "<failure>: <error>" naming the file and index."""
    iterator = iter(items)
    index = 0
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except Exception as error:  # noqa: BLE001 - parsers raise many types; report them uniformly
            raise MLIPDataError(f"{failure}: {error}", path, index=index) from None
        yield index, item
        index += 1
