"""mlip-eval and mlip.evaluation: tables and parity plots on the shipped sample data.

Uses the tiny model trained on the sample data by the `trained_model` fixture (tests/conftest.py).
"""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import torch
from train_helpers import SAMPLE_DATA

from mlip.calculator import MLIPCalculator
from mlip.data.reader import StructureReader
from mlip.evaluation import evaluate, mae_rmse, markdown_table, read_test_set


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_mae_and_rmse():
    assert mae_rmse(np.array([1.0, -3.0])) == pytest.approx((2.0, np.sqrt(5.0)))
    assert all(np.isnan(mae_rmse(np.zeros(0))))


def test_mlip_eval_writes_table_and_plot_on_the_sample_data(trained_model, tmp_path, capsys):
    from mlip.cli.evaluate import main

    out = tmp_path / "eval"
    assert main([str(trained_model), "--data", *map(str, SAMPLE_DATA), "--out", str(out), "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert (out / "metrics.md").read_text() in printed
    assert (out / f"parity_{trained_model.stem}.png").stat().st_size > 10_000
    rows = read_csv(out / "metrics.csv")
    overall = rows[0]
    assert overall["subset"] == "all"
    n_structures = sum(len(StructureReader(path)) for path in SAMPLE_DATA)
    assert int(overall["n_structures"]) == n_structures
    subsets = {row["subset"] for row in rows[1:]}
    assert "crystal" in " ".join(subsets) or len(subsets) >= 2  # per-subset rows follow the overall one
    assert sum(int(row["n_structures"]) for row in rows[1:]) == n_structures
    for key in ("energy_mae", "energy_rmse", "forces_mae", "forces_rmse", "stress_mae", "stress_rmse"):
        assert float(overall[key]) >= 0.0
    assert float(overall["energy_rmse"]) >= float(overall["energy_mae"])


def test_errors_match_a_structure_by_structure_calculation(trained_model):
    """The table's energy MAE (meV/atom) and force RMSE (meV/Å) recomputed by hand with ASE calls."""
    structures = read_test_set(SAMPLE_DATA[1])[:6]
    calculator = MLIPCalculator(trained_model)
    row = evaluate(calculator, structures, "model").rows()[0]
    energy_errors, force_errors = [], []
    for structure in structures:
        atoms = structure.to_atoms()
        atoms.calc = calculator
        energy_errors.append((atoms.get_potential_energy() - structure.energy) / len(atoms))
        force_errors.append((atoms.get_forces() - structure.forces).ravel())
    assert row["energy_mae"] == pytest.approx(1000 * np.mean(np.abs(energy_errors)), rel=1e-9)
    assert row["forces_rmse"] == pytest.approx(1000 * np.sqrt(np.mean(np.concatenate(force_errors) ** 2)), rel=1e-9)


def test_missing_labels_are_skipped_not_zero(trained_model):
    structures = read_test_set(SAMPLE_DATA[1])[:4]
    with_labels = evaluate(MLIPCalculator(trained_model), structures, "model").rows()[0]
    for structure in structures[:2]:
        structure.stress = None
    structures[0].energy = None
    partial = evaluate(MLIPCalculator(trained_model), structures, "model").rows()[0]
    assert partial["n_structures"] == 4
    assert partial["stress_mae"] != with_labels["stress_mae"]  # averaged over 2 structures, not 4 with zeros
    full = evaluate(MLIPCalculator(trained_model), structures[2:], "model").rows()[0]
    assert partial["stress_mae"] == pytest.approx(full["stress_mae"], rel=1e-12)


def test_zoo_folder_and_extxyz_test_set(trained_model, tmp_path):
    """A folder of two models gives two rows each; an extxyz copy of the data gives the same errors."""
    import ase.io

    from mlip.cli.evaluate import main

    zoo = tmp_path / "zoo"
    zoo.mkdir()
    shutil.copy(trained_model, zoo / "model_a.pt")
    shutil.copy(trained_model, zoo / "model_b.pt")
    structures = read_test_set(SAMPLE_DATA[1])
    extxyz = tmp_path / "crystals.extxyz"
    ase.io.write(extxyz, [structure.to_atoms() for structure in structures], format="extxyz")

    out_h5, out_xyz = tmp_path / "h5", tmp_path / "xyz"
    assert main([str(zoo), "--data", str(SAMPLE_DATA[1]), "--out", str(out_h5), "--no-plots"]) == 0
    assert main([str(zoo / "model_a.pt"), "--data", str(extxyz), "--out", str(out_xyz), "--no-plots"]) == 0
    rows_h5, rows_xyz = read_csv(out_h5 / "metrics.csv"), read_csv(out_xyz / "metrics.csv")
    overall = {row["model"]: row for row in rows_h5 if row["subset"] == "all"}
    assert sorted(overall) == ["model_a", "model_b"]
    runs = tmp_path / "runs"  # a folder of training runs: <run>/best_model.pt, named after the run
    for run in ("run1", "run2"):
        (runs / run).mkdir(parents=True)
        shutil.copy(trained_model, runs / run / "best_model.pt")
    assert main([str(runs), "--data", str(SAMPLE_DATA[1]), "--out", str(tmp_path / "runs_eval"), "--no-plots"]) == 0
    run_rows = read_csv(tmp_path / "runs_eval" / "metrics.csv")
    assert sorted({row["model"] for row in run_rows}) == ["run1/best_model", "run2/best_model"]
    for key in ("energy_mae", "forces_rmse", "stress_mae"):
        assert float(overall["model_a"][key]) == pytest.approx(float(overall["model_b"][key]), rel=1e-12)
        assert float(rows_xyz[0][key]) == pytest.approx(float(overall["model_a"][key]), rel=1e-6)


def test_a_model_trained_on_ions_needs_the_charge(trained_model):
    """The sample data hold cations and anions, so the exported model refuses to guess a charge."""
    from mlip.calculator import MLIPInputError

    atoms = read_test_set(SAMPLE_DATA[0])[0].to_atoms()
    atoms.calc = None
    del atoms.info["charge"]
    atoms.calc = MLIPCalculator(trained_model)
    assert atoms.calc.charged_model
    with pytest.raises(MLIPInputError, match="trained on charged structures"):
        atoms.get_potential_energy()
    atoms.calc = MLIPCalculator(trained_model, default_charge=0)
    assert np.isfinite(atoms.get_potential_energy())


def test_markdown_table_marks_missing_metrics():
    table = markdown_table([{
        "model": "m", "subset": "all", "n_structures": 3, "energy_mae": 1.0, "energy_rmse": 2.0,
        "forces_mae": 3.0, "forces_rmse": 4.0, "stress_mae": float("nan"), "stress_rmse": float("nan"),
    }])
    assert "| m | all | 3 | 1.00 | 2.00 | 3.00 | 4.00 | - | - |" in table


def test_mlip_eval_reports_a_missing_model_or_test_set(tmp_path):
    from mlip.cli.evaluate import main

    with pytest.raises(SystemExit, match="does not exist"):
        main([str(tmp_path / "nope.pt"), "--data", str(SAMPLE_DATA[0])])
    empty = tmp_path / "empty_zoo"
    empty.mkdir()
    with pytest.raises(SystemExit, match="no model files .* or run folders"):
        main([str(empty), "--data", str(SAMPLE_DATA[0])])



def tiny_exported_model(path, elements: list[int]):
    """An untrained tiny MACE potential for `elements` (atomic numbers), exported to `path` (a second to build)."""
    from mlip.export import export_model
    from mlip.models.build import build_potential

    config = {
        "backbone": {"_target_": "mlip.models.backbones.mace.MACEBackbone", "num_channels": 8, "correlation": 2,
                     "num_layers": 1, "radial_mlp": [16]},
        "cutoff": 4.0, "condition_dim": 4, "readout_hidden": [8],
    }
    statistics = {"elements": elements, "atomic_energies": {z: -1.0 for z in elements}, "avg_num_neighbors": 8.0}
    torch.manual_seed(len(elements))  # the same weights every run: tests that relax with it are deterministic
    return export_model(build_potential(config, statistics, dtype=torch.float32), path)


def test_a_model_lacking_an_element_gets_a_row_saying_so_and_the_zoo_goes_on(tmp_path, capsys):
    from train_helpers import cluster_structures

    from mlip.cli.evaluate import main
    from mlip.data.writer import write_structures

    structures = cluster_structures(4, seed=1)  # EMT Cu/Al clusters
    assert all(set(structure.numbers.tolist()) == {13, 29} for structure in structures)
    test_set = tmp_path / "clusters.h5"
    write_structures(test_set, structures, source="test")
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    tiny_exported_model(zoo / "a_cu_al.pt", [13, 29])
    tiny_exported_model(zoo / "b_cu_only.pt", [29])
    out = tmp_path / "eval"
    assert main([str(zoo), "--data", str(test_set), "--out", str(out), "--threads", "1"]) == 0
    note = "unsupported elements: Al (Z=13) in 4 of 4 structures"
    assert f"b_cu_only not evaluated: {note}" in capsys.readouterr().err
    rows = {row["model"]: row for row in read_csv(out / "metrics.csv") if row["subset"] == "all"}
    assert float(rows["a_cu_al"]["forces_mae"]) > 0 and rows["a_cu_al"]["note"] == ""
    assert rows["b_cu_only"]["note"] == note
    assert rows["b_cu_only"]["forces_mae"] == "" and rows["b_cu_only"]["n_structures"] == "4"
    table = (out / "metrics.md").read_text()
    assert "| note |" in table and f"| b_cu_only | all | 4 | - | - | - | - | - | - | - | {note} |" in table
    assert (out / "parity_a_cu_al.png").is_file() and not (out / "parity_b_cu_only.png").exists()


def test_a_model_predicting_nan_gets_a_row_saying_so(tmp_path):
    """Coincident atoms with the calculator's distance check off: the MACE-like model returns NaN."""
    from train_helpers import cluster_structures

    structures = cluster_structures(3, seed=2)
    structures[1].positions[1] = structures[1].positions[0]
    model = tiny_exported_model(tmp_path / "model.pt", [13, 29])
    rows = evaluate(MLIPCalculator(model, min_distance=0.0), structures, "nan_model").rows()
    assert len(rows) == 1 and rows[0]["note"].startswith("non-finite predictions: structure 1 (id 'cluster-1')")
