"""The watcher's batcher (``indexer.changes``), in this process, on real files. The clock is
passed in, so nothing sleeps; the watcher itself runs in ``test_watch.py``."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from indexer.changes import Batch, ChangeBatcher

from .conftest import write_image


def photos_of(tmp_path: Path, n: int) -> list[Path]:
    return [write_image(tmp_path / f"p{i}.png", color=(40 * i, 90, 60)) for i in range(n)]


def test_batcher_waits_for_quiet_then_gives_one_batch(tmp_path: Path) -> None:
    b = ChangeBatcher(quiet=2.0, max_delay=30.0)
    assert b.take(now=0.0) is None and not b.pending
    files = photos_of(tmp_path, 3)
    for i, f in enumerate(files):
        b.add(str(f), now=float(i))  # events at 0, 1 and 2 s
        b.add(str(f), now=float(i) + 0.1)
    b.check()
    b.check()  # the files are whole: the same at two checks
    assert b.take(now=3.9) is None  # 1.9 s since the last event
    batch = b.take(now=4.2)
    assert batch == Batch(events=6, paths=3, waited=pytest.approx(4.2), forced=False)
    assert not b.pending and b.take(now=100.0) is None


def test_batcher_holds_a_file_that_still_grows(tmp_path: Path) -> None:
    b = ChangeBatcher(quiet=1.0, max_delay=60.0)
    growing = tmp_path / "download.jpg"
    growing.write_bytes(b"\xff\xd8" + b"x" * 1000)
    b.add(str(growing), now=0.0)
    assert b.check() == 1  # seen once: not yet known to be whole
    with growing.open("ab") as f:  # written on without a new event (a network share, a slow writer)
        f.write(b"y" * 1000)
    assert b.check() == 1
    assert b.take(now=5.0) is None  # quiet, but still growing
    assert b.check() == 0  # the same size and time at two checks in a row
    assert b.take(now=5.0) == Batch(events=1, paths=1, waited=5.0, forced=False)


def test_batcher_deletions_need_no_settling(tmp_path: Path) -> None:
    b = ChangeBatcher(quiet=1.0, max_delay=60.0)
    b.add(str(tmp_path / "gone.jpg"), written=False, now=0.0)
    assert b.check() == 0
    assert b.take(now=1.0) == Batch(events=1, paths=1, waited=1.0, forced=False)


def test_batcher_max_delay_forces_a_batch_and_keeps_what_still_grows(tmp_path: Path) -> None:
    b = ChangeBatcher(quiet=1.0, max_delay=10.0)
    whole, growing = photos_of(tmp_path, 1)[0], tmp_path / "big.png"
    growing.write_bytes(b"start")
    b.add(str(whole), now=0.0)
    t = 0.0
    while t < 10.0:  # events every half second: never quiet
        b.add(str(growing), now=t)
        b.check()
        with growing.open("ab") as f:
            f.write(b"more")
        assert b.take(now=t) is None
        t += 0.5
    batch = b.take(now=10.0)
    assert batch is not None and batch.forced and batch.paths == 2 and batch.events == 21
    assert b.pending  # the growing file waits for the next batch, whole
    b.check()
    b.check()
    assert b.take(now=11.0) == Batch(events=0, paths=1, waited=1.0, forced=False)


@pytest.mark.slow
def test_batcher_a_burst_of_10000_files_is_one_batch(tmp_path: Path) -> None:
    folder = tmp_path / "burst"
    folder.mkdir()
    b = ChangeBatcher(quiet=2.0, max_delay=30.0)
    for i in range(10_000):
        path = folder / f"{i:05d}.jpg"
        path.write_bytes(b"\xff\xd8" + i.to_bytes(4, "little"))
        b.add(str(path), now=i * 1e-4)  # created, written, closed: three events each
        b.add(str(path), now=i * 1e-4)
        b.add(str(path), now=i * 1e-4)
    started = time.perf_counter()
    b.check()
    b.check()
    checks = time.perf_counter() - started
    assert b.take(now=2.9) is None  # the last event came at 1.0 s
    assert b.take(now=3.5) == Batch(events=30_000, paths=10_000, waited=3.5, forced=False)
    assert checks < 10, f"two checks of 10,000 files took {checks:.1f} s"


def test_batcher_refuses_a_max_delay_below_the_quiet_period() -> None:
    with pytest.raises(ValueError, match="quiet"):
        ChangeBatcher(quiet=5.0, max_delay=1.0)
