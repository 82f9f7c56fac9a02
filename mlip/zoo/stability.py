"""The `stability` task: MD from each starting structure, NVE and NVT (`mlip.md.run_md`).

Per structure and ensemble: whether the run stayed stable for ``md_steps`` steps of
``md_timestep_fs`` at ``md_temperature_K`` (velocities drawn at that temperature, NVT: Langevin),
the simulated time to the first instability (`mlip.md.InstabilityDetector`: non-finite numbers,
two atoms closer than 0.5 Å, a bond stretched beyond 2x, temperature above 5000 K, or the
calculator refusing the geometry), the NVE energy drift (meV/atom/ps, slope of a linear fit of
the total energy) and the mean temperature. Headline: the fraction of stable runs and the mean
|NVE drift| of the stable NVE runs. A one-atom structure (a primitive fcc cell) is a reason cell,
not a run: with the centre-of-mass momentum removed nothing moves (give a supercell).
"""

from __future__ import annotations

import numpy as np

from mlip.md import run_md
from mlip.zoo.loop import measure_each
from mlip.zoo.results import TaskContext, TaskResult, mean_or_nan, plot_file_name, pyplot


def work(model, context: TaskContext) -> list[tuple]:
    """(row, start, ensemble) per starting structure and ensemble."""
    return [
        ({"structure": atoms.info["name"], "atoms": len(atoms), "ensemble": ensemble.upper()}, atoms, ensemble)
        for atoms in context.starts(model) for ensemble in context.options.md_ensembles
    ]


def run(model, context: TaskContext, reference: dict | None = None) -> TaskResult:
    options = context.options
    result = TaskResult(task="stability", model=model.name)

    def measure(atoms, row, ensemble):
        if len(atoms) < 2:  # mlip.md removes the centre-of-mass momentum: nothing would move (0/0 velocities)
            raise ValueError("one atom has no thermal motion once the centre-of-mass momentum is removed; "
                             "give a supercell")
        # a calculator error that is no instability (e.g. an SCF failure) raises: the row's note
        report = run_md(atoms, ensemble=ensemble, temperature_K=options.md_temperature_K,
                        timestep_fs=options.md_timestep_fs, n_steps=options.md_steps, seed=options.seed)
        row.update(
            stable=report.stable,
            simulated_ps=report.simulated_time_ps,
            time_to_instability_ps=float("nan") if report.stable else report.simulated_time_ps,
            drift_meV_per_atom_per_ps=report.energy_drift_meV_per_atom_per_ps if ensemble == "nve" else float("nan"),
            mean_temperature_K=report.mean_temperature_K,
        )
        if not report.stable:
            row["note"] = report.instability

    runs = measure_each(result, model, context, work(model, context), measure, empty="no structure to run")
    if not runs:
        return result
    stable_nve = [abs(row["drift_meV_per_atom_per_ps"]) for row in runs if row["stable"] and row["ensemble"] == "NVE"]
    unstable = [row["time_to_instability_ps"] for row in runs if not row["stable"]]
    result.summary = {
        "MD stable": f"{sum(row['stable'] for row in runs)}/{len(runs)}",
        "first instability (ps)": min(unstable) if unstable else float("nan"),
        "NVE |drift| (meV/atom/ps)": mean_or_nan(stable_nve),
    }
    return result


def plot(result: TaskResult, reference: dict | None, path):
    """Simulated time reached per run (red: stopped by an instability)."""
    runs = [row for row in result.rows if "stable" in row]
    if not runs:
        return None
    plt = pyplot()
    labels = [f"{row['structure']} {row['ensemble']}" for row in runs]
    figure, axis = plt.subplots(figsize=(5.0, 0.3 * len(runs) + 1.0))
    colours = ["C2" if row["stable"] else "C3" for row in runs]
    axis.barh(np.arange(len(runs)), [row["simulated_ps"] for row in runs], color=colours)
    axis.set_yticks(np.arange(len(runs)), labels, fontsize=7)
    axis.invert_yaxis()
    axis.set_xlabel("simulated time reached (ps); red: unstable", fontsize=8)
    axis.set_title(f"stability: {result.model}", fontsize=9)
    return result.save_plot(figure, path)


def plot_name(model_name: str) -> str:
    return plot_file_name("stability", model_name)


def items(model, context: TaskContext) -> int:
    return len(work(model, context))
