"""The `vibrations` task: harmonic frequencies of the relaxed molecules (`ase.vibrations`).

Each molecule is relaxed by the model (``relax_optimizer`` to ``vibrations_fmax`` eV/Å), then
its Hessian is taken by central finite differences of the forces (``vibrations_delta`` Å).
Frequencies are in cm⁻¹, imaginary ones written as negative numbers; the 6 (5 for a linear
molecule) frequencies of smallest magnitude, translations and rotations, are dropped. Against the
reference's frequencies of the same molecule, sorted and compared mode by mode: the MAE (cm⁻¹).
Headline: mean MAE against the reference and the number of imaginary modes (below -50 cm⁻¹).
"""

from __future__ import annotations

import tempfile

import numpy as np

from mlip.zoo.relax import relax
from mlip.zoo.loop import measure_each
from mlip.zoo.results import TaskContext, TaskResult, mean_or_nan, plot_file_name, pyplot

IMAGINARY_THRESHOLD = -50.0  # cm⁻¹: more negative than this is a real saddle, not numerical noise
MAX_PLOTTED = 6
BROADENING = 20.0  # cm⁻¹, Lorentzian half width of the plotted spectra


def is_linear(atoms) -> bool:
    if len(atoms) <= 2:
        return True
    moments = np.sort(atoms.get_moments_of_inertia())
    return moments[0] < 1e-3 * moments[-1]


def vibrational_frequencies(atoms, delta: float) -> np.ndarray:
    """Sorted vibrational frequencies (cm⁻¹, imaginary as negative) of ``atoms`` with its calculator."""
    from ase.vibrations import Vibrations

    with tempfile.TemporaryDirectory(prefix="mlip-vib-") as folder:
        vibrations = Vibrations(atoms, name=f"{folder}/vib", delta=delta, nfree=2)
        vibrations.run()
        complex_frequencies = np.asarray(vibrations.get_frequencies())
    real = np.where(np.abs(complex_frequencies.imag) > np.abs(complex_frequencies.real),
                    -np.abs(complex_frequencies.imag), complex_frequencies.real)
    rigid = 5 if is_linear(atoms) else 6
    kept = real[np.argsort(np.abs(real))][rigid:]
    return np.sort(kept)


def work(model, context: TaskContext) -> list[tuple]:
    """(row, start) per starting molecule the model runs on."""
    return [({"structure": atoms.info["name"], "atoms": len(atoms)}, atoms) for atoms in context.starts(model, ("molecule",))]


def run(model, context: TaskContext, reference: dict | None = None) -> TaskResult:
    options = context.options
    result = TaskResult(task="vibrations", model=model.name)
    result.note = context.not_run(model, "molecule")
    if result.note:
        return result

    def measure(atoms, row):
        relaxed = relax(atoms, options.relax_optimizer, options.vibrations_fmax, options.relax_steps)
        frequencies = vibrational_frequencies(atoms, options.vibrations_delta)
        row.update(
            relaxed=relaxed["converged"], modes=len(frequencies),
            imaginary_modes=int(np.count_nonzero(frequencies < IMAGINARY_THRESHOLD)),
            lowest_cm1=float(frequencies[0]) if frequencies.size else float("nan"),
            highest_cm1=float(frequencies[-1]) if frequencies.size else float("nan"),
        )
        notes = []
        if not relaxed["converged"]:
            notes.append(f"relaxation not converged to {options.vibrations_fmax} eV/Å in {options.relax_steps} steps")
        result.data[row["structure"]] = frequencies
        if reference is not None and row["structure"] in reference:
            expected = reference[row["structure"]]
            if len(expected) == len(frequencies):
                row["mae_cm1"] = float(np.mean(np.abs(frequencies - expected)))
                row["max_error_cm1"] = float(np.max(np.abs(frequencies - expected)))
            else:  # e.g. linear for one model, bent for the other: no mode-by-mode pairing
                notes.append(f"{len(frequencies)} modes, the reference {len(expected)}: not compared")
        if notes:
            row["note"] = "; ".join(notes)

    done = measure_each(result, model, context, work(model, context), measure, empty="no molecule")
    if not done:
        return result
    result.summary = {"imaginary modes": sum(row["imaginary_modes"] for row in done)}
    if reference is not None and not model.is_reference:
        result.summary["vib MAE vs ref (cm⁻¹)"] = mean_or_nan(row.get("mae_cm1") for row in done)
    return result


def spectrum(frequencies: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Sum of unit Lorentzians at the (real) frequencies, on ``grid`` (cm⁻¹)."""
    return sum(BROADENING**2 / ((grid - f) ** 2 + BROADENING**2) for f in frequencies if f > 0) + 0.0 * grid


def plot(result: TaskResult, reference: dict | None, path):
    """Broadened stick spectra (unit intensities) per molecule (at most 6), the reference below in black."""
    names = list(result.data)[:MAX_PLOTTED]
    if not names:
        return None
    plt = pyplot()
    figure, axes = plt.subplots(len(names), 1, figsize=(6.0, 1.2 * len(names) + 0.6), squeeze=False, sharex=True)
    top = max(float(np.max(result.data[name], initial=0.0)) for name in names)
    if reference is not None:
        top = max([top] + [float(np.max(reference[name], initial=0.0)) for name in names if name in reference])
    grid = np.linspace(0.0, top * 1.05 + 100.0, 1500)
    for axis, name in zip(axes[:, 0], names):
        axis.plot(grid, spectrum(result.data[name], grid), color="C0", linewidth=1.0, label=result.model)
        if reference is not None and name in reference:
            axis.plot(grid, -spectrum(reference[name], grid), color="black", linewidth=1.0, label="reference (mirrored)")
        axis.set_yticks([])
        axis.set_ylabel(name, fontsize=7, rotation=0, ha="right")
    axes[0][0].legend(fontsize=6, loc="upper left")
    axes[-1][0].set_xlabel("frequency (cm⁻¹)", fontsize=8)
    figure.suptitle(f"vibrations: {result.model}", fontsize=9)
    return result.save_plot(figure, path)


def plot_name(model_name: str) -> str:
    return plot_file_name("vibrations", model_name)


def items(model, context: TaskContext) -> int:
    return len(work(model, context))
