"""mlip.zoo: physical tasks over a model zoo (dimers, stability, relax, eos, vibrations, speed,
errors), external `module:factory` calculators, the reference comparison, failures as cells.

Models are tiny untrained exports (`tiny_exported_model`, a second to build) and cheap ASE
calculators (Lennard-Jones, EMT, tblite), so that every physical statement can be checked
exactly or against a known value.
"""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from test_eval import tiny_exported_model

from mlip.data.structure import Structure
from mlip.zoo import dimers, eos, relax, speed, stability, vibrations
from mlip.zoo.loop import measure_each
from mlip.zoo.models import ZooModel, parse_calculator_spec
from mlip.zoo.results import TaskContext, TaskResult, ZooOptions
from mlip.zoo.runner import run_zoo, task_module
from mlip.zoo.structures import crystal_starts, molecule_starts

LJ = "ase.calculators.lj:LennardJones"
LJ_KEYWORDS = {"sigma": 1.5, "epsilon": 0.1, "rc": 4.5, "smooth": True}


def labelled(atoms, subset: str) -> Structure:
    """``atoms`` labelled by ASE's EMT (energy, forces and, for a crystal, stress)."""
    atoms.calc = EMT()
    periodic = bool(atoms.pbc.any())
    return Structure(
        numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell.array if periodic else None, pbc=atoms.pbc,
        energy=atoms.get_potential_energy(), forces=atoms.get_forces(),
        stress=atoms.get_stress(voigt=False) if periodic else None, id=atoms.get_chemical_formula(), subset=subset,
    )


@pytest.fixture(scope="module")
def test_set() -> list[Structure]:
    water, methane = molecule("H2O"), molecule("CH4")
    water.rattle(0.05, seed=1)
    methane.rattle(0.05, seed=2)
    copper = bulk("Cu", "fcc", a=3.55)
    return [labelled(water, "molecules"), labelled(methane, "molecules"), labelled(copper, "crystals")]


@pytest.fixture(scope="module")
def zoo_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoo")
    return {
        "full": tiny_exported_model(folder / "full.pt", [1, 6, 8, 29]),
        "no_carbon": tiny_exported_model(folder / "no_carbon.pt", [1, 8, 29]),
    }


def context(molecules=(), crystals=(), elements=(), test_structures=(), tmp_path=None, **options) -> TaskContext:
    return TaskContext(list(molecules), list(crystals), list(test_structures), ZooOptions(**options), tmp_path,
                       elements=list(elements))


def named(atoms, name):
    atoms.info["name"] = name
    atoms.info.update(charge=0, spin=1)
    return atoms


# --------------------------------------------------------------------------------------------
# models: files, module:factory, the trust rule
# --------------------------------------------------------------------------------------------


def test_calculator_spec_gives_name_factory_and_literal_keywords():
    assert parse_calculator_spec("GFN2-xTB=tblite.ase:TBLite,method=GFN2-xTB,verbosity=0") == (
        "GFN2-xTB", "tblite.ase:TBLite", {"method": "GFN2-xTB", "verbosity": 0})
    assert parse_calculator_spec(f"{LJ},sigma=1.5,smooth=True,shape=(1, 2)") == (
        None, LJ, {"sigma": 1.5, "smooth": True, "shape": (1, 2)})
    with pytest.raises(ValueError, match="module:factory"):
        parse_calculator_spec("LennardJones,sigma=1")
    with pytest.raises(ValueError, match="not key=value"):
        parse_calculator_spec(f"{LJ},1.5")


def test_an_external_factory_is_called_with_its_keywords_and_bad_ones_are_named():
    model = ZooModel.from_factory(LJ, LJ_KEYWORDS, name="LJ")
    calculator = model.make_calculator()
    assert calculator.parameters["sigma"] == 1.5 and model.elements is None and model.kind == "external"
    assert model.make_calculator() is not calculator  # a fresh calculator each time
    with pytest.raises(ValueError, match="cannot import module 'no_such_module_14'"):
        ZooModel.from_factory("no_such_module_14:Calculator")
    with pytest.raises(ValueError, match="has no 'NoSuchCalculator'"):
        ZooModel.from_factory("ase.calculators.lj:NoSuchCalculator")


def test_a_model_argument_is_a_path_never_an_import(tmp_path, test_set):
    """Only --calculator imports code: 'os:system' as a model is a missing file, not a call."""
    from mlip.cli.evaluate import main
    from mlip.data.writer import write_structures

    data = tmp_path / "test.h5"
    write_structures(data, test_set, source="test")
    with pytest.raises(SystemExit, match="model os:system does not exist"):
        main(["os:system", "--data", str(data), "--tasks", "dimers", "--out", str(tmp_path / "eval")])


# --------------------------------------------------------------------------------------------
# the tasks, one by one
# --------------------------------------------------------------------------------------------


def test_lennard_jones_dimers_have_one_minimum_at_two_to_the_sixth_sigma(tmp_path):
    model = ZooModel.from_factory(LJ, LJ_KEYWORDS, name="LJ")
    result = dimers.run(model, context(elements=[1, 8], tmp_path=tmp_path, dimer_points=121, dimer_max_distance=4.4))
    assert [row["pair"] for row in result.rows] == ["H-H", "H-O", "O-O"]
    grid = np.linspace(0.5, 4.4, 121)
    nearest = grid[np.argmin(np.abs(grid - 2 ** (1 / 6) * 1.5))]
    for row in result.rows:
        assert row["minima"] == 1 and row["force_sign_changes"] == 1 and row["repulsive"], row
        curve = result.data[row["pair"]]
        assert curve["distances"][np.nanargmin(curve["energies"])] == pytest.approx(nearest)
    assert result.summary["pairs w/o repulsion"] == 0 and result.summary["pairs >1 minimum"] == 0


def test_dimers_against_a_reference_compare_the_curves(tmp_path):
    reference = ZooModel.from_factory(LJ, LJ_KEYWORDS, name="LJ", reference_for=("molecule",))
    softer = ZooModel.from_factory(LJ, {**LJ_KEYWORDS, "sigma": 1.6}, name="LJ-1.6")
    options = {"elements": [1], "tmp_path": tmp_path, "dimer_points": 80, "dimer_max_distance": 4.4}
    reference_result = dimers.run(reference, context(**options))
    same = dimers.run(ZooModel.from_factory(LJ, LJ_KEYWORDS, name="again"), context(**options), reference_result.data)
    other = dimers.run(softer, context(**options), reference_result.data)
    assert same.rows[0]["E_mae_eV"] == 0.0 and same.rows[0]["r_min_error_A"] == 0.0
    assert other.rows[0]["E_mae_eV"] > 1e-3 and other.rows[0]["r_min_error_A"] > 0.0  # the softer sigma sits further out


def test_a_dimer_point_that_fails_is_noted_on_its_own_pair_only(tmp_path):
    """Like tblite's SCF at a stretched radical: O-H fails beyond 3 Å, O-O below 0.8 Å; each row
    names its own failure, H-H has none."""
    from ase.calculators.lj import LennardJones

    class FailsForStretchedOH(LennardJones):
        def calculate(self, atoms=None, properties=("energy",), system_changes=()):
            if sorted(atoms.numbers) == [1, 8] and atoms.get_distance(0, 1) > 3.0:
                raise RuntimeError("SCF not converged")
            if sorted(atoms.numbers) == [8, 8] and atoms.get_distance(0, 1) < 0.8:
                raise RuntimeError("too close")
            super().calculate(atoms, properties, system_changes)

    model = ZooModel(name="flaky", make_calculator=lambda: FailsForStretchedOH(**LJ_KEYWORDS), kind="external")
    result = dimers.run(model, context(elements=[1, 8], tmp_path=tmp_path, dimer_points=40, dimer_max_distance=4.4))
    rows = {row["pair"]: row for row in result.rows}
    assert "note" not in rows["H-H"]
    grid = np.linspace(0.5, 4.4, 40)
    assert rows["H-O"]["note"].startswith(f"{np.count_nonzero(grid > 3.0)} of 40 points failed (at 3.")
    assert "RuntimeError: SCF not converged" in rows["H-O"]["note"] and rows["H-O"]["minima"] == 1
    assert rows["O-O"]["note"] == f"{np.count_nonzero(grid < 0.8)} of 40 points failed (at 0.50 Å: RuntimeError: too close)"


def test_a_tblite_hydrogen_dimer_has_one_minimum_near_its_bond_length(tmp_path):
    pytest.importorskip("tblite.ase")
    model = ZooModel.from_factory("tblite.ase:TBLite", {"method": "GFN2-xTB", "verbosity": 0}, name="GFN2-xTB")
    result = dimers.run(model, context(elements=[1], tmp_path=tmp_path, dimer_points=36, dimer_max_distance=4.0))
    row = result.rows[0]
    assert row["minima"] == 1 and row["repulsive"] and "note" not in row
    curve = result.data["H-H"]
    assert curve["distances"][np.argmin(curve["energies"])] == pytest.approx(0.74, abs=0.1)  # H2: 0.74 Å, grid step 0.1 Å


def test_vibrations_of_a_model_against_itself_have_zero_error(zoo_files, test_set, tmp_path):
    molecules = molecule_starts(test_set)
    assert [atoms.info["name"] for atoms in molecules] == ["H2O", "CH4"]
    reference = ZooModel.from_path(zoo_files["full"], name="reference", reference_for=("molecule",))
    model = ZooModel.from_path(zoo_files["full"], name="model")
    options = {"molecules": molecules[:1], "tmp_path": tmp_path, "relax_steps": 100}
    reference_result = vibrations.run(reference, context(**options))
    result = vibrations.run(model, context(**options), reference_result.data)
    row = result.rows[0]
    assert row["modes"] == 3  # 3N - 6 for water
    assert row["mae_cm1"] == 0.0 and result.summary["vib MAE vs ref (cm⁻¹)"] == 0.0
    vibrations.plot(result, reference_result.data, tmp_path / "vib.png")
    assert (tmp_path / "vib.png").stat().st_size > 5000
    other = vibrations.run(ZooModel.from_path(zoo_files["no_carbon"], name="other"), context(**options), reference_result.data)
    expected = np.mean(np.abs(other.data["H2O"] - reference_result.data["H2O"]))
    assert other.rows[0]["mae_cm1"] == pytest.approx(expected) and expected > 1.0  # other weights, other frequencies
    assert other.rows[0]["max_error_cm1"] >= other.rows[0]["mae_cm1"]


def test_emt_copper_bulk_modulus_and_relaxation_against_a_reference(test_set, tmp_path):
    """EMT copper: B about 134 GPa; the same calculator as its own reference gives zero errors."""
    crystals = crystal_starts(test_set)
    molecules = molecule_starts(test_set)
    reference = ZooModel.from_factory("ase.calculators.emt:EMT", name="EMT", reference_for=("molecule", "crystal"))
    again = ZooModel.from_factory("ase.calculators.emt:EMT", name="EMT again")
    options = {"molecules": molecules, "crystals": crystals, "tmp_path": tmp_path}
    eos_reference = eos.run(reference, context(**options))
    assert eos_reference.rows[0]["B_GPa"] == pytest.approx(134.0, abs=8.0)
    assert eos.run(again, context(**options), eos_reference.data).rows[0]["B_error_pct"] == pytest.approx(0.0, abs=1e-9)
    relax_reference = relax.run(reference, context(**options))
    relaxed = relax.run(again, context(**options), relax_reference.data)
    assert all(row["converged"] for row in relaxed.rows)
    assert [row["rmsd_A"] for row in relaxed.rows] == pytest.approx([0.0, 0.0, 0.0], abs=1e-9)
    assert relaxed.rows[2]["volume_error_pct"] == pytest.approx(0.0, abs=1e-9)
    # against a reference that differs by a known amount, the errors are that amount
    stiffer = {name: {**curve, "B": 2.0 * curve["B"], "V0": curve["V0"] / 1.1} for name, curve in eos_reference.data.items()}
    row = eos.run(again, context(**options), stiffer).rows[0]
    assert row["B_error_pct"] == pytest.approx(-50.0) and row["V0_error_pct"] == pytest.approx(10.0)
    expanded = relax_reference.data["Cu"].copy()
    expanded.set_cell(expanded.cell * 1.01, scale_atoms=True)
    assert relax.compare(relax_reference.data["Cu"], expanded)["volume_error_pct"] == pytest.approx(100 * (1 / 1.01**3 - 1))
    moved = relax_reference.data["H2O"].copy()
    moved.positions[0] += [0.3, 0.0, 0.0]
    assert relax.compare(moved, relax_reference.data["H2O"])["rmsd_A"] > 0.02  # part of the shift is a rotation


def test_kabsch_rmsd_ignores_rotation_and_translation():
    rng = np.random.default_rng(0)
    positions = rng.normal(size=(6, 3))
    from scipy.spatial.transform import Rotation

    moved = positions @ Rotation.random(random_state=1).as_matrix().T + np.array([1.0, -2.0, 0.5])
    assert relax.kabsch_rmsd(moved, positions) == pytest.approx(0.0, abs=1e-10)
    shifted = positions.copy()
    shifted[0] += [0.6, 0.0, 0.0]
    assert relax.kabsch_rmsd(shifted, positions) > 0.1


def test_stability_flags_a_blow_up_and_passes_a_quiet_run(zoo_files, test_set, tmp_path):
    """Lennard-Jones with sigma 1.5 Å pushes water's 0.96 Å bonds apart: the temperature explodes."""
    water = molecule_starts(test_set)[:1]
    options = {"molecules": water, "tmp_path": tmp_path, "md_steps": 20, "md_ensembles": ("nve",)}
    exploding = stability.run(ZooModel.from_factory(LJ, LJ_KEYWORDS, name="LJ"), context(**options))
    row = exploding.rows[0]
    assert not row["stable"] and "temperature" in row["note"] and row["time_to_instability_ps"] <= 0.01
    quiet = stability.run(ZooModel.from_path(zoo_files["full"]), context(**options)).rows[0]
    assert quiet["stable"] and np.isfinite(quiet["drift_meV_per_atom_per_ps"]) and quiet["simulated_ps"] == pytest.approx(0.01)


def test_a_one_atom_cell_is_a_reason_in_md_not_a_false_instability(test_set, tmp_path):
    copper = crystal_starts(test_set)  # the primitive fcc cell: one atom
    result = stability.run(ZooModel.from_factory("ase.calculators.emt:EMT", name="EMT"),
                           context(crystals=copper, tmp_path=tmp_path, md_steps=5))
    assert [len(copper[0]), len(result.rows)] == [1, 2] and "stable" not in result.rows[0]
    assert all("one atom has no thermal motion" in row["note"] for row in result.rows) and "one atom" in result.note


def test_speed_reports_atom_steps_per_second_per_size(zoo_files, test_set, tmp_path):
    options = {"molecules": molecule_starts(test_set), "crystals": crystal_starts(test_set), "tmp_path": tmp_path,
               "speed_seconds": 0.01, "speed_crystal_atoms": (8, 27)}
    result = speed.run(ZooModel.from_path(zoo_files["full"]), context(**options))
    assert [row["atoms"] for row in result.rows] == [5, 8, 27]  # methane, Cu repeated 2x2x2 and 3x3x3
    assert all(row["atom_steps_per_s"] > 0 and row["steps"] >= 3 for row in result.rows)
    assert set(result.summary) == {"molecule MD (atom-steps/s)", "crystal MD (atom-steps/s)"}


# --------------------------------------------------------------------------------------------
# the zoo: failures are cells, the report, the CLI
# --------------------------------------------------------------------------------------------


class BrokenCalculator(EMT):
    """A calculator that fails on every call (an SCF that never converges, a server that is down)."""

    def calculate(self, *args, **kwargs):
        raise RuntimeError("the broken calculator always fails")


class EMTWithoutStress(EMT):
    implemented_properties = ["energy", "free_energy", "forces"]


def test_failures_are_cells_and_the_zoo_goes_on(zoo_files, test_set, tmp_path):
    models = [
        ZooModel.from_path(zoo_files["full"], name="full"),
        ZooModel.from_path(zoo_files["no_carbon"], name="no_carbon"),
        ZooModel(name="broken", make_calculator=BrokenCalculator, source="tests:BrokenCalculator", kind="external"),
        ZooModel(name="no_stress", make_calculator=EMTWithoutStress, source="tests:EMTWithoutStress", kind="external"),
    ]
    options = ZooOptions(relax_steps=20, speed_seconds=0.01, speed_crystal_atoms=(8,))
    zoo = run_zoo(models, test_set, "errors,relax,speed", tmp_path / "eval", options=options, progress=False, command="test")
    relax_rows = {row["structure"]: row for row in zoo.results["relax"]["no_carbon"].rows}
    assert relax_rows["CH4"]["note"] == "unsupported elements: C (Z=6)"
    assert "converged" in relax_rows["H2O"] and "converged" in relax_rows["Cu"]  # the other structures go on
    assert zoo.results["errors"]["no_carbon"].note.startswith("unsupported elements: C (Z=6)")
    broken = zoo.results["relax"]["broken"]
    assert [row["structure"] for row in broken.rows] == ["H2O", "CH4", "Cu"]
    assert all("the broken calculator always fails" in row["note"] for row in broken.rows)
    assert "the broken calculator always fails" in broken.note  # no structure relaxed: the summary cell's reason
    errors = zoo.results["errors"]["broken"]  # the whole task raised: one cell, the zoo went on
    assert not errors.rows and "the broken calculator always fails" in errors.note
    no_stress = {row["structure"]: row for row in zoo.results["relax"]["no_stress"].rows}
    assert no_stress["Cu"]["note"] == "no stress: EMTWithoutStress does not implement stress"
    assert no_stress["H2O"]["converged"] and no_stress["CH4"]["converged"]  # molecules need no stress
    assert np.isfinite(zoo.results["errors"]["full"].summary["E MAE (meV/atom)"])
    assert zoo.results["speed"]["full"].summary["crystal MD (atom-steps/s)"] > 0
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "## Summary" in report and "## relax" in report and "n/a: unsupported elements: C (Z=6)" in report
    assert "<table>" in (tmp_path / "eval" / "report.html").read_text()
    with open(tmp_path / "eval" / "summary.csv", newline="") as handle:
        summary = {row["model"]: row for row in csv.DictReader(handle)}
    assert sorted(summary) == ["broken", "full", "no_carbon", "no_stress"]
    assert summary["broken"]["E MAE (meV/atom)"].startswith("n/a: ")


def test_measure_each_skips_with_reasons_goes_on_after_a_failure_and_counts_progress(zoo_files, test_set):
    water, methane = molecule_starts(test_set)
    copper = crystal_starts(test_set)[0]
    items = [({"structure": atoms.info["name"]}, atoms, index) for index, atoms in enumerate([water, methane, copper])]
    advanced = []
    ctx = context(molecules=[water, methane], crystals=[copper])
    ctx.advance = lambda: advanced.append(1)
    seen = []

    def measure(atoms, row, index):
        seen.append((index, atoms is not items[index][1] and atoms.calc is not None))  # a copy with a calculator
        if index == 0:
            raise ValueError("water fails")
        row["value"] = index

    model = ZooModel.from_path(zoo_files["no_carbon"], name="no_carbon")
    result = TaskResult(task="test", model=model.name)
    measured = measure_each(result, model, ctx, items, measure)
    assert seen == [(0, True), (2, True)] and [row["structure"] for row in measured] == ["Cu"] and measured[0]["value"] == 2
    assert [row.get("note") for row in result.rows] == ["ValueError: water fails", "unsupported elements: C (Z=6)", None]
    assert len(advanced) == 3 and result.note == ""
    no_stress = ZooModel(name="no_stress", make_calculator=EMTWithoutStress)
    result = TaskResult(task="test", model=no_stress.name)
    assert measure_each(result, no_stress, ctx, items[2:], measure, needs_stress=True) == []
    assert result.note == result.rows[0]["note"] == "no stress: EMTWithoutStress does not implement stress"
    result = TaskResult(task="test", model=no_stress.name)
    assert measure_each(result, no_stress, ctx, [], measure, empty="nothing here") == [] and result.note == "nothing here"


@pytest.mark.parametrize("task", ["stability", "relax", "eos", "vibrations", "speed"])
def test_the_progress_bar_advances_once_per_item_and_a_reference_runs_on_its_kind_only(task, test_set, tmp_path):
    """``items()`` (the bar's total) is the number of ``advance()`` calls; a crystal reference skips the molecules."""
    options = {"molecules": molecule_starts(test_set), "crystals": crystal_starts(test_set), "tmp_path": tmp_path,
               "md_steps": 4, "relax_steps": 5, "eos_points": 5, "speed_seconds": 0.01, "speed_crystal_atoms": (8,)}
    module = task_module(task)
    for model in [ZooModel.from_factory("ase.calculators.emt:EMT", name="EMT"),
                  ZooModel.from_factory("ase.calculators.emt:EMT", name="EMT-crystals", reference_for=("crystal",))]:
        ctx = context(**options)
        advanced = []
        ctx.advance = lambda: advanced.append(1)
        result = module.run(model, ctx, None)
        assert len(advanced) == module.items(model, ctx) == len(result.rows)
        names = {row.get("structure", row.get("system", "")).split("(")[-1].rstrip(")") for row in result.rows}
        if model.is_reference:
            assert names <= {"Cu"} and (names or result.note == "not run: the reference for crystals only")
        else:
            assert names & {"H2O", "CH4"} or task == "eos"


def test_the_report_names_a_task_no_model_could_do_and_a_failed_plot(zoo_files, test_set, tmp_path, monkeypatch):
    from mlip.zoo import speed as speed_task

    def broken_plot(result, reference, path):
        raise RuntimeError("no canvas")

    monkeypatch.setattr(speed_task, "plot", broken_plot)
    molecules_only = [structure for structure in test_set if structure.cell is None]
    options = ZooOptions(speed_seconds=0.01, eos_points=5)
    zoo = run_zoo([ZooModel.from_path(zoo_files["full"], name="full")], molecules_only, "eos,speed", tmp_path / "eval",
                  options=options, progress=False)
    assert zoo.results["eos"]["full"].note == "no crystals in the test set"
    assert zoo.results["speed"]["full"].plot_note == "plot failed: RuntimeError: no canvas"
    with open(tmp_path / "eval" / "summary.csv", newline="") as handle:
        summary = next(csv.DictReader(handle))
    assert summary["eos"] == "n/a: no crystals in the test set" and float(summary["molecule MD (atom-steps/s)"].replace(",", "")) > 0
    assert "full: plot failed: RuntimeError: no canvas" in (tmp_path / "eval" / "report.md").read_text()


def test_mlip_eval_tasks_with_an_external_reference(zoo_files, test_set, tmp_path, capsys):
    from mlip.cli.evaluate import main
    from mlip.data.writer import write_structures

    data = tmp_path / "test.h5"
    write_structures(data, test_set, source="test")
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    shutil.copy(zoo_files["full"], zoo / "full.pt")
    out = tmp_path / "eval"
    spec = "LJ=" + LJ + "," + ",".join(f"{key}={value}" for key, value in LJ_KEYWORDS.items())
    assert main([str(zoo), "--data", str(data), "--tasks", "dimers,errors", "--calculator", spec,
                 "--reference", "molecule=LJ", "--dimer-points", "30", "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "dimer E MAE vs ref (eV)" in printed and "| LJ | reference (molecule) |" in printed
    assert (out / "dimers_full.png").stat().st_size > 5000 and (out / "dimers_LJ.png").is_file()
    with open(out / "metrics.csv", newline="") as handle:
        errors = {row["model"] for row in csv.DictReader(handle)}
    assert errors == {"full", "LJ"}  # the reference for molecules is evaluated on the molecules
    with pytest.raises(SystemExit, match="--reference nobody: no model of that name"):
        main([str(zoo), "--data", str(data), "--tasks", "dimers", "--reference", "nobody", "--out", str(out)])
    with pytest.raises(SystemExit, match="unknown task 'phonons'"):
        main([str(zoo), "--data", str(data), "--tasks", "dimers,phonons", "--out", str(out)])


def test_split_test_is_the_test_split_of_mlip_train():
    from train_helpers import SAMPLE_DATA

    from mlip.train.datamodule import PotentialDataModule
    from mlip.zoo.structures import training_test_split

    module = PotentialDataModule([str(path) for path in SAMPLE_DATA], cutoff=4.0, val_fraction=0.1, test_fraction=0.1)
    module.setup()
    expected = [module.test_set.locate(index) for index in range(len(module.test_set))]
    chosen = training_test_split(SAMPLE_DATA)
    assert len(chosen) == len(expected) > 100
    from mlip.data.reader import StructureReader

    readers = {path: StructureReader(path) for path in {path for path, _ in expected}}
    assert [structure.id for structure in chosen] == [readers[path].read(index).id for path, index in expected]
