"""Data loader worker processes that report a full ``/dev/shm`` instead of waiting forever.

A worker sends each batch through shared memory. torch puts the batch there while sending
it, in the worker's feeder thread, where a failure (``/dev/shm`` full or too small: 64 MB in
a Docker container by default) only prints a traceback; the batch is lost and the loop that
waits for it waits forever. :class:`SharedMemoryLoader` moves the batch into shared memory in
the worker's collate instead, where a failure is an exception the loader hands over:
:class:`~retrieval.errors.SharedMemoryFull`, with a message that says what to do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import DataLoader, default_collate, default_convert, get_worker_info

from .errors import SharedMemoryFull

SHARED_MEMORY = "/dev/shm"


def shared_memory_room() -> str:
    """``/dev/shm: 12 MB free of 64 MB``, or just the folder where it cannot be measured."""
    where = SHARED_MEMORY
    with contextlib.suppress(OSError):
        usage = shutil.disk_usage(where)
        where += f": {usage.free / 2**20:.0f} MB free of {usage.total / 2**20:.0f} MB"
    return where


def share_memory(obj: Any) -> None:
    """Move every tensor in ``obj`` into shared memory: tensors, objects with their own
    ``share_memory_``, dataclasses, lists, tuples and dict values, as sending it would."""
    if hasattr(obj, "share_memory_"):
        obj.share_memory_()
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            share_memory(getattr(obj, f.name))
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            share_memory(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            share_memory(item)


@dataclasses.dataclass(frozen=True)
class _CollateShared:
    collate: Callable[[Any], Any]

    def __call__(self, items: Any) -> Any:
        batch = self.collate(items)
        if get_worker_info() is not None:
            try:
                share_memory(batch)
            except (RuntimeError, OSError) as exc:
                raise SharedMemoryFull(str(exc)) from None
        return batch


class SharedMemoryLoader(DataLoader):
    """A :class:`~torch.utils.data.DataLoader` whose batches that do not fit in shared memory
    raise :class:`~retrieval.errors.SharedMemoryFull` in the loop, instead of hanging it."""

    def __init__(
        self, dataset: Any, batch_size: int | None = 1, collate_fn: Callable[[Any], Any] | None = None, **kwargs: Any
    ) -> None:
        if collate_fn is None:
            collate_fn = default_collate if batch_size is not None or kwargs.get("batch_sampler") else default_convert
        super().__init__(dataset, batch_size=batch_size, collate_fn=_CollateShared(collate_fn), **kwargs)

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        batches = super().__iter__()
        try:
            yield from batches
        except SharedMemoryFull:  # its message is the worker's traceback: say it plainly instead
            raise SharedMemoryFull(
                f"worker processes could not pass a batch through shared memory ({shared_memory_room()}). "
                "Give it more room (docker run --shm-size=2g), or use a smaller --batch-size or --workers 0"
            ) from None
