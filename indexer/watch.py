"""``indexer watch``: an index that follows its folders.

Watchdog reports file events under the index's folders; :class:`~indexer.changes.ChangeBatcher`
turns a stream of them into batches; each batch runs the same incremental update as
``python -m indexer update``, with the model loaded once. The watcher holds the index's
writer lock from start to stop, so it is the one writer: a second watcher, a build, an update
or a remove of the same index fails at once with an :class:`IndexLockedError` that names it.

A watched folder that disappears (a drive unplugged, a folder deleted) is watched again as
soon as it is back; meanwhile the update keeps its indexed photos, as it does for any folder
it cannot read. The watcher reports what it does through a callback and never prints.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

from retrieval.errors import FileWriteError, IndexNotFoundError, WatchError
from retrieval.imageio import is_image_path
from retrieval.index.manifest import Manifest
from retrieval.index.reader import not_an_index
from retrieval.index.store import MANIFEST, WriterLock, live_generation
from retrieval.models.encoder import Encoder
from retrieval.models.factory import create_model
from retrieval.models.onnxexport import fast_image_encoder
from retrieval.models.registry import DEFAULT_MODEL

from .api import build, update
from .changes import Batch, ChangeBatcher
from .config import BuildConfig, BuildReport
from .scan import is_under, resolve_roots


@dataclass(frozen=True)
class WatchConfig:
    """How to watch. ``quiet``: seconds without a file event before an update; ``max_delay``: the
    most seconds a change waits while events keep coming; ``poll``: seconds between scans with
    watchdog's polling observer (for network shares, where the OS sends no events), 0 for events."""

    quiet: float = 2.0
    max_delay: float = 30.0
    poll: float = 0.0
    build: BuildConfig = field(default_factory=BuildConfig)
    progress: bool = False


@dataclass(frozen=True)
class Updated:
    report: BuildReport
    batch: Batch | None  # None for the catch-up at start
    seconds: float


@dataclass(frozen=True)
class Watching:
    roots: list[str]


@dataclass(frozen=True)
class FolderGone:
    path: str


@dataclass(frozen=True)
class FolderBack:
    path: str


@dataclass(frozen=True)
class UpdateFailed:
    error: FileWriteError
    retry_in: float


WatchEvent = Updated | Watching | FolderGone | FolderBack | UpdateFailed

_IGNORED = {"opened", "closed_no_write"}  # the update reading photos makes these


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if os.path.isdir(path) else None


def _cannot_watch(folder: str, exc: OSError) -> str:
    if exc.errno in (errno.ENOSPC, errno.EMFILE):  # inotify's limits on watches and instances
        return (
            f"cannot watch {folder}: the system's limit on watched folders is reached ({exc.strerror or exc}); "
            "raise it (sudo sysctl fs.inotify.max_user_watches=524288) or look for changes by polling "
            "with --poll SECONDS"
        )
    return f"cannot watch {folder}: {exc.strerror or exc}; or look for changes by polling with --poll SECONDS"


class _Events(FileSystemEventHandler):
    """Runs in watchdog's thread: keeps what matters to the index, hands it to the batcher."""

    def __init__(self, watcher: Watcher) -> None:
        self._w = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        kind = event.event_type
        if kind in _IGNORED or (event.is_directory and kind in ("modified", "attrib", "closed")):
            return
        if kind == "events_lost":  # the kernel's queue overflowed: the update rescans anyway
            self._w._note(os.fsdecode(event.src_path), written=False)
            return
        src = os.fsdecode(event.src_path)
        dest = os.fsdecode(event.dest_path) if kind == "moved" else ""
        if self._w._relevant(src, event.is_directory):
            self._w._note(src, written=kind not in ("deleted", "moved") and not event.is_directory)
        if dest and self._w._relevant(dest, event.is_directory):
            self._w._note(dest, written=not event.is_directory)


class Watcher:
    """Keep ``index_dir`` up to date with ``roots`` (which join the index's own folders) until
    :meth:`stop` or Ctrl-C. ``on_event`` gets a :data:`WatchEvent` for each thing worth saying.
    ``holder`` is how this watcher names itself to a writer that finds the index locked."""

    def __init__(
        self,
        roots: Iterable[str | os.PathLike[str]],
        index_dir: str | os.PathLike[str],
        config: WatchConfig = WatchConfig(),
        on_event: Callable[[WatchEvent], None] = lambda e: None,
        holder: str = "",
        encoder: Encoder | None = None,
    ) -> None:
        self.index_dir = Path(index_dir).resolve()
        self.new_roots = resolve_roots(roots)
        self.config = config
        self.on_event = on_event
        self.encoder = encoder
        self.updating = False  # an update is running (what Ctrl-C interrupts)
        self.updates = 0
        self._lock = WriterLock(self.index_dir, holder=holder)
        self._batcher = ChangeBatcher(config.quiet, config.max_delay)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._roots: list[str] = []  # the index's folders
        self._armed: dict[str, tuple[ObservedWatch, tuple[int, int]] | None] = {}  # folder -> watch, or None: gone
        self._observer: BaseObserver | None = None
        self._retry_at: float | None = None

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def run(self) -> None:
        """Take the lock, load the model, watch, catch up once, then update batch by batch."""
        if not self.new_roots and live_generation(self.index_dir) is None:
            raise IndexNotFoundError(not_an_index(self.index_dir))
        with self._lock:
            if self.encoder is None:
                self.encoder = self._load_model()
            observer = PollingObserver(timeout=self.config.poll) if self.config.poll > 0 else Observer()
            self._observer = observer
            observer.start()
            try:
                self._follow([*self._index_roots(), *self.new_roots])  # first: what changes during the catch-up is seen
                self._update(None)
                self._follow(self._index_roots())
                self.on_event(Watching(list(self._roots)))
                self._loop()
            finally:
                observer.stop()
                with contextlib.suppress(RuntimeError):
                    observer.join(timeout=10)

    def _loop(self) -> None:
        tick = max(0.05, min(0.5, self.config.quiet / 4))
        while not self._stop.is_set():
            busy = self._batcher.pending or self._retry_at is not None
            self._wake.wait(tick if busy else 1.0)
            self._wake.clear()
            self._check_folders()
            if self._retry_at is not None and time.monotonic() >= self._retry_at:
                self._update(self._batcher.take(force=True) or Batch(events=0, paths=0, waited=0.0, forced=True))
            elif self._batcher.pending:
                self._batcher.check()
                batch = self._batcher.take()
                if batch is not None:
                    self._update(batch)

    def _load_model(self) -> Encoder:
        generation = live_generation(self.index_dir)
        spec = self.config.build.model or (
            Manifest.from_json((generation / MANIFEST).read_text()).model_spec if generation else DEFAULT_MODEL
        )
        encoder = create_model(
            spec, device=self.config.build.device, precision=self.config.build.precision, towers="image"
        )
        return fast_image_encoder(encoder)

    def _index_roots(self) -> list[str]:
        generation = live_generation(self.index_dir)
        return list(Manifest.from_json((generation / MANIFEST).read_text()).roots) if generation else []

    def _update(self, batch: Batch | None) -> None:
        started = time.perf_counter()
        self.updating = True
        try:
            if batch is None and self.new_roots:
                report = build(
                    self.new_roots,
                    self.index_dir,
                    self.config.build,
                    progress=self.config.progress,
                    encoder=self.encoder,
                    lock=self._lock,
                )
            else:
                report = update(
                    self.index_dir,
                    self.config.build,
                    progress=self.config.progress,
                    encoder=self.encoder,
                    lock=self._lock,
                )
        except FileWriteError as exc:  # a full or read-only disk: the index stays as it was; try again later
            self.updating = False
            self._retry_at = time.monotonic() + self.config.max_delay
            self.on_event(UpdateFailed(exc, self.config.max_delay))
            return
        self.updating = False  # not on the way out of an interrupt: the caller tells the two apart
        self._retry_at = None
        self.updates += 1
        self.on_event(Updated(report, batch, time.perf_counter() - started))
        if batch is not None:
            self._follow(self._index_roots())

    # -- which folders are watched ------------------------------------------------------------

    def _follow(self, roots: list[str]) -> None:
        """Watch these folders (those inside another are watched with it) and no others."""
        unique = list(dict.fromkeys(roots))
        self._roots = [r for r in unique if not any(r != o and is_under(r, o) for o in unique)]
        for root in list(self._armed):
            if root not in self._roots:
                self._disarm(root)
                del self._armed[root]
        for root in self._roots:
            if root not in self._armed:
                self._armed[root] = None
                self._arm(root, announce=False)

    def _target(self, root: str) -> str:
        """A folder is watched whole; a photo given by itself, through its folder."""
        return root if os.path.isdir(root) or not os.path.isfile(root) else os.path.dirname(root)

    def _arm(self, root: str, announce: bool) -> None:
        target = self._target(root)
        identity = _identity(target)
        if identity is None or self._observer is None:
            return
        try:
            watch = self._observer.schedule(_Events(self), target, recursive=target == root)
        except OSError as exc:
            if _identity(target) is None:  # gone again between the look and the watch: the next look retries
                return
            raise WatchError(_cannot_watch(target, exc)) from exc
        self._armed[root] = (watch, identity)
        if announce:
            self.on_event(FolderBack(root))
            self._note(root, written=False)  # what was put there while it was gone

    def _disarm(self, root: str) -> None:
        armed = self._armed.get(root)
        if armed is not None and self._observer is not None:
            with contextlib.suppress(KeyError, OSError):
                self._observer.unschedule(armed[0])
        self._armed[root] = None

    def _check_folders(self) -> None:
        """Re-arm a folder that came back (or was replaced by another of the same name)."""
        for root in self._roots:
            armed = self._armed.get(root)
            now = _identity(self._target(root))
            if armed is not None and now == armed[1]:
                continue
            if armed is not None:
                self._disarm(root)
                if now is None:
                    self.on_event(FolderGone(root))
                    self._note(root, written=False)
            if now is not None:
                self._arm(root, announce=True)

    # -- called from watchdog's thread --------------------------------------------------------

    def _relevant(self, path: str, is_directory: bool) -> bool:
        if is_under(path, str(self.index_dir)):
            return False
        root = next((r for r in self._roots if is_under(path, r)), None)
        if root is None:
            return False
        if any(part.startswith(".") for part in os.path.relpath(path, root).split(os.sep) if part != os.curdir):
            return False  # the scan skips hidden files and folders
        return is_directory or is_image_path(path)

    def _note(self, path: str, written: bool) -> None:
        was_idle = not self._batcher.pending
        self._batcher.add(path, written=written)
        if was_idle:
            self._wake.set()
