"""Hydra configs: every experiment x backbone composes and instantiates into a working run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch_geometric.data import Batch
from train_helpers import REPO_ROOT, compose_config, write_emt_data

from mlip.train.build import (
    build_callbacks,
    build_datamodule,
    build_loggers,
    build_model,
    build_module,
    build_trainer,
    config_dir,
)
from mlip.train.checkpoint import AtomicCheckpointIO

CONFIGS = config_dir()
EXPERIMENTS = sorted(path.stem for path in (CONFIGS / "experiment").glob("*.yaml"))
BACKBONES = sorted(path.stem for path in (CONFIGS / "model" / "backbone").glob("*.yaml"))
LOGGERS = sorted(path.stem for path in (CONFIGS / "logger").glob("*.yaml"))


@pytest.fixture(scope="module")
def emt_files(tmp_path_factory) -> list[str]:
    return write_emt_data(tmp_path_factory.mktemp("emt"), n_clusters=6, n_crystals=6)


def test_config_groups_are_found():
    assert CONFIGS == REPO_ROOT / "mlip" / "configs"  # shipped inside the package
    assert "sample" in EXPERIMENTS and "mace" in BACKBONES and {"csv", "wandb", "tensorboard"} <= set(LOGGERS)


def test_sample_experiment_trains_on_both_shipped_files():
    config = compose_config(["experiment=sample"])
    assert [Path(p) for p in config.data.paths] == [REPO_ROOT / "mlip" / "sample_data" / "molecules.h5", REPO_ROOT / "mlip" / "sample_data" / "crystals.h5"]
    assert config.model.backbone._target_.endswith("MACEBackbone")
    assert config.data.cutoff == config.model.cutoff  # graphs are built with the model's cutoff


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_and_backbone_instantiate(experiment, backbone, emt_files, tmp_path):
    config = compose_config([f"experiment={experiment}", f"model/backbone={backbone}", f"data.paths=[{','.join(emt_files)}]",
                             "data.statistics_cache=false", "data.val_fraction=0.2", "data.test_fraction=0.0"])
    OmegaConf.resolve(config)  # every interpolation resolves
    datamodule = build_datamodule(config)
    statistics = datamodule.statistics()
    module = build_module(config, build_model(config, statistics))
    assert module.potential.cutoff == config.model.cutoff == datamodule.cutoff

    batch = Batch.from_data_list([datamodule.train_set[i] for i in range(3)])
    predictions = module.predict_batch(module.evaluation_model(), batch, training=False)
    assert torch.isfinite(predictions["energy"]).all() and predictions["forces"].shape == batch.pos.shape

    callbacks = build_callbacks(config, tmp_path, statistics)
    trainer = build_trainer(config, tmp_path, callbacks, build_loggers(config, tmp_path))
    assert trainer.max_epochs == config.trainer.max_epochs


@pytest.mark.parametrize("trainer", ["cpu", "ddp_cpu"])
@pytest.mark.parametrize("logger", LOGGERS)
def test_trainer_and_logger_options_instantiate(trainer, logger, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    config = compose_config([f"trainer={trainer}", f"logger={logger}"])
    loggers = build_loggers(config, tmp_path)
    assert len(loggers) == len(config.logger)
    built = build_trainer(config, tmp_path, [], loggers)
    assert built.num_devices == config.trainer.devices
    assert isinstance(built.strategy.checkpoint_io, AtomicCheckpointIO)  # every checkpoint is written atomically
    if trainer == "ddp_cpu":
        assert built.strategy.process_group_backend == "gloo"
    wandb = [entry for entry in loggers if type(entry).__name__ == "WandbLogger"]
    assert all(entry._offline for entry in wandb)  # no API key: never tries to log in


def test_gpu_trainer_configs_compose():
    for name in ("gpu", "ddp"):
        assert compose_config([f"trainer={name}"]).trainer.accelerator == "gpu"


def test_unknown_override_is_rejected():
    with pytest.raises(Exception, match="no_such_key"):
        compose_config(["trainer.no_such_key=1"])


def test_missing_data_file_is_named(tmp_path):
    config = compose_config(["data=files", f"data.paths=[{tmp_path}/missing.h5]"])
    with pytest.raises(Exception, match=r"data.paths: no such dataset file: .*missing.h5"):
        build_datamodule(config)
