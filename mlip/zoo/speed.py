"""The `speed` task: MD throughput in atom-steps per second at three system sizes.

The logic of scripts/bench_md.py: velocities at 300 K, ASE VelocityVerlet (0.5 fs), two warm-up
steps (first neighbour list, lazy initialisation), then whole MD steps (neighbour list, forward,
backward, integrator) until ``speed_seconds`` have passed, at least three. The systems: the
largest starting molecule and the first starting crystal repeated to at least
``speed_crystal_atoms`` atoms (64 and 216 by default), so that they hold only elements of the
test set. Headline: atom-steps/s of the molecule and of the largest crystal.
"""

from __future__ import annotations

import math
import time

import numpy as np
from ase import Atoms, units

from mlip.zoo.loop import measure_each
from mlip.zoo.results import TaskContext, TaskResult, plot_file_name, pyplot

WARM_UP_STEPS = 2
MIN_STEPS = 3


def speed_systems(context: TaskContext, model) -> list[tuple[str, Atoms]]:
    """(label, Atoms) of the speed systems of the kinds ``model`` runs on."""
    systems = []
    kinds = model.kinds()
    if context.molecules and "molecule" in kinds:
        molecule = max(context.molecules, key=len)
        systems.append(("molecule", molecule.copy()))
    if context.crystals and "crystal" in kinds:
        crystal = context.crystals[0]
        for target in context.options.speed_crystal_atoms:
            repeat = max(1, math.ceil((target / len(crystal)) ** (1.0 / 3.0) - 1e-9))
            systems.append(("crystal", crystal.repeat((repeat, repeat, repeat))))
    return [(f"{kind}-{len(atoms)} ({atoms.info['name']})", atoms) for kind, atoms in systems]


def time_md(atoms: Atoms, seconds: float, timestep_fs: float = 0.5, seed: int = 0) -> dict:
    """Steps/s and atom-steps/s of VelocityVerlet with the calculator attached to ``atoms``."""
    from ase.md.verlet import VelocityVerlet

    from mlip.md import initialise_velocities

    initialise_velocities(atoms, 300.0, seed)
    dynamics = VelocityVerlet(atoms, timestep=timestep_fs * units.fs)
    dynamics.run(WARM_UP_STEPS)
    steps, start = 0, time.perf_counter()
    while steps < MIN_STEPS or time.perf_counter() - start < seconds:
        dynamics.run(1)
        steps += 1
    elapsed = time.perf_counter() - start
    return {"steps": steps, "ms_per_step": 1000.0 * elapsed / steps, "atom_steps_per_s": len(atoms) * steps / elapsed}


def run(model, context: TaskContext, reference: dict | None = None) -> TaskResult:
    result = TaskResult(task="speed", model=model.name)

    def measure(atoms, row):
        row.update(time_md(atoms, context.options.speed_seconds, seed=context.options.seed))

    work = [({"system": label, "atoms": len(atoms)}, atoms) for label, atoms in speed_systems(context, model)]
    timed = measure_each(result, model, context, work, measure, empty="no system of the kinds this model runs on")
    if not timed:
        return result
    for kind in ("molecule", "crystal"):
        rows = [row for row in timed if row["system"].startswith(kind)]
        if rows:
            largest = max(rows, key=lambda row: row["atoms"])
            result.summary[f"{kind} MD (atom-steps/s)"] = largest["atom_steps_per_s"]
    result.data = {row["system"]: row["atom_steps_per_s"] for row in timed}
    return result


def plot(result: TaskResult, reference: dict | None, path):
    timed = [row for row in result.rows if "atom_steps_per_s" in row]
    if not timed:
        return None
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(4.5, 0.35 * len(timed) + 1.0))
    positions = np.arange(len(timed))
    axis.barh(positions, [row["atom_steps_per_s"] for row in timed], color="C0")
    axis.set_yticks(positions, [row["system"] for row in timed], fontsize=7)
    axis.invert_yaxis()
    axis.set_xscale("log")
    axis.set_xlabel("MD atom-steps/s", fontsize=8)
    axis.set_title(f"speed: {result.model}", fontsize=9)
    return result.save_plot(figure, path)


def plot_name(model_name: str) -> str:
    return plot_file_name("speed", model_name)


def items(model, context: TaskContext) -> int:
    return len(speed_systems(context, model))
