"""What a task returns (`TaskResult`), the settings of all tasks (`ZooOptions`), what they share
(`TaskContext`) and small helpers: error reasons, fresh calculators, atomic PNG writing."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from mlip.files import atomic_path

MAX_REASON = 240  # characters of an error message kept in a table cell


@dataclass
class ZooOptions:
    """Settings of every task (units in the names). The defaults are the `mlip-eval` defaults."""

    max_molecules: int = 4  # starting structures per kind, one per formula
    max_crystals: int = 4
    dimer_points: int = 60
    dimer_min_distance: float = 0.5  # Å
    dimer_max_distance: float | None = None  # Å; None: the model's cutoff (external calculators: 6 Å)
    md_steps: int = 400
    md_timestep_fs: float = 0.5
    md_temperature_K: float = 300.0
    md_ensembles: tuple[str, ...] = ("nve", "nvt")
    relax_optimizer: str = "BFGS"  # or "FIRE"; crystals relax positions and cell (ase.filters.FrechetCellFilter)
    relax_fmax: float = 0.02  # eV/Å
    relax_steps: int = 300
    eos_points: int = 7
    eos_volume_range: float = 0.08  # volumes from (1 - r) V0 to (1 + r) V0
    vibrations_fmax: float = 0.005  # eV/Å, the relaxation before the finite differences
    vibrations_delta: float = 0.01  # Å, finite-difference displacement
    speed_seconds: float = 2.0  # per model and system
    speed_crystal_atoms: tuple[int, ...] = (64, 216)  # supercell sizes of the speed task (plus one molecule)
    seed: int = 0


@dataclass
class TaskContext:
    """What every task of one zoo run sees: the starting structures, the test set, the options and
    the output folder for plots."""

    molecules: list[Atoms]
    crystals: list[Atoms]
    test_structures: list  # mlip.data.structure.Structure, for the errors task
    options: ZooOptions
    out: Path
    elements: list[int] = field(default_factory=list)  # atomic numbers of the test set (the dimers' elements)
    advance: Callable[[], None] = lambda: None  # one item of the current task done (the progress bar)

    def starts(self, model, kinds: tuple[str, ...] = ("molecule", "crystal")) -> list[Atoms]:
        """The starting molecules, then crystals, of ``kinds`` that ``model`` runs on (a reference
        for one kind: that kind only)."""
        runs_on = [kind for kind in kinds if kind in model.kinds()]
        return [atoms for atoms in self.molecules if "molecule" in runs_on] + [
            atoms for atoms in self.crystals if "crystal" in runs_on
        ]

    def not_run(self, model, kind: str) -> str:
        """Why a task for ``kind`` ("molecule" or "crystal") has nothing to do for ``model``, or ''."""
        if kind not in model.kinds():
            return f"not run: the reference for {' and '.join(k + 's' for k in model.kinds())} only"
        if not (self.molecules if kind == "molecule" else self.crystals):
            return "no neutral closed-shell molecules in the test set" if kind == "molecule" else "no crystals in the test set"
        return ""


@dataclass
class TaskResult:
    """One task of one model.

    ``rows``: the task's table, one row per item (structure, element pair, system size) with a
    "note" where that item failed; ``summary``: headline numbers for the summary table;
    ``data``: per item what the reference comparison and plots need; ``note``: why the model
    could not do the task at all (then rows may be empty); ``plots``: PNG files written;
    ``plot_note``: why the plot could not be drawn ('' if it was, or there was nothing to draw).
    """

    task: str
    model: str
    rows: list[dict] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    note: str = ""
    seconds: float = 0.0
    plots: list[Path] = field(default_factory=list)
    plot_note: str = ""

    def save_plot(self, figure, path):
        """Lay out ``figure``, write it to ``path`` (`save_figure`), record it in ``plots``; returns ``path``."""
        figure.tight_layout()
        save_figure(figure, path)
        self.plots.append(path)
        return path


def reason(error: BaseException) -> str:
    """A one-line reason for a table cell: the exception type and the start of its message."""
    message = " ".join(str(error).split()) or repr(error)
    text = f"{type(error).__name__}: {message}"
    return text if len(text) <= MAX_REASON else text[: MAX_REASON - 3] + "..."


def attach(atoms: Atoms, model) -> Atoms:
    """A copy of ``atoms`` with a fresh calculator of ``model``."""
    atoms = atoms.copy()
    atoms.calc = model.make_calculator()
    return atoms


def implements(calculator, name: str) -> bool:
    """Whether an ASE calculator declares the property ``name`` (e.g. "stress")."""
    return name in getattr(calculator, "implemented_properties", ())


def unsupported(model, atoms: Atoms) -> str:
    """A reason if ``model`` lacks an element of ``atoms``, else ''."""
    missing = model.missing_elements(atoms.numbers)
    return f"unsupported elements: {missing}" if missing else ""


def mean_or_nan(values) -> float:
    values = np.asarray([value for value in values if value is not None], dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else float("nan")


def plot_file_name(task: str, model_name: str) -> str:
    """``<task>_<model>.png`` with characters other than letters, digits, '-', '_' and '.' replaced."""
    safe = "".join(character if character.isalnum() or character in "-_." else "_" for character in model_name)
    return f"{task}_{safe}.png"


def save_figure(figure, path: str | os.PathLike, dpi: int = 80) -> Path:
    """Write a matplotlib figure as a PNG through a temporary file (`mlip.files.atomic_path`) and close it."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as temporary:
            figure.savefig(temporary, format="png", dpi=dpi)
    finally:
        plt.close(figure)
    return Path(path)


def pyplot():
    """matplotlib.pyplot with the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
