"""Debouncing for ``indexer watch``: many file events in, one update out.

A copy of 10,000 photos, a camera import or an editor saving in several writes sends a
stream of events. :class:`ChangeBatcher` collects them and says when to run one update:
after ``quiet`` seconds without an event, once every new or changed file has stopped
growing (the same size and modification time at two checks in a row), or at the latest
``max_delay`` seconds after the first event of the batch, so a copy that never pauses still
reaches the index. It reads the clock only through the ``now`` its callers pass, so it can
be tested with real files and no sleeping.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

FileState = tuple[int, int] | None  # (size, mtime in ns); None: not there


def file_state(path: str) -> FileState:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


@dataclass(frozen=True)
class Batch:
    """What one update answers: how many events over how many paths, and how long they waited."""

    events: int
    paths: int
    waited: float  # seconds from the first event to the batch
    forced: bool  # max_delay reached while events still came or files still grew


class ChangeBatcher:
    """Thread-safe: a file watcher's thread calls :meth:`add`, the updating thread :meth:`take`."""

    def __init__(self, quiet: float, max_delay: float) -> None:
        if quiet < 0 or max_delay < quiet:
            raise ValueError(f"need 0 <= quiet ({quiet}) <= max_delay ({max_delay})")
        self.quiet, self.max_delay = quiet, max_delay
        self._lock = threading.Lock()
        self._paths: set[str] = set()
        self._events = 0
        self._first: float | None = None
        self._last = 0.0
        self._growing: dict[str, FileState] = {}  # files to see stable, with their state at the last check
        self._unchecked: set[str] = set()  # of those, files with no state seen since their last event

    @property
    def pending(self) -> bool:
        with self._lock:
            return self._first is not None

    def add(self, path: str, written: bool = True, now: float | None = None) -> None:
        """Note an event on ``path``. ``written``: the file may still be growing (a new, changed or
        moved-in file), so the batch waits for it to settle; a deletion need not wait."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._paths.add(path)
            self._events += 1
            self._last = now
            if self._first is None:
                self._first = now
            if written:
                self._growing.setdefault(path, None)
                self._unchecked.add(path)

    def check(self) -> int:
        """Look at the files that may still grow; returns how many still do (or were not seen twice)."""
        with self._lock:
            paths = list(self._growing)
        states = {p: file_state(p) for p in paths}  # outside the lock: add() need not wait for the disk
        with self._lock:
            for path, state in states.items():
                if path not in self._growing:
                    continue
                if path in self._unchecked:
                    self._unchecked.discard(path)
                    self._growing[path] = state
                elif self._growing[path] == state:
                    del self._growing[path]  # the same at two checks in a row: settled
                else:
                    self._growing[path] = state
            return len(self._growing)

    def take(self, now: float | None = None, force: bool = False) -> Batch | None:
        """The batch, if it is due (quiet and settled, or held for ``max_delay``; at once with
        ``force``), and start a new one."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if self._first is None:
                return None
            overdue = force or now - self._first >= self.max_delay
            if not overdue and (now - self._last < self.quiet or self._growing):
                return None
            batch = Batch(
                events=self._events,
                paths=len(self._paths),
                waited=now - self._first,
                forced=overdue and (now - self._last < self.quiet or bool(self._growing)),
            )
            # Files still growing stay for the next batch: that update sees them whole.
            self._paths = set(self._growing)
            self._unchecked = set(self._growing)
            self._events, self._first = 0, (now if self._growing else None)
            return batch
