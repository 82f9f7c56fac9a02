"""From a composed Hydra config to a finished training run.

`train(config, run_dir)` is the whole of `mlip-train` minus the command line: it builds the data
module, checks that the validation/test elements occur in the training split, computes the
statistics of the training split, builds the potential and the Lightning module, checks a
checkpoint to resume from against it (before any file of the run is rewritten), builds the
callbacks, loggers and trainer, fits, validates the final weights if fit ended without doing so,
exports, and tests. Each ``build_*`` and ``check_*`` function does one step and can be used alone.

Run directory layout::

    <run dir>/config.yaml          the resolved config
    <run dir>/.hydra/              Hydra's own record (config, overrides), when run by the CLI
    <run dir>/statistics.json      statistics of the training split
    <run dir>/head_statistics.json multi-head runs: the statistics of each head's training data
    <run dir>/checkpoints/last.ckpt    rolling checkpoint (resume from here)
    <run dir>/checkpoints/best.ckpt    best validation checkpoint
    <run dir>/best_model.pt        self-contained export of the best EMA weights (`mlip.load`)
    <run dir>/logs/metrics.csv     CSV logger (a resumed run appends to it)
    <run dir>/results.json         final validation/test metrics
    <run dir>/finetune.json        with init_from: the model file it started from (mlip.train.finetune)
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
import numpy as np
import torch
from ase.data import chemical_symbols
from hydra.utils import instantiate
from lightning.pytorch.callbacks import (
    ModelCheckpoint,
    RichProgressBar,
    TQDMProgressBar,
)
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from omegaconf import DictConfig, OmegaConf

from mlip.files import atomic_write
from mlip.train.callbacks import BestModelExport, LastCheckpoint, TrainingClock
from mlip.train.checkpoint import AtomicCheckpointIO, find_resume_checkpoint, load_checkpoint_file
from mlip.train.datamodule import PotentialDataModule, torch_dtype
from mlip.train.module import PotentialModule

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the installed mlip package
CONFIG_DIR = PACKAGE_DIR / "configs"  # Hydra configs, shipped as package data
SAMPLE_DATA_DIR = PACKAGE_DIR / "sample_data"  # molecules.h5, crystals.h5, shipped as package data
BEST_MODEL = "best_model.pt"
HEAD_STATISTICS = "head_statistics.json"  # multi-head runs: statistics of each head's training data


# ----------------------------------------------------------------------------- configuration
def config_dir() -> Path:
    """Directory of the Hydra configs: ``$MLIP_CONFIG_DIR`` if set, else ``mlip/configs/`` of the installed package."""
    directory = Path(os.environ.get("MLIP_CONFIG_DIR") or CONFIG_DIR).resolve()
    if not (directory / "train.yaml").is_file():
        where = "MLIP_CONFIG_DIR" if os.environ.get("MLIP_CONFIG_DIR") else "the mlip package (a broken install?)"
        raise FileNotFoundError(
            f"mlip-train: no train.yaml in the config directory {directory} (from {where}); point "
            "MLIP_CONFIG_DIR at a copy of mlip's configs/ folder, or unset it to use the packaged configs"
        )
    return directory


def sample_data_dir() -> Path:
    """Directory of the shipped sample data (``molecules.h5``, ``crystals.h5``): ``mlip/sample_data/``."""
    return SAMPLE_DATA_DIR


def register_configs() -> None:
    """Config nodes defined in Python: ``loss/default`` = `mlip.train.losses.LossConfig` (the one
    source of the loss weights' defaults; train.yaml's defaults list selects it)."""
    from hydra.core.config_store import ConfigStore

    from mlip.train.losses import LossConfig

    ConfigStore.instance().store(group="loss", name="default", node=LossConfig)


def register_resolvers() -> None:
    """What composing the configs needs: ``${mlip_sample_data:}`` -> the directory of the shipped
    sample data (`sample_data_dir`), and the Python config nodes (`register_configs`)."""
    if not OmegaConf.has_resolver("mlip_sample_data"):
        OmegaConf.register_new_resolver("mlip_sample_data", lambda: str(sample_data_dir()))
    register_configs()


def wandb_logger(save_dir: str, project: str = "mlip", name: str | None = None, **kwargs):
    """A `WandbLogger` that runs offline unless ``WANDB_API_KEY`` is set (never asks to log in)."""
    from lightning.pytorch.loggers import WandbLogger

    kwargs.setdefault("offline", not os.environ.get("WANDB_API_KEY"))
    return WandbLogger(save_dir=save_dir, project=project, name=name, **kwargs)


# ----------------------------------------------------------------------------- builders
def build_datamodule(config: DictConfig) -> PotentialDataModule:
    """The data module of ``config.data``. ``data.exclude_isolated_atoms: auto`` (the default)
    leaves isolated atoms out of the training split exactly when the reference energies are
    ``isolated`` (``model.atomic_energies``, or ``finetune.atomic_energies`` with ``init_from``;
    they are then references, not training structures)."""
    exclude = config.data.get("exclude_isolated_atoms", "auto")
    if exclude == "auto":
        choice = _reference_choice(config)
        exclude = choice == "isolated" or (isinstance(choice, dict) and "isolated" in choice.values())
    return instantiate(config.data, exclude_isolated_atoms=bool(exclude), _convert_="all")


def model_statistics(statistics: Any) -> dict[str, Any]:
    """What `build_potential` takes from the training-split statistics.

    scale = force RMS (eV/Å; falls back to the per-atom energy residual std, then 1 eV),
    shift = mean per-atom energy residual after the reference energies (eV/atom, else 0),
    isolated_atom_energies = energies of the single-atom structures (eV by Z; for
    ``model.atomic_energies=isolated``), shortest_distances = the shortest distance of each
    element pair (Å; for ``model.inner_cutoff=auto``).
    """
    scale = statistics.force_rms or statistics.energy_residual_per_atom_std or 1.0
    return {
        "elements": list(statistics.elements),
        "atomic_energies": dict(statistics.atomic_energies),
        "isolated_atom_energies": dict(getattr(statistics, "isolated_atom_energies", None) or {}),
        "avg_num_neighbors": statistics.avg_num_neighbors,
        "scale": float(scale),
        "shift": float(statistics.energy_residual_per_atom_mean or 0.0),
        "shortest_distances": dict(getattr(statistics, "shortest_distances", None) or {}),
    }


def read_isolated_atom_energies(path: str | os.PathLike) -> dict[int, float]:
    """eV by Z of the single-atom structures with an energy in ``path`` (any format of
    `mlip.data.convert.read_structures`: extxyz with ``energy=`` in info, an mlip HDF5, ...).
    Structures with more than one atom are ignored; an element given twice with different
    energies is an error."""
    from mlip.data.convert import read_structures

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.isolated_atoms: no such file {path}")
    energies: dict[int, float] = {}
    for structure in read_structures(path):
        if structure.n_atoms != 1 or structure.energy is None:
            continue
        z, energy = int(structure.numbers[0]), float(structure.energy)
        if z in energies and energies[z] != energy:
            raise ValueError(
                f"model.isolated_atoms: {path} has two energies for {chemical_symbols[z]}: {energies[z]} and {energy} eV"
            )
        energies[z] = energy
    if not energies:
        raise ValueError(f"model.isolated_atoms: {path} has no single-atom structure with an energy")
    return energies


def _reference_choice(config: DictConfig) -> Any:
    """What the reference energies are: ``finetune.atomic_energies`` with ``init_from``, else ``model.atomic_energies``."""
    if config.get("init_from"):
        from mlip.train.finetune import finetune_settings

        return finetune_settings(config)["atomic_energies"]
    return config.model.get("atomic_energies")


def build_model(config: DictConfig, statistics: Any, pretrained: Any = None, head_statistics: Any = None) -> torch.nn.Module:
    """The `Potential` of ``config.model`` with elements/references/scale/shift from ``statistics``.

    The model is built in ``config.dtype``. The training config is the user's own: its ``model.backbone._target_`` may import a backbone
    class of their code (``trusted=True``; model files never can, see `mlip.export`).
    ``model.atomic_energies``: ``average`` (default), ``isolated`` (from ``model.isolated_atoms``,
    a file, else from the single-atom structures of the training data) or a mapping
    {symbol or Z: eV}; see docs/models.md.

    Multi-head (``head_statistics``: {head: statistics of its training data}, from ``data.heads``):
    one head per entry, each with the references, scale and shift of its own data; then
    ``model.atomic_energies`` may also be {head: choice} and ``model.isolated_atoms`` {head: file}.

    With ``config.init_from`` (a model file; ``pretrained``: it already read by
    `mlip.train.finetune.read_pretrained`) the model is the file's, expanded to new elements,
    with the reference energies of ``finetune.atomic_energies`` (`mlip.train.finetune`).
    """
    from mlip.models.build import build_potential

    model_config = OmegaConf.to_container(config.model, resolve=True)
    values = model_statistics(statistics)
    if head_statistics:
        model_config["heads"] = list(head_statistics)
        values["heads"] = {name: model_statistics(head) for name, head in head_statistics.items()}
    choice, field = _reference_choice(config), "finetune" if config.get("init_from") else "model"
    isolated_atoms = model_config.pop("isolated_atoms", None)
    if isolated_atoms is not None:
        uses_isolated = choice == "isolated" or (isinstance(choice, dict) and "isolated" in choice.values())
        if not uses_isolated:
            raise ValueError(
                f"model.isolated_atoms={isolated_atoms} is only used with {field}.atomic_energies=isolated "
                f"(got {choice!r})"
            )
        if isinstance(isolated_atoms, dict):  # {head: file}
            if not head_statistics:
                raise ValueError("model.isolated_atoms: a mapping {head: file} needs data.heads; give one file instead")
            unknown = sorted(set(isolated_atoms) - set(head_statistics))
            if unknown:
                raise ValueError(f"model.isolated_atoms: unknown head(s) {unknown}; heads are {list(head_statistics)}")
            for name, path in isolated_atoms.items():
                values["heads"][name]["isolated_atom_energies"] = read_isolated_atom_energies(path)
                values["heads"][name]["isolated_atoms_source"] = str(path)
        else:
            values["isolated_atom_energies"] = read_isolated_atom_energies(isolated_atoms)
            values["isolated_atoms_source"] = str(isolated_atoms)
            for head in (values.get("heads") or {}).values():  # one file for every head
                head["isolated_atom_energies"] = values["isolated_atom_energies"]
                head["isolated_atoms_source"] = values["isolated_atoms_source"]
    if config.get("init_from"):
        from mlip.train.finetune import build_finetuned_potential, read_pretrained

        pretrained = pretrained or read_pretrained(config.init_from)
        return build_finetuned_potential(
            pretrained, values, choice, dtype=torch_dtype(config.dtype), **_finetune_heads(config)
        )
    # built in its precision, never built in float32 and cast (see mlip.models.build)
    return build_potential(model_config, values, dtype=torch_dtype(config.dtype), trusted=True)


def _finetune_heads(config: DictConfig) -> dict[str, Any]:
    from mlip.train.finetune import finetune_settings

    settings = finetune_settings(config)
    return {"pretrained_head": settings["pretrained_head"], "replay_head": settings["replay_head"]}


def build_module(config: DictConfig, potential: torch.nn.Module) -> PotentialModule:
    """The `PotentialModule` of ``config``: its optimiser and schedule are the ``_target_``s of
    ``config.optimizer`` / ``config.scheduler`` (the user's training config, trusted; see
    `mlip.train.schedules`). ``scheduler: null`` keeps the learning rate constant.
    The parameters named by ``finetune.freeze`` are frozen first (`mlip.train.finetune.freeze_parameters`):
    the optimiser and the EMA leave them alone."""
    from mlip.train.finetune import finetune_settings, freeze_parameters

    patterns = finetune_settings(config)["freeze"]
    if patterns:
        frozen = freeze_parameters(potential, patterns)
        rank_zero_info(f"mlip-train: finetune.freeze froze {len(frozen)} parameter tensors")
    return PotentialModule(
        potential,
        loss=OmegaConf.to_container(config.loss, resolve=True),
        optimizer=OmegaConf.to_container(config.optimizer, resolve=True),
        scheduler=OmegaConf.to_container(config.scheduler, resolve=True) if config.get("scheduler") else None,
        ema_decay=config.ema_decay,
        compute_stress=config.compute_stress,
        rotation_augmentation=config.symmetry.rotation_augmentation,
        equivariance_loss=OmegaConf.to_container(config.symmetry.equivariance_loss, resolve=True)
        if config.symmetry.equivariance_loss
        else None,
        rotation_gradient_penalty=config.symmetry.get("rotation_gradient_penalty"),
        nonfinite=config.get("nonfinite", "raise"),
        check_weights_every_n_steps=config.get("check_weights_every_n_steps", 100),
    )


def build_callbacks(
    config: DictConfig, run_dir: Path, statistics: Any, finetuned_from: dict | None = None
) -> list[pl.Callback]:
    """The run's callbacks: the fit clock (``time/fit_seconds``), ``last.ckpt``, ``best.ckpt``, the ``best_model.pt`` export, the
    training stage two of ``config.stage_two`` (`mlip.train.stages.StageTwo`, if set), the
    progress bar and ``config.callbacks``. ``finetuned_from``: the provenance the export records
    (`mlip.train.finetune.finetune_provenance`)."""
    from mlip.train.stages import StageTwo, StageTwoConfig

    checkpoint_dir = run_dir / "checkpoints"
    stage_two = StageTwoConfig.from_config(
        OmegaConf.to_container(config.stage_two, resolve=True) if config.get("stage_two") else None
    )
    callbacks: list[pl.Callback] = [
        TrainingClock(),
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
            finetuned_from=finetuned_from,
        ),
    ]
    if stage_two is not None:
        callbacks.append(StageTwo(stage_two, export_path=run_dir / BEST_MODEL))
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


# ----------------------------------------------------------------------------- checks
MAX_LISTED = 5  # offending structures named per split in an error message


def _element_names(numbers) -> str:
    return ", ".join(f"{chemical_symbols[int(z)]} (Z={int(z)})" for z in numbers)


def _first(items: Sequence[str], total: int | None = None) -> str:
    """The first `MAX_LISTED` items joined by "; ", and how many more there are."""
    total = len(items) if total is None else total
    more = f"; and {total - MAX_LISTED} more" if total > MAX_LISTED else ""
    return "; ".join(items[:MAX_LISTED]) + more


def evaluation_sets(datamodule: PotentialDataModule) -> list[tuple[str, Any]]:
    """(label for messages, dataset) of the validation set and every test set of ``datamodule``."""
    datamodule.setup()
    validation = "validation files (data.val_paths)" if datamodule.val_paths is not None else "validation split"
    sets = [(validation, datamodule.val_set)]
    for name, dataset in datamodule.test_sets.items():
        sets.append(("test split" if name is None else f"test set {name!r} (data.test_paths)", dataset))
    return sets


def check_split_elements(datamodule: PotentialDataModule, known_elements: Sequence[int] = ()) -> None:
    """Every element of the validation and test data must occur in the training split (or in
    ``known_elements``: those of a pretrained model, ``init_from``).

    Covers the random validation/test splits and the files of ``data.val_paths`` and
    ``data.test_paths`` alike.

    The model knows only the training split's elements (its statistics); without this check a
    foreign element fails validation after a whole epoch, before any checkpoint. Raises
    ValueError naming the elements and, per split, the first structures (file, index, id).
    """
    from mlip.data.reader import numbers_to_bitmask

    datamodule.setup()
    known = sorted({int(z) for z in datamodule.train_set.elements} | {int(z) for z in known_elements})
    known_mask = numbers_to_bitmask(known)
    problems = []
    for split, dataset in evaluation_sets(datamodule):
        if dataset is None or len(dataset) == 0:
            continue
        unknown = sorted(set(int(z) for z in dataset.elements) - set(known))
        if not unknown:
            continue
        offending = np.flatnonzero(((dataset.element_masks & ~known_mask) != 0).any(axis=1))
        listed = []
        for index in offending[:MAX_LISTED]:  # reads only these structures
            path, local_index = dataset.locate(int(index))
            structure = dataset.get_structure(int(index))
            label = f", id {structure.id!r}" if structure.id else ""
            extra = sorted(set(int(z) for z in structure.numbers) - set(known))
            listed.append(f"{path} structure {local_index}{label} has {_element_names(extra)}")
        problems.append(
            f"{_element_names(unknown)} in {len(offending)} structure(s) of the {split}: "
            + _first(listed, total=len(offending))
        )
    if problems:
        where = "the training split and the pretrained model of init_from, which have" if known_elements else (
            "the training split, which has")
        raise ValueError(
            f"data: elements missing from {where} {_element_names(known)}, so the model "
            f"cannot predict them: {'. '.join(problems)}. Add training structures with these elements, leave "
            "the structures out (e.g. data.subsets or other data.val_paths/data.test_paths), or draw another "
            "split (data.split_seed, data.val_fraction)"
        )


def _flat(tree: Any, prefix: str) -> dict[str, Any]:
    """Nested dicts as {"a.b.c": leaf}."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat = {}
    for key, value in tree.items():
        flat.update(_flat(value, f"{prefix}.{key}"))
    return flat


def _config_changes(previous_config: Path, config: DictConfig, sections=("model", "data")) -> list[str]:
    """"key: old -> new" for entries of ``sections`` that differ from ``previous_config`` (if it exists)."""
    if not previous_config.is_file():
        return []
    previous = OmegaConf.to_container(OmegaConf.load(previous_config), resolve=False)
    current = OmegaConf.to_container(config, resolve=True)
    changes = []
    for section in sections:
        old, new = _flat(previous.get(section, {}), section), _flat(current.get(section, {}), section)
        changes += [f"{key}: {old.get(key, '(unset)')} -> {new.get(key, '(unset)')}"
                    for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
    return changes


def check_resume_compatible(
    checkpoint_path: str, module: torch.nn.Module, config: DictConfig, previous_config: Path
) -> None:
    """The checkpoint's weights must have the names and shapes of ``module``'s.

    Reads the checkpoint with ``weights_only=True``. On a mismatch raises ValueError naming the
    model/data settings changed since ``previous_config`` (the run's config.yaml) and the tensors
    that differ, before the run directory is touched.
    """
    stored = load_checkpoint_file(checkpoint_path).get("state_dict", {})
    expected = module.state_dict()
    differences = []
    for name in sorted(set(stored) | set(expected), key=lambda name: (name.startswith("ema."), name)):  # EMA last
        if name not in expected:
            differences.append(f"{name} only in the checkpoint")
        elif name not in stored:
            differences.append(f"{name} only in the configured model")
        elif tuple(stored[name].shape) != tuple(expected[name].shape):
            old_shape, new_shape = tuple(stored[name].shape), tuple(expected[name].shape)
            differences.append(f"{name} {old_shape} in the checkpoint, {new_shape} configured")
    if not differences:
        return
    changes = _config_changes(previous_config, config)
    changed = f" Changed since {previous_config}: {'; '.join(changes)}." if changes else ""
    raise ValueError(
        f"resume: {checkpoint_path} does not fit the configured model.{changed} Tensors that differ: "
        f"{_first(differences)}. Nothing in {previous_config.parent} was changed; train under another "
        "name=..., or resume=never to start afresh"
    )


def best_checkpoint(trainer: pl.Trainer, checkpoint_dir: Path) -> str | None:
    """This run's best checkpoint, looked up in ``checkpoint_dir`` (None: none saved).

    The checkpoint state stores an absolute path, which still points into the original folder
    after a run directory was copied; only its file name is used.
    """
    callback = trainer.checkpoint_callback
    if callback is None or not callback.best_model_path:
        return None
    path = checkpoint_dir / Path(callback.best_model_path).name
    return str(path) if path.is_file() else None


# ----------------------------------------------------------------------------- files
@rank_zero_only
def write_json(path: Path, data: dict) -> None:
    with atomic_write(path, "w") as handle:
        handle.write(json.dumps(data, indent=2, sort_keys=True, default=float) + "\n")


@rank_zero_only
def write_config(path: Path, config: DictConfig) -> None:
    with atomic_write(path, "w") as handle:
        handle.write(OmegaConf.to_yaml(config, resolve=True))


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
    checkpoint_dir = run_dir / "checkpoints"
    run_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(config.seed, workers=True)
    resume_from = find_resume_checkpoint(config.resume, checkpoint_dir)

    pretrained = None
    if config.get("init_from"):  # fine-tuning: the architecture is the file's (mlip.train.finetune)
        from mlip.train.finetune import architecture_config, read_pretrained

        pretrained = read_pretrained(config.init_from)
        config = architecture_config(config, pretrained)
    datamodule = build_datamodule(config)
    check_split_elements(datamodule, known_elements=pretrained.elements if pretrained else ())
    statistics = datamodule.statistics()
    head_statistics = datamodule.head_statistics()  # None for a single head
    module = build_module(config, build_model(config, statistics, pretrained, head_statistics))
    provenance = None
    if pretrained is not None:
        from mlip.train.finetune import FINETUNE_RECORD, check_same_pretrained, finetune_provenance, finetune_settings

        provenance = finetune_provenance(pretrained, module.potential, finetune_settings(config))
    if resume_from:  # before anything of the run directory is overwritten
        check_resume_compatible(resume_from, module, config, run_dir / "config.yaml")
        if provenance is not None:
            check_same_pretrained(run_dir, provenance)
    write_config(run_dir / "config.yaml", config)
    write_json(run_dir / "statistics.json", statistics.to_dict())
    if head_statistics:
        write_json(run_dir / HEAD_STATISTICS, {name: head.to_dict() for name, head in head_statistics.items()})
    if provenance is not None:
        write_json(run_dir / FINETUNE_RECORD, provenance)
        rank_zero_info(
            f"mlip-train: fine-tuning {pretrained.path} (new elements {provenance['new_elements'] or 'none'}); "
            "init_from initialises a fresh run only, a resumed run continues from its checkpoint"
        )
    rank_zero_info(f"mlip-train: run directory {run_dir}; split sizes {datamodule.split_sizes()}")

    callbacks = build_callbacks(config, run_dir, statistics, finetuned_from=provenance) + extra_callbacks
    export = next(callback for callback in callbacks if isinstance(callback, BestModelExport))
    trainer = build_trainer(config, run_dir, callbacks, build_loggers(config, run_dir))
    if resume_from:
        rank_zero_info(f"mlip-train: resuming from {resume_from}")
    with _quiet_known_warnings():
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
        results = {"global_step": trainer.global_step, "epoch": trainer.current_epoch, "resumed_from": resume_from}
        results["fit"] = _metrics(trainer)
        if export.validated_step != trainer.global_step:  # stopped before a validation, or nothing left to train
            trainer.validate(module, datamodule=datamodule, verbose=False)
            results["fit"].update(_metrics(trainer))
        export.export_current(trainer, module)
        if config.test_after_fit and datamodule.test_sets:
            best = best_checkpoint(trainer, checkpoint_dir)
            # one dataloader per test set; metrics test/... (random split) or test/<name>/... (data.test_paths)
            trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False)
            results["test"] = {k: v for k, v in _metrics(trainer).items() if k.startswith("test/")}
            results["test_sets"] = {
                name or "test": {"n_structures": len(dataset), "paths": [str(path) for path in dataset.paths]}
                for name, dataset in datamodule.test_sets.items()
            }
    results["best_model"] = str(run_dir / BEST_MODEL) if (run_dir / BEST_MODEL).is_file() else None
    write_json(run_dir / "results.json", results)
    return results
