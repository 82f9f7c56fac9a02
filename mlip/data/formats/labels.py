"""Which input keys hold which label: `LabelKeys`, and the one label lookup every ASE-style
format (extxyz and other ASE files, ASE databases, ASE-LMDB shards) shares.

Scalars (energy, stress, charge, spin, subset, id) are looked up in ``atoms.info`` (extxyz) or
in a database row's ``data`` and ``key_value_pairs``; per-atom arrays (forces, magmom, partial
charges) in ``atoms.arrays`` or the row's ``data``. Whatever is not found there is taken from
the attached calculator results (``atoms.calc.results`` / the row's own columns), which is
where ASE puts ``energy``, ``forces``, ``stress``, ``magmoms`` and ``charges``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from mlip.data.formats.values import (
    FieldError,
    atomic_number_array,
    cell_and_pbc,
    integer,
    is_missing,
    mapping_or_none,
    number,
    per_atom_scalars,
    per_atom_vectors,
    stress_tensor,
    text,
)
from mlip.data.structure import Structure

#: Keyword options of `read_structures` / `convert` (and ``--energy-key`` ... of mlip-convert)
#: and the `LabelKeys` field each sets.
KEY_OPTIONS: dict[str, str] = {
    "energy_key": "energy",
    "forces_key": "forces",
    "stress_key": "stress",
    "magmom_key": "magmom",
    "charges_key": "partial_charges",
    "charge_key": "charge",
    "spin_key": "spin",
    "subset_key": "subset",
}


@dataclass(frozen=True)
class LabelKeys:
    """Names under which an ASE-style input stores each label (see the module docstring).

        read_extxyz("train.xyz", keys=LabelKeys(energy="REF_energy", forces="REF_forces"))
        LabelKeys.from_options(energy_key="REF_energy", forces_key=None)  # the same energy key
    """

    energy: str = "energy"
    forces: str = "forces"
    stress: str = "stress"
    magmom: str = "magmoms"
    partial_charges: str = "charges"
    charge: str = "charge"
    spin: str = "spin"
    subset: str | None = None  # None: look for "subset", then MACE's "config_type"
    id: str = "id"

    OPTIONS: ClassVar[dict[str, str]] = KEY_OPTIONS

    @classmethod
    def from_options(cls, **options: str | None) -> LabelKeys:
        """LabelKeys from the keyword options of `KEY_OPTIONS` (``energy_key=...``); None keeps
        the default. An unknown option is a TypeError."""
        unknown = set(options) - set(KEY_OPTIONS)
        if unknown:
            raise TypeError(f"unknown label key option(s): {', '.join(sorted(unknown))}")
        return cls(**{KEY_OPTIONS[name]: value for name, value in options.items() if value is not None})

    def subset_keys(self) -> tuple[str, ...]:
        return ("subset", "config_type") if self.subset is None else (self.subset,)


def first_present(key: str, sources: Sequence[Mapping | None]) -> Any:
    """The value of `key` in the first source that has it (and not as None), else None."""
    for source in sources:
        if source is not None and key in source and not is_missing(source[key]):
            return source[key]
    return None


def labelled_structure(
    numbers: Any,
    positions: Any,
    cell: Any,
    pbc: Any,
    scalars: Sequence[Mapping | None],
    per_atom: Sequence[Mapping | None],
    keys: LabelKeys,
    default_id: str,
    subset: str | None,
    found_keys: Counter | None = None,
) -> Structure:
    """A Structure from geometry plus label dictionaries searched in order (see `LabelKeys`).

    ``found_keys``, if given, counts per `LabelKeys` field (``"energy"``, ``"charge"``, ...) the
    structures in which its key was found, so that a key matching nothing can be reported.
    """
    numbers = atomic_number_array(numbers, "numbers")
    n_atoms = numbers.shape[0]
    positions = per_atom_vectors(positions, n_atoms, "positions")
    if positions is None:
        raise FieldError("positions", "missing")
    cell, pbc = cell_and_pbc(cell, pbc)

    def lookup(label: str, sources: Sequence[Mapping | None]) -> Any:
        value = first_present(getattr(keys, label), sources)
        if value is not None and found_keys is not None:
            found_keys[label] += 1
        return value

    subset_value = subset
    if subset_value is None:
        found = (first_present(key, scalars) for key in keys.subset_keys())
        subset_value = next((text(value) for value in found if value is not None), None)
        if subset_value is not None and found_keys is not None:
            found_keys["subset"] += 1
    structure_id = first_present(keys.id, scalars)
    return Structure(
        numbers=numbers,
        positions=positions,
        cell=cell,
        pbc=pbc,
        energy=number(lookup("energy", scalars), keys.energy),
        forces=per_atom_vectors(lookup("forces", per_atom), n_atoms, keys.forces),
        stress=stress_tensor(lookup("stress", scalars), keys.stress),
        magmom=per_atom_scalars(lookup("magmom", per_atom), n_atoms, keys.magmom),
        partial_charges=per_atom_scalars(lookup("partial_charges", per_atom), n_atoms, keys.partial_charges),
        charge=integer(lookup("charge", scalars), keys.charge, default=0),
        spin=integer(lookup("spin", scalars), keys.spin, default=1),
        id=default_id if structure_id is None else text(structure_id),
        subset=subset_value or "",
    )


def structure_from_atoms(
    atoms, keys: LabelKeys, default_id: str, subset: str | None, found_keys: Counter | None = None
) -> Structure:
    """A Structure from an `ase.Atoms`: labels from ``info``/``arrays``, then ``atoms.calc.results``."""
    results = atoms.calc.results if atoms.calc is not None else {}
    return labelled_structure(
        atoms.numbers,
        atoms.positions,
        atoms.cell.array,
        atoms.pbc,
        scalars=(atoms.info, results),
        per_atom=(atoms.arrays, results),
        keys=keys,
        default_id=default_id,
        subset=subset,
        found_keys=found_keys,
    )


def structure_from_row(
    row: Mapping, data: Mapping | None, key_value_pairs: Mapping | None,
    keys: LabelKeys, default_id: str, subset: str | None, found_keys: Counter | None = None,
) -> Structure:
    """A Structure from an ASE database row held as a dict (``numbers``, ``positions``, ``cell``,
    ``pbc``, calculator results such as ``energy``/``forces``/``stress``, ``data``, and
    ``key_value_pairs``). Labels are looked up in ``data``, then ``key_value_pairs``, then the
    row's own columns."""
    data = mapping_or_none(data, "data")
    key_value_pairs = mapping_or_none(key_value_pairs, "key_value_pairs")
    return labelled_structure(
        row.get("numbers"),
        row.get("positions"),
        row.get("cell"),
        row.get("pbc"),
        scalars=(data, key_value_pairs, row),
        per_atom=(data, row),
        keys=keys,
        default_id=default_id,
        subset=subset,
        found_keys=found_keys,
    )
