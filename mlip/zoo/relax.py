"""The `relax` task: relax every starting structure and compare with the reference's relaxation.

Molecules relax their positions, crystals positions and cell together
(`ase.filters.FrechetCellFilter`, which needs the stress: a calculator without it gets a cell
saying so), with ``relax_optimizer`` (BFGS, or FIRE) to ``relax_fmax`` eV/Å within
``relax_steps`` steps. Per structure: converged, steps, final fmax, final energy per atom and, for
crystals, volume per atom (Å³/atom). Against the reference's relaxed structure of the same start:

* ``rmsd_A``: molecules after the best superposition (Kabsch rotation, same atom order);
  crystals on fractional coordinates in the reference's cell, after removing the mean shift;
* ``volume_error_pct``: crystals, 100 (V - V_ref) / V_ref.

Headline: converged fraction, mean RMSD and mean |volume error| against the reference.
"""

from __future__ import annotations

import time

import numpy as np
from ase import Atoms

from mlip.zoo.loop import measure_each, stress_missing
from mlip.zoo.results import TaskContext, TaskResult, mean_or_nan, plot_file_name, pyplot


def optimizer_class(name: str):
    from ase.optimize import BFGS, FIRE

    optimizers = {"BFGS": BFGS, "FIRE": FIRE}
    if name not in optimizers:
        raise ValueError(f"mlip.zoo: relax_optimizer must be one of {sorted(optimizers)}, got {name!r}")
    return optimizers[name]


def relax(atoms: Atoms, optimizer: str, fmax: float, steps: int) -> dict:
    """Relax ``atoms`` (with its calculator) in place; crystals with their cell. Returns converged,
    steps, final fmax (eV/Å) and seconds."""
    from ase.filters import FrechetCellFilter

    periodic = bool(atoms.pbc.any())
    missing = stress_missing(atoms.calc, atoms)
    if missing:
        raise NotImplementedError(f"{missing}, the cell cannot relax")
    target = FrechetCellFilter(atoms) if periodic else atoms
    dynamics = optimizer_class(optimizer)(target, logfile=None)
    start = time.perf_counter()
    converged = bool(dynamics.run(fmax=fmax, steps=steps))
    return {
        "converged": converged,
        "steps": int(dynamics.nsteps),
        "final_fmax_eV_per_A": float(np.sqrt((target.get_forces() ** 2).sum(axis=1)).max()),
        "seconds": time.perf_counter() - start,
    }


def kabsch_rmsd(positions: np.ndarray, reference: np.ndarray) -> float:
    """RMSD (Å) of two conformations of the same atoms after centring and the best proper rotation."""
    a = positions - positions.mean(axis=0)
    b = reference - reference.mean(axis=0)
    u, _, vt = np.linalg.svd(a.T @ b)
    sign = np.sign(np.linalg.det(u @ vt)) or 1.0
    rotation = u @ np.diag([1.0, 1.0, sign]) @ vt
    return float(np.sqrt(np.mean(np.sum((a @ rotation - b) ** 2, axis=1))))


def periodic_rmsd(atoms: Atoms, reference: Atoms) -> float:
    """RMSD (Å) of fractional coordinates expressed in the reference's cell, minimum image, mean shift removed."""
    difference = atoms.get_scaled_positions(wrap=False) - reference.get_scaled_positions(wrap=False)
    difference -= np.round(difference)
    difference -= difference.mean(axis=0)
    difference -= np.round(difference)
    cartesian = difference @ reference.cell.array
    return float(np.sqrt(np.mean(np.sum(cartesian**2, axis=1))))


def compare(atoms: Atoms, reference: Atoms) -> dict:
    if len(atoms) != len(reference) or (atoms.numbers != reference.numbers).any():
        return {}
    if atoms.pbc.any():
        return {
            "rmsd_A": periodic_rmsd(atoms, reference),
            "volume_error_pct": 100.0 * (atoms.get_volume() - reference.get_volume()) / reference.get_volume(),
        }
    return {"rmsd_A": kabsch_rmsd(atoms.positions, reference.positions)}


def work(model, context: TaskContext) -> list[tuple]:
    """(row, start) per starting structure."""
    return [({"structure": atoms.info["name"], "atoms": len(atoms)}, atoms) for atoms in context.starts(model)]


def run(model, context: TaskContext, reference: dict | None = None) -> TaskResult:
    options = context.options
    result = TaskResult(task="relax", model=model.name)

    def measure(atoms, row):
        row.update(relax(atoms, options.relax_optimizer, options.relax_fmax, options.relax_steps))
        row["energy_per_atom_eV"] = float(atoms.get_potential_energy()) / len(atoms)
        if atoms.pbc.any():
            row["volume_per_atom_A3"] = atoms.get_volume() / len(atoms)
        relaxed = atoms.copy()
        relaxed.calc = None
        result.data[row["structure"]] = relaxed
        if reference is not None and row["structure"] in reference:
            row.update(compare(relaxed, reference[row["structure"]]))

    done = measure_each(result, model, context, work(model, context), measure, needs_stress=True,
                        empty="no structure to relax")
    if not done:
        return result
    result.summary = {"relaxed": f"{sum(row['converged'] for row in done)}/{len(result.rows)}"}
    if reference is not None and not model.is_reference:
        result.summary["relax RMSD vs ref (Å)"] = mean_or_nan(row.get("rmsd_A") for row in done)
        if any("volume_error_pct" in row for row in done):
            result.summary["relax |ΔV| vs ref (%)"] = mean_or_nan(abs(row["volume_error_pct"]) for row in done if "volume_error_pct" in row)
    return result


def plot(result: TaskResult, reference: dict | None, path):
    """Optimizer steps per structure (hatched: not converged) and, with a reference, the RMSD."""
    done = [row for row in result.rows if "converged" in row]
    if not done:
        return None
    plt = pyplot()
    with_rmsd = any("rmsd_A" in row for row in done)
    figure, axes = plt.subplots(1, 2 if with_rmsd else 1, figsize=(7.0 if with_rmsd else 4.0, 0.3 * len(done) + 1.2), squeeze=False)
    positions = np.arange(len(done))
    labels = [row["structure"] for row in done]
    axes[0][0].barh(positions, [row["steps"] for row in done], color=["C0" if row["converged"] else "C3" for row in done])
    axes[0][0].set_yticks(positions, labels, fontsize=7)
    axes[0][0].invert_yaxis()
    axes[0][0].set_xlabel("optimizer steps (red: not converged)", fontsize=8)
    if with_rmsd:
        axes[0][1].barh(positions, [row.get("rmsd_A", np.nan) for row in done], color="C1")
        axes[0][1].set_yticks(positions, labels, fontsize=7)
        axes[0][1].invert_yaxis()
        axes[0][1].set_xlabel("RMSD to the reference's relaxed structure (Å)", fontsize=8)
    figure.suptitle(f"relax: {result.model}", fontsize=9)
    return result.save_plot(figure, path)


def plot_name(model_name: str) -> str:
    return plot_file_name("relax", model_name)


def items(model, context: TaskContext) -> int:
    return len(work(model, context))
