"""The HDF5 files of MACE's ``preprocess_data.py``, read and written."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mlip.data.errors import MLIPDataError
from mlip.data.formats.values import (
    FieldError,
    atomic_number_array,
    cell_and_pbc,
    existing_file,
    integer,
    is_missing,
    located,
    number,
    per_atom_scalars,
    per_atom_vectors,
    stress_tensor,
    text,
    validated,
)
from mlip.data.schema import zero_volume_reason
from mlip.data.structure import Structure
from mlip.files import atomic_path

_MACE_DEFAULT_CONFIG_TYPE = "Default"


def read_mace_hdf5(path: str | os.PathLike, *, subset: str | None = None) -> Iterator[Structure]:
    """Structures of a MACE HDF5 file (``mace/cli/preprocess_data.py``).

    Layout: groups ``config_batch_<b>/config_<c>`` holding ``atomic_numbers``, ``positions``,
    ``cell``, ``pbc``, ``weight``, ``config_type`` and the labels, either in a ``properties``
    subgroup (current MACE: ``energy``, ``forces``, ``stress``, ``virials``, ``charges``,
    ``total_charge``, ``total_spin``, ...) or directly in the group (older MACE). A missing label
    is the string ``"None"``; a label whose weight (``property_weights/<name>``, older
    ``<name>_weight``) is 0 is also treated as missing, since MACE zero-fills absent labels
    that way. Stress is taken as is (MACE uses ASE's eV/Å³ and sign); when only virials are
    given, stress = -virials / volume. ``config_type`` becomes the subset (MACE's
    placeholder ``"Default"`` becomes the empty subset) unless ``subset`` is given. Batches and
    configurations are read in numeric order; the id is ``"<file name>:<index>"``.
    """
    import h5py

    path = existing_file(path)
    try:
        file = h5py.File(path, "r")
    except OSError as error:
        raise MLIPDataError(f"not a readable HDF5 file: {error}", path) from None
    with file:
        index = 0
        for batch_name in _numbered_members(file, "config_batch_", path):
            batch = file[batch_name]
            for config_name in _numbered_members(batch, "config_", path):
                structure_id = f"{path.name}:{index}"
                with located(path, index, structure_id, record="config"):
                    structure = _structure_from_mace_group(batch[config_name], structure_id, subset)
                yield validated(structure, path, index)
                index += 1


def _numbered_members(group, prefix: str, path: Path) -> list[str]:
    names = [name for name in group.keys() if name.startswith(prefix) and name[len(prefix):].isdigit()]
    if not names and prefix == "config_batch_":
        raise MLIPDataError("no config_batch_<n> groups: not a MACE HDF5 file", path, field="config_batch_0")
    return sorted(names, key=lambda name: int(name[len(prefix):]))


def _structure_from_mace_group(group, structure_id: str, subset: str | None) -> Structure:
    def value(name: str, container=group) -> Any:
        return container[name][()] if name in container else None

    properties = group["properties"] if "properties" in group else group
    weights = group["property_weights"] if "property_weights" in group else None

    def label(name: str) -> Any:
        """A label, or None if absent or given zero weight (MACE's mark of a filled-in label)."""
        weight_field = f"property_weights/{name}" if weights is not None else f"{name}_weight"
        weight = value(name, weights) if weights is not None else value(f"{name}_weight")
        if number(weight, weight_field) == 0.0:
            return None
        return value(name, properties)

    numbers = atomic_number_array(value("atomic_numbers"), "atomic_numbers")
    n_atoms = numbers.shape[0]
    positions = per_atom_vectors(value("positions"), n_atoms, "positions")
    if positions is None:
        raise FieldError("positions", "missing")
    cell, pbc = cell_and_pbc(value("cell"), None if is_missing(value("pbc")) else value("pbc"))
    stress = stress_tensor(label("stress"), "stress")
    if stress is None:
        virials = stress_tensor(label("virials"), "virials")
        if virials is not None:
            if cell is None:
                raise FieldError("virials", "virials of a non-periodic structure cannot give a stress")
            no_volume = zero_volume_reason(cell)
            if no_volume:
                raise FieldError("virials", f"virials cannot give a stress: {no_volume}")
            stress = -virials / abs(np.linalg.det(cell))
    config_type = value("config_type")
    if subset is None:
        subset = "" if is_missing(config_type) else text(config_type)
        subset = "" if subset == _MACE_DEFAULT_CONFIG_TYPE else subset
    return Structure(
        numbers=numbers,
        positions=positions,
        cell=cell,
        pbc=pbc,
        energy=number(label("energy"), "energy"),
        forces=per_atom_vectors(label("forces"), n_atoms, "forces"),
        stress=stress,
        magmom=per_atom_scalars(label("magmom"), n_atoms, "magmom"),
        partial_charges=per_atom_scalars(label("charges"), n_atoms, "charges"),
        charge=integer(value("total_charge", properties), "total_charge", default=0),
        spin=integer(value("total_spin", properties), "total_spin", default=1),
        id=structure_id,
        subset=subset,
    )


def write_mace_hdf5(
    path: str | os.PathLike, structures: Iterable[Structure], *, batch_size: int | None = None
) -> int:
    """Write structures in the current MACE HDF5 layout (see `read_mace_hdf5`).

    All configurations go to ``config_batch_0`` (as MACE's ``save_configurations_as_HDF5``
    does) unless ``batch_size`` splits them into ``config_batch_<b>`` groups of that many.
    Missing labels are written as the string ``"None"``, stress as a (3, 3) eV/Å³ tensor,
    ``total_charge``/``total_spin`` as properties. Temporary file + rename. Returns the count.
    """
    import h5py

    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n_written = 0
    with atomic_path(path) as temporary, h5py.File(temporary, "x") as file:
        for n_written, structure in enumerate(structures, start=1):
            index = n_written - 1
            batch_index, config_index = (0, index) if batch_size is None else divmod(index, batch_size)
            batch = file.require_group(f"config_batch_{batch_index}")
            _write_mace_config(batch.create_group(f"config_{config_index}"), structure)
        file.attrs["drop_last"] = False
    return n_written


def _write_mace_config(group, structure: Structure) -> None:
    def or_none(value):
        return "None" if value is None else value

    group["atomic_numbers"] = structure.numbers
    group["positions"] = structure.positions
    group["cell"] = structure.cell if structure.cell is not None else np.zeros((3, 3))
    group["pbc"] = structure.pbc
    group["weight"] = 1.0
    group["config_type"] = structure.subset or _MACE_DEFAULT_CONFIG_TYPE
    properties = group.create_group("properties")
    properties["energy"] = or_none(structure.energy)
    properties["forces"] = or_none(structure.forces)
    properties["stress"] = or_none(structure.stress)
    properties["charges"] = or_none(structure.partial_charges)
    properties["magmom"] = or_none(structure.magmom)
    properties["total_charge"] = float(structure.charge)
    properties["total_spin"] = float(structure.spin)
    weights = group.create_group("property_weights")
    for name in ("energy", "forces", "stress", "virials", "dipole", "charges"):
        weights[name] = 1.0
