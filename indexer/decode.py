"""Decode stage: hash, read facts and decode+transform images in worker processes.

Workers return resized, cropped ``uint8`` tensors (``Encoder.pixel_transform``): the embed
stage normalises a whole batch at once and runs the model. Passing uint8 rather than float32
moves a quarter of the bytes between processes and keeps float work out of the workers, which
share the cores with the model's threads on a CPU-only machine.
Each file is read once (:func:`read_hashed`) and its header parsed once, for both its photo
facts and its decode; a JPEG already at the model's input scale skips Pillow
(:func:`~indexer.gpu_decode.jpeg_at_input_scale`). A file whose content hash is already in the
index is not decoded at all: its vector is reused. One bad file yields a :class:`DecodedItem`
with an error, never an exception, a worker process that dies outright costs only the
file it was on, and shared memory too small for the workers' batches turns decoding inline
(see :func:`iter_decoded`).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from retrieval.errors import ImageDecodeError, SharedMemoryFull
from retrieval.imageio import decode_image, open_image
from retrieval.models.encoder import stack_pixels
from retrieval.workers import SharedMemoryLoader, shared_memory_room

from .exif import PhotoInfo, photo_info
from .gpu_decode import EncodedFile, PixelSpec, jpeg_at_input_scale
from .scan import ScannedFile

_CHUNK = 1 << 20
KEEP_BYTES_UP_TO = 64 << 20
WORKER_DIED = "exited unexpectedly"


def read_hashed(path: str) -> tuple[str, bytes | None]:
    """The file's sha256, and its bytes when it has at most ``KEEP_BYTES_UP_TO`` of them: such a
    file is read once, then parsed and decoded from memory. A bigger one is hashed in chunks."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size <= KEEP_BYTES_UP_TO:
            data = f.read()
            return hashlib.sha256(data).hexdigest(), data
        h = hashlib.sha256()
        while chunk := f.read(_CHUNK):
            h.update(chunk)
        return h.hexdigest(), None


@dataclass
class DecodedItem:
    """One file after the workers: reused by hash, bad with a reason, or ready to embed.

    ``encoded`` holds a JPEG's bytes when the model's device decodes them (``indexer.device_stage``).
    """

    file: ScannedFile
    sha256: str | None = None
    info: PhotoInfo | None = None
    pixels: torch.Tensor | None = None
    encoded: EncodedFile | None = None
    known: bool = False
    reason: str | None = None
    detail: str = ""
    seconds: float = 0.0


@dataclass
class DecodedBatch:
    """Items in task order; ``pixels`` stacks the decoded ones, ``pixel_items`` says which, and
    ``on_device`` how many of them the model's device decoded (Pillow decoded the others)."""

    items: list[DecodedItem]
    pixels: torch.Tensor | None = None
    pixel_items: list[int] = field(default_factory=list)
    on_device: int = 0
    jpegs: torch.Tensor | None = None  # the items' JPEG bytes, packed (the device stage's batches)

    def pin_memory(self) -> DecodedBatch:
        if self.pixels is not None:
            self.pixels = self.pixels.pin_memory()
        if self.jpegs is not None:
            self.jpegs = self.jpegs.pin_memory()
        return self

    def share_memory_(self) -> None:
        """Move the batch's tensors into shared memory, as sending it from a worker would."""
        for tensor in (self.pixels, self.jpegs, *(it.pixels for it in self.items)):
            if tensor is not None:
                tensor.share_memory_()


def collate(items: list[DecodedItem]) -> DecodedBatch:
    idx = [i for i, it in enumerate(items) if it.pixels is not None]
    pixels = stack_pixels([items[i].pixels for i in idx]) if idx else None  # type: ignore[misc]
    for i in idx:
        items[i].pixels = None
    return DecodedBatch(items=items, pixels=pixels, pixel_items=idx)


class DecodeDataset(Dataset[DecodedItem]):
    """Picklable map-style dataset over the files to index; ``collate`` makes its batches."""

    collate = staticmethod(collate)

    def __init__(
        self,
        files: Sequence[ScannedFile],
        transform: Callable[[Any], torch.Tensor],
        draft_size: int | None,
        known_sha256: frozenset[str] = frozenset(),
        direct: PixelSpec | None = None,
    ) -> None:
        """``direct``: the spec of a ``uint8`` ``transform`` (``Encoder.pixel_transform``); a JPEG
        already at its input scale then skips Pillow (:func:`~indexer.gpu_decode.jpeg_at_input_scale`)."""
        self.files = list(files)
        self.transform = transform
        self.draft_size = draft_size
        self.known_sha256 = known_sha256
        self.direct = direct

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> DecodedItem:
        start = time.perf_counter()
        item = DecodedItem(file=self.files[i])
        try:
            self._decode(item)
        except ImageDecodeError as exc:
            item.reason, item.detail = exc.reason, exc.detail
        except OSError as exc:
            item.reason, item.detail = "unreadable", str(exc)
        except Exception as exc:  # a decoder bug on one file must cost that file, not the build
            item.reason, item.detail = "decoder_error", f"{type(exc).__name__}: {exc}"
        if item.reason is not None:
            item.pixels = item.encoded = None
        item.seconds = time.perf_counter() - start
        return item

    def _decode(self, item: DecodedItem) -> None:
        item.sha256, data = read_hashed(item.file.path)
        if item.sha256 in self.known_sha256:
            item.known = True
            return
        self._read(item, data)

    def _read(self, item: DecodedItem, data: bytes | None) -> None:
        """A file to embed: decode it here, in the worker, from one header parse."""
        self._decode_opened(item, open_image(item.file.path, data=data), data)

    def _decode_opened(self, item: DecodedItem, image: Image.Image, data: bytes | None) -> None:
        """:meth:`_read` once the header is parsed (``image``: pixels not decoded yet)."""
        item.info = photo_info(image, item.file.path)
        pixels = None
        if self.direct is not None and data is not None:
            pixels = jpeg_at_input_scale(image, data, item.info.orientation, self.direct, self.draft_size)
        if pixels is None:
            pixels = self.transform(decode_image(image, item.file.path, self.draft_size))
        item.pixels = pixels


def shared_memory_note() -> str:
    """What the build reports when the workers' batches did not fit in shared memory."""
    return (
        f"decode workers could not pass batches through shared memory ({shared_memory_room()}); the rest was "
        "decoded in the main process, which is slower. Give it more room (docker run --shm-size=2g) "
        "or use a smaller --batch-size"
    )


@dataclass(frozen=True)
class _LowerPriority:
    """Worker init: decode at a lower CPU priority so it fills idle cycles instead of preempting
    the model's threads (on a CPU-only machine both compete for the same cores)."""

    niceness: int

    def __call__(self, worker_id: int) -> None:
        if self.niceness > 0:
            os.nice(self.niceness)


def _loader(dataset: DecodeDataset, batch_size: int, workers: int, pin: bool, niceness: int = 0) -> DataLoader:
    return SharedMemoryLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=dataset.collate,
        pin_memory=pin,
        worker_init_fn=_LowerPriority(niceness) if workers > 0 else None,
        prefetch_factor=2 if workers > 0 and batch_size > 1 else (1 if workers > 0 else None),
    )


def _subset(dataset: DecodeDataset, start: int, stop: int | None = None) -> DecodeDataset:
    part = copy.copy(dataset)
    part.files = dataset.files[start:stop]
    return part


def _crashed(item_file: ScannedFile) -> DecodedBatch:
    return DecodedBatch(
        items=[DecodedItem(file=item_file, reason="decoder_crashed", detail="the decoding process died on this file")]
    )


def _worker_died(exc: BaseException, workers: int) -> bool:
    if workers == 0:
        return False
    if isinstance(exc, (ConnectionError, EOFError)):
        return True
    return isinstance(exc, RuntimeError) and WORKER_DIED in str(exc)


@contextlib.contextmanager
def _worker_deaths_noticed_in_next() -> Iterator[None]:
    """While decoding, a dead worker is noticed inside the loader's ``next`` (it checks its workers
    whenever it waits 5 s for data), not by torch's SIGCHLD handler: that raises in the main thread
    wherever it happens to be, between two yields, in the caller's model code, or after a lock is
    taken and before its ``try`` (seen: logging's lock left held, and the next log call hung)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGCHLD"):
        yield  # torch installs its handler only on the main thread of a POSIX system
        return
    from torch.utils.data._utils import signal_handling

    signal_handling._set_SIGCHLD_handler()  # installed once per process: install it now, then set it aside
    torch_handler = signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # default: no reaping, waitpid still works
    try:
        yield
    finally:
        signal.signal(signal.SIGCHLD, torch_handler)


def iter_decoded(
    dataset: DecodeDataset,
    batch_size: int,
    workers: int,
    pin: bool = False,
    niceness: int = 0,
    on_inline: Callable[[str], None] | None = None,
) -> Iterator[DecodedBatch]:
    """Decoded batches in file order, overlapping with whatever the caller does between them.

    If a worker process dies (a crash inside a C decoder), the files that were in flight are
    decoded again one at a time in a fresh single worker; a file that kills it twice is
    reported as ``decoder_crashed`` and the build goes on. If the workers' batches do not fit in
    shared memory, the rest is decoded in this process, and ``on_inline`` is told why.
    """
    done = 0
    with _worker_deaths_noticed_in_next() if workers else contextlib.nullcontext():
        try:
            for batch in _iter_recovering(dataset, batch_size, workers, pin, niceness):
                done += len(batch.items)
                yield batch
        except SharedMemoryFull:
            if on_inline is not None:
                on_inline(shared_memory_note())
            yield from _iter_recovering(_subset(dataset, done), batch_size, 0, pin, niceness)


def _iter_recovering(
    dataset: DecodeDataset, batch_size: int, workers: int, pin: bool, niceness: int
) -> Iterator[DecodedBatch]:
    done = 0
    while done < len(dataset):
        try:
            for batch in _loader(_subset(dataset, done), batch_size, workers, pin, niceness):
                done += len(batch.items)
                yield batch
        except (RuntimeError, ConnectionError, EOFError) as exc:
            if not _worker_died(exc, workers):
                raise
            window_end = min(len(dataset), done + batch_size * max(1, workers) * 5)
            failures = 0
            while done < window_end:
                try:
                    for batch in _loader(_subset(dataset, done, window_end), 1, 1, pin, niceness):
                        done, failures = done + 1, 0
                        yield batch
                except (RuntimeError, ConnectionError, EOFError) as inner:
                    if not _worker_died(inner, 1):
                        raise
                    failures += 1
                    if failures >= 2:  # twice in a row on its own: this file kills the decoder
                        yield _crashed(dataset.files[done])
                        done, failures = done + 1, 0
