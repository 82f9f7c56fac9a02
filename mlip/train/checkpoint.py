"""Crash-safe checkpoints and finding the checkpoint to resume from.

`AtomicCheckpointIO` writes every Lightning checkpoint to ``<path>.tmp``, flushes it to disk and
renames it over ``<path>`` (``os.replace`` is atomic on POSIX), so a ``kill -9`` while saving
leaves the previous ``last.ckpt`` intact instead of a truncated file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

LAST_CHECKPOINT = "last.ckpt"


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same directory, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    try:
        with open(temporary, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that never leaves a partially written checkpoint behind."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}")
        atomic_torch_save(checkpoint, path)


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
