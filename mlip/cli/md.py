"""`mlip-md`: molecular dynamics with a trained potential, with drift, temperature and stability.

    mlip-md MODEL STRUCTURE [--index 0] [--ensemble nve|nvt] [--steps 1000] [--timestep 0.5]

STRUCTURE is an mlip HDF5 file (pick a structure with --index) or any file ASE reads (--index
picks the frame). Prints energy drift (meV/atom/ps, linear fit of the total energy), mean
temperature, speed, and whether the run went unstable (exit code 2 if it did: a collapse, a
broken bond, overheating, NaN, or two atoms the calculator refuses as coincident, at any step).

Total charge and spin multiplicity come from the file (mlip HDF5; extxyz/ASE `info` keys
"charge" and "spin"); --charge / --spin set them for files without them and, when given,
override the file's values.
"""

from __future__ import annotations

import argparse
import json
import sys

from ase import Atoms


def read_structure(path: str, index: int) -> Atoms:
    """Structure `index` of an mlip HDF5 file, or frame `index` of a file ASE reads."""
    if path.endswith((".h5", ".hdf5")):
        from mlip.data.reader import StructureReader

        reader = StructureReader(path)
        if not -len(reader) <= index < len(reader):
            raise SystemExit(f"mlip-md: {path} holds {len(reader)} structures; index {index} is out of range")
        atoms = reader.read(index % len(reader)).to_atoms()
    else:
        import ase.io

        atoms = ase.io.read(path, index=index)
    atoms.calc = None
    return atoms


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mlip-md", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="exported model (anything mlip.load reads)")
    parser.add_argument("structure", help="mlip HDF5 file or a file ASE reads")
    parser.add_argument("--index", type=int, default=0, help="structure index in the file (default 0)")
    parser.add_argument("--supercell", type=int, nargs=3, metavar=("NA", "NB", "NC"), help="repeat a periodic cell")
    parser.add_argument(
        "--charge", type=int,
        help="total charge, e (atoms.info['charge']); overrides the file's value when given (default: the file's, else 0)",
    )
    parser.add_argument(
        "--spin", type=int,
        help="spin multiplicity 2S+1 (atoms.info['spin']); overrides the file's value when given (default: the file's, else 1)",
    )
    parser.add_argument(
        "--head", help="head of a multi-head model to run (e.g. its level of theory); an unknown name lists the heads",
    )
    parser.add_argument("--ensemble", choices=["nve", "nvt"], default="nve")
    parser.add_argument("--temperature", type=float, default=300.0, help="initial / thermostat temperature, K")
    parser.add_argument("--timestep", type=float, default=0.5, help="fs")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs")
    parser.add_argument("--check-interval", type=int, default=10, help="steps between energy records / stability checks")
    parser.add_argument("--min-distance", type=float, default=0.5, help="Å; closer pairs count as a collapse")
    parser.add_argument("--max-bond-stretch", type=float, default=2.0, help="bond length / initial length that counts as broken")
    parser.add_argument("--max-temperature", type=float, default=5000.0, help="K")
    parser.add_argument("--trajectory", help="write an ASE .traj file")
    parser.add_argument("--trajectory-interval", type=int, default=10)
    parser.add_argument("--json", help="write the report as JSON")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice; 1 is fastest for small systems)")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--skin", type=float, default=0.5, help="neighbour-list skin, Å")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone (Facet: faster; others fall back to eager)")
    parser.add_argument(
        "--no-retain-freed-memory", dest="retain_freed_memory", action="store_false",
        help="keep glibc's default of returning freed memory to the kernel (slower large force calls; docs/calculator.md)",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    if arguments.threads:
        import torch

        torch.set_num_threads(arguments.threads)
    from mlip.calculator import MLIPCalculator, MLIPInputError
    from mlip.md import InstabilityCriteria, run_md

    atoms = read_structure(arguments.structure, arguments.index)
    if arguments.supercell:
        if not atoms.pbc.all():
            raise SystemExit("mlip-md: --supercell needs a structure periodic in all three directions")
        atoms = atoms.repeat(arguments.supercell)
    for key in ("charge", "spin"):  # an explicit option wins over the file
        if getattr(arguments, key) is not None:
            atoms.info[key] = getattr(arguments, key)
    try:  # a usage error (element, charge, spin, head), not an instability: say so before the run
        atoms.calc = MLIPCalculator(
            arguments.model, device=arguments.device, dtype=arguments.dtype, skin=arguments.skin,
            compile=arguments.compile, head=arguments.head,
            retain_freed_memory=arguments.retain_freed_memory and sys.platform.startswith("linux"),  # glibc only
        )
        atoms.calc.check_atoms(atoms)
        atoms.calc.charge_and_spin(atoms)
        atoms.calc.head_of(atoms)
    except MLIPInputError as error:
        hint = " (or pass --charge / --spin)" if "charge" in str(error) or "spin" in str(error) else ""
        hint = " (pass --head <name>)" if "head" in str(error) else hint
        raise SystemExit(f"mlip-md: {arguments.structure} (index {arguments.index}): {error}{hint}") from None
    criteria = InstabilityCriteria(
        min_distance=arguments.min_distance,
        max_bond_stretch=arguments.max_bond_stretch,
        max_temperature_K=arguments.max_temperature,
    )
    report = run_md(
        atoms,
        ensemble=arguments.ensemble,
        temperature_K=arguments.temperature,
        timestep_fs=arguments.timestep,
        n_steps=arguments.steps,
        friction_per_fs=arguments.friction,
        check_interval=arguments.check_interval,
        trajectory=arguments.trajectory,
        trajectory_interval=arguments.trajectory_interval,
        criteria=criteria,
        seed=arguments.seed,
    )
    print(report.summary())
    if arguments.json:
        from mlip.evaluation import write_text

        write_text(json.dumps(report.as_dict(), indent=2) + "\n", arguments.json)
    return 0 if report.stable else 2


if __name__ == "__main__":
    sys.exit(main())
