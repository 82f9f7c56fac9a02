"""``mlip-convert``: turn datasets in foreign formats into one mlip HDF5 file.

    mlip-convert train.extxyz -o train.h5 --energy-key REF_energy --forces-key REF_forces
    mlip-convert shards/*.aselmdb -o omol.h5 --level-of-theory "wB97M-V/def2-TZVPD"
    mlip-convert MPtrj_2022.9_full.json -o mptrj.h5 --mptrj-energy uncorrected

Bad input ends the program with exit status 1 and a one-line message naming the file, the
structure and the field (no traceback); no output file is left behind. Warnings (e.g. a
``--energy-key`` that matched no structure) go to stderr, also with ``-q``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from mlip.data.convert import (
    FORMATS,
    KEY_OPTIONS,
    MPTRJ_ENERGY_LABELS,
    ConversionSummary,
    LabelKeyWarning,
    convert_with_summary,
)
from mlip.data.errors import MLIPDataError
from mlip.data.neighbours import DEFAULT_MIN_DISTANCE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlip-convert",
        description="Convert extxyz/ASE files, ASE databases, ASE-LMDB shards (OMol25), MPtrj JSON "
        "or MACE HDF5 into one mlip HDF5 file. Units out: Å, eV, eV/Å, eV/Å³ (ASE stress sign).",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="input files (all go into one output)")
    parser.add_argument("-o", "--output", required=True, metavar="OUT.h5", help="mlip HDF5 file to write")
    parser.add_argument(
        "--format", default="auto", choices=("auto", *FORMATS),
        help="input format (default: from each file's extension: .xyz/.extxyz extxyz, .db asedb, "
        ".aselmdb/.lmdb aselmdb, .json mptrj, .h5 MACE or mlip HDF5, anything else via ase.io)",
    )
    keys = parser.add_argument_group("label keys (extxyz, ASE files, ASE db, ASE-LMDB)")
    keys.add_argument("--energy-key", help="info/data key of the total energy, eV (default: energy)")
    keys.add_argument("--forces-key", help="per-atom array of forces, eV/Å (default: forces)")
    keys.add_argument("--stress-key", help="stress, eV/Å³, Voigt 6, 9 values or 3x3 (default: stress)")
    keys.add_argument("--magmom-key", help="per-atom magnetic moments, μB (default: magmoms)")
    keys.add_argument("--charges-key", help="per-atom partial charges, e (default: charges)")
    keys.add_argument("--charge-key", help="total charge, e (default: charge; absent -> 0)")
    keys.add_argument("--spin-key", help="spin multiplicity 2S+1 (default: spin; absent -> 1)")
    keys.add_argument("--subset-key", help="subset label key (default: subset, then config_type)")
    parser.add_argument("--subset", help="give every structure this subset label")
    parser.add_argument(
        "--mptrj-energy", choices=MPTRJ_ENERGY_LABELS, default=None,
        help="MPtrj energy label: uncorrected_total_energy (default), corrected_total_energy, "
        "or energy_per_atom times the atom count",
    )
    parser.add_argument(
        "--min-distance", type=float, default=DEFAULT_MIN_DISTANCE, metavar="Å",
        help=f"refuse structures with two atoms (or an atom and a periodic image) closer than this "
        f"(default {DEFAULT_MIN_DISTANCE} Å; 0 disables the check)",
    )
    attributes = parser.add_argument_group("output file attributes")
    attributes.add_argument("--level-of-theory", default="", help='e.g. "PBE/PAW (VASP)"')
    attributes.add_argument("--energy-reference", default="", help='e.g. "total energy, no atomic references removed"')
    attributes.add_argument("--source", default="", help="where the data comes from (default: the input file names)")
    attributes.add_argument("--compression", default="gzip", choices=("gzip", "lzf", "none"))
    parser.add_argument("--overwrite", action="store_true", help="replace OUT.h5 if it exists")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the converter; returns the exit status (0 ok, 1 bad input, 2 bad arguments)."""
    args = build_parser().parse_args(argv)
    if Path(args.output).exists() and not args.overwrite:
        print(f"mlip-convert: error: {args.output} exists; pass --overwrite to replace it", file=sys.stderr)
        return 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LabelKeyWarning)  # every unmatched key, not once per line of code
        try:
            summary, failure = _convert(args), None
        except (MLIPDataError, ValueError, OSError) as error:
            summary, failure = None, error
    for warning in caught:  # on stderr whatever -q says
        print(f"mlip-convert: warning: {warning.message}", file=sys.stderr)
    if failure is not None:
        print(f"mlip-convert: error: {failure}", file=sys.stderr)
        return 1
    if not args.quiet:
        _print_summary(summary)
    return 0


def _convert(args: argparse.Namespace) -> ConversionSummary:
    """`convert_with_summary` with the command-line options."""
    return convert_with_summary(
        args.inputs,
        args.output,
        args.format,
        level_of_theory=args.level_of_theory,
        energy_reference=args.energy_reference,
        source=args.source,
        compression=None if args.compression == "none" else args.compression,
        overwrite=args.overwrite,
        **{option: getattr(args, option) for option in KEY_OPTIONS},  # --energy-key ... --subset-key
        subset=args.subset,
        mptrj_energy=args.mptrj_energy,
        min_distance=args.min_distance,
    )


def _print_summary(summary: ConversionSummary) -> None:
    from ase.data import chemical_symbols
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"wrote {summary.output}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    n = summary.n_structures
    table.add_row("structures", f"{n:,}")
    table.add_row("atoms", f"{summary.n_atoms:,}")
    elements = sorted(summary.element_counts)
    table.add_row("elements", f"{len(elements)}: " + " ".join(chemical_symbols[z] for z in elements))
    table.add_row(
        "labels",
        f"energy {summary.n_with_energy:,}/{n:,}, forces {summary.n_with_forces:,}/{n:,}, "
        f"stress {summary.n_with_stress:,}/{n:,}",
    )
    subsets = ", ".join(f"{name or '(none)'} {count:,}" for name, count in summary.subsets.most_common(8))
    if len(summary.subsets) > 8:
        subsets += f", ... ({len(summary.subsets)} subsets)"
    table.add_row("subsets", subsets)
    Console().print(table)


if __name__ == "__main__":
    sys.exit(main())
