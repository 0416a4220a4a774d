"""Whole-file writes: a reader sees the old file or the new one, never half of either.

Every file the engine rewrites in place (an index, a calibration, a cached matrix, a training
checkpoint) goes through :func:`replacing`. A write that fails (full disk, interrupt, a bug in
the writer) leaves the previous file as it was and no temporary file behind.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


def _temporary_name(path: Path) -> Path:
    """A hidden sibling of ``path`` that keeps its suffix (``np.save`` would otherwise add ``.npy``).

    The leading dot keeps it out of globs such as ``step_*.pt``; pid and token keep two writers apart.
    """
    return path.with_name(f".{path.stem}.{os.getpid()}-{secrets.token_hex(3)}.tmp{path.suffix}")


@contextlib.contextmanager
def replacing(path: str | os.PathLike[str], durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write in full; on leaving the block it replaces ``path``.

    If the block raises, the temporary file is removed and ``path`` is untouched. ``durable``
    also flushes the file and its folder to the disk, so the new file survives a power cut.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    try:
        yield tmp
        if durable:
            fsync_path(tmp)
        os.replace(tmp, path)
        if durable:
            fsync_path(path.parent)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's entries to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
