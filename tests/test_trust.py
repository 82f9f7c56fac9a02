"""What a model file or a checkpoint may do when it is loaded, and what a rerun keeps.

A model file (`mlip.export`) is data: it may name only registered backbones and can never make
mlip import or call anything else. A resumed run loads its checkpoint with ``weights_only=True``
whatever torch's default is. A rerun or resume never destroys the history of the run
(metrics.csv, results.json, config.yaml, statistics.json), and a run always ends with a
validated, exported model. See docs/calculator.md and docs/training.md.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from train_helpers import cluster_structures, compose_config, read_metrics, tiny_overrides, write_emt_data

import mlip
from mlip.data.writer import write_structures
from mlip.export import export_model, read_export
from mlip.models.backbones import BACKBONES, MACEBackbone, register_backbone
from mlip.models.build import UnregisteredBackboneError, build_potential
from mlip.train.build import train

CUTOFF = 4.0
TINY_MACE = {"num_channels": 4, "num_layers": 1, "correlation": 1, "radial_mlp": [4]}
FIELD = "potential_config.backbone._target_"


# ------------------------------------------------------------------------------ model files
def tiny_potential(backbone: dict | None = None, trusted: bool = False):
    """An untrained Cu/Al potential (the elements of the EMT test data)."""
    config = {"backbone": backbone or {"name": "mace", **TINY_MACE}, "cutoff": CUTOFF, "condition_dim": 4,
              "readout_hidden": [4]}
    statistics = {"elements": [13, 29], "atomic_energies": {13: -0.5, 29: -0.3}, "avg_num_neighbors": 6.0}
    return build_potential(config, statistics, dtype=torch.float32, trusted=trusted)


@pytest.fixture(scope="module")
def good_export(tmp_path_factory) -> Path:
    return export_model(tiny_potential(), tmp_path_factory.mktemp("models") / "good.pt")


def tamper(source: Path, destination: Path, backbone: dict) -> Path:
    """A copy of the export ``source`` whose backbone entry is replaced by ``backbone``."""
    payload = torch.load(source, weights_only=True)
    payload["potential_config"]["backbone"] = backbone
    torch.save(payload, destination)
    return destination


def os_system(marker: Path) -> dict:
    return {"_target_": "os.system", "command": f"touch {marker}"}


def assert_refused(error: BaseException, path: Path) -> None:
    message = str(error)
    assert FIELD in message and str(path) in message, message


def test_export_names_its_backbone_by_registry_name(good_export):
    backbone = read_export(good_export)["potential_config"]["backbone"]
    assert backbone["name"] == "mace"
    assert backbone["_target_"] == f"{MACEBackbone.__module__}.{MACEBackbone.__qualname__}"
    assert isinstance(mlip.load(good_export).backbone, MACEBackbone)


def test_export_without_name_but_with_a_registered_target_still_loads(good_export, tmp_path):
    backbone = dict(read_export(good_export)["potential_config"]["backbone"])
    del backbone["name"]  # files written before the name was stored
    path = tamper(good_export, tmp_path / "old.pt", backbone)
    assert isinstance(mlip.load(path).backbone, MACEBackbone)


@pytest.mark.parametrize(
    "backbone",
    [
        pytest.param(lambda marker: os_system(marker), id="os.system"),
        pytest.param(lambda marker: {**os_system(marker), "name": "mace"}, id="name-and-foreign-target"),
        pytest.param(lambda marker: {"_target_": "mlip.export.export_model", "model": None, "path": str(marker)},
                     id="mlip-function"),
        pytest.param(lambda marker: {"_target_": "mlip.models.backbones.base.Backbone"}, id="unregistered-base"),
    ],
)
def test_load_refuses_a_backbone_outside_the_registry(good_export, tmp_path, backbone):
    marker = tmp_path / "pwned"
    path = tamper(good_export, tmp_path / "evil.pt", backbone(marker))
    with pytest.raises(UnregisteredBackboneError) as error:
        mlip.load(path)
    assert_refused(error.value, path)
    assert not marker.exists()


def test_load_refuses_an_unknown_registry_name(good_export, tmp_path):
    path = tamper(good_export, tmp_path / "evil.pt", {"name": "os.system", "command": "true"})
    with pytest.raises(UnregisteredBackboneError, match=r"potential_config\.backbone\.name"):
        mlip.load(path)


def test_load_refuses_unknown_keywords_and_non_plain_values(good_export, tmp_path):
    backbone = dict(read_export(good_export)["potential_config"]["backbone"])
    path = tamper(good_export, tmp_path / "extra.pt", {**backbone, "command": "touch x"})
    with pytest.raises(ValueError, match=r"potential_config\.backbone\.command.*not a keyword of MACEBackbone"):
        mlip.load(path)
    path = tamper(good_export, tmp_path / "tensor.pt", {**backbone, "num_channels": torch.tensor(4)})
    with pytest.raises(ValueError, match=r"potential_config\.backbone\.num_channels.*plain"):
        mlip.load(path)
    payload = torch.load(good_export, weights_only=True)
    payload["dtype"] = "load"  # would be getattr(torch, "load")
    torch.save(payload, tmp_path / "dtype.pt")
    with pytest.raises(ValueError, match=r"dtype\.pt.*`dtype`.*'load'"):
        mlip.load(tmp_path / "dtype.pt")


def test_calculator_refuses_a_tampered_model(good_export, tmp_path):
    from mlip.calculator import MLIPCalculator

    marker = tmp_path / "pwned"
    path = tamper(good_export, tmp_path / "evil.pt", os_system(marker))
    with pytest.raises(ValueError) as error:
        MLIPCalculator(str(path))
    assert_refused(error.value, path)
    assert not marker.exists()


@pytest.fixture(scope="module")
def emt_test_set(tmp_path_factory) -> list[str]:
    return write_emt_data(tmp_path_factory.mktemp("emt_eval"), n_clusters=2, n_crystals=2)


def test_mlip_eval_refuses_a_tampered_model_file_and_a_folder_holding_one(good_export, emt_test_set, tmp_path):
    from mlip.cli.evaluate import main

    marker = tmp_path / "pwned"
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    shutil.copy(good_export, zoo / "a_good.pt")  # evaluated first, then the tampered one is met
    evil = tamper(good_export, zoo / "z_evil.pt", os_system(marker))
    for models in ([str(evil)], [str(zoo)]):
        with pytest.raises((ValueError, SystemExit)) as error:
            main([*models, "--data", *emt_test_set, "--out", str(tmp_path / "eval"), "--no-plots", "--threads", "1"])
        assert_refused(error.value, evil)
        assert not marker.exists()


def test_mlip_eval_tasks_refuse_a_tampered_model_file(good_export, emt_test_set, tmp_path):
    """The physical tasks (mlip.zoo) load model files through the same trust rules."""
    from mlip.cli.evaluate import main

    marker = tmp_path / "pwned"
    evil = tamper(good_export, tmp_path / "evil.pt", os_system(marker))
    with pytest.raises((ValueError, SystemExit)) as error:
        main([str(evil), "--data", *emt_test_set, "--tasks", "dimers", "--out", str(tmp_path / "eval"), "--no-progress"])
    assert_refused(error.value, evil)
    assert not marker.exists()


def test_mlip_md_refuses_a_tampered_model(good_export, emt_test_set, tmp_path):
    from mlip.cli.md import main

    marker = tmp_path / "pwned"
    evil = tamper(good_export, tmp_path / "evil.pt", os_system(marker))
    with pytest.raises((ValueError, SystemExit)) as error:
        main([str(evil), emt_test_set[0], "--steps", "2", "--threads", "1"])
    assert_refused(error.value, evil)
    assert not marker.exists()


class EchoBackbone(MACEBackbone):
    """A user's own backbone, named by import path in a (trusted) training config."""


def test_user_backbone_builds_from_a_trusted_config_and_loads_once_registered(tmp_path):
    target = {"_target_": f"{__name__}.EchoBackbone", **TINY_MACE}
    with pytest.raises(UnregisteredBackboneError, match="register_backbone"):
        tiny_potential(target)  # untrusted by default: no import of a named path
    path = export_model(tiny_potential(target, trusted=True), tmp_path / "echo.pt")
    with pytest.raises(UnregisteredBackboneError, match="register_backbone"):
        mlip.load(path)
    register_backbone("echo", EchoBackbone)
    try:
        assert type(mlip.load(path).backbone) is EchoBackbone
    finally:
        del BACKBONES["echo"]


# ------------------------------------------------------------------------------ training runs
@pytest.fixture(scope="module")
def emt_files(tmp_path_factory) -> list[str]:
    return write_emt_data(tmp_path_factory.mktemp("emt"), n_clusters=8, n_crystals=8)


def tiny_config(paths: list[str], run_dir: Path, **extra):
    settings = {"trainer.max_epochs": 2, "data.test_fraction": 0.2, "data.val_fraction": 0.2}
    settings.update(extra)
    return compose_config(tiny_overrides(paths, run_dir, **settings))


class Pwned:
    """Unpickling this runs ``touch <marker>`` (what a tampered checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_resume_refuses_a_checkpoint_with_pickled_code_even_when_torch_defaults_to_unsafe_loads(
    emt_files, tmp_path, monkeypatch
):
    run_dir = tmp_path / "run"
    train(tiny_config(emt_files, run_dir, **{"trainer.max_epochs": 1}), run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)  # a real mlip checkpoint is plain data
    marker = tmp_path / "pwned"
    checkpoint["callbacks"]["Pwned"] = Pwned(marker)
    torch.save(checkpoint, last)

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(ValueError, match=r"last\.ckpt.*weights_only"):
        train(tiny_config(emt_files, run_dir, **{"trainer.max_epochs": 2}), run_dir)
    assert not marker.exists()


def test_lightning_reads_checkpoints_through_a_weights_only_load(emt_files, tmp_path, monkeypatch):
    from mlip.train.checkpoint import AtomicCheckpointIO

    run_dir = tmp_path / "run"
    train(tiny_config(emt_files, run_dir, **{"trainer.max_epochs": 1}), run_dir)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    io = AtomicCheckpointIO()
    for name in ("last.ckpt", "best.ckpt"):  # loop, callback, optimiser and RNG states are all plain data
        checkpoint = io.load_checkpoint(run_dir / "checkpoints" / name)
        expected = {"loops", "callbacks", "optimizer_states", "lr_schedulers", "rng_states", "state_dict"}
        assert expected <= set(checkpoint)
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {}, "evil": Pwned(marker)}, tmp_path / "evil.ckpt")
    with pytest.raises(ValueError, match=r"evil\.ckpt.*weights_only=True"):
        io.load_checkpoint(tmp_path / "evil.ckpt")
    with pytest.raises(ValueError, match="weights_only=True only"):
        io.load_checkpoint(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert not marker.exists()


def test_rerunning_a_finished_run_keeps_metrics_and_results(emt_files, tmp_path):
    run_dir = tmp_path / "run"
    config = tiny_config(emt_files, run_dir)
    train(config, run_dir)
    rows = read_metrics(run_dir)
    first = json.loads((run_dir / "results.json").read_text())
    assert any("val/loss" in row for row in rows)

    again = train(config, run_dir)  # "again: resumes" -- nothing left to train
    assert again["resumed_from"] == str(run_dir / "checkpoints" / "last.ckpt")
    after = read_metrics(run_dir)
    assert after[: len(rows)] == rows  # every earlier row kept, in order
    results = json.loads((run_dir / "results.json").read_text())
    assert results["global_step"] == first["global_step"]
    assert results["fit"]["val/loss"] == pytest.approx(first["fit"]["val/loss"], rel=1e-5)  # same EMA weights
    assert results["test"]["test/forces_mae"] == pytest.approx(first["test"]["test/forces_mae"], rel=1e-5)


def test_resuming_with_a_changed_model_fails_before_touching_the_run(emt_files, tmp_path):
    run_dir = tmp_path / "run"
    train(tiny_config(emt_files, run_dir, **{"trainer.max_epochs": 1}), run_dir)
    kept = {name: (run_dir / name).read_bytes() for name in ("config.yaml", "statistics.json", "logs/metrics.csv")}

    changed = tiny_config(emt_files, run_dir, **{"trainer.max_epochs": 2, "model.backbone.num_channels": 16})
    with pytest.raises(ValueError, match=r"(?s)last\.ckpt.*model\.backbone\.num_channels: 8 -> 16.*potential\."):
        train(changed, run_dir)
    assert {name: (run_dir / name).read_bytes() for name in kept} == kept


def test_a_copied_run_directory_tests_its_own_best_checkpoint(emt_files, tmp_path):
    original = tmp_path / "original"
    train(tiny_config(emt_files, original), original)
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)
    shutil.rmtree(original)  # the absolute best_model_path stored in the checkpoint now points nowhere

    results = train(tiny_config(emt_files, copy), copy)
    assert results["test"]["test/forces_mae"] > 0
    assert not original.exists()


def test_a_run_that_stops_before_its_first_validation_is_validated_and_exported(emt_files, tmp_path):
    run_dir = tmp_path / "run"
    results = train(tiny_config(emt_files, run_dir, **{"trainer.max_epochs": 5, "trainer.max_steps": 2}), run_dir)
    assert results["global_step"] == 2
    assert results["best_model"] == str(run_dir / "best_model.pt")
    assert read_export(run_dir / "best_model.pt")["training"]["global_step"] == 2
    assert "val/loss" in json.loads((run_dir / "results.json").read_text())["fit"]
    mlip.load(run_dir / "best_model.pt")


def test_the_final_weights_are_exported_when_no_validation_was_finite(tmp_path):
    from types import SimpleNamespace

    from mlip.train.callbacks import BestModelExport

    export = BestModelExport(tmp_path / "best_model.pt", "val/loss", "min", config={}, statistics=None)
    trainer = SimpleNamespace(callback_metrics={"val/loss": torch.tensor(float("nan"))}, global_step=3,
                              sanity_checking=False)
    export.on_validation_end(trainer, None)  # a NaN is never a new best
    assert export.validated_step == 3 and not export.path.exists()
    with pytest.warns(UserWarning, match="exporting the final EMA weights"):
        export.export_current(trainer, tiny_potential())
    training = read_export(export.path)["training"]
    assert training["global_step"] == 3 and np.isnan(training["value"])


def test_an_element_missing_from_the_training_split_is_named_before_training(emt_files, tmp_path):
    odd = tmp_path / "odd.h5"
    nickel = cluster_structures(1, seed=7)[0]
    nickel.numbers = np.where(np.arange(len(nickel.numbers)) == 0, 28, nickel.numbers)  # one Ni atom
    nickel.id = "nickel-cluster"
    write_structures(odd, [nickel], source="test")
    paths = [*emt_files, str(odd)]
    n = 17  # 8 clusters, 8 crystals, the Ni cluster last
    seed = next(s for s in range(1000) if n - 1 in np.random.default_rng(s).permutation(n)[: round(0.2 * n)])
    run_dir = tmp_path / "run"
    config = tiny_config(paths, run_dir, **{"data.split_seed": seed})
    with pytest.raises(ValueError, match=r"(?s)Ni.*validation.*odd\.h5.*nickel-cluster") as error:
        train(config, run_dir)
    assert "test split" not in str(error.value)
    assert not (run_dir / "checkpoints" / "last.ckpt").exists()


def test_optimizer_and_schedule_targets_come_from_the_current_config_never_from_files(emt_files, tmp_path):
    """The optimiser/scheduler `_target_`s are built from the user's training config only: a
    checkpoint or model file naming one (here os.system) is resumed/loaded without calling it."""
    run_dir = tmp_path / "run"
    train(tiny_config(emt_files, run_dir, **{"trainer.max_epochs": 1}), run_dir)
    marker = tmp_path / "pwned"
    last = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    checkpoint["hyper_parameters"] = {"optimizer": os_system(marker), "scheduler": os_system(marker)}
    torch.save(checkpoint, last)
    model_file = run_dir / "best_model.pt"
    payload = torch.load(model_file, weights_only=True)
    assert payload["config"]["optimizer"]["_target_"] == "torch.optim.AdamW"  # provenance only
    payload["config"]["optimizer"] = payload["config"]["scheduler"] = os_system(marker)
    torch.save(payload, model_file)
    mlip.load(model_file)
    assert not marker.exists()

    resumed = train(tiny_config(emt_files, run_dir, **{"trainer.max_epochs": 2, "optimizer._target_": "torch.optim.Adam",
                                                       "scheduler": "constant"}), run_dir)
    assert resumed["resumed_from"] == str(last) and resumed["global_step"] > checkpoint["global_step"]
    assert not marker.exists()
