"""Relaxation benchmark: steps, wall time and final fmax of ASE optimizers driven by an mlip model.

Starting points come from the shipped sample data: the first frame of each neutral
closed-shell molecule species in mlip/sample_data/molecules.h5, rattled by `--rattle` Å, and the first frame
of each crystal in mlip/sample_data/crystals.h5, rattled and given a random strain of `--strain` (relaxed
together with the cell through `ase.filters.FrechetCellFilter`). Every optimizer starts from the
same geometries. fmax is the largest atomic force norm, eV/Å (for crystals, of the filter, so
the cell's virial enters too).

    python scripts/bench_relax.py runs/sample/best_model.pt --optimizers BFGS FIRE
"""

from __future__ import annotations

import os

# NumPy/SciPy's BLAS on small matrices (FrechetCellFilter's matrix exponential, BFGS updates) is
# much slower with several threads on a busy machine; set before NumPy is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def starting_structures(kind: str, count: int, rattle: float, strain: float, seed: int) -> list:
    """Distinct species (molecules) or materials (crystals) from the sample data, perturbed."""
    from mlip.data.reader import StructureReader

    rng = np.random.default_rng(seed)
    path = REPO / "mlip" / "sample_data" / ("molecules.h5" if kind == "molecule" else "crystals.h5")
    reader = StructureReader(path)
    chosen, seen = [], set()
    for index in range(len(reader)):
        structure = reader.read(index)
        species = structure.id.split("/")[0] if kind == "molecule" else structure.subset
        if species in seen or (kind == "molecule" and (structure.charge != 0 or structure.spin != 1 or structure.n_atoms < 3)):
            continue
        seen.add(species)
        atoms = structure.to_atoms()
        atoms.calc = None
        atoms.info["name"] = species
        if kind == "crystal":
            deformation = np.eye(3) + rng.normal(scale=strain, size=(3, 3))
            atoms.set_cell(atoms.cell.array @ (0.5 * (deformation + deformation.T)), scale_atoms=True)
        atoms.positions += rng.normal(scale=rattle, size=atoms.positions.shape)
        chosen.append(atoms)
        if len(chosen) == count:
            break
    return chosen


def relax(atoms, calculator, optimizer_name: str, fmax: float, max_steps: int) -> dict:
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS, FIRE, LBFGS

    optimizers = {"BFGS": BFGS, "FIRE": FIRE, "LBFGS": LBFGS}
    atoms = atoms.copy()
    atoms.calc = calculator
    target = FrechetCellFilter(atoms) if atoms.pbc.any() else atoms
    optimizer = optimizers[optimizer_name](target, logfile=None)
    start = time.perf_counter()
    converged = optimizer.run(fmax=fmax, steps=max_steps)
    elapsed = time.perf_counter() - start
    final_fmax = float(np.sqrt((target.get_forces() ** 2).sum(axis=1)).max())
    return {
        "name": atoms.info["name"], "n_atoms": len(atoms), "optimizer": optimizer_name,
        "steps": int(optimizer.nsteps), "seconds": elapsed, "final_fmax": final_fmax, "converged": bool(converged),
    }


def summary_rows(results: list[dict]) -> list[dict]:
    rows = []
    groups = sorted({(result["kind"], result["optimizer"]) for result in results})
    for kind, optimizer in groups:
        group = [result for result in results if result["kind"] == kind and result["optimizer"] == optimizer]
        rows.append({
            "kind": kind, "optimizer": optimizer, "structures": len(group),
            "converged": sum(result["converged"] for result in group),
            "median_steps": float(np.median([result["steps"] for result in group])),
            "max_steps": max(result["steps"] for result in group),
            "mean_seconds": float(np.mean([result["seconds"] for result in group])),
            "ms_per_step": 1000.0 * sum(result["seconds"] for result in group) / max(1, sum(result["steps"] for result in group)),
            "max_final_fmax": max(result["final_fmax"] for result in group),
        })
    return rows


def markdown(rows: list[dict], fmax: float, max_steps: int) -> str:
    lines = [
        (
            f"| structures | optimizer | converged (fmax < {fmax} eV/Å, <= {max_steps} steps) | median steps | "
            "max steps | mean time (s) | ms/step | largest final fmax (eV/Å) |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        name = "molecules" if row["kind"] == "molecule" else "crystals (FrechetCellFilter)"
        lines.append(
            f"| {name} | {row['optimizer']} | {row['converged']}/{row['structures']} | {row['median_steps']:.0f} | "
            f"{row['max_steps']} | {row['mean_seconds']:.2f} | {row['ms_per_step']:.1f} | {row['max_final_fmax']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="exported model (mlip.load)")
    parser.add_argument("--optimizers", nargs="+", default=["BFGS", "FIRE"], choices=["BFGS", "FIRE", "LBFGS"])
    parser.add_argument("--molecules", type=int, default=10, help="how many molecule species")
    parser.add_argument("--crystals", type=int, default=6, help="how many crystal materials")
    parser.add_argument("--rattle", type=float, default=0.1, help="Å, Gaussian displacement per coordinate")
    parser.add_argument("--strain", type=float, default=0.02, help="std of the random symmetric crystal strain")
    parser.add_argument("--fmax", type=float, default=0.05, help="eV/Å")
    parser.add_argument("--max-steps", type=int, default=300)
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write per-structure results as JSON")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    import torch

    from mlip.calculator import MLIPCalculator

    torch.set_num_threads(arguments.threads)
    calculator = MLIPCalculator(arguments.model, dtype=arguments.dtype)
    starts = {
        "molecule": starting_structures("molecule", arguments.molecules, arguments.rattle, arguments.strain, arguments.seed),
        "crystal": starting_structures("crystal", arguments.crystals, arguments.rattle / 2, arguments.strain, arguments.seed),
    }
    results = []
    for kind, structures in starts.items():
        for optimizer in arguments.optimizers:
            for atoms in structures:
                result = relax(atoms, calculator, optimizer, arguments.fmax, arguments.max_steps)
                results.append({"kind": kind, **result})
                print(f"{kind:8s} {optimizer:5s} {result['name']:12s} {result['steps']:4d} steps "
                      f"{result['seconds']:6.2f} s fmax {result['final_fmax']:.3f}", flush=True)
    print(f"\nmodel {arguments.model}, CPU, torch threads {arguments.threads}, {arguments.dtype}\n")
    print(markdown(summary_rows(results), arguments.fmax, arguments.max_steps))
    if arguments.json:
        Path(arguments.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
