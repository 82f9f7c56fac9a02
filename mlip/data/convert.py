"""`convert`: stream files in any supported format into one mlip HDF5 file (the logic of
``mlip-convert``): format detection, `read_structures`, `convert_with_summary` and its
`ConversionSummary`, and the warning for label keys that matched nothing.

The readers themselves live in `mlip.data.formats`, one module per format; the public ones are
re-exported here (``from mlip.data.convert import read_mptrj`` keeps working).
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mlip.data import formats
from mlip.data.errors import MLIPDataError
from mlip.data.formats import (
    ASELMDB_RESERVED_KEYS,
    KBAR_TO_EV_PER_A3,
    KEY_OPTIONS,
    MPTRJ_ENERGY_LABELS,
    LabelKeys,
    read_ase,
    read_asedb,
    read_aselmdb,
    read_extxyz,
    read_mace_hdf5,
    read_mlip_hdf5,
    read_mptrj,
    write_aselmdb,
    write_mace_hdf5,
)
from mlip.data.formats.values import existing_file
from mlip.data.neighbours import DEFAULT_MIN_DISTANCE, check_min_distance
from mlip.data.structure import Structure
from mlip.data.writer import StructureWriter

__all__ = [  # the readers and writers of mlip.data.formats are re-exported
    *formats.__all__,
    "FORMATS",
    "ConversionSummary",
    "LabelKeyWarning",
    "convert",
    "convert_with_summary",
    "detect_format",
    "read_structures",
]

FORMATS = ("extxyz", "ase", "asedb", "aselmdb", "mptrj", "mace-hdf5", "mlip")

_READERS = {
    "extxyz": read_extxyz,
    "ase": read_ase,
    "asedb": read_asedb,
    "aselmdb": read_aselmdb,
    "mptrj": read_mptrj,
    "mace-hdf5": read_mace_hdf5,
    "mlip": read_mlip_hdf5,
}

#: The formats whose labels are found under `LabelKeys` (the ``*_key`` options apply to them).
_KEYED_FORMATS = ("extxyz", "ase", "asedb", "aselmdb")

# Which reader options each format understands; others are ignored for that format.
_FORMAT_OPTIONS = {
    **{name: {"keys", "subset", "found_keys"} for name in _KEYED_FORMATS},
    "mptrj": {"mptrj_energy", "subset"},
    "mace-hdf5": {"subset"},
    "mlip": {"subset"},
}

_ALL_OPTIONS = {*KEY_OPTIONS, *set().union(*_FORMAT_OPTIONS.values())}


def detect_format(path: str | os.PathLike) -> str:
    """The format of a file from its name (and, for ``.h5``, its top-level groups)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".xyz", ".extxyz"):
        return "extxyz"
    if suffix == ".db":
        return "asedb"
    if suffix in (".aselmdb", ".lmdb"):
        return "aselmdb"
    if suffix == ".json":
        return "mptrj"
    if suffix in (".h5", ".hdf5"):
        return _detect_hdf5_flavour(path)
    return "ase"


def _detect_hdf5_flavour(path: Path) -> str:
    import h5py

    try:
        with h5py.File(path, "r") as file:
            if file.attrs.get("format") in ("mlip-hdf5", b"mlip-hdf5"):
                return "mlip"
            if any(name.startswith("config_batch_") for name in file.keys()):
                return "mace-hdf5"
    except OSError as error:
        raise MLIPDataError(f"not a readable HDF5 file: {error}", path) from None
    raise MLIPDataError("HDF5 file is neither mlip's schema nor MACE's layout", path)


def read_structures(path: str | os.PathLike, format: str = "auto", **options) -> Iterator[Structure]:
    """Structures of one file in any supported format (``format="auto"``: from the file name).

    Options: ``energy_key``, ``forces_key``, ``stress_key``, ``magmom_key``, ``charges_key``,
    ``charge_key``, ``spin_key``, ``subset_key`` (ASE-style formats; `KEY_OPTIONS`, combined
    into one `LabelKeys`), or ``keys`` (a `LabelKeys`, instead of those), ``mptrj_energy``
    (``uncorrected``/``corrected``/``per_atom``), ``found_keys`` (ASE-style formats; see
    `read_ase`) and ``subset`` (all formats). Options a format does not use are ignored for it,
    so one set of options can serve several input files.
    """
    unknown = set(options) - _ALL_OPTIONS
    if unknown:
        raise TypeError(f"unknown conversion option(s): {', '.join(sorted(unknown))}")
    key_options = {name: options.pop(name) for name in KEY_OPTIONS if name in options}
    if options.get("keys") is None:
        options["keys"] = LabelKeys.from_options(**key_options)
    elif any(value is not None for value in key_options.values()):
        raise TypeError(f"give either keys=LabelKeys(...) or {', '.join(sorted(key_options))}, not both")
    if format == "auto":
        format = detect_format(existing_file(path))
    if format not in _READERS:
        raise ValueError(f"unknown format {format!r}; choose from auto, {', '.join(FORMATS)}")
    chosen = {name: value for name, value in options.items() if name in _FORMAT_OPTIONS[format] and value is not None}
    if "mptrj_energy" in chosen:
        chosen["energy"] = chosen.pop("mptrj_energy")
    return _READERS[format](path, **chosen)


@dataclass
class ConversionSummary:
    """What a conversion wrote, and the warnings it gave."""

    output: Path
    n_structures: int = 0
    n_atoms: int = 0
    element_counts: Counter = field(default_factory=Counter)  # atomic number -> atom count
    n_with_energy: int = 0
    n_with_forces: int = 0
    n_with_stress: int = 0
    subsets: Counter = field(default_factory=Counter)  # subset -> structure count
    warnings: list[str] = field(default_factory=list)  # e.g. a requested label key found nowhere

    def add(self, structure: Structure) -> None:
        self.n_structures += 1
        self.n_atoms += structure.n_atoms
        self.element_counts.update(structure.numbers.tolist())
        self.n_with_energy += structure.energy is not None
        self.n_with_forces += structure.forces is not None
        self.n_with_stress += structure.stress is not None
        self.subsets[structure.subset] += 1


class LabelKeyWarning(UserWarning):
    """A label key given explicitly (``energy_key="REF_energy"``, ...) matched no structure."""


def convert_with_summary(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    output: str | os.PathLike,
    format: str = "auto",
    *,
    level_of_theory: str = "",
    energy_reference: str = "",
    source: str = "",
    compression: str = "gzip",
    overwrite: bool = False,
    min_distance: float | None = DEFAULT_MIN_DISTANCE,
    **options,
) -> ConversionSummary:
    """`convert`, returning a `ConversionSummary` (counts of structures, atoms, elements, labels).

    ``min_distance`` (Å): a structure with two atoms closer than this, periodic images
    included, is an error naming the pair (`mlip.data.neighbours.check_min_distance`); None or
    0 disables the check. Every label key given explicitly (``energy_key``, ``forces_key``,
    ..., ``subset_key``) that was found in no structure gives a `LabelKeyWarning` (also listed
    in ``summary.warnings``): a mistyped key would otherwise silently store the label as
    missing everywhere.
    """
    paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not paths:
        raise ValueError("no input files given")
    output = Path(output)
    for path in paths:
        if Path(path).resolve() == output.resolve():
            raise ValueError(f"input {os.fspath(path)!r} is also the output file")
    if min_distance is not None and not min_distance >= 0:
        raise ValueError(f"min_distance must be a distance >= 0 in Å (0 or None: no check), got {min_distance!r}")
    # Check every input exists and the options are known before anything is written.
    formats = [detect_format(existing_file(path)) if format == "auto" else format for path in paths]
    found_keys: Counter = Counter()
    streams = [
        read_structures(existing_file(path), path_format, found_keys=found_keys, **options)
        for path, path_format in zip(paths, formats, strict=True)
    ]
    summary = ConversionSummary(output=output)
    with StructureWriter(
        output,
        level_of_theory=level_of_theory,
        energy_reference=energy_reference,
        source=source or ", ".join(Path(path).name for path in paths),
        compression=compression,
        overwrite=overwrite,
    ) as writer:
        for path, stream in zip(paths, streams, strict=True):
            for index, structure in enumerate(stream):
                check_min_distance(structure, min_distance, file=path, index=index)
                writer.write(structure)
                summary.add(structure)
    summary.warnings = _unmatched_key_warnings(options, found_keys, paths, formats, summary.n_structures)
    for message in summary.warnings:
        warnings.warn(message, LabelKeyWarning, stacklevel=2)
    return summary


def _unmatched_key_warnings(options: Mapping, found_keys: Counter, paths, formats, n_structures: int) -> list[str]:
    """One message per explicitly given label key that no structure had."""
    keyed = [
        Path(path).name for path, path_format in zip(paths, formats, strict=True) if path_format in _KEYED_FORMATS
    ]
    messages = []
    for option, label in KEY_OPTIONS.items():
        key = options.get(option)
        if key is None or found_keys[label]:
            continue
        flag = "--" + option.replace("_", "-")
        if keyed:
            where = f"was found in no structure of {', '.join(keyed)}"
            effect = {"charge": "charge 0 used", "spin": "multiplicity 1 used", "subset": "no subset label"}.get(
                label, f"{label} stored as missing"
            )
            messages.append(f"{flag} {key!r} {where} ({effect} for all {n_structures} structures)")
        else:
            messages.append(
                f"{flag} {key!r} was found in no structure: it applies to extxyz/ASE files, ASE databases and "
                f"ASE-LMDB shards only, and the inputs are {', '.join(sorted(set(formats)))}"
            )
    return messages


def convert(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    output: str | os.PathLike,
    format: str = "auto",
    **options,
) -> int:
    """Stream one or several input files into one mlip HDF5 file; returns the structure count.

    ``format`` applies to every input (``"auto"``: detected per file from its name). Keywords:
    ``level_of_theory``, ``energy_reference``, ``source`` (file attributes; ``source`` defaults
    to the input file names), ``compression``, ``overwrite``, and the reader options of
    `read_structures`, and ``min_distance`` (see `convert_with_summary`). Structures are written
    as they are read, never all held in memory; on any error the output file is not created
    (the writer writes to a temporary file).
    """
    return convert_with_summary(inputs, output, format, **options).n_structures
