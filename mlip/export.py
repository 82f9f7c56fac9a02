"""Self-contained model files: `export_model` writes one, `load` turns it back into a `Potential`.

An exported file is a plain ``torch.save`` dict (readable with ``weights_only=True``) holding
everything needed to rebuild the model without the Hydra run directory or the training data:

    format, format_version       "mlip-model", 2 (1 still loads)
    potential_config             `Potential.config`: backbone hyperparameters (with the
                                 registry `name` and class path `_target_` of the backbone),
                                 elements, reference energies, scale, shift, cutoff, ...
    state_dict                   weights (the EMA weights when exported from training)
    dtype                        "float32" / "float64"
    cutoff, elements             Å; atomic numbers, species order
    statistics                   `DatasetStatistics.to_dict()` of the training split (or None)
    config                       the resolved training config (provenance; or None)
    training                     e.g. {"global_step", "monitor", "value", "stage"}, and "finetuned_from"
                                 when fine-tuned (`mlip.train.finetune.finetune_provenance`) (or None)
    mlip_version, torch_version

Loading a file never runs code from it: it is read with ``weights_only=True`` (tensors and
plain containers only), its backbone must be one of `mlip.models.backbones.BACKBONES` (by
`name`, or a `_target_` equal to a registered class path; nothing is imported) and every
keyword is checked to be plain data before the model is built (see docs/calculator.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from mlip.constants import DTYPES
from mlip.files import atomic_write

FORMAT = "mlip-model"
FORMAT_VERSION = 2  # 2: shared backbone embedding (`embedding.*` weights); version-1 files are upgraded on load


def _plain(value: Any) -> Any:
    """An OmegaConf node (resolved) or plain value as built-in containers."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf comes with hydra
        pass
    return value


def _statistics_dict(statistics: Any) -> dict | None:
    if statistics is None or isinstance(statistics, dict):
        return statistics
    return statistics.to_dict()


def _evaluation_potential(model: torch.nn.Module) -> torch.nn.Module:
    """The `Potential` to export: the EMA copy of a `PotentialModule`, or the model itself."""
    if hasattr(model, "evaluation_model"):
        return model.evaluation_model()
    return model


def _potential_config(potential: torch.nn.Module) -> dict:
    """`potential.config` as plain containers, with the backbone's registry `name` when it has one."""
    from mlip.models.backbones import BACKBONES

    config = _plain(potential.config)
    names = [name for name, cls in BACKBONES.items() if cls is type(potential.backbone)]
    if names and config.get("backbone"):
        config["backbone"] = {"name": names[0], **config["backbone"]}
    return config


def export_model(
    model: torch.nn.Module,
    path: str | os.PathLike,
    config: Any = None,
    statistics: Any = None,
    training_info: dict | None = None,
) -> Path:
    """Write ``model`` (a `Potential` or a `PotentialModule`, whose EMA weights are taken) to ``path``.

    The file is written to a temporary name and renamed, so a crash never leaves half a model.
    """
    from mlip import __version__

    potential = _evaluation_potential(model)
    if not hasattr(potential, "config"):
        raise TypeError(f"export_model: {type(potential).__name__} has no `config`; expected a mlip Potential")
    dtype = next(potential.parameters()).dtype
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "potential_config": _potential_config(potential),
        "state_dict": {name: tensor.detach().cpu().clone() for name, tensor in potential.state_dict().items()},
        "dtype": str(dtype).removeprefix("torch."),
        "cutoff": float(potential.cutoff),
        "elements": [int(z) for z in potential.elements],
        "statistics": _statistics_dict(statistics),
        "config": _plain(config),
        "training": training_info,
        "mlip_version": __version__,
        "torch_version": str(torch.__version__),
    }
    path = Path(path)
    with atomic_write(path, "wb", fsync=True) as handle:
        torch.save(payload, handle)
    return path


def read_export(path: str | os.PathLike) -> dict[str, Any]:
    """The raw dict of an exported model file, checked for format and version."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mlip.load: no model file at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"mlip.load: {path} is not a readable mlip model file ({error})") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        hint = " (a Lightning .ckpt? export it with mlip.export.export_model)" if path.suffix == ".ckpt" else ""
        raise ValueError(f"mlip.load: {path} is not an exported mlip model{hint}")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"mlip.load: {path} has format_version {payload['format_version']}; this mlip reads up to {FORMAT_VERSION}"
        )
    if payload.get("dtype") not in DTYPES:
        raise ValueError(f"mlip.load: {path}: `dtype` is {payload.get('dtype')!r}; expected one of {sorted(DTYPES)}")
    return payload


# state-dict names of the backbones' initial embedding before the shared `NodeEmbedding` (files written
# before it keep loading): old name -> new name
_LEGACY_EMBEDDING_NAMES = {
    "backbone.species_embedding.weight": "backbone.embedding.species.weight",
    "backbone.condition_projection.weight": "backbone.embedding.condition.weight",  # MACE-like, TransIP
    "backbone.condition_embedding.weight": "backbone.embedding.condition.weight",  # Facet
}


def _upgrade_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights of a file written before the shared `NodeEmbedding`, renamed to today's layout.

    Facet's old condition projection had a bias b; h = E[Z] + W c + b = (E[Z] + b) + W c, so b is
    folded exactly into every row of the species table (the shared rule has no bias).
    """
    if not any(name in state_dict for name in _LEGACY_EMBEDDING_NAMES):
        return state_dict
    upgraded = {_LEGACY_EMBEDDING_NAMES.get(name, name): tensor for name, tensor in state_dict.items()}
    bias = upgraded.pop("backbone.condition_embedding.bias", None)
    if bias is not None:
        upgraded["backbone.embedding.species.weight"] = upgraded["backbone.embedding.species.weight"] + bias
    return upgraded


def load(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None):
    """Rebuild the `Potential` stored by `export_model` (in eval mode, on ``device``).

    The model is *built* in ``dtype`` (None: the file's dtype), not built in float32 and cast
    (see `mlip.models.build`): a float64 model equals one built directly in float64, buffers
    included; the stored weights are converted into it.
    Only registered backbones are built (see the module docstring): a file naming anything else
    raises `mlip.models.build.UnregisteredBackboneError` before anything is imported or called.
    Files written before the shared backbone embedding load too (`_upgrade_state_dict`).
    """
    payload = read_export(path)
    return potential_from_payload(payload, dtype=dtype, where=f"mlip.load: {path}").to(device).eval()


def potential_from_payload(payload: dict[str, Any], dtype: torch.dtype | str | None = None, where: str = "model file"):
    """The `Potential` of a dict read by `read_export`, built in ``dtype`` (None: the file's), with
    its weights; the trust rules of `load` (registered backbones, plain keywords, nothing
    imported). ``where`` names the file in error messages. On the CPU, in training mode."""
    from mlip.models.build import potential_from_config

    potential = potential_from_config(
        payload.get("potential_config"),
        dtype=DTYPES[payload["dtype"]] if dtype is None else dtype,
        where=f"{where}: potential_config",
    )
    potential.load_state_dict(_upgrade_state_dict(payload["state_dict"]))
    return potential
