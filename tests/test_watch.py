"""``python -m indexer watch`` on real folders: the real command in a subprocess, real image
files copied in, moved and deleted, and searches of the index it keeps up to date."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from retrieval.index.store import live_generation
from retrieval.query.search import Index

from .conftest import REPO, run_module, write_image

WAIT = 240  # seconds: generous, for a loaded machine; every wait ends as soon as its event is seen
TINY = ["--model", "tiny-clip", "--workers", "0"]


class WatchProcess:
    """A running ``python -m indexer watch``, with its output read as it comes."""

    def __init__(self, *args: str, progress: bool = False) -> None:
        env = dict(os.environ, RETRIEVAL_DEVICE="cpu", PYTHONPATH=str(REPO))
        cmd = [sys.executable, "-m", "indexer", "watch", *args, *TINY, *([] if progress else ["--no-progress"])]
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out: list[str] = []
        self.err = ""
        self._threads = [
            threading.Thread(target=self._lines, daemon=True),
            threading.Thread(target=self._chunks, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _lines(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.out.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def _chunks(self) -> None:
        assert self.proc.stderr is not None
        while chunk := os.read(self.proc.stderr.fileno(), 4096):
            self.err += chunk.decode("utf-8", "replace")

    def wait_for(self, seen: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while not seen():
            if self.proc.poll() is not None:
                for t in self._threads:
                    t.join(timeout=10)
                if seen():
                    return
                raise AssertionError(
                    f"the watcher ended ({self.proc.returncode}) before {what}:\n"
                    + "\n".join(self.out)
                    + "\n"
                    + self.err[-3000:]
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout} s:\n" + "\n".join(self.out) + "\n" + self.err[-3000:])
            time.sleep(0.05)

    def lines(self, word: str) -> list[str]:
        return [line for line in list(self.out) if f" {word} " in line]

    def next_update(self, after: int, what: str) -> str:
        """Wait for update line number ``after + 1`` and return it."""
        self.wait_for(lambda: len(self.lines("updated")) > after, what)
        return self.lines("updated")[after]

    def started(self) -> None:
        self.wait_for(lambda: bool(self.lines("watching")), "'watching' line")

    def interrupt(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        rc = self.proc.wait(timeout=WAIT)
        for t in self._threads:
            t.join(timeout=10)
        return rc


@pytest.fixture
def watchers() -> Iterator[list[WatchProcess]]:
    """Watchers started by a test; any still running at its end are stopped."""
    started: list[WatchProcess] = []
    yield started
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait(timeout=30)


def events(line: str) -> int:
    found = re.search(r" after (\d+) file event\(s\)", line)
    assert found, line
    return int(found.group(1))


def indexed(index_dir: Path, tiny_encoder) -> set[str]:
    """The paths a text search over the whole index returns (the newest generation)."""
    index = Index.open(index_dir, model=tiny_encoder)
    return {r.path for r in index.search("a photo", k=max(1, len(index)))}


def photos_of(tmp_path: Path, n: int, folder: str = "src", size: tuple[int, int] = (40, 30)) -> list[Path]:
    """``n`` distinct real PNG files, written outside the watched folder (copied in by the tests)."""
    return [
        write_image(
            tmp_path / folder / f"p{i:04d}.png", size=size, color=((37 * i) % 250, (91 * i) % 250, 60 + i % 150)
        )
        for i in range(n)
    ]


def test_photos_added_changed_moved_and_deleted_reach_search(tmp_path: Path, watchers, tiny_encoder) -> None:
    photos, idx = tmp_path / "photos", tmp_path / "idx"
    src = photos_of(tmp_path, 6)
    photos.mkdir()
    for p in src[:2]:
        shutil.copy(p, photos / p.name)
    w = WatchProcess(str(photos), "--index", str(idx), "--quiet", "0.5", "--max-delay", "10")
    watchers.append(w)
    w.started()
    assert re.search(
        r" caught up in [\d.]+ s: 2 new or changed, 0 moved or copied, 0 removed; 2 photos, generation gen-", w.out[0]
    ), w.out
    assert indexed(idx, tiny_encoder) == {str(photos / "p0000.png"), str(photos / "p0001.png")}

    # added: a real image file copied in is found by a search, by text and by itself
    shutil.copy(src[2], photos / "new.png")
    line = w.next_update(0, "update after a photo was added")
    assert "1 new or changed, 0 moved or copied, 0 removed; 3 photos, generation gen-" in line
    assert str(photos / "new.png") in indexed(idx, tiny_encoder)
    best = Index.open(idx, model=tiny_encoder).search(photos / "new.png", k=3)
    assert any(r.path == str(photos / "new.png") and r.score > 0.999 for r in best)

    # changed: the same name now holds another photo, found by its new content
    shutil.copy(src[3], photos / "new.png")
    line = w.next_update(1, "update after a photo changed")
    assert "1 new or changed" in line and "3 photos" in line
    best = Index.open(idx, model=tiny_encoder).search(src[3], k=3)
    assert any(r.path == str(photos / "new.png") and r.score > 0.999 for r in best)

    # moved into a new folder: found at the new path, not at the old one
    (photos / "sub").mkdir()
    os.rename(photos / "p0000.png", photos / "sub" / "moved.png")
    line = w.next_update(2, "update after a move")
    assert "0 new or changed, 1 moved or copied, 1 removed; 3 photos" in line
    paths = indexed(idx, tiny_encoder)
    assert str(photos / "sub" / "moved.png") in paths and str(photos / "p0000.png") not in paths

    # deleted: a photo, then a whole folder
    (photos / "p0001.png").unlink()
    line = w.next_update(3, "update after a deletion")
    assert "1 removed; 2 photos" in line
    assert str(photos / "p0001.png") not in indexed(idx, tiny_encoder)
    shutil.rmtree(photos / "sub")
    line = w.next_update(4, "update after a folder was deleted")
    assert "1 removed; 1 photo," in line
    assert indexed(idx, tiny_encoder) == {str(photos / "new.png")}

    # hidden files and files that are not photos are not events for the index: the update that a photo
    # copied in with them brings counts as many events as the photo copied in alone above
    (photos / "notes.txt").write_text("not a photo")
    shutil.copy(src[4], photos / ".hidden.png")
    shutil.copy(src[5], photos / "last.png")
    line = w.next_update(5, "update after a photo was added")
    assert "1 new or changed, 0 moved or copied, 0 removed; 2 photos" in line
    assert len(w.lines("updated")) == 6
    assert events(line) == events(w.lines("updated")[0]), w.lines("updated")

    assert w.interrupt() == 0
    assert re.search(
        rf" stopped watching after 7 update\(s\); the index at {re.escape(str(idx))} is at generation gen-", w.out[-1]
    ), w.out
    assert w.err == ""


@pytest.mark.slow
def test_one_writer_a_second_watcher_or_a_build_is_refused_with_one_line(tmp_path: Path, watchers) -> None:
    photos, idx = tmp_path / "photos", tmp_path / "idx"
    photos_of(tmp_path, 2, folder="photos")
    w = WatchProcess(str(photos), "--index", str(idx))
    watchers.append(w)
    w.started()
    refusal = (
        rf"^error: another process is writing the index at {re.escape(str(idx))}: `python -m indexer watch` "
        rf"\(pid {w.proc.pid}\) keeps it up to date and picks up changes by itself; stop that watcher "
        r"\(Ctrl-C\) to write the index by hand$"
    )
    second = run_module("indexer", "watch", "--index", str(idx), *TINY, check=False)
    assert second.returncode == 2 and re.match(refusal, second.stderr.strip()), second.stderr
    built = run_module("indexer", "build", str(photos), "--index", str(idx), *TINY, check=False)
    assert built.returncode == 2 and re.match(refusal, built.stderr.strip()), built.stderr
    assert w.proc.poll() is None  # the watcher goes on

    assert w.interrupt() == 0
    after = run_module("indexer", "update", "--index", str(idx), *TINY)  # the lock goes with the watcher
    assert "nothing changed; index left as it was" in after.stdout


@pytest.mark.slow
def test_a_watched_folder_that_vanishes_keeps_its_photos_and_is_watched_again_when_back(
    tmp_path: Path, watchers, tiny_encoder
) -> None:
    photos, idx = tmp_path / "photos", tmp_path / "idx"
    src = photos_of(tmp_path, 4)
    photos.mkdir()
    for p in src[:2]:
        shutil.copy(p, photos / p.name)
    w = WatchProcess(str(photos), "--index", str(idx), "--quiet", "0.5", "--max-delay", "10")
    watchers.append(w)
    w.started()

    shutil.rmtree(photos)
    w.wait_for(lambda: bool(w.lines("is")), "a line saying the folder is gone")
    assert w.lines("is")[0].endswith(
        f" {photos} is gone; its indexed photos are kept, and it is watched again when it is back"
    )
    line = w.next_update(0, "update after the folder went")
    assert "nothing changed; 2 photos" in line
    assert any(
        f"note: kept 2 indexed photos under folders that cannot be read or are empty now: {photos}" in x for x in w.out
    )
    assert len(indexed(idx, tiny_encoder)) == 2  # nothing lost while it is away

    photos.mkdir()  # back, with other photos: what is there now is what the folder holds
    shutil.copy(src[2], photos / "back.png")
    w.wait_for(lambda: any(line.endswith(f" {photos} is back; watching it again") for line in w.out), "'is back' line")
    w.wait_for(lambda: indexed(idx, tiny_encoder) == {str(photos / "back.png")}, "the folder's new content in search")
    n = len(w.lines("updated"))
    shutil.copy(src[3], photos / "later.png")  # seen only if the folder is watched again
    line = w.next_update(n, "update after a photo was added to the folder that came back")
    assert "1 new or changed" in line
    assert indexed(idx, tiny_encoder) == {str(photos / "back.png"), str(photos / "later.png")}
    assert w.interrupt() == 0


@pytest.mark.slow
def test_ctrl_c_during_an_update_leaves_the_last_good_index_and_the_next_start_catches_up(
    tmp_path: Path, watchers, tiny_encoder
) -> None:
    photos, idx = tmp_path / "photos", tmp_path / "idx"
    src = photos_of(tmp_path, 600, size=(64, 48))
    photos.mkdir()
    for p in src[:3]:
        shutil.copy(p, photos / p.name)
    w = WatchProcess(
        str(photos), "--index", str(idx), "--quiet", "0.5", "--max-delay", "60", "--batch-size", "1", progress=True
    )
    watchers.append(w)
    w.started()
    before = live_generation(idx)
    for p in src[3:]:
        shutil.copy(p, photos / p.name)

    def embedded() -> int:
        return max((int(m.group(1)) for m in re.finditer(r"embedding:.*?\| *(\d+)/597", w.err)), default=0)

    w.wait_for(lambda: embedded() >= 5, "an update part way")
    assert w.interrupt() == 130
    assert embedded() < 597, "the update ended before it could be interrupted"
    assert re.search(
        rf"interrupted during an update; the index at {re.escape(str(idx))} stays at its last good "
        rf"generation {before.name}, and the next start picks up what changed",
        w.err,
    ), w.err[-2000:]
    assert live_generation(idx) == before
    assert indexed(idx, tiny_encoder) == {str(photos / p.name) for p in src[:3]}

    again = WatchProcess("--index", str(idx), "--quiet", "0.5")
    watchers.append(again)
    again.started()
    assert "caught up" in again.out[0] and "597 new or changed" in again.out[0] and "600 photos" in again.out[0]
    assert len(indexed(idx, tiny_encoder)) == 600
    assert again.interrupt() == 0


@pytest.mark.slow
def test_a_burst_of_files_is_one_or_a_few_updates(tmp_path: Path, watchers, tiny_encoder) -> None:
    photos, idx = tmp_path / "photos", tmp_path / "idx"
    src = photos_of(tmp_path, 1000, size=(24, 16))
    photos.mkdir()
    w = WatchProcess(str(photos), "--index", str(idx), "--quiet", "2", "--max-delay", "60")
    watchers.append(w)
    w.started()
    for i, p in enumerate(src):  # into ten new folders, as a camera import would
        folder = photos / f"d{i // 100}"
        folder.mkdir(exist_ok=True)
        shutil.copy(p, folder / p.name)
    w.wait_for(lambda: any(" 1,000 photos, " in line for line in w.lines("updated")), "all 1,000 photos indexed")
    updates = w.lines("updated")
    assert 1 <= len(updates) <= 3, updates
    assert sum(int(re.search(r": (\d+) new or changed", u).group(1)) for u in updates) == 1000
    assert len(indexed(idx, tiny_encoder)) == 1000
    assert w.interrupt() == 0


def test_bad_watch_options_are_one_line_errors(tmp_path: Path, capsys) -> None:
    from indexer.__main__ import main

    assert main(["watch", str(tmp_path), "--index", str(tmp_path / "i"), "--quiet", "5", "--max-delay", "1"]) == 2
    assert capsys.readouterr().err == "error: --max-delay (1 s) must be at least --quiet (5 s)\n"
    assert main(["watch", str(tmp_path / "nowhere"), "--index", str(tmp_path / "i")]) == 2
    assert capsys.readouterr().err == f"error: no such file or folder: {tmp_path / 'nowhere'}\n"
    assert main(["watch", "--index", str(tmp_path / "i")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path / "i") in err and err.count("\n") == 1
    assert not (tmp_path / "i").exists()
    with pytest.raises(SystemExit):
        main(["watch", "--index", str(tmp_path / "i"), "--quiet", "-1"])
    assert "is not a number of seconds (0 or more)" in capsys.readouterr().err
