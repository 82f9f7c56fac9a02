"""MD speed on CPU: atom-steps/s of each mlip backbone (and mace-torch, if installed) in ASE MD.

Three systems: ethanol (9 atoms, no cell), a 64-atom diamond Si crystal (2x2x2 cubic cells) and
a 1000-atom Si box (5x5x5). Each backbone is built untrained from its default config in
mlip/configs/model/backbone/<name>.yaml (the "matched size" model users get; weights do not change
the cost) with cutoff 5 Å, wrapped in `MLIPCalculator` and driven by ASE's VelocityVerlet
(1 fs, 300 K). Timing covers whole MD steps (neighbour list, forward, backward, integrator)
after two warm-up steps, repeated until `--seconds` have passed (at least `--min-steps`).

mace-torch: if ../mace-venv/bin/python (next to the repository; or $MLIP_MACE_PYTHON) can import mace, the same systems are run there with
an untrained ScaleShiftMACE of the same size as mlip's default MACE (32x0e+32x1o, l_max 1,
correlation 3, 2 layers, 8 Bessel functions, p = 5, radial MLP [64, 64]) through mace's own
MACECalculator. This script is its own worker in that venv (`--mace-torch-worker`).

    python scripts/bench_md.py --threads 1 --dtype float64 [--retain-freed-memory] [--compile]

--retain-freed-memory applies mlip.performance.retain_freed_memory() (glibc keeps freed memory
instead of page-faulting it in again) in every process, mace-torch's included; --compile runs the
mlip backbones through torch.compile where they compile (Facet and TransIP; the MACE-like one falls
back to eager, marked in the table).
"""

from __future__ import annotations

import os

# NumPy/SciPy's BLAS on small matrices (FrechetCellFilter's matrix exponential, BFGS updates) is
# much slower with several threads on a busy machine; set before NumPy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MACE_VENV_PYTHON = Path(os.environ.get("MLIP_MACE_PYTHON", REPO.parent / "mace-venv" / "bin" / "python"))
SYSTEMS = ("molecule-9", "crystal-64", "box-1000")
ELEMENTS = [1, 6, 8, 14]
REFERENCE_ENERGIES = {1: -13.6, 6: -1029.0, 8: -2041.0, 14: -7850.0}  # eV; a constant shift, no cost
CUTOFF = 5.0


def build_system(name: str):
    """The benchmark structures (ASE only, so the mace-torch worker can build them too)."""
    from ase.build import bulk, molecule

    if name == "molecule-9":
        atoms = molecule("CH3CH2OH")
    elif name == "crystal-64":
        atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat((2, 2, 2))
    elif name == "box-1000":
        atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat((5, 5, 5))
    else:
        raise ValueError(f"unknown system {name!r}; choose from {SYSTEMS}")
    atoms.rattle(0.02, seed=0)
    return atoms


def time_md(atoms, seconds: float, min_steps: int) -> dict:
    """Atom-steps/s of VelocityVerlet with the calculator already attached to `atoms`."""
    from ase import units
    from ase.md.verlet import VelocityVerlet

    try:  # ASE >= 3.29 renamed MaxwellBoltzmannDistribution
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:
        from ase.md.velocitydistribution import (
            MaxwellBoltzmannDistribution as thermalize_momenta,
        )

    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dynamics = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    dynamics.run(2)  # warm-up: first neighbour list, allocator, lazy initialisation
    steps, start = 0, time.perf_counter()
    while steps < min_steps or time.perf_counter() - start < seconds:
        dynamics.run(1)
        steps += 1
    elapsed = time.perf_counter() - start
    return {
        "n_atoms": len(atoms),
        "steps": steps,
        "ms_per_step": 1000.0 * elapsed / steps,
        "steps_per_s": steps / elapsed,
        "atom_steps_per_s": len(atoms) * steps / elapsed,
    }


# --------------------------------------------------------------------------------------------
# mlip backbones
# --------------------------------------------------------------------------------------------


def available_backbones() -> dict[str, dict]:
    """Default config of every backbone in mlip/configs/model/backbone whose class imports."""
    import importlib

    from omegaconf import OmegaConf

    backbones = {}
    for path in sorted((REPO / "mlip" / "configs" / "model" / "backbone").glob("*.yaml")):
        config = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        module_name, _, class_name = config["_target_"].rpartition(".")
        try:
            getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as error:
            print(f"skipping backbone {path.stem}: {error}", file=sys.stderr)
            continue
        backbones[path.stem] = config
    return backbones


def mlip_calculator(backbone_config: dict, dtype: str, skin: float, compile: bool = False):
    from mlip.calculator import MLIPCalculator
    from mlip.models.build import build_potential

    statistics = {
        "elements": ELEMENTS, "atomic_energies": REFERENCE_ENERGIES, "scale": 1.0, "shift": 0.0,
        "avg_num_neighbors": 20.0,
    }
    potential = build_potential({"backbone": dict(backbone_config), "cutoff": CUTOFF}, statistics, dtype=dtype)
    return MLIPCalculator(potential, dtype=dtype, skin=skin, compile=compile)


def retain_freed_memory() -> bool:
    """mlip.performance.retain_freed_memory, loaded by path so that the mace-torch worker (another venv) runs the same code."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("mlip_performance", REPO / "mlip" / "performance.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.retain_freed_memory()


def parameter_count(calculator) -> int:
    return sum(parameter.numel() for parameter in calculator.model.parameters())


# --------------------------------------------------------------------------------------------
# mace-torch (runs inside its own venv, MACE_VENV_PYTHON)
# --------------------------------------------------------------------------------------------


def mace_torch_worker(system: str, dtype: str, seconds: float, min_steps: int, threads: int, retain: bool) -> dict:
    os.environ.setdefault("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # e3nn 0.4.4 constants
    if retain and not retain_freed_memory():
        raise RuntimeError("--retain-freed-memory could not be applied (needs Linux with glibc)")
    import torch
    from e3nn import o3
    from mace import modules
    from mace.calculators import MACECalculator

    torch.set_num_threads(threads)
    torch.set_default_dtype(getattr(torch, dtype))
    torch.manual_seed(0)
    interaction = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    model = modules.ScaleShiftMACE(
        r_max=CUTOFF, num_bessel=8, num_polynomial_cutoff=5, max_ell=1,
        interaction_cls=interaction, interaction_cls_first=interaction, num_interactions=2,
        num_elements=len(ELEMENTS), hidden_irreps=o3.Irreps("32x0e + 32x1o"), MLP_irreps=o3.Irreps("16x0e"),
        atomic_energies=np.array([REFERENCE_ENERGIES[z] for z in ELEMENTS]), avg_num_neighbors=20.0,
        atomic_numbers=ELEMENTS, correlation=3, gate=torch.nn.functional.silu, radial_MLP=[64, 64],
        atomic_inter_scale=1.0, atomic_inter_shift=0.0,
    )
    atoms = build_system(system)
    atoms.calc = MACECalculator(models=model, device="cpu", default_dtype=dtype)
    result = time_md(atoms, seconds, min_steps)
    result["parameters"] = sum(parameter.numel() for parameter in model.parameters())
    return result


def run_mace_torch(system: str, arguments) -> dict | None:
    command = [
        str(MACE_VENV_PYTHON), str(Path(__file__).resolve()), "--mace-torch-worker", system,
        "--dtype", arguments.dtype, "--seconds", str(arguments.seconds), "--min-steps", str(arguments.min_steps),
        "--threads", str(arguments.threads),
    ] + (["--retain-freed-memory"] if arguments.retain_freed_memory else [])
    completed = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""}, check=False)
    if completed.returncode != 0:
        print(f"mace-torch on {system} failed:\n{completed.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(completed.stdout.strip().splitlines()[-1])


def mace_torch_available() -> bool:
    if not MACE_VENV_PYTHON.exists():
        return False
    probe = subprocess.run(
        [str(MACE_VENV_PYTHON), "-c", "import mace"], capture_output=True, env={**os.environ, "PYTHONPATH": ""}, check=False
    )
    return probe.returncode == 0


# --------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------


def markdown(rows: list[dict]) -> str:
    header = "| model | system | atoms | parameters | ms/step | steps/s | atom-steps/s |\n|---|---|---|---|---|---|---|\n"
    lines = [
        f"| {row['model']} | {row['system']} | {row['n_atoms']} | {row['parameters']:,} | {row['ms_per_step']:.1f} | "
        f"{row['steps_per_s']:.2f} | {row['atom_steps_per_s']:.0f} |"
        for row in rows
    ]
    return header + "\n".join(lines) + "\n"


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--backbones", nargs="+", help="default: every backbone in mlip/configs/model/backbone")
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--skin", type=float, default=0.5, help="MLIPCalculator neighbour-list skin, Å")
    parser.add_argument("--seconds", type=float, default=3.0, help="time budget per (model, system)")
    parser.add_argument("--min-steps", type=int, default=3)
    parser.add_argument("--no-mace-torch", action="store_true")
    parser.add_argument(
        "--compile", action="store_true",
        help="MLIPCalculator(compile=True) for the mlip backbones (those that fail to compile fall back to eager and are marked)",
    )
    parser.add_argument(
        "--retain-freed-memory", action="store_true",
        help="mlip.performance.retain_freed_memory() in every benchmark process, mace-torch included",
    )
    parser.add_argument("--json", help="also write the rows as JSON")
    parser.add_argument("--mace-torch-worker", metavar="SYSTEM", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    if arguments.mace_torch_worker:
        result = mace_torch_worker(
            arguments.mace_torch_worker, arguments.dtype, arguments.seconds, arguments.min_steps, arguments.threads,
            arguments.retain_freed_memory,
        )
        print(json.dumps(result))
        return 0

    import torch

    torch.set_num_threads(arguments.threads)
    if arguments.retain_freed_memory and not retain_freed_memory():
        raise SystemExit("--retain-freed-memory could not be applied (needs Linux with glibc)")
    backbones = available_backbones()
    if arguments.backbones:
        backbones = {name: backbones[name] for name in arguments.backbones}
    with_mace_torch = not arguments.no_mace_torch and mace_torch_available()
    rows = []
    for system in arguments.systems:
        for name, config in backbones.items():
            atoms = build_system(system)
            atoms.calc = mlip_calculator(config, arguments.dtype, arguments.skin, arguments.compile)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="MLIPCalculator: torch.compile failed")
                result = time_md(atoms, arguments.seconds, arguments.min_steps)
            model = f"mlip {name}" + (" (compiled)" if atoms.calc.compiled else "")
            rows.append({"model": model, "system": system, "parameters": parameter_count(atoms.calc), **result})
            print(markdown(rows[-1:]).splitlines()[-1], flush=True)
        if with_mace_torch:
            result = run_mace_torch(system, arguments)
            if result is not None:
                rows.append({"model": "mace-torch", "system": system, **result})
                print(markdown(rows[-1:]).splitlines()[-1], flush=True)
    print(
        f"\nCPU, torch threads {arguments.threads}, {arguments.dtype}, skin {arguments.skin} Å, cutoff {CUTOFF} Å, "
        f"retain freed memory: {arguments.retain_freed_memory}\n"
    )
    print(markdown(rows))
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
