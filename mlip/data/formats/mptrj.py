"""The MPtrj JSON of CHGNet (Materials Project trajectories), streamed, read without pymatgen."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from ase.units import GPa

from mlip.data.errors import MLIPDataError
from mlip.data.formats.values import (
    FieldError,
    existing_file,
    float_array,
    integer,
    located,
    number,
    per_atom_scalars,
    per_atom_vectors,
    stress_tensor,
    validated,
)
from mlip.data.structure import Structure

#: MPtrj energies a user may train on; see `read_mptrj`.
MPTRJ_ENERGY_LABELS = ("uncorrected", "corrected", "per_atom")

#: VASP (and so MPtrj) reports stress in kBar, positive = compressive; ASE uses eV/Å³, positive =
#: tensile. 1 kBar = 0.1 GPa.
KBAR_TO_EV_PER_A3 = 0.1 * GPa


def read_mptrj(
    path: str | os.PathLike,
    *,
    energy: str = "uncorrected",
    subset: str | None = None,
) -> Iterator[Structure]:
    """Structures of the MPtrj JSON ``{mp_id: {frame_id: frame}}``, streamed material by material.

    ``frame["structure"]`` is a pymatgen Structure dict (parsed without pymatgen: Cartesian
    ``sites[].xyz``, else fractional ``sites[].abc`` times ``lattice.matrix``); ordered sites only.
    ``energy`` picks the label: ``"uncorrected"`` (``uncorrected_total_energy``, the raw DFT
    energy; default), ``"corrected"`` (``corrected_total_energy``, with MP2020 corrections) or
    ``"per_atom"`` (``energy_per_atom`` times the number of atoms). Forces come from ``force``
    (eV/Å), magnetic moments from ``magmom``, and ``stress`` (kBar, VASP sign: positive =
    compressive) becomes eV/Å³ with ASE's sign: ``stress_ase = -0.1 GPa/kBar * stress_vasp``.
    The id is ``"<mp_id>/<frame_id>"``; the subset is ``subset`` (default: empty).
    """
    if energy not in MPTRJ_ENERGY_LABELS:
        raise ValueError(f"energy must be one of {MPTRJ_ENERGY_LABELS}, got {energy!r}")
    path = existing_file(path)
    index = 0
    materials = _iter_json_object_items(path)
    while True:
        try:
            mp_id, frames = next(materials)
        except StopIteration:
            return
        except MLIPDataError as error:  # malformed JSON: say which structure could not be read
            raise MLIPDataError(error.reason, path, index=index, field=error.field) from None
        if not isinstance(frames, Mapping):
            raise MLIPDataError(
                f"material {mp_id!r} is not an object of frames", path, index=index, field=mp_id
            )
        for frame_id, frame in frames.items():
            structure_id = f"{mp_id}/{frame_id}"
            with located(path, index, structure_id, record="frame"):
                structure = _structure_from_mptrj_frame(frame, energy, structure_id, subset or "")
            yield validated(structure, path, index)
            index += 1


_MPTRJ_ENERGY_FIELDS = {
    "uncorrected": "uncorrected_total_energy",
    "corrected": "corrected_total_energy",
    "per_atom": "energy_per_atom",
}


def _structure_from_mptrj_frame(frame: Any, energy_label: str, structure_id: str, subset: str) -> Structure:
    if not isinstance(frame, Mapping):
        raise FieldError("frame", "not a JSON object")
    if "structure" not in frame:
        raise FieldError("structure", "missing")
    numbers, positions, cell = _parse_pymatgen_structure(frame["structure"])
    n_atoms = numbers.shape[0]
    energy_field = _MPTRJ_ENERGY_FIELDS[energy_label]
    energy = number(frame.get(energy_field), energy_field)
    if energy is not None and energy_label == "per_atom":
        energy *= n_atoms
    stress_kbar = stress_tensor(frame.get("stress"), "stress")
    return Structure(
        numbers=numbers,
        positions=positions,
        cell=cell,
        pbc=True,
        energy=energy,
        forces=per_atom_vectors(frame.get("force"), n_atoms, "force"),
        stress=None if stress_kbar is None else -KBAR_TO_EV_PER_A3 * stress_kbar,
        magmom=per_atom_scalars(frame.get("magmom"), n_atoms, "magmom"),
        charge=integer(frame["structure"].get("charge"), "structure.charge", default=0),
        id=structure_id,
        subset=subset,
    )


def _parse_pymatgen_structure(structure: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Atomic numbers, Cartesian positions (Å) and cell (Å) of a pymatgen ``Structure.as_dict()``."""
    from ase.data import atomic_numbers

    if not isinstance(structure, Mapping):
        raise FieldError("structure", "not a pymatgen Structure dict")
    try:
        matrix = structure["lattice"]["matrix"]
    except (KeyError, TypeError):
        raise FieldError("structure.lattice.matrix", "missing") from None
    cell = float_array(matrix, "structure.lattice.matrix")
    if cell.shape != (3, 3):
        raise FieldError("structure.lattice.matrix", f"expected shape (3, 3), got {cell.shape}")
    sites = structure.get("sites")
    if not isinstance(sites, list) or not sites:
        found = "empty" if isinstance(sites, list) else ("missing" if sites is None else type(sites).__name__)
        raise FieldError("structure.sites", f"expected a non-empty list of sites, got {found}")
    numbers = np.empty(len(sites), dtype=np.int64)
    positions = np.empty((len(sites), 3))
    for site_index, site in enumerate(sites):
        where = f"structure.sites[{site_index}]"
        if not isinstance(site, Mapping):
            raise FieldError(where, f"expected an object (a pymatgen site), got {type(site).__name__}")
        numbers[site_index] = _site_element(site.get("species"), f"{where}.species", atomic_numbers)
        if site.get("xyz") is not None:
            positions[site_index] = _site_coordinates(site["xyz"], f"{where}.xyz")
        elif site.get("abc") is not None:
            positions[site_index] = _site_coordinates(site["abc"], f"{where}.abc") @ cell
        else:
            raise FieldError(f"{where}.xyz", "missing position (neither 'xyz' nor 'abc')")
    return numbers, positions, cell


def _site_element(species: Any, field: str, atomic_numbers: Mapping[str, int]) -> int:
    """Atomic number of an ordered pymatgen site, ``species = [{"element": "Cu", "occu": 1}]``."""
    if species is None or (isinstance(species, list) and not species):
        raise FieldError(field, "missing")
    if not isinstance(species, list) or not all(isinstance(entry, Mapping) for entry in species):
        raise FieldError(field, f'expected a list of {{"element": ..., "occu": ...}} objects, got {species!r}')
    occupancy = species[0].get("occu", 1.0)
    if isinstance(occupancy, bool) or not isinstance(occupancy, (int, float)):
        raise FieldError(field, f"occupancy 'occu' is not a number: {occupancy!r}")
    if len(species) != 1 or float(occupancy) != 1.0:
        raise FieldError(field, "disordered site (partial occupancy) is not supported")
    element = species[0].get("element")
    if not isinstance(element, str) or element not in atomic_numbers or element == "X":
        raise FieldError(field, f"unknown element {element!r}")
    return atomic_numbers[element]


def _site_coordinates(value: Any, field: str) -> np.ndarray:
    coordinates = float_array(value, field)
    if coordinates.shape != (3,):
        raise FieldError(field, f"expected 3 coordinates, got shape {coordinates.shape}")
    return coordinates


def _iter_json_object_items(path: Path, chunk_chars: int = 1 << 22) -> Iterator[tuple[str, Any]]:
    """(key, value) pairs of a top-level JSON object, parsed value by value.

    Only one top-level value (one MPtrj material) is decoded at a time, so files larger than
    memory stream through. Top-level values must be JSON objects or arrays.
    """
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8") as stream:
        buffer = stream.read(chunk_chars)
        at_end = len(buffer) < chunk_chars
        position = 0
        consumed = 0  # characters dropped from the front of the buffer, for error positions

        def skip_space() -> None:
            nonlocal position
            while position < len(buffer) and buffer[position] in " \t\r\n":
                position += 1

        def refill() -> bool:
            """Append more text (dropping what was consumed); False at end of file."""
            nonlocal buffer, position, at_end, consumed
            if at_end:
                return False
            more = stream.read(max(chunk_chars, len(buffer)))  # grow geometrically for big values
            at_end = len(more) == 0
            consumed += position
            buffer = buffer[position:] + more
            position = 0
            return not at_end

        def bad(reason: str) -> MLIPDataError:
            return MLIPDataError(f"malformed JSON: {reason}", path, field="json")

        def expect(character: str) -> None:
            nonlocal position
            skip_space()
            while position >= len(buffer) and refill():
                skip_space()
            if position >= len(buffer) or buffer[position] != character:
                found = repr(buffer[position]) if position < len(buffer) else "end of file"
                raise bad(f"expected {character!r} at character {consumed + position}, found {found}")
            position += 1

        def decode_value() -> Any:
            nonlocal position
            while True:
                skip_space()
                try:
                    value, end = decoder.raw_decode(buffer, position)
                except json.JSONDecodeError as error:
                    if refill():
                        continue
                    raise bad(f"{error.msg} at character {consumed + error.pos}") from None
                if end == len(buffer) and not isinstance(value, (dict, list, str)) and refill():
                    continue  # a number or literal cut by the chunk boundary
                position = end
                return value

        expect("{")
        skip_space()
        while position >= len(buffer) and refill():
            skip_space()
        if position < len(buffer) and buffer[position] == "}":
            return
        while True:
            key = decode_value()
            if not isinstance(key, str):
                raise bad(f"object key {key!r} is not a string")
            expect(":")
            yield key, decode_value()
            skip_space()
            while position >= len(buffer) and refill():
                skip_space()
            if position < len(buffer) and buffer[position] == "}":
                return
            expect(",")
