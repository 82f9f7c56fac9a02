"""Crash-safe checkpoints, safe checkpoint loading and finding the checkpoint to resume from.

`AtomicCheckpointIO` writes every Lightning checkpoint to a hidden temporary file next to
``<path>`` (`mlip.files.atomic_write`: ``.<name>.<host>.<pid>.<token>.mlip-tmp``, swept by the
next writer if a killed process left it), flushes it to disk and renames it over ``<path>``
(``os.replace`` is atomic on POSIX), so a ``kill -9`` while saving
leaves the previous ``last.ckpt`` intact instead of a truncated file. It reads checkpoints with
`load_checkpoint_file`: always ``weights_only=True`` (tensors and plain containers), whatever
torch's default or the ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` environment variable say, so that
resuming from a tampered checkpoint cannot run code. mlip's checkpoints hold nothing else.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mlip.files import atomic_write

LAST_CHECKPOINT = "last.ckpt"


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file next to ``path``, fsync, then rename over ``path``
    (`mlip.files.atomic_write`)."""
    with atomic_write(path, "wb", fsync=True) as handle:
        torch.save(obj, handle)


def load_checkpoint_file(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """A checkpoint read with ``torch.load(..., weights_only=True)``, never by unpickling objects.

    Raises FileNotFoundError for a missing file and ValueError naming the file for one that holds
    anything but tensors and plain containers (mlip's never do: it may have been tampered with).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"checkpoint {path} cannot be loaded with weights_only=True: it holds objects other than tensors "
            f"and plain containers, which mlip checkpoints never do, so it was refused ({error})"
        ) from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"checkpoint {path} is a {type(checkpoint).__name__}, not a Lightning checkpoint dict")
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that never leaves a partially written checkpoint behind and only
    reads checkpoints with ``weights_only=True`` (see `load_checkpoint_file`)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location: Any = "cpu", weights_only: bool | None = None) -> dict[str, Any]:
        """`load_checkpoint_file`; ``weights_only=False`` is refused rather than honoured."""
        if weights_only is False:
            raise ValueError(f"{type(self).__name__} loads checkpoints with weights_only=True only; {path} not read")
        return load_checkpoint_file(path, map_location=map_location)


def find_resume_checkpoint(resume: str | None, checkpoint_dir: str | os.PathLike) -> str | None:
    """The checkpoint to resume from, or None for a fresh start.

    ``resume``: ``"auto"`` -> ``<checkpoint_dir>/last.ckpt`` if it exists, else None;
    ``None``/``"never"``/``"false"`` -> None; anything else is a checkpoint path that must exist.
    """
    if resume is None or str(resume).lower() in ("never", "false", "no", "none", ""):
        return None
    if str(resume).lower() == "auto":
        last = Path(checkpoint_dir) / LAST_CHECKPOINT
        return str(last) if last.is_file() else None
    path = Path(resume).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"resume={resume!r}: no checkpoint file at {path.resolve()}")
    return str(path)
