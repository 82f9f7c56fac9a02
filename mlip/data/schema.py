"""HDF5 schema v1 of mlip datasets: the field table, the file attributes and validation.

A dataset file stores S structures with N atoms in total as *flat* arrays: every per-atom
quantity of all structures is concatenated into one (N, ...) dataset under ``/atoms``, every
per-structure quantity is one (S, ...) dataset under ``/structures``, and
``/structures/offsets`` (S+1,) says which atoms belong to which structure
(``offsets[k]:offsets[k+1]``). All datasets are chunked and compressed.

A label may be missing for some structures (energy, forces, stress, magmom, partial charges):
its values are then NaN *and* its presence mask ``/structures/has_<label>`` is False. Masks are
the truth; NaN is only a safety net so that a missing label can never be read as zeros.

`FIELDS` is the single table the writer, the reader and the validation all work from.
`validate_structure` checks one `Structure` before it is written.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from mlip.constants import MAX_ATOMIC_NUMBER, is_integer
from mlip.data.errors import MLIPDataError
from mlip.data.structure import Structure

FORMAT_NAME = "mlip-hdf5"
SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1

#: Largest |total charge| (e) a structure may have. Generous for real systems (highly charged
#: biomolecule fragments reach a few tens of e) and far beyond the model's charge embedding
#: (``max_charge`` 4 by default in mlip.models.conditioning, which extrapolates linearly past
#: it), while keeping that extrapolation numerically tame: a charge of 2e9 would overflow it.
MAX_ABS_CHARGE = 100
#: Largest spin multiplicity 2S+1, i.e. up to 100 unpaired electrons (the largest known
#: molecular spin ground state, the Mn19 cluster with S = 83/2, has 2S+1 = 84). The model's
#: spin embedding covers 1..``max_multiplicity`` (6 by default) and extrapolates past it.
MAX_MULTIPLICITY = 101
#: Inclusive ranges of the integer per-structure fields, checked on writing and on reading.
INTEGER_RANGES = {"charge": (-MAX_ABS_CHARGE, MAX_ABS_CHARGE), "spin": (1, MAX_MULTIPLICITY)}
#: A cell whose volume is below this fraction of the product of its vector lengths is flat.
_FLAT_CELL_TOLERANCE = 1e-8
#: Periodic lattice vectors shorter than this (Å) are zero; unit vectors along them whose
#: smallest singular value is below this are linearly dependent.
_DEGENERATE_LATTICE_TOLERANCE = 1e-8

ATOMS_GROUP = "atoms"
STRUCTURES_GROUP = "structures"
OFFSETS_PATH = "structures/offsets"

#: Units of every stored quantity (ASE units); stored as JSON in the ``units`` file attribute.
UNITS = {
    "length": "Angstrom",
    "energy": "eV",
    "forces": "eV/Angstrom",
    "stress": "eV/Angstrom^3 (ASE sign: positive = tensile)",
    "magmom": "mu_B",
    "partial_charges": "e",
    "charge": "e",
    "spin": "multiplicity 2S+1",
}


@dataclass(frozen=True)
class Field:
    """One stored quantity of the schema."""

    name: str  # attribute name on `Structure` and dataset name in the file
    group: str  # "atoms" (one row per atom) or "structures" (one row per structure)
    dtype: str  # NumPy dtype name of the stored dataset; "str" = variable-length UTF-8
    shape_tail: tuple[int, ...]  # shape of one row, e.g. (3,) for positions
    unit: str
    optional: bool  # a label that may be missing: stored as NaN with a has_<name> mask
    description: str

    @property
    def path(self) -> str:
        return f"{self.group}/{self.name}"

    @property
    def per_atom(self) -> bool:
        return self.group == ATOMS_GROUP

    @property
    def mask_name(self) -> str | None:
        return f"has_{self.name}" if self.optional else None

    @property
    def mask_path(self) -> str | None:
        return f"{STRUCTURES_GROUP}/has_{self.name}" if self.optional else None

    @property
    def is_string(self) -> bool:
        return self.dtype == "str"


FIELDS: tuple[Field, ...] = (
    Field("numbers", ATOMS_GROUP, "int16", (), "", False, f"atomic number Z (1..{MAX_ATOMIC_NUMBER})"),
    Field("positions", ATOMS_GROUP, "float64", (3,), "Angstrom", False, "Cartesian positions"),
    Field("forces", ATOMS_GROUP, "float64", (3,), "eV/Angstrom", True, "forces, -dE/dr"),
    Field("magmom", ATOMS_GROUP, "float64", (), "mu_B", True, "atomic magnetic moments"),
    Field("partial_charges", ATOMS_GROUP, "float64", (), "e", True, "atomic partial charges"),
    Field("energy", STRUCTURES_GROUP, "float64", (), "eV", True, "total energy"),
    Field(
        "stress", STRUCTURES_GROUP, "float64", (3, 3), "eV/Angstrom^3", True,
        "full 3x3 stress tensor, ASE sign (positive = tensile)",
    ),
    Field(
        "cell", STRUCTURES_GROUP, "float64", (3, 3), "Angstrom", False,
        "lattice vectors as rows; zeros for a molecule without a cell",
    ),
    Field("pbc", STRUCTURES_GROUP, "bool", (3,), "", False, "periodicity along each lattice vector"),
    Field("charge", STRUCTURES_GROUP, "int32", (), "e", False, "total charge"),
    Field("spin", STRUCTURES_GROUP, "int32", (), "", False, "spin multiplicity 2S+1 (>= 1)"),
    Field("id", STRUCTURES_GROUP, "str", (), "", False, "stable string id in the source"),
    Field("subset", STRUCTURES_GROUP, "str", (), "", False, "subset label"),
)

FIELDS_BY_NAME: dict[str, Field] = {field.name: field for field in FIELDS}
ATOM_FIELDS: tuple[Field, ...] = tuple(field for field in FIELDS if field.per_atom)
STRUCTURE_FIELDS: tuple[Field, ...] = tuple(field for field in FIELDS if not field.per_atom)
LABEL_FIELDS: tuple[Field, ...] = tuple(field for field in FIELDS if field.optional)
MASK_NAMES: tuple[str, ...] = tuple(field.mask_name for field in LABEL_FIELDS)

#: File attributes every v1 file carries.
REQUIRED_ATTRIBUTES = (
    "format",
    "schema_version",
    "units",
    "level_of_theory",
    "energy_reference",
    "source",
    "created_with",
    "n_structures",
    "n_atoms",
)


def units_json() -> str:
    return json.dumps(UNITS, sort_keys=True)


def check_header(attrs, file: str) -> int:
    """Check the ``format`` and ``schema_version`` attributes of an open file; return the version.

    Raises `MLIPDataError` for a file that is not an mlip dataset or has a version this code
    cannot read.
    """
    file_format = _attribute_as_str(attrs.get("format"))
    if file_format != FORMAT_NAME:
        raise MLIPDataError(
            f"not an mlip dataset (attribute 'format' is {file_format!r}, expected {FORMAT_NAME!r})",
            file,
            field="format",
        )
    version = attrs.get("schema_version")
    try:
        version = int(version)
    except (TypeError, ValueError):
        raise MLIPDataError(f"unreadable schema_version {version!r}", file, field="schema_version") from None
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        newer = " (written by a newer mlip; upgrade mlip)" if version > SCHEMA_VERSION else ""
        raise MLIPDataError(
            f"unsupported schema_version {version}{newer}; this mlip reads versions "
            f"{list(SUPPORTED_SCHEMA_VERSIONS)}",
            file,
            field="schema_version",
        )
    for name in REQUIRED_ATTRIBUTES:
        if name not in attrs:
            raise MLIPDataError("missing file attribute", file, field=name)
    return version


def _attribute_as_str(value) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return None if value is None else str(value)


# --------------------------------------------------------------------------------------------
# Validation of one structure before it is written
# --------------------------------------------------------------------------------------------


def validate_structure(structure: Structure, index: int, source: str) -> None:
    """Raise `MLIPDataError` if ``structure`` cannot be stored faithfully.

    ``index`` is the position of the structure in its stream and ``source`` the file it comes
    from (or goes to); both appear in the error message together with the offending field.

    Checked: required fields present; array shapes; finite positions, cell and labels; atomic
    numbers in 1..`MAX_ATOMIC_NUMBER`; per-atom arrays as long as ``numbers``; periodic directions backed by
    non-zero, linearly independent lattice vectors; stress only for periodic structures whose
    cell has a volume; integer charge with |charge| <= `MAX_ABS_CHARGE`; integer spin
    multiplicity in 1..`MAX_MULTIPLICITY`; string id and subset.

    Not checked here (it needs a neighbour search): atoms closer than a minimum distance; see
    `mlip.data.graph.check_min_distance`, which the converter and the dataset call.
    """
    if not isinstance(structure, Structure):
        raise MLIPDataError(
            f"expected an mlip Structure, got {type(structure).__name__}", source, index=index, field="-"
        )

    def fail(field: str, reason: str) -> None:
        raise MLIPDataError(reason, source, index=index, structure_id=_safe_id(structure), field=field)

    numbers = structure.numbers
    if numbers is None:
        fail("numbers", "required field is missing")
    numbers = np.asarray(numbers)
    if numbers.ndim != 1:
        fail("numbers", f"expected shape (n_atoms,), got {numbers.shape}")
    n_atoms = numbers.shape[0]
    if n_atoms == 0:
        fail("numbers", "structure has no atoms")
    if numbers.dtype.kind not in "iu":
        fail("numbers", f"atomic numbers must be integers, got dtype {numbers.dtype}")
    if numbers.min() < 1 or numbers.max() > MAX_ATOMIC_NUMBER:
        bad = numbers[(numbers < 1) | (numbers > MAX_ATOMIC_NUMBER)]
        fail("numbers", f"unknown element: atomic number(s) {sorted(set(bad.tolist()))} outside 1..{MAX_ATOMIC_NUMBER}")

    _check_float_array(structure.positions, (n_atoms, 3), "positions", fail, required=True)
    _check_float_array(structure.forces, (n_atoms, 3), "forces", fail)
    _check_float_array(structure.magmom, (n_atoms,), "magmom", fail)
    _check_float_array(structure.partial_charges, (n_atoms,), "partial_charges", fail)
    _check_float_array(structure.cell, (3, 3), "cell", fail)
    _check_float_array(structure.stress, (3, 3), "stress", fail)

    if structure.energy is not None and not np.isfinite(structure.energy):
        fail("energy", f"energy is {structure.energy} (use None for a missing label)")

    pbc = np.asarray(structure.pbc)
    if pbc.shape != (3,) or pbc.dtype != bool:
        fail("pbc", f"expected 3 booleans, got {pbc!r}")
    _check_periodic_cell(structure.cell, pbc, fail)
    if structure.stress is not None:
        if not pbc.any():
            fail("stress", "stress given for a non-periodic structure (stress needs a cell volume)")
        stress_volume_problem = zero_volume_reason(structure.cell)
        if stress_volume_problem:
            fail("stress", f"stress given but {stress_volume_problem}")

    _check_integer(structure.charge, "charge", fail)
    _check_integer(structure.spin, "spin", fail)
    for name in ("charge", "spin"):
        out_of_range = range_reason(name, getattr(structure, name))
        if out_of_range:
            fail(name, out_of_range)
    for name in ("id", "subset"):
        if not isinstance(getattr(structure, name), str):
            fail(name, f"expected a string, got {type(getattr(structure, name)).__name__}")


def _safe_id(structure) -> str | None:
    structure_id = getattr(structure, "id", None)
    return structure_id if isinstance(structure_id, str) else None


def _check_float_array(value, shape: tuple[int, ...], name: str, fail, required: bool = False) -> None:
    if value is None:
        if required:
            fail(name, "required field is missing")
        return
    array = np.asarray(value)
    if array.shape != shape:
        fail(name, f"wrong shape: expected {shape}, got {array.shape}")
    if array.dtype.kind not in "iuf":
        fail(name, f"expected numbers, got dtype {array.dtype}")
    if not np.isfinite(array).all():
        fail(name, "contains NaN or inf (use None for a missing label)")


def _check_periodic_cell(cell, pbc: np.ndarray, fail) -> None:
    """Periodic directions need non-zero, linearly independent lattice vectors."""
    if not pbc.any():
        return
    if cell is None:
        fail("cell", f"pbc is {pbc.tolist()} but the structure has no cell")
    problem = degenerate_lattice(np.asarray(cell)[pbc])
    if problem == "zero":
        fail("cell", f"pbc is {pbc.tolist()} but a periodic lattice vector is zero: {np.asarray(cell).tolist()}")
    if problem == "dependent":
        fail("cell", f"periodic lattice vectors are linearly dependent (singular cell): {np.asarray(cell).tolist()}")


def _check_integer(value, name: str, fail) -> None:
    if not is_integer(value):
        fail(name, f"expected an integer, got {value!r}")
    if not _INT32_MIN <= value <= _INT32_MAX:
        fail(name, f"{value} does not fit the stored int32")


def degenerate_lattice(vectors) -> str | None:
    """Whether the periodic lattice vectors ``vectors`` (k, 3) Å fail to span a k-dimensional
    lattice: ``"zero"`` (a vector of zero length), ``"dependent"`` (linearly dependent), or None.

    The one cell check of the data layer: the schema validation and the neighbour search
    (`mlip.data.neighbours`) both ask it, each wording its own message.
    """
    vectors = np.asarray(vectors, dtype=np.float64).reshape(-1, 3)
    if vectors.shape[0] == 0:
        return None
    lengths = np.linalg.norm(vectors, axis=1)
    if (lengths < _DEGENERATE_LATTICE_TOLERANCE).any():
        return "zero"
    singular_values = np.linalg.svd(vectors / lengths[:, None], compute_uv=False)
    return "dependent" if singular_values[-1] < _DEGENERATE_LATTICE_TOLERANCE else None


def zero_volume_reason(cell) -> str | None:
    """Why ``cell`` (3, 3) Å has no volume (so stress = (1/V) dE/dstrain is undefined), or None.

    A slab periodic in two directions may have a zero (or any flat) third vector: that is fine
    for its geometry, but not for a stress label.
    """
    if cell is None:
        return "the structure has no cell (stress needs a cell volume)"
    rows = np.asarray(cell, dtype=np.float64).reshape(3, 3).tolist()  # plain floats: the MD hot path asks
    (a1, a2, a3), (b1, b2, b3), (c1, c2, c3) = rows
    volume = abs(a1 * (b2 * c3 - b3 * c2) - a2 * (b1 * c3 - b3 * c1) + a3 * (b1 * c2 - b2 * c1))
    lengths = [math.sqrt(x * x + y * y + z * z) for x, y, z in rows]
    if min(lengths) == 0.0 or volume <= _FLAT_CELL_TOLERANCE * lengths[0] * lengths[1] * lengths[2]:
        return (
            f"the cell has zero volume ({volume:.3g} Å³; stress needs a cell volume: give the "
            f"non-periodic direction a vacuum vector): {rows}"
        )
    return None


def range_reason(name: str, value: int) -> str | None:
    """Why an integer field (``charge`` in e, ``spin`` = 2S+1) is outside `INTEGER_RANGES`, or None."""
    low, high = INTEGER_RANGES[name]
    if low <= int(value) <= high:
        return None
    what = "total charge" if name == "charge" else "spin multiplicity 2S+1 ="
    unit = " e" if name == "charge" else ""
    hint = "" if name == "charge" else " (1 = singlet, 2 = doublet, ...)"
    return f"{what} {int(value)}{unit} outside the supported range {low}..{high}{hint}"
