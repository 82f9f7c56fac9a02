"""MD with a trained potential: energy conservation, instability detection, and the mlip-md CLI.

The `trained_model` fixture (tests/conftest.py) trains a tiny MACE model on the shipped sample
data through the real training pipeline, once per test session; test_eval shares it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import molecule
from train_helpers import SAMPLE_DATA

from mlip.calculator import MLIPCalculator
from mlip.data.reader import StructureReader
from mlip.md import InstabilityCriteria, InstabilityDetector, energy_drift, run_md


def first_neutral_molecule():
    reader = StructureReader(SAMPLE_DATA[0])
    for index in range(len(reader)):
        structure = reader.read(index)
        if structure.charge == 0 and structure.spin == 1 and structure.n_atoms >= 5:
            atoms = structure.to_atoms()
            atoms.calc = None
            return atoms
    raise AssertionError("no neutral closed-shell molecule with >= 5 atoms in the sample data")


def test_energy_drift_is_the_slope_per_atom():
    times = np.linspace(0.0, 2.0, 21)  # ps
    energies = -100.0 + 0.004 * times + 1e-4 * np.sin(40 * times)  # eV, 4 meV/ps over 2 atoms
    assert energy_drift(times, energies, n_atoms=2) == pytest.approx(2.0, abs=0.05)


def test_nve_with_a_trained_model_conserves_energy(trained_model):
    """Velocity Verlet at 300 K on a sample molecule, float64, 0.05 ps with dt = 0.5 fs and 0.25 fs.

    With forces that are the exact gradient of a smooth energy, Verlet's total energy only
    fluctuates, by an amount that scales as dt². So: the largest deviation of the total energy
    is below 5 % of the potential energy's fluctuation (the energy it exchanges with the kinetic
    energy), halving dt shrinks it about 4x (we ask for > 2.5x), and the drift at 0.25 fs is below
    1 meV/atom/ps. Forces inconsistent with the energy, or a rough surface, fail all three.
    """
    deviations = {}
    for timestep_fs in (0.5, 0.25):
        atoms = first_neutral_molecule()
        atoms.calc = MLIPCalculator(trained_model, dtype="float64")
        n_steps = round(50 / timestep_fs)
        report = run_md(atoms, ensemble="nve", temperature_K=300.0, timestep_fs=timestep_fs, n_steps=n_steps, check_interval=5)
        assert report.stable, report.instability
        assert report.potential_energy_std_meV_per_atom > 1.0  # the molecule really moves
        if timestep_fs == 0.25:  # at 0.5 fs Verlet's bounded fluctuation (~0.2 meV/atom) over 0.05 ps biases a fitted slope
            assert abs(report.energy_drift_meV_per_atom_per_ps) < 1.0, report.summary()
        assert atoms.calc.neighbour_list_builds < n_steps // 5  # the skin list is reused across steps
        deviations[timestep_fs] = report.max_energy_deviation_meV_per_atom
        if timestep_fs == 0.5:
            assert deviations[0.5] < 0.05 * report.potential_energy_std_meV_per_atom, report.summary()
    assert deviations[0.5] > 2.5 * deviations[0.25], deviations


def test_nvt_holds_the_temperature(trained_model):
    atoms = first_neutral_molecule()
    atoms.calc = MLIPCalculator(trained_model)
    report = run_md(atoms, ensemble="nvt", temperature_K=300.0, timestep_fs=0.5, n_steps=200, friction_per_fs=0.05)
    assert report.stable, report.instability
    assert 150.0 < report.mean_temperature_K < 600.0  # a 5-atom molecule's temperature fluctuates a lot


def test_instability_detector_flags_collapse_stretch_heat_and_nan():
    atoms = molecule("CH3OH")
    detector = InstabilityDetector(atoms, InstabilityCriteria(min_distance=0.5, max_bond_stretch=2.0, max_temperature_K=5000))
    assert detector.check(atoms) == ""
    collapsed = atoms.copy()
    collapsed.positions[1] = collapsed.positions[0] + [0.3, 0.0, 0.0]
    assert "apart" in detector.check(collapsed)
    stretched = atoms.copy()
    stretched.positions[0] += [3.0, 0.0, 0.0]  # C pulled 3 Å away from its bonded neighbours
    assert "stretched" in detector.check(stretched)
    hot = atoms.copy()
    hot.set_momenta(np.full((len(hot), 3), 1.0))
    assert "temperature" in detector.check(hot)
    broken = atoms.copy()
    broken.positions[2, 1] = np.nan
    assert "non-finite" in detector.check(broken)


def test_run_md_stops_at_a_blow_up():
    """A Lennard-Jones surface with σ far above the bond lengths blows the molecule apart at once."""
    from ase.calculators.lj import LennardJones

    atoms = molecule("CH3OH")
    atoms.calc = LennardJones(sigma=2.5, epsilon=1.0, rc=6.0)
    report = run_md(atoms, ensemble="nve", temperature_K=300.0, timestep_fs=0.5, n_steps=500, check_interval=5)
    assert not report.stable
    assert report.n_steps_run < report.n_steps_requested
    assert "at step" in report.instability


def test_periodic_instability_check_uses_image_shifts():
    """Bonds across the cell boundary keep their length when atoms are wrapped back into the cell."""
    from ase.build import bulk

    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.rattle(0.05, seed=0)
    detector = InstabilityDetector(atoms)
    assert detector.bond_i.size == 16  # 8 atoms x 4 neighbours / 2
    moved = atoms.copy()
    moved.positions += 2.0  # every atom crosses at most one face ...
    moved.wrap()  # ... and some are wrapped back
    assert not np.allclose(moved.positions - atoms.positions, 2.0)
    assert detector.check(moved) == ""
    np.testing.assert_allclose(detector._bond_lengths(moved), detector.initial_bond_lengths, atol=1e-9)
    stretched = moved.copy()
    stretched.set_cell(stretched.cell.array * 2.5, scale_atoms=True)  # every bond 2.5x longer
    assert "stretched" in detector.check(stretched)


def test_mlip_md_cli_writes_report_and_trajectory(trained_model, tmp_path, capsys):
    from ase.io import read

    from mlip.cli.md import main

    report_path, trajectory_path = tmp_path / "md.json", tmp_path / "md.traj"
    exit_code = main([
        str(trained_model), str(SAMPLE_DATA[1]), "--index", "0", "--ensemble", "nvt",
        "--steps", "20", "--timestep", "1.0", "--json", str(report_path), "--trajectory", str(trajectory_path),
        "--trajectory-interval", "5", "--threads", "1",
    ])
    assert exit_code == 0
    assert "atom-steps/s" in capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert report["n_steps_run"] == 20 and report["stable"] and report["ensemble"] == "nvt"
    assert len(read(trajectory_path, index=":")) >= 4  # a frame every 5 of 20 steps


def test_mlip_md_cli_rejects_an_index_out_of_range(trained_model):
    from mlip.cli.md import main

    with pytest.raises(SystemExit, match="out of range"):
        main([str(trained_model), str(SAMPLE_DATA[1]), "--index", "100000"])


# ------------------------------------------------------------------------------ calculator errors as instability
class CollapsingCalculator(MLIPCalculator):
    """Puts atom 1 onto atom 0 before its `collapse_at`-th calculation (call 1 is step 0, call n is step n - 1)."""

    def __init__(self, *args, collapse_at: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls, self.collapse_at = 0, collapse_at

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        self.calls += 1
        if self.calls == self.collapse_at:
            atoms.positions[1] = atoms.positions[0]
        super().calculate(atoms, properties, system_changes or ["positions"])


def test_coincident_atoms_between_checks_are_an_instability_at_their_step():
    from test_calculator import tiny_potential

    atoms = molecule("CH3OH")
    atoms.calc = CollapsingCalculator(tiny_potential(), collapse_at=7)
    report = run_md(atoms, n_steps=20, check_interval=10, timestep_fs=0.5)
    assert not report.stable and report.n_steps_run == 5
    assert "atoms 0 (C) and 1 (O) are 0.0000 Å apart" in report.instability
    assert report.instability.endswith("(at step 6)")
    assert np.isfinite(report.mean_temperature_K)


def test_coincident_atoms_at_the_start_are_an_instability_at_step_0():
    from test_calculator import tiny_potential

    atoms = molecule("CH3OH")
    atoms.positions[3] = atoms.positions[2]
    atoms.calc = MLIPCalculator(tiny_potential())
    report = run_md(atoms, n_steps=10)
    assert not report.stable and report.n_steps_run == 0
    assert "atoms 2 (H) and 3 (H) are 0.0000 Å apart" in report.instability and "(at step 0)" in report.instability
    assert "UNSTABLE" in report.summary()


def test_instability_detector_flags_nonfinite_forces():
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = molecule("CH3OH")
    detector = InstabilityDetector(atoms)
    forces = np.zeros((len(atoms), 3))
    forces[4, 2] = np.nan
    atoms.calc = SinglePointCalculator(atoms, energy=0.0, forces=forces)
    assert detector.check(atoms, 0.0) == "non-finite forces on atom(s) 4"


def test_mlip_md_cli_reports_coincident_atoms_as_instability(trained_model, tmp_path, capsys):
    import ase.io

    from mlip.cli.md import main

    atoms = first_neutral_molecule()
    atoms.positions[1] = atoms.positions[0]
    path = tmp_path / "collapsed.extxyz"
    ase.io.write(path, atoms, format="extxyz")
    assert main([str(trained_model), str(path), "--steps", "10", "--threads", "1"]) == 2
    output = capsys.readouterr().out
    assert "UNSTABLE: MLIPCalculator: atoms 0" in output and "Å apart" in output and "(at step 0)" in output


def test_mlip_md_cli_charge_and_spin_options(trained_model, tmp_path, capsys):
    """A file without charge/spin needs --charge for a model trained on ions; given options win over the file."""
    import ase.io
    from ase.io.trajectory import Trajectory

    from mlip.cli.md import main

    atoms = first_neutral_molecule()
    del atoms.info["charge"], atoms.info["spin"]
    bare = tmp_path / "bare.extxyz"
    ase.io.write(bare, atoms, format="extxyz")
    with pytest.raises(SystemExit, match=r"no 'charge'.*--charge"):
        main([str(trained_model), str(bare), "--steps", "2"])
    atoms.info.update(charge=1, spin=2)
    labelled = tmp_path / "cation.extxyz"
    ase.io.write(labelled, atoms, format="extxyz")
    trajectory = tmp_path / "md.traj"

    def charge_and_spin(path):
        info = Trajectory(str(path))[0].info
        return info["charge"], info["spin"]

    arguments = ["--steps", "2", "--trajectory", str(trajectory), "--trajectory-interval", "1", "--threads", "1"]
    assert main([str(trained_model), str(bare), "--charge", "0", "--spin", "1", *arguments]) == 0
    assert charge_and_spin(trajectory) == (0, 1)
    assert main([str(trained_model), str(labelled), *arguments]) == 0  # the file's values
    assert charge_and_spin(trajectory) == (1, 2)
    assert main([str(trained_model), str(labelled), "--charge", "-1", *arguments]) == 0  # the option wins
    assert charge_and_spin(trajectory) == (-1, 2)
