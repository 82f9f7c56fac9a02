"""From a composed Hydra config to a finished training run.

`train(config, run_dir)` is the whole of `mlip-train` minus the command line: it builds the data
module, computes the statistics of the training split, builds the potential, the Lightning
module, callbacks, loggers and trainer, resumes if asked, fits, tests and exports. Each
``build_*`` function does one of those steps and can be used on its own.

Run directory layout::

    <run dir>/config.yaml          the resolved config
    <run dir>/.hydra/              Hydra's own record (config, overrides), when run by the CLI
    <run dir>/statistics.json      statistics of the training split
    <run dir>/checkpoints/last.ckpt    rolling checkpoint (resume from here)
    <run dir>/checkpoints/best.ckpt    best validation checkpoint
    <run dir>/best_model.pt        self-contained export of the best EMA weights (`mlip.load`)
    <run dir>/logs/metrics.csv     CSV logger
    <run dir>/results.json         final validation/test metrics
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import (
    ModelCheckpoint,
    RichProgressBar,
    TQDMProgressBar,
)
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from omegaconf import DictConfig, OmegaConf

from mlip.train.callbacks import BestModelExport, LastCheckpoint
from mlip.train.checkpoint import AtomicCheckpointIO, find_resume_checkpoint
from mlip.train.datamodule import PotentialDataModule, torch_dtype
from mlip.train.module import PotentialModule

REPO_ROOT = Path(__file__).resolve().parents[2]
BEST_MODEL = "best_model.pt"


# ----------------------------------------------------------------------------- configuration
def config_dir() -> Path:
    """Directory of the Hydra configs: ``$MLIP_CONFIG_DIR`` or ``configs/`` at the repository root."""
    directory = Path(os.environ.get("MLIP_CONFIG_DIR", REPO_ROOT / "configs")).resolve()
    if not (directory / "train.yaml").is_file():
        raise FileNotFoundError(
            f"mlip-train: no train.yaml in the config directory {directory}; install mlip from a source "
            "checkout (`pip install -e .`) or point MLIP_CONFIG_DIR at a copy of its configs/ folder"
        )
    return directory


def register_resolvers() -> None:
    """``${mlip_root:}`` -> the repository root (where the sample data lives)."""
    if not OmegaConf.has_resolver("mlip_root"):
        OmegaConf.register_new_resolver("mlip_root", lambda: str(REPO_ROOT))


def wandb_logger(save_dir: str, project: str = "mlip", name: str | None = None, **kwargs):
    """A `WandbLogger` that runs offline unless ``WANDB_API_KEY`` is set (never asks to log in)."""
    from lightning.pytorch.loggers import WandbLogger

    kwargs.setdefault("offline", not os.environ.get("WANDB_API_KEY"))
    return WandbLogger(save_dir=save_dir, project=project, name=name, **kwargs)


# ----------------------------------------------------------------------------- builders
def build_datamodule(config: DictConfig) -> PotentialDataModule:
    return instantiate(config.data, _convert_="all")


def model_statistics(statistics: Any) -> dict[str, Any]:
    """What `build_potential` takes from the training-split statistics.

    scale = force RMS (eV/Å; falls back to the per-atom energy residual std, then 1 eV),
    shift = mean per-atom energy residual after the reference energies (eV/atom, else 0).
    """
    scale = statistics.force_rms or statistics.energy_residual_per_atom_std or 1.0
    return {
        "elements": list(statistics.elements),
        "atomic_energies": dict(statistics.atomic_energies),
        "avg_num_neighbors": statistics.avg_num_neighbors,
        "scale": float(scale),
        "shift": float(statistics.energy_residual_per_atom_mean or 0.0),
    }


def build_model(config: DictConfig, statistics: Any) -> torch.nn.Module:
    """The `Potential` of ``config.model`` with elements/references/scale/shift from ``statistics``."""
    from mlip.models.potential import build_potential

    model_config = OmegaConf.to_container(config.model, resolve=True)
    return build_potential(model_config, model_statistics(statistics)).to(torch_dtype(config.dtype))


def build_module(config: DictConfig, potential: torch.nn.Module) -> PotentialModule:
    return PotentialModule(
        potential,
        loss=OmegaConf.to_container(config.loss, resolve=True),
        optimizer=OmegaConf.to_container(config.optimizer, resolve=True),
        scheduler=OmegaConf.to_container(config.scheduler, resolve=True),
        ema_decay=config.ema_decay,
        compute_stress=config.compute_stress,
        rotation_augmentation=config.symmetry.rotation_augmentation,
        equivariance_loss=OmegaConf.to_container(config.symmetry.equivariance_loss, resolve=True)
        if config.symmetry.equivariance_loss
        else None,
        rotation_gradient_penalty=config.symmetry.get("rotation_gradient_penalty"),
    )


def build_callbacks(config: DictConfig, run_dir: Path, statistics: Any) -> list[pl.Callback]:
    checkpoint_dir = run_dir / "checkpoints"
    callbacks: list[pl.Callback] = [
        LastCheckpoint(checkpoint_dir, config.checkpoint.every_n_train_steps),
        ModelCheckpoint(
            dirpath=checkpoint_dir,
            filename="best",
            monitor=config.checkpoint.monitor,
            mode=config.checkpoint.mode,
            save_top_k=1,
            save_last=False,
            enable_version_counter=False,
            auto_insert_metric_name=False,
        ),
        BestModelExport(
            run_dir / BEST_MODEL,
            monitor=config.checkpoint.monitor,
            mode=config.checkpoint.mode,
            config=OmegaConf.to_container(config, resolve=True),
            statistics=statistics,
        ),
    ]
    if config.progress_bar == "rich":
        callbacks.append(RichProgressBar())
    elif config.progress_bar == "tqdm":
        callbacks.append(TQDMProgressBar())
    elif config.progress_bar not in ("none", None, False):
        raise ValueError(f"progress_bar must be tqdm, rich or none, got {config.progress_bar!r}")
    callbacks.extend(instantiate(entry) for entry in config.callbacks)
    return callbacks


def build_loggers(config: DictConfig, run_dir: Path) -> list:
    entries = config.get("logger") or {}
    return [instantiate(entry, save_dir=str(run_dir)) for entry in entries.values() if entry is not None]


def build_trainer(config: DictConfig, run_dir: Path, callbacks: list, loggers: list) -> pl.Trainer:
    trainer_config = OmegaConf.to_container(config.trainer, resolve=True)
    strategy = trainer_config.pop("strategy", "auto")
    if isinstance(strategy, dict):
        strategy = instantiate(strategy)
    return pl.Trainer(
        **trainer_config,
        strategy=strategy,
        default_root_dir=str(run_dir),
        callbacks=callbacks,
        logger=loggers or False,
        enable_progress_bar=config.progress_bar not in ("none", None, False),
        enable_checkpointing=True,
        plugins=[AtomicCheckpointIO()],
        inference_mode=False,  # validation needs autograd for forces
    )


# ----------------------------------------------------------------------------- files
@rank_zero_only
def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2, sort_keys=True, default=float) + "\n")
    os.replace(temporary, path)


@rank_zero_only
def write_config(path: Path, config: DictConfig) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(OmegaConf.to_yaml(config, resolve=True))
    os.replace(temporary, path)


@contextlib.contextmanager
def _quiet_known_warnings():
    """Silence Lightning warnings that do not apply to how mlip trains."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")  # the EMA copy stays in eval mode
        # per-subset errors are summed over ranks by the module itself (see PotentialModule)
        warnings.filterwarnings("ignore", message=".*when logging on epoch level in distributed setting.*")
        yield


def _metrics(trainer: pl.Trainer) -> dict[str, float]:
    return {name: float(value) for name, value in trainer.callback_metrics.items()}


# ----------------------------------------------------------------------------- the run
def train(config: DictConfig, run_dir: str | os.PathLike, extra_callbacks: Sequence[pl.Callback] = ()) -> dict[str, Any]:
    """Train (or resume) the run described by ``config`` in ``run_dir``; returns its results.

    ``config.num_threads`` (if set) applies to torch's intra-op threads for the duration of the run.
    ``extra_callbacks`` are added to those of the config (e.g. a throughput meter).
    """
    previous_threads = torch.get_num_threads()
    if config.get("num_threads"):
        torch.set_num_threads(int(config.num_threads))
    try:
        return _train(config, run_dir, list(extra_callbacks))
    finally:
        torch.set_num_threads(previous_threads)


def _train(config: DictConfig, run_dir: str | os.PathLike, extra_callbacks: list[pl.Callback]) -> dict[str, Any]:
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(config.seed, workers=True)
    write_config(run_dir / "config.yaml", config)

    datamodule = build_datamodule(config)
    statistics = datamodule.statistics()
    write_json(run_dir / "statistics.json", statistics.to_dict())
    rank_zero_info(f"mlip-train: run directory {run_dir}; split sizes {datamodule.split_sizes()}")

    module = build_module(config, build_model(config, statistics))
    callbacks = build_callbacks(config, run_dir, statistics) + extra_callbacks
    trainer = build_trainer(config, run_dir, callbacks, build_loggers(config, run_dir))
    resume_from = find_resume_checkpoint(config.resume, run_dir / "checkpoints")
    if resume_from:
        rank_zero_info(f"mlip-train: resuming from {resume_from}")
    with _quiet_known_warnings():
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
        results = {"global_step": trainer.global_step, "epoch": trainer.current_epoch, "resumed_from": resume_from}
        results["fit"] = _metrics(trainer)
        if config.test_after_fit and datamodule.test_set is not None and len(datamodule.test_set) > 0:
            best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            trainer.test(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
            results["test"] = {k: v for k, v in _metrics(trainer).items() if k.startswith("test/")}
    results["best_model"] = str(run_dir / BEST_MODEL) if (run_dir / BEST_MODEL).is_file() else None
    write_json(run_dir / "results.json", results)
    return results
