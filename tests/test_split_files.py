"""Validation and test sets of their own (``data.val_paths``, ``data.test_paths``): the split, the
element check, several named test sets after fitting (one energy-only) and `mlip-eval --test`."""

from __future__ import annotations

import csv
import json
import math

import pytest
from train_helpers import cluster_structures, compose_config, crystal_structures, tiny_overrides, write_emt_data

from mlip.data.writer import write_structures
from mlip.train.build import build_datamodule, check_split_elements, train
from mlip.train.datamodule import PotentialDataModule

CUTOFF = 4.0


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Training files (24 clusters + 24 crystals), a validation file, a full test file and an
    energy-only test file (forces removed, as after `mlip-convert` of energy-only DFT data)."""
    directory = tmp_path_factory.mktemp("split_files")
    train_files = write_emt_data(directory / "train", n_clusters=24, n_crystals=24)
    val = directory / "val.h5"
    write_structures(val, cluster_structures(4, seed=11) + crystal_structures(4, seed=12), source="val")
    crystals_test = directory / "crystals_test.h5"
    write_structures(crystals_test, crystal_structures(5, seed=13), source="test")
    energy_only = cluster_structures(6, seed=14)
    for structure in energy_only:
        structure.forces = None
    dimers = directory / "energy_only.h5"
    write_structures(dimers, energy_only, source="energy only")
    return {"train": train_files, "val": str(val), "crystals_test": str(crystals_test), "energy_only": str(dimers)}


def test_val_and_test_files_replace_the_random_split(files):
    datamodule = PotentialDataModule(
        files["train"], cutoff=CUTOFF, val_paths=[files["val"]],
        test_paths={"crystal": files["crystals_test"], "both": [files["crystals_test"], files["energy_only"]]},
        val_fraction=0.3, test_fraction=0.2,
    )
    sizes = datamodule.split_sizes()
    assert sizes == {"train": 48, "val": 8, "test": 5 + 11, "test/crystal": 5, "test/both": 11}
    assert datamodule.test_names == ["crystal", "both"] and datamodule.test_set is None
    loaders = datamodule.test_dataloader()
    assert isinstance(loaders, list) and [len(loader.dataset) for loader in loaders] == [5, 11]
    # only val_paths: the random test split is still drawn from paths, with no validation part
    only_val = PotentialDataModule(files["train"], cutoff=CUTOFF, val_paths=files["val"], test_fraction=0.25)
    assert only_val.split_sizes() == {"train": 36, "val": 8, "test": 12}
    assert only_val.test_names == [None] and not isinstance(only_val.test_dataloader(), list)
    # a list of test files: one test set per file, named by its stem
    listed = PotentialDataModule(files["train"], cutoff=CUTOFF, test_paths=[files["crystals_test"], files["energy_only"]])
    assert listed.test_names == ["crystals_test", "energy_only"]
    assert listed.split_sizes()["train"] == 48 - round(0.1 * 48)  # random validation split only


def test_default_split_is_unchanged(files):
    datamodule = PotentialDataModule(files["train"], cutoff=CUTOFF, val_fraction=0.2, test_fraction=0.1)
    assert datamodule.split_sizes() == {"train": 33, "val": 10, "test": 5}
    assert datamodule.test_names == [None] and len(datamodule.test_set) == 5
    without = PotentialDataModule(files["train"], cutoff=CUTOFF, test_fraction=0.0)
    assert without.test_names == []
    with pytest.raises(ValueError, match="no test set"):
        without.test_dataloader()


def test_bad_test_paths_are_refused_with_the_key(files, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data.test_paths\[gone\]"):
        PotentialDataModule(files["train"], cutoff=CUTOFF, test_paths={"gone": str(tmp_path / "nope.h5")})
    with pytest.raises(FileNotFoundError, match="data.val_paths"):
        PotentialDataModule(files["train"], cutoff=CUTOFF, val_paths=[str(tmp_path / "nope.h5")])
    with pytest.raises(ValueError, match="several files are named crystals_test"):
        PotentialDataModule(files["train"], cutoff=CUTOFF, test_paths=[files["crystals_test"], files["crystals_test"]])
    with pytest.raises(ValueError, match="without '/'"):
        PotentialDataModule(files["train"], cutoff=CUTOFF, test_paths={"a/b": files["crystals_test"]})


def test_element_check_covers_val_and_test_files(files, tmp_path):
    foreign = cluster_structures(2, seed=15)
    foreign[1].numbers[0] = 28  # Ni, not in the training files
    path = tmp_path / "with_nickel.h5"
    write_structures(path, foreign, source="test")
    for keyword, where in (("test_paths", "test set 'with_nickel'"), ("val_paths", "validation files")):
        datamodule = PotentialDataModule(files["train"], cutoff=CUTOFF, **{keyword: [str(path)]})
        with pytest.raises(ValueError, match=rf"Ni \(Z=28\) in 1 structure\(s\) of the {where}.*with_nickel.h5 structure 1"):
            check_split_elements(datamodule)


def test_training_reports_every_test_set_by_name(files, tmp_path):
    run_dir = tmp_path / "runs" / "files"
    overrides = tiny_overrides(files["train"], run_dir, **{
        "trainer.max_epochs": 2,
        "data.val_paths": f"[{files['val']}]",
        "data.test_paths": f"[{files['crystals_test']},{files['energy_only']}]",
    })
    config = compose_config(overrides)
    assert build_datamodule(config).test_names == ["crystals_test", "energy_only"]
    results = train(config, run_dir)
    stored = json.loads((run_dir / "results.json").read_text())
    assert stored["test"] == pytest.approx(results["test"])
    test = stored["test"]
    for quantity in ("energy", "forces", "stress"):
        assert test[f"test/crystals_test/{quantity}_mae"] > 0
        assert test[f"test/crystals_test/crystal/{quantity}_rmse"] >= test[f"test/crystals_test/crystal/{quantity}_mae"]
    assert test["test/energy_only/energy_mae"] > 0 and test["test/energy_only/cluster/energy_rmse"] > 0
    assert not [name for name in test if name.startswith("test/energy_only/") and ("forces" in name or "stress" in name)]
    assert all(math.isfinite(value) for value in test.values())
    assert not any("dataloader_idx" in name for name in test) and "test/forces_mae" not in test
    assert stored["test_sets"]["energy_only"]["n_structures"] == 6
    statistics = json.loads((run_dir / "statistics.json").read_text())
    assert statistics["n_structures"] == 48  # all of data.paths train: no random val or test split
    assert stored["fit"]["val/forces_mae"] > 0


def test_mlip_eval_reports_each_test_file_by_name(trained_model, tmp_path, capsys):
    from mlip.cli.evaluate import main
    from train_helpers import SAMPLE_DATA

    from mlip.data.convert import read_structures

    crystals = list(read_structures(SAMPLE_DATA[1]))[:5]
    energy_only = list(read_structures(SAMPLE_DATA[1]))[5:9]
    for structure in energy_only:
        structure.forces = structure.stress = None
    first, second = tmp_path / "crystal_set.h5", tmp_path / "energies.h5"
    write_structures(first, crystals, source="test")
    write_structures(second, energy_only, source="test")
    out = tmp_path / "eval"
    assert main([str(trained_model), "--test", str(first), f"dft={second}", "--out", str(out), "--threads", "1"]) == 0
    with open(out / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    overall = {row["test_set"]: row for row in rows if row["subset"] == "all"}
    assert sorted(overall) == ["crystal_set", "dft"]
    assert int(overall["crystal_set"]["n_structures"]) == 5 and int(overall["dft"]["n_structures"]) == 4
    assert float(overall["crystal_set"]["forces_mae"]) > 0 and float(overall["dft"]["energy_mae"]) > 0
    assert overall["dft"]["forces_mae"] == "" and overall["dft"]["stress_mae"] == ""  # missing, not zero
    table = (out / "metrics.md").read_text()
    assert "## crystal_set (5 structures)" in table and "## dft (4 structures)" in table
    assert table in capsys.readouterr().out
    model = trained_model.stem
    assert (out / f"parity_{model}_crystal_set.png").is_file() and (out / f"parity_{model}_dft.png").is_file()
    with pytest.raises(SystemExit, match="test set name dft given twice"):
        main([str(trained_model), "--test", f"dft={first}", f"dft={second}", "--out", str(out)])


def test_named_test_sets_under_ddp(files, tmp_path):
    """Two gloo processes: each test set's error sums are reduced over ranks in the step of its own
    last batch (odd set sizes, so the distributed sampler pads), with rank 0's progress bar on."""
    import subprocess
    import sys

    from test_resume import subprocess_environment
    from train_helpers import REPO_ROOT

    run_dir = tmp_path / "runs" / "ddp_files"
    overrides = tiny_overrides(files["train"], run_dir, **{
        "trainer": "ddp_cpu",
        "trainer.max_epochs": 1,
        "data.eval_batch_size": 2,  # several test batches per rank
        "data.test_paths": f"{{crystal: {files['crystals_test']}, dft: {files['energy_only']}}}",
        "progress_bar": "tqdm",
    })
    finished = subprocess.run([sys.executable, "-m", "mlip.cli.train", *overrides], cwd=REPO_ROOT,
                              env=subprocess_environment(), capture_output=True, text=True, timeout=240, check=False)
    assert finished.returncode == 0, finished.stderr[-3000:]
    test = json.loads((run_dir / "results.json").read_text())["test"]
    assert test["test/crystal/forces_mae"] > 0 and test["test/dft/energy_mae"] > 0
    assert not [name for name in test if name.startswith("test/dft/") and "forces" in name]
