"""Molecular dynamics with a trained potential: run, watch for blow-ups, report drift and speed.

Used by `mlip-md` (mlip/cli/md.py), scripts/bench_md.py and the quickstart notebook. The MD
integrators are ASE's (VelocityVerlet for NVE, Langevin for NVT); this module adds what a user
needs to judge a potential in MD:

* energy drift: slope of a linear fit of the total energy against time, meV/atom/ps;
* mean temperature, K;
* speed: steps/s and atom-steps/s (wall clock of the integrator, including force calls);
* instability flags: non-finite numbers, two atoms closer than `min_distance` Å, a bond (from
  the starting geometry) stretched beyond `max_bond_stretch` × its initial length, or a
  temperature above `max_temperature_K`. The run stops at the first check that fails. Between
  checks, an `MLIPCalculator` refusing a geometry (NaN/inf positions or cell, coincident atoms:
  `MLIPGeometryError`) or returning NaN/inf (`MLIPPredictionError`) stops the run the same way,
  at the step where it happened; the report names it instead of raising.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
from ase import Atoms, units
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, ZeroRotation
from ase.md.verlet import VelocityVerlet
from ase.neighborlist import natural_cutoffs

try:  # ASE >= 3.29 renamed MaxwellBoltzmannDistribution
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:  # pragma: no cover - older ASE
    from ase.md.velocitydistribution import (
        MaxwellBoltzmannDistribution as thermalize_momenta,
    )

from mlip.calculator import MLIPGeometryError, MLIPPredictionError

ENSEMBLES = ("nve", "nvt")
COLLAPSE_ERRORS = (MLIPGeometryError, MLIPPredictionError)  # calculator errors that mean "the run blew up"


@dataclass
class MDReport:
    """Summary of one MD run. Drift and temperature cover the steps actually run."""

    ensemble: str
    n_atoms: int
    n_steps_requested: int
    n_steps_run: int
    timestep_fs: float
    simulated_time_ps: float
    energy_drift_meV_per_atom_per_ps: float  # slope of E_total(t), linear least squares
    max_energy_deviation_meV_per_atom: float  # max |E_total(t) - E_total(0)|
    potential_energy_std_meV_per_atom: float  # fluctuation of E_pot, the scale to judge the two above against
    mean_temperature_K: float
    steps_per_second: float
    atom_steps_per_second: float
    stable: bool
    instability: str  # "" when stable, else what went wrong and at which step

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        status = "stable" if self.stable else f"UNSTABLE: {self.instability}"
        return (
            f"{self.ensemble.upper()} {self.n_atoms} atoms, {self.n_steps_run}/{self.n_steps_requested} steps "
            f"of {self.timestep_fs:g} fs ({self.simulated_time_ps:.4g} ps): "
            f"drift {self.energy_drift_meV_per_atom_per_ps:+.4g} meV/atom/ps, "
            f"max |dE| {self.max_energy_deviation_meV_per_atom:.4g} meV/atom "
            f"(E_pot std {self.potential_energy_std_meV_per_atom:.4g}), "
            f"<T> {self.mean_temperature_K:.1f} K, {self.steps_per_second:.1f} steps/s "
            f"({self.atom_steps_per_second:.3g} atom-steps/s), {status}"
        )


def energy_drift(times_ps: np.ndarray, total_energies_eV: np.ndarray, n_atoms: int) -> float:
    """Slope of a linear least-squares fit of the total energy against time, in meV/atom/ps."""
    times_ps = np.asarray(times_ps, dtype=np.float64)
    total_energies_eV = np.asarray(total_energies_eV, dtype=np.float64)
    if times_ps.size < 2:
        return float("nan")
    slope_eV_per_ps = np.polyfit(times_ps, total_energies_eV, 1)[0]
    return float(slope_eV_per_ps * 1000.0 / n_atoms)


@dataclass
class InstabilityCriteria:
    """Thresholds for calling a trajectory unstable."""

    min_distance: float = 0.5  # Å: any two atoms closer than this
    max_bond_stretch: float = 2.0  # a starting bond longer than this multiple of its initial length
    max_temperature_K: float = 5000.0  # instantaneous kinetic temperature


class InstabilityDetector:
    """Checks a configuration against `InstabilityCriteria`; bonds are taken from the start geometry.

    A bond is a pair closer than 1.2 × the sum of ASE's natural (covalent) radii in the first
    configuration. Its vector is followed from check to check: in a periodic cell the lattice
    translation that keeps it closest to its previous value is chosen, so atoms wrapped back into
    the cell (or crossing it) between checks do not look like broken bonds.
    """

    def __init__(self, atoms: Atoms, criteria: InstabilityCriteria | None = None):
        self.criteria = criteria or InstabilityCriteria()
        self.bond_i, self.bond_j, shifts, self.initial_bond_lengths = self._find_bonds(atoms)
        self.bond_vectors = atoms.positions[self.bond_j] - atoms.positions[self.bond_i] + shifts @ atoms.cell.array

    @staticmethod
    def _pairs(atoms: Atoms, cutoff: float):
        """Pairs (i, j, integer shift, distance) closer than `cutoff` Å, each pair once (i < j or images)."""
        import vesin

        box = atoms.cell.array if atoms.pbc.any() else np.zeros((3, 3))
        i, j, shifts, distances = vesin.NeighborList(cutoff=cutoff, full_list=False).compute(
            points=atoms.positions, box=box, periodic=atoms.pbc.tolist(), quantities="ijSd"
        )
        return i, j, shifts, distances

    def _find_bonds(self, atoms: Atoms):
        radii = np.asarray(natural_cutoffs(atoms, mult=1.2))
        if len(atoms) < 2:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, np.zeros((0, 3)), np.zeros(0)
        i, j, shifts, distances = self._pairs(atoms, cutoff=2.0 * radii.max())
        bonded = distances < radii[i] + radii[j]
        return i[bonded], j[bonded], shifts[bonded].astype(np.float64), distances[bonded]

    def _bond_lengths(self, atoms: Atoms) -> np.ndarray:
        """Current bond lengths, Å, with each bond vector continued from the previous check."""
        vectors = atoms.positions[self.bond_j] - atoms.positions[self.bond_i]  # (B, 3)
        if atoms.pbc.any():
            cell = atoms.cell.array
            jump = (self.bond_vectors - vectors) @ np.linalg.inv(cell)  # (B, 3) fractional
            lattice_steps = np.where(atoms.pbc, np.round(jump), 0.0)
            vectors = vectors + lattice_steps @ cell
        self.bond_vectors = vectors
        return np.linalg.norm(vectors, axis=1)

    def check(self, atoms: Atoms, energy: float | None = None) -> str:
        """'' if the configuration looks physical, else a short description of what is wrong."""
        criteria = self.criteria
        if not np.all(np.isfinite(atoms.positions)) or not np.all(np.isfinite(atoms.get_momenta())):
            return "non-finite positions or velocities"
        if energy is not None and not np.isfinite(energy):
            return "non-finite energy"
        forces = atoms.calc.results.get("forces") if atoms.calc is not None else None  # cached: no new calculation
        if forces is not None and not np.isfinite(forces).all():
            bad = np.flatnonzero(~np.isfinite(forces).all(axis=1))
            return f"non-finite forces on atom(s) {', '.join(map(str, bad[:5]))}" + (" ..." if bad.size > 5 else "")
        temperature = atoms.get_temperature()
        if temperature > criteria.max_temperature_K:
            return f"temperature {temperature:.0f} K above {criteria.max_temperature_K:.0f} K"
        if len(atoms) > 1:
            i, j, _, distances = self._pairs(atoms, cutoff=criteria.min_distance)
            if distances.size:
                k = int(np.argmin(distances))
                return f"atoms {i[k]} and {j[k]} only {distances[k]:.3f} Å apart (< {criteria.min_distance} Å)"
        if self.bond_i.size:
            stretch = self._bond_lengths(atoms) / self.initial_bond_lengths
            k = int(np.argmax(stretch))
            if stretch[k] > criteria.max_bond_stretch:
                return (
                    f"bond {self.bond_i[k]}-{self.bond_j[k]} stretched to {stretch[k]:.2f}x its initial length "
                    f"(> {criteria.max_bond_stretch}x)"
                )
        return ""


def initialise_velocities(atoms: Atoms, temperature_K: float, seed: int = 0) -> None:
    """Maxwell-Boltzmann velocities at `temperature_K`, without centre-of-mass motion (or rotation for molecules)."""
    thermalize_momenta(atoms, temperature_K=temperature_K, rng=np.random.default_rng(seed))
    Stationary(atoms)
    if not atoms.pbc.any():
        ZeroRotation(atoms)


def make_integrator(atoms: Atoms, ensemble: str, timestep_fs: float, temperature_K: float, friction_per_fs: float, seed: int):
    """ASE integrator: VelocityVerlet (NVE) or Langevin (NVT, friction in 1/fs)."""
    ensemble = ensemble.lower()
    if ensemble == "nve":
        return VelocityVerlet(atoms, timestep=timestep_fs * units.fs)
    if ensemble == "nvt":
        return Langevin(
            atoms,
            timestep=timestep_fs * units.fs,
            temperature_K=temperature_K,
            friction=friction_per_fs / units.fs,
            fixcm=False,
            rng=np.random.default_rng(seed),
        )
    raise ValueError(f"unknown ensemble {ensemble!r}; choose one of {ENSEMBLES}")


def run_md(
    atoms: Atoms,
    ensemble: str = "nve",
    temperature_K: float = 300.0,
    timestep_fs: float = 0.5,
    n_steps: int = 1000,
    friction_per_fs: float = 0.01,
    check_interval: int = 10,
    trajectory: str | None = None,
    trajectory_interval: int = 10,
    criteria: InstabilityCriteria | None = None,
    seed: int = 0,
    initialise: bool = True,
) -> MDReport:
    """Run MD on `atoms` (which must carry a calculator) and return an `MDReport`.

    Velocities are drawn at `temperature_K` unless `initialise` is False. Every `check_interval`
    steps the total energy and temperature are recorded and the configuration is checked for
    instability; the run stops at the first failed check, or at the step where the calculator
    raises `MLIPGeometryError` / `MLIPPredictionError` (reported, not raised). `trajectory` (an ASE .traj path) gets a
    frame every `trajectory_interval` steps.
    """
    if atoms.calc is None:
        raise ValueError("run_md needs atoms with a calculator attached (atoms.calc = MLIPCalculator(...))")
    if initialise:
        initialise_velocities(atoms, temperature_K, seed)
    detector = InstabilityDetector(atoms, criteria)
    dynamics = make_integrator(atoms, ensemble, timestep_fs, temperature_K, friction_per_fs, seed)
    writer = None
    if trajectory is not None:
        from ase.io.trajectory import Trajectory

        writer = Trajectory(trajectory, "w", atoms)
        dynamics.attach(writer.write, interval=trajectory_interval)

    times_ps, potential_energies, total_energies, temperatures = [], [], [], []

    def record(step: int) -> float:
        potential_energy = atoms.get_potential_energy()
        energy = potential_energy + atoms.get_kinetic_energy()
        times_ps.append(step * timestep_fs / 1000.0)
        potential_energies.append(potential_energy)
        total_energies.append(energy)
        temperatures.append(atoms.get_temperature())
        return energy

    def check(step: int) -> str:
        """'' if the configuration after `step` steps is fine, else what is wrong and the step."""
        try:
            problem = detector.check(atoms, record(step))
        except COLLAPSE_ERRORS as error:
            problem = str(error)
        return f"{problem} (at step {step})" if problem else ""

    instability = check(0)
    steps_run = 0
    integrate_seconds = 0.0
    while not instability and steps_run < n_steps:
        chunk = min(check_interval, n_steps - steps_run)
        start = time.perf_counter()
        first_step = dynamics.nsteps
        try:
            dynamics.run(chunk)
        except COLLAPSE_ERRORS as error:
            instability = str(error)
        integrate_seconds += time.perf_counter() - start
        steps_run += dynamics.nsteps - first_step  # steps completed (all of the chunk unless it failed)
        if instability:  # the force call of the step after the last completed one refused its positions
            instability = f"{instability} (at step {steps_run + 1})"
        else:
            instability = check(steps_run)
    if writer is not None:
        writer.close()

    n_atoms = len(atoms)
    energies = np.asarray(total_energies, dtype=np.float64)
    finite = np.isfinite(energies)
    finite_energies = energies[finite]
    steps_per_second = steps_run / integrate_seconds if integrate_seconds > 0 else float("nan")
    return MDReport(
        ensemble=ensemble.lower(),
        n_atoms=n_atoms,
        n_steps_requested=n_steps,
        n_steps_run=steps_run,
        timestep_fs=timestep_fs,
        simulated_time_ps=steps_run * timestep_fs / 1000.0,
        energy_drift_meV_per_atom_per_ps=energy_drift(np.asarray(times_ps)[finite], energies[finite], n_atoms),
        max_energy_deviation_meV_per_atom=(
            float(np.max(np.abs(finite_energies - finite_energies[0])) * 1000.0 / n_atoms) if finite_energies.size else float("nan")
        ),
        potential_energy_std_meV_per_atom=(
            float(np.std(np.asarray(potential_energies)[finite]) * 1000.0 / n_atoms) if finite_energies.size else float("nan")
        ),
        mean_temperature_K=float(np.mean(np.asarray(temperatures)[finite])) if finite_energies.size else float("nan"),
        steps_per_second=steps_per_second,
        atom_steps_per_second=steps_per_second * n_atoms,
        stable=not instability,
        instability=instability,
    )
