"""``python -m indexer watch``: keep an index up to date with its folders until Ctrl-C.

One line per update on stdout (what changed, how long); Ctrl-C or SIGTERM stops it with a
line that says where the index stands.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from contextlib import suppress
from typing import Any

from retrieval.cli.runner import count
from retrieval.errors import InvalidQueryError, RetrievalError
from retrieval.index.store import live_generation
from retrieval.models.encoder import PRECISION_HELP, PRECISIONS

from ..config import BuildConfig, BuildReport
from ..watch import (
    FolderBack,
    FolderGone,
    Updated,
    UpdateFailed,
    WatchConfig,
    Watcher,
    WatchEvent,
    Watching,
)
from .build import GPU_DECODE


def seconds(text: str) -> float:
    """An argparse ``type``: a number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds (0 or more)")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("watch", help="keep an index up to date with its folders as files come and go (Ctrl-C stops)")
    p.add_argument("paths", nargs="*", help="folders to index and watch, with the index's own (default: those)")
    p.add_argument("--index", required=True, help="index directory (made by the first update when new)")
    p.add_argument(
        "--quiet",
        type=seconds,
        default=2.0,
        metavar="SECONDS",
        help="update once no file has changed for this long (default 2)",
    )
    p.add_argument(
        "--max-delay",
        type=seconds,
        default=30.0,
        metavar="SECONDS",
        help="update at the latest this long after a change, even while files keep changing (default 30)",
    )
    p.add_argument(
        "--poll",
        type=seconds,
        default=0.0,
        metavar="SECONDS",
        help="look for changes every SECONDS instead of waiting for the system's file events "
        "(network shares send none; default 0: events)",
    )
    p.add_argument("--model", default=None, help="model spec (default: the index's model, else builtin)")
    p.add_argument("--index-type", default=None, help="FAISS factory string (default: chosen by size)")
    p.add_argument("--workers", type=count(0), default=None, help="decode worker processes (default: by CPU count)")
    p.add_argument("--batch-size", type=count(1), default=None, help="images per model batch (default 64 GPU / 32 CPU)")
    p.add_argument("--db-url", default=None, help="SQLAlchemy URL of the catalog (default: SQLite in the index)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    p.add_argument("--gpu-decode", choices=list(GPU_DECODE), default="auto", help="decode JPEGs on the model's device")
    p.add_argument("--precision", choices=list(PRECISIONS), default="auto", help=PRECISION_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bar while an update embeds photos")
    p.set_defaults(run=run)


def config_from_args(a: argparse.Namespace) -> WatchConfig:
    if a.max_delay < a.quiet:
        raise InvalidQueryError(f"--max-delay ({a.max_delay:g} s) must be at least --quiet ({a.quiet:g} s)")
    build = BuildConfig(
        model=a.model,
        index_type=a.index_type,
        workers=a.workers,
        batch_size=a.batch_size,
        db_url=a.db_url,
        device=a.device,
        gpu_decode=GPU_DECODE[a.gpu_decode],
        precision=a.precision,
    )
    return WatchConfig(quiet=a.quiet, max_delay=a.max_delay, poll=a.poll, build=build, progress=not a.no_progress)


def run(a: argparse.Namespace) -> int:
    config = config_from_args(a)
    printer = _Printer(config)
    holder = (
        f"`python -m indexer watch` (pid {os.getpid()}) keeps it up to date and picks up changes by itself; "
        "stop that watcher (Ctrl-C) to write the index by hand"
    )
    watcher = Watcher(a.paths, a.index, config, on_event=printer, holder=holder)
    signal.signal(signal.SIGTERM, _interrupt)  # a service manager stops it the way Ctrl-C does
    try:
        watcher.run()
    except KeyboardInterrupt:
        where = _generation(watcher)
        if watcher.updating:
            print(
                f"interrupted during an update; the index at {watcher.index_dir} stays at its last good "
                f"generation{where}, and the next start picks up what changed",
                file=sys.stderr,
                flush=True,
            )
            return 130
        print(
            f"{time.strftime('%H:%M:%S')} stopped watching after {watcher.updates} update(s); "
            f"the index at {watcher.index_dir} is at generation{where}",
            flush=True,
        )
    return 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _generation(watcher: Watcher) -> str:
    with suppress(RetrievalError, OSError):
        live = live_generation(watcher.index_dir)
        return f" {live.name}" if live is not None else " (none yet)"
    return ""


class _Printer:
    """Turns the watcher's events into lines; notes an update repeats are not said again."""

    def __init__(self, config: WatchConfig) -> None:
        self.config = config
        self.notes: list[str] = []

    def __call__(self, event: WatchEvent) -> None:
        for line in self.lines(event):
            print(line, flush=True)

    def lines(self, event: WatchEvent) -> list[str]:
        now = time.strftime("%H:%M:%S")
        if isinstance(event, Updated):
            r, batch = event.report, event.batch
            what = "caught up" if batch is None else "updated"
            after = (
                ""
                if batch is None
                else f" after {batch.events} file event(s) over {batch.waited:.1f} s"
                + (" (max delay)" if batch.forced else "")
            )
            lines = [f"{now} {what} in {event.seconds:.2f} s{after}: {changes(r)}"]
            notes = r.notices()
            if notes != self.notes:
                lines += [f"{now} note: {n}" for n in notes]
                self.notes = notes
            return lines + [
                f"{now} bad: {b.path}: {b.reason}" + (f" ({b.detail})" if b.detail else "") for b in r.new_bad
            ]
        if isinstance(event, Watching):
            c = self.config
            how = f"polling every {c.poll:g} s" if c.poll else "file events"
            return [
                f"{now} watching {len(event.roots)} folder(s) ({how}; update after {c.quiet:g} s quiet, "
                f"at most {c.max_delay:g} s late); Ctrl-C stops: " + ", ".join(event.roots)
            ]
        if isinstance(event, FolderGone):
            return [f"{now} {event.path} is gone; its indexed photos are kept, and it is watched again when it is back"]
        if isinstance(event, FolderBack):
            return [f"{now} {event.path} is back; watching it again"]
        if isinstance(event, UpdateFailed):
            return [f"{now} update failed: {event.error}; trying again in {event.retry_in:g} s"]
        return []


def changes(r: BuildReport) -> str:
    """What one update did, in one clause."""
    photos = f"{r.count:,} photo" + ("" if r.count == 1 else "s")
    if not r.published:
        return f"nothing changed; {photos}"
    parts = [f"{r.embedded} new or changed", f"{r.reused} moved or copied", f"{r.removed} removed"]
    if r.new_bad:
        parts.append(f"{len(r.new_bad)} unreadable")
    return ", ".join(parts) + f"; {photos}, generation {r.generation}"
