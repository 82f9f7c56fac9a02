"""Fine-tuning from an exported model: ``init_from=<model.pt>`` and the ``finetune`` config section.

    mlip-train experiment=ethanol_pbe init_from=runs/sample/best_model.pt name=ethanol_finetuned

A fine-tuning run starts from the weights of a model file (anything `mlip.load` reads, with its
checks: read with ``weights_only=True``, the backbone must be registered, nothing is imported):

* The architecture comes from the file (`architecture_config`): the run config's ``model``
  architecture keys and ``model.backbone`` hyperparameters are replaced by the file's (a warning
  names those that differed); a ``model.backbone`` of another class is an error.
* Elements of the training data unknown to the pretrained model are appended to its element list
  (`mlip.models.elements`): they get new rows of every per-element tensor, drawn from the
  initialisation of a model trained from scratch (random, seeded by the run's ``seed``); the known
  elements keep their weights exactly.
* Reference energies (eV) follow ``finetune.atomic_energies`` (`finetune_references`): ``keep``
  (the default: the pretrained values; new elements are an error unless given), ``average``
  (least squares on the training split), ``isolated`` (single-atom energies, as
  ``model.atomic_energies=isolated``) or a mapping {symbol or Z: eV} (those elements get these
  values, the others keep the pretrained ones). Scale (eV) and shift (eV/atom) stay the pretrained
  model's (the shift becomes 0 with ``isolated``). With ``keep`` a structure of known elements has
  exactly the pretrained energy and forces before the first step.
* ``finetune.freeze``: fnmatch patterns on parameter names (``backbone.embedding.*``,
  ``backbone.layers.0.*``, ...): those parameters get ``requires_grad=False``, so they are left out
  of the optimiser and the EMA (`freeze_parameters`).
* The export records what it was fine-tuned from (`finetune_provenance`): ``training_info
  ["finetuned_from"]`` = path, sha256, format and mlip version and the training info of the file
  (which may itself name the model *it* was fine-tuned from).

``init_from`` initialises a fresh run only: a resumed run (``resume=auto`` finds
``last.ckpt``) rebuilds the same model from the file and then continues from the checkpoint's
weights. The file must then be the one the run started from (its sha256 is kept in
``<run dir>/finetune.json``).
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ase.data import chemical_symbols
from lightning.pytorch.utilities import rank_zero_warn
from omegaconf import DictConfig, OmegaConf, open_dict

FINETUNE_RECORD = "finetune.json"  # in the run directory: what a fine-tuning run started from
ATOMIC_ENERGY_CHOICES = ("keep", "average", "isolated")
#: `Potential.config` keys that are not architecture: set by the fine-tuning run itself.
NOT_ARCHITECTURE = ("backbone", "elements", "atomic_energies", "scale", "shift", "reference_energies", "heads")
#: backbone keywords that `build_potential` fills in from the potential (never from the run config).
FROM_THE_POTENTIAL = ("num_elements", "cutoff", "condition_dim")


def _element(z: int) -> str:
    return f"{chemical_symbols[int(z)]} (Z={int(z)})"


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class PretrainedModel:
    """A model file read for fine-tuning: `read_pretrained`."""

    path: Path  # absolute
    payload: dict[str, Any]  # `mlip.export.read_export`'s dict
    sha256: str
    backbone_class: type  # a registered backbone class (`mlip.models.backbones.BACKBONES`)

    @property
    def potential_config(self) -> dict[str, Any]:
        return self.payload["potential_config"]

    @property
    def elements(self) -> list[int]:
        return [int(z) for z in self.potential_config["elements"]]

    def potential(self, dtype: torch.dtype):
        """The pretrained `Potential`, built in ``dtype`` with the file's weights (trust rules of `mlip.load`)."""
        from mlip.export import potential_from_payload

        return potential_from_payload(self.payload, dtype=dtype, where=f"init_from: {self.path}")


def read_pretrained(path: str | os.PathLike) -> PretrainedModel:
    """Read the model file of ``init_from`` with `mlip.export.read_export`'s checks (format,
    version, dtype; ``weights_only=True``) and check that its backbone is registered (nothing is
    imported). Errors name the file and ``init_from``."""
    from mlip.export import read_export
    from mlip.models.build import backbone_class

    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"init_from: no model file at {path} (expected an exported model, e.g. a run's best_model.pt)")
    try:
        payload = read_export(path)
    except ValueError as error:
        raise ValueError(f"init_from={path}: {error}") from error
    config = payload.get("potential_config")
    if not isinstance(config, Mapping) or not isinstance(config.get("backbone"), Mapping):
        raise ValueError(f"init_from={path}: potential_config.backbone is missing; not a mlip model file")
    cls = backbone_class(config["backbone"], trusted=False, where=f"init_from: {path}: potential_config.backbone")
    return PretrainedModel(path=path, payload=payload, sha256=sha256_of(path), backbone_class=cls)


# ----------------------------------------------------------------------------- the finetune section
def finetune_settings(config: DictConfig) -> dict[str, Any]:
    """``config.finetune`` as {"atomic_energies": keep | average | isolated | {Z: eV}, "freeze":
    [patterns], "pretrained_head": name | None, "replay_head": name | None}, with the defaults
    (keep, no freezing, no heads named) for what it leaves out. ValueError naming the field."""
    from mlip.models.build import atomic_number

    section = config.get("finetune") or {}
    section = OmegaConf.to_container(section, resolve=True) if isinstance(section, DictConfig) else dict(section)
    known = ("atomic_energies", "freeze", "pretrained_head", "replay_head")
    unknown = sorted(set(section) - set(known))
    if unknown:
        raise ValueError(f"finetune: unknown key(s) {unknown}; finetune takes {', '.join(known)}")
    choice = section.get("atomic_energies") or "keep"
    if isinstance(choice, Mapping):
        choice = {atomic_number(key, "finetune.atomic_energies"): float(value) for key, value in choice.items()}
    elif choice not in ATOMIC_ENERGY_CHOICES:
        raise ValueError(
            f"finetune.atomic_energies={choice!r}: expected keep, average, isolated or a mapping {{symbol or Z: eV}}"
        )
    freeze = section.get("freeze") or []
    if isinstance(freeze, str):
        freeze = [freeze]
    if not all(isinstance(pattern, str) and pattern for pattern in freeze):
        raise ValueError(f"finetune.freeze must be a list of name patterns (fnmatch), got {freeze!r}")
    heads = {}
    for key in ("pretrained_head", "replay_head"):
        value = section.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError(f"finetune.{key} must be a head name, got {value!r}")
        heads[key] = value
    return {"atomic_energies": choice, "freeze": list(freeze), **heads}


# ----------------------------------------------------------------------------- architecture
def _registry_name(cls: type) -> str:
    from mlip.models.backbones import BACKBONES, class_path

    return next((name for name, registered in BACKBONES.items() if registered is cls), class_path(cls))


def architecture_config(config: DictConfig, pretrained: PretrainedModel) -> DictConfig:
    """A copy of ``config`` whose ``model`` architecture is the file's: ``model.backbone`` = the
    file's backbone hyperparameters (``avg_num_neighbors`` included) and the `Potential` keys that
    are architecture (``cutoff``, ``readout_hidden``, ``charge_spin_conditioning``, ...), so the
    data are built with the file's cutoff and the run's config.yaml records what is trained.

    Settings of the run config that differ are replaced and named in a warning (a ``None``
    backbone value, "the default", is not a difference). A ``model.backbone`` of another class
    than the file's cannot be honoured: ValueError naming both and the override to use.
    """
    from mlip.models.backbones import class_path
    from mlip.models.build import backbone_class

    file_config = pretrained.potential_config
    file_backbone = dict(file_config["backbone"])
    cls = pretrained.backbone_class
    configured = OmegaConf.to_container(config.model.backbone, resolve=True) if config.model.get("backbone") else {}
    if configured:
        configured_class = backbone_class(configured, trusted=True, where="model.backbone")
        if configured_class is not cls:
            name = _registry_name(cls)
            raise ValueError(
                f"init_from: {pretrained.path} holds a {name} backbone ({class_path(cls)}) but model.backbone is "
                f"{class_path(configured_class)}; the backbone comes from the file: select its config group with "
                f"model/backbone={name}, or leave out init_from to train from scratch"
            )
    differences = []
    for key, value in configured.items():
        if key in ("_target_", "name", *FROM_THE_POTENTIAL) or value is None:
            continue
        if key not in file_backbone:
            differences.append(f"model.backbone.{key}: {value!r} (the file's backbone has no such setting)")
        elif value != file_backbone[key]:
            differences.append(f"model.backbone.{key}: {value!r} -> {file_backbone[key]!r}")
    architecture = {key: value for key, value in file_config.items() if key not in NOT_ARCHITECTURE}
    for key, value in architecture.items():
        if key in config.model and config.model[key] != value:
            differences.append(f"model.{key}: {config.model[key]!r} -> {value!r}")
    backbone = {"_target_": class_path(cls)}
    backbone.update({key: value for key, value in file_backbone.items() if key not in ("_target_", "name", *FROM_THE_POTENTIAL)})
    config = copy.deepcopy(config)
    with open_dict(config):
        config.model.backbone = backbone
        for key, value in architecture.items():
            config.model[key] = value
    if differences:
        rank_zero_warn(
            f"init_from: the architecture comes from {pretrained.path}; these settings of the run config are "
            f"replaced by the file's: {'; '.join(differences)}"
        )
    choice = finetune_settings(config)["atomic_energies"]
    model_choice = config.model.get("atomic_energies")
    if model_choice not in (None, "average") and model_choice != choice:
        rank_zero_warn(
            f"init_from: model.atomic_energies={model_choice!r} is not used when fine-tuning; the reference energies "
            f"follow finetune.atomic_energies={choice!r}"
        )
    return config


# ----------------------------------------------------------------------------- reference energies
def finetune_references(
    choice: str | Mapping[int, float],
    pretrained_energies: Mapping[int, float],
    pretrained_mode: str,
    pretrained_shift: float,
    elements: Sequence[int],
    statistics: Mapping[str, Any],
    where: str = "finetune.atomic_energies",
) -> dict[str, Any]:
    """Reference energies of the fine-tuned model: {"atomic_energies": {Z: eV}, "reference_energies":
    mode, "shift": eV/atom}, for ``elements`` (the pretrained ones first, then the new ones).

    A pure function of dicts, so that it can be applied per dataset or head. ``choice``:
    ``keep`` (the pretrained values, bitwise; a new element is an error naming it), ``average``
    (``statistics["atomic_energies"]``, the training split's least squares; known elements absent
    from the training data keep the pretrained value), ``isolated``
    (``statistics["isolated_atom_energies"]``, every element needs one; shift 0) or a mapping
    {Z: eV} (those elements; the others keep the pretrained value, a new one left out is an error).
    The mode stays the pretrained one for keep and a mapping (``explicit`` unless it was
    ``isolated``); the shift stays the pretrained one except with ``isolated``.
    """
    pretrained_energies = {int(z): float(e) for z, e in pretrained_energies.items()}
    elements = [int(z) for z in elements]
    new = [z for z in elements if z not in pretrained_energies]
    hint = (
        "give the new elements values with a mapping, e.g. finetune.atomic_energies={"
        + ", ".join(f"{chemical_symbols[z]}: <eV>" for z in new[:3])
        + "} (listed elements get these values, the others keep the pretrained ones), or refit all with "
        "finetune.atomic_energies=average or isolated"
    )
    if choice == "keep":
        if new:
            raise ValueError(
                f"{where}=keep: the pretrained model has no reference energy for the new element(s) "
                f"{', '.join(map(_element, new))}; {hint}"
            )
        return {"atomic_energies": {z: pretrained_energies[z] for z in elements}, "reference_energies": pretrained_mode,
                "shift": float(pretrained_shift)}
    if choice == "average":
        fitted = {int(z): float(e) for z, e in (statistics.get("atomic_energies") or {}).items()}
        missing = [z for z in new if z not in fitted]
        if missing:
            raise ValueError(
                f"{where}=average: no least-squares reference energy for {', '.join(map(_element, missing))} "
                f"(no training structure with an energy has it); {hint}"
            )
        energies = {z: fitted.get(z, pretrained_energies.get(z)) for z in elements}
        return {"atomic_energies": energies, "reference_energies": "average", "shift": float(pretrained_shift)}
    if choice == "isolated":
        isolated = {int(z): float(e) for z, e in (statistics.get("isolated_atom_energies") or {}).items()}
        in_data = {int(z) for z in statistics.get("elements") or elements}
        absent = [z for z in elements if z not in isolated and z not in in_data and z in pretrained_energies]
        if absent:  # pretrained elements the new data lacks: nothing to refer them to, keep the file's values
            rank_zero_warn(
                f"{where}=isolated: no isolated-atom energy for {', '.join(map(_element, absent))}, which the training "
                "data does not contain; they keep the pretrained reference energies (predictions for them mix two "
                "levels of theory)"
            )
            isolated.update({z: pretrained_energies[z] for z in absent})
        missing = [z for z in elements if z not in isolated]
        if missing:
            source = statistics.get("isolated_atoms_source") or "the training data (single-atom structures)"
            raise ValueError(
                f"{where}=isolated: no isolated-atom energy for {', '.join(map(_element, missing))} in {source}; "
                "every element of the fine-tuned model needs one (model.isolated_atoms=<file>), or use keep, "
                "average or a mapping"
            )
        return {"atomic_energies": {z: isolated[z] for z in elements}, "reference_energies": "isolated", "shift": 0.0}
    if isinstance(choice, Mapping):
        given = {int(z): float(e) for z, e in choice.items()}
        foreign = sorted(set(given) - set(elements))
        if foreign:
            raise ValueError(
                f"{where}: {', '.join(map(_element, foreign))} is neither in the pretrained model nor in the "
                f"training data (the fine-tuned model has {', '.join(map(_element, elements))})"
            )
        missing = [z for z in new if z not in given]
        if missing:
            raise ValueError(f"{where}: no value for the new element(s) {', '.join(map(_element, missing))}; {hint}")
        energies = {z: given.get(z, pretrained_energies.get(z)) for z in elements}
        mode = "isolated" if pretrained_mode == "isolated" else "explicit"
        return {"atomic_energies": energies, "reference_energies": mode, "shift": float(pretrained_shift)}
    raise ValueError(f"{where}={choice!r}: expected keep, average, isolated or a mapping {{symbol or Z: eV}}")


# ----------------------------------------------------------------------------- the model
def build_finetuned_potential(
    pretrained: PretrainedModel,
    statistics: Mapping[str, Any],
    choice: str | Mapping[int, float],
    dtype: torch.dtype,
    pretrained_head: str | None = None,
    replay_head: str | None = None,
):
    """The model to fine-tune, in ``dtype``: the pretrained architecture and weights, expanded to
    the elements of ``statistics["elements"]`` (the training split's) that it lacks, with the
    reference energies of `finetune_references` and the pretrained scale and shift.

    Heads. The *source head* is ``pretrained_head`` (a head of a multi-head file; may be left out
    when the file has one head). A single-head run takes the source head's readout, scale, shift
    and references. A multi-head run (``statistics["heads"]``: {head: that head's statistics})
    builds one head per entry: a head whose name is a head of the file continues that head; every
    other head starts as a copy of the source head. Continued heads and ``replay_head`` (the head
    whose data replays the pretraining data) keep their pretrained references (new elements get
    their head's least-squares value); the others follow ``choice``.
    """
    from mlip.models.build import joint_reference_mode, potential_from_config
    from mlip.models.elements import expanded_elements, transfer_weights

    source = pretrained.potential(dtype)
    where = f"init_from: {pretrained.path}"
    file_heads = list(source.heads or [])
    if pretrained_head is not None and pretrained_head not in file_heads:
        raise ValueError(
            f"finetune.pretrained_head={pretrained_head!r}: {pretrained.path} has "
            + (f"the heads {', '.join(file_heads)}" if file_heads else "a single head (leave pretrained_head unset)")
        )
    if pretrained_head is None and len(file_heads) > 1:
        raise ValueError(
            f"{where} has several heads ({', '.join(file_heads)}): name the one to fine-tune from with "
            "finetune.pretrained_head=<name>"
        )
    source_head = pretrained_head if pretrained_head is not None else (file_heads[0] if file_heads else None)
    run_heads = list(statistics.get("heads") or {}) or None
    if replay_head is not None and (run_heads is None or replay_head not in run_heads):
        raise ValueError(
            f"finetune.replay_head={replay_head!r} must be one of the run's heads (data.heads: {run_heads or 'none'})"
        )
    elements = expanded_elements(source.elements, statistics.get("elements") or [])

    def references_of(origin: str | None, head_statistics: Mapping[str, Any], keep: bool) -> dict[str, Any]:
        values = source.head_values(origin)
        if keep:  # the pretrained references; a new element takes its least-squares value of this head's data
            fitted = {int(z): float(e) for z, e in (head_statistics.get("atomic_energies") or {}).items()}
            new = {z: fitted.get(z, 0.0) for z in elements if z not in values["atomic_energies"]}
            head_choice = new or "keep"
        else:
            head_choice = choice
        resolved = finetune_references(
            head_choice, values["atomic_energies"], source.reference_energies, values["shift"], elements,
            head_statistics,
        )
        return {**resolved, "scale": values["scale"]}

    config = copy.deepcopy(source.config)
    config["backbone"]["num_elements"] = len(elements)
    if run_heads is None:
        resolved = references_of(source_head, statistics, keep=False)
        config.update(
            elements=elements,
            atomic_energies=[resolved["atomic_energies"][z] for z in elements],
            reference_energies=resolved["reference_energies"],
            shift=resolved["shift"],
            scale=resolved["scale"],
            heads=None,
        )
        readout_sources = [None if source.heads is None else source.head_index(source_head)]
    else:
        per_head = {}
        for head in run_heads:
            origin = head if head in file_heads else source_head
            continued = head in file_heads or head == replay_head
            try:
                per_head[head] = references_of(origin, statistics["heads"][head], keep=continued)
            except ValueError as error:
                raise ValueError(f"head {head!r}: {error}") from error
        config.update(
            elements=elements,
            atomic_energies=[[per_head[head]["atomic_energies"][z] for z in elements] for head in run_heads],
            reference_energies=joint_reference_mode(per_head[head]["reference_energies"] for head in run_heads),
            shift=[per_head[head]["shift"] for head in run_heads],
            scale=[per_head[head]["scale"] for head in run_heads],
            heads=run_heads,
        )
        readout_sources = [
            None if source.heads is None else source.head_index(head if head in file_heads else source_head)
            for head in run_heads
        ]
    target = potential_from_config(config, dtype=dtype, where=f"{where}: potential_config")
    transfer_weights(source, target, readout_sources=readout_sources)
    return target


def _plain_choice(choice: str | Mapping[int, float]) -> str | dict[str, float]:
    if isinstance(choice, Mapping):
        return {chemical_symbols[int(z)]: float(e) for z, e in choice.items()}
    return choice


def finetune_provenance(pretrained: PretrainedModel, potential, settings: Mapping[str, Any]) -> dict[str, Any]:
    """What the export's ``training_info["finetuned_from"]`` records (plain data): the file's path
    and sha256, its format and mlip version, its ``training`` info (which may name what *it* was
    fine-tuned from), its elements, the new elements, and the ``finetune`` settings."""
    payload = pretrained.payload
    return {
        "path": str(pretrained.path),
        "sha256": pretrained.sha256,
        "format_version": int(payload.get("format_version", 0)),
        "mlip_version": payload.get("mlip_version"),
        "training": payload.get("training"),
        "elements": pretrained.elements,
        "new_elements": [int(z) for z in potential.elements if int(z) not in pretrained.elements],
        "atomic_energies": _plain_choice(settings["atomic_energies"]),
        "freeze": list(settings["freeze"]),
        "pretrained_head": settings.get("pretrained_head"),
        "replay_head": settings.get("replay_head"),
        "heads": None if getattr(potential, "heads", None) is None else list(potential.heads),
    }


def check_same_pretrained(run_dir: Path, provenance: Mapping[str, Any]) -> None:
    """A resumed fine-tuning run must find the model file it started from (same sha256, as in
    ``<run dir>/finetune.json``): ValueError naming both otherwise."""
    record = Path(run_dir) / FINETUNE_RECORD
    if not record.is_file():
        return
    started = json.loads(record.read_text())
    if started.get("sha256") != provenance["sha256"]:
        raise ValueError(
            f"resume: this run was fine-tuned from {started.get('path')} (sha256 {started.get('sha256')}) but "
            f"init_from={provenance['path']} now has sha256 {provenance['sha256']}; restore that file, or train under "
            "another name=..., or resume=never to start afresh"
        )


# ----------------------------------------------------------------------------- freezing
def freeze_parameters(module: torch.nn.Module, patterns: Sequence[str], where: str = "finetune.freeze") -> list[str]:
    """Set ``requires_grad=False`` on the parameters of ``module`` whose names match any of the
    fnmatch ``patterns`` (e.g. ``backbone.embedding.*``); returns the frozen names.

    A pattern that matches nothing, or patterns that freeze every parameter, are ValueErrors that
    list some parameter names."""
    names = [name for name, _ in module.named_parameters()]
    prefixes = sorted({".".join(name.split(".")[:3]) + (".*" if name.count(".") > 2 else "") for name in names})
    examples = ", ".join(prefixes[:12]) + (f" ... ({len(prefixes)} groups)" if len(prefixes) > 12 else "")
    frozen, unmatched = set(), []
    for pattern in patterns:
        matched = fnmatch.filter(names, pattern)
        if not matched:
            unmatched.append(pattern)
        frozen.update(matched)
    if unmatched:
        raise ValueError(
            f"{where}: pattern(s) {', '.join(map(repr, unmatched))} match no parameter of the model; its "
            f"{len(names)} parameters are named like {examples}"
        )
    if frozen and len(frozen) == len(names):
        raise ValueError(f"{where}: {list(patterns)} freezes every parameter of the model; nothing would be trained")
    for name, parameter in module.named_parameters():
        if name in frozen:
            parameter.requires_grad_(False)
    return sorted(frozen)

