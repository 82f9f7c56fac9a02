"""Crash-safe file writing shared by every layer: temporary names, stale sweeps, atomic rename.

Every file mlip writes (HDF5 data, statistics caches, configs, checkpoints, model exports,
evaluation tables and plots) is written to a hidden temporary file next to its destination and
renamed onto it only when complete (``os.replace`` is atomic on POSIX), so a reader never sees a
half-written file.

A process killed with SIGKILL cannot delete its temporary file. Temporary names are therefore
recognisable, ``.<name>.<host>.<pid>.<token>.mlip-tmp`` (`temporary_path_for`), and the next
writer of the same destination deletes those whose process, on this host, no longer exists
(`sweep_stale_temporaries`). `atomic_write` does all of this in one context manager.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

TEMPORARY_SUFFIX = ".mlip-tmp"


def _host_tag() -> str:
    """This machine's name with anything but letters, digits and '-' replaced (no dots)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def temporary_path_for(path: str | os.PathLike) -> Path:
    """A fresh hidden temporary path next to ``path``: ``.<name>.<host>.<pid>.<token>.mlip-tmp``.

    The host and pid say which process writes it, so that a file left behind by a killed
    process can be recognised and swept (`sweep_stale_temporaries`); the random token keeps
    two writers of one process apart.
    """
    path = Path(path)
    return path.with_name(f".{path.name}.{_host_tag()}.{os.getpid()}.{uuid.uuid4().hex[:12]}{TEMPORARY_SUFFIX}")


def sweep_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of ``path`` left by dead processes of this host; return them.

    Only names made by `temporary_path_for` for this very destination are considered; a file
    whose process is alive (or may be: another user's process, another host) is kept.
    """
    path = Path(path)
    pattern = re.compile(
        rf"^\.{re.escape(path.name)}\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[0-9a-f]+{re.escape(TEMPORARY_SUFFIX)}$"
    )
    swept = []
    host = _host_tag()
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.*{TEMPORARY_SUFFIX}"):
        match = pattern.match(candidate.name)
        if match is None or match["host"] != host or _process_alive(int(match["pid"])):
            continue
        try:
            candidate.unlink()
        except FileNotFoundError:  # swept by another process at the same moment
            continue
        swept.append(candidate)
    return swept


def _process_alive(pid: int) -> bool:
    """Whether a process with this pid exists (True when that cannot be ruled out)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # exists but belongs to someone else (or an absurd pid): keep the file
    return True


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", fsync: bool = False) -> Iterator:
    """Open a temporary file for ``path``; on success rename it onto ``path``, on error delete it.

    ``mode``: "w" (text, UTF-8) or "wb" (binary). ``fsync``: flush to disk before the rename
    (for checkpoints that must survive a power cut). Stale temporaries of ``path`` are swept first.

        with atomic_write("results.json") as handle:
            handle.write(text)
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(path)
    temporary = temporary_path_for(path)
    try:
        with open(temporary, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as handle:
            yield handle
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path for a writer that opens files itself (h5py, matplotlib, lmdb): renamed
    onto ``path`` when the block ends without error, deleted otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(path)
    temporary = temporary_path_for(path)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
