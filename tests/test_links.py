"""Links that lead out of the indexed folders are not followed unless asked; odd names are counted."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from indexer import BuildConfig, build, stats, update
from retrieval.index.store import IndexReader

from .conftest import run_main, write_image

CFG = BuildConfig(workers=0, batch_size=4)


def _paths(index: Path) -> set[str]:
    return set(IndexReader.open(index).metadata.column("path").to_pylist())


@pytest.fixture
def corpus(tmp_path: Path) -> dict[str, Path]:
    """A photo folder holding every kind of link and odd name, and a folder outside it."""
    photos, outside = tmp_path / "photos", tmp_path / "outside"
    here = write_image(photos / "here.jpg", color=(200, 30, 30))
    inner = write_image(photos / "sub" / "inner.png", color=(30, 200, 30))
    away = write_image(outside / "away.jpg", color=(30, 30, 200))
    write_image(outside / "trip" / "t.jpg", color=(200, 200, 30))
    in_folder = write_image(photos / "x.jpg" / "in-folder.jpg", color=(30, 200, 200))  # a folder named like a photo
    (photos / "alias.png").symlink_to(inner)  # inside: followed, indexed once by its real path
    (photos / "away.jpg").symlink_to(away)
    (photos / "passwd.jpg").symlink_to("/etc/passwd")
    (photos / "trip").symlink_to(outside / "trip")  # a folder link out
    (photos / "sub" / "up").symlink_to(photos)  # a loop
    os.mkfifo(photos / "pipe.jpg")
    return {
        "photos": photos,
        "outside": outside,
        "here": here,
        "inner": inner,
        "in_folder": in_folder,
        "away": away,
        "index": tmp_path / "idx",
    }


def test_links_out_of_the_folders_are_not_followed_and_are_reported(corpus: dict[str, Path], tiny_encoder) -> None:
    photos, index = corpus["photos"], corpus["index"]
    report = build([photos], index, CFG, encoder=tiny_encoder)
    assert _paths(index) == {str(corpus[k].resolve()) for k in ("here", "inner", "in_folder")}
    assert report.outside_links == {
        str(photos / "away.jpg"): str(corpus["away"].resolve()),
        str(photos / "passwd.jpg"): "/etc/passwd",
        str(photos / "trip"): str((corpus["outside"] / "trip").resolve()),
    }
    assert report.not_photos == {
        str(photos / "pipe.jpg"): "a pipe (FIFO)",
        str(photos / "x.jpg"): "a folder named like a photo (its photos are indexed)",
        str(photos / "sub" / "up"): "a folder link that leads to a folder already scanned "
        "(a loop, or a second link to it)",
    }
    summary = report.summary()
    assert "did not follow 3 link(s) that lead out of the indexed folders (--follow-links follows them)" in summary
    assert "3 name(s) that are not photo files" in summary
    assert stats(index).bad_files == [] and not report.new_bad  # /etc/passwd was never opened
    assert IndexReader.open(index).manifest.follow_links is False


def test_follow_links_is_kept_in_the_manifest_for_updates(corpus: dict[str, Path], tiny_encoder) -> None:
    photos, index = corpus["photos"], corpus["index"]
    first = build([photos], index, replace(CFG, follow_links=True), encoder=tiny_encoder)
    away, trip = str(corpus["away"].resolve()), str((corpus["outside"] / "trip" / "t.jpg").resolve())
    assert {away, trip} <= _paths(index) and first.outside_links == {}
    assert IndexReader.open(index).manifest.follow_links is True
    write_image(corpus["outside"] / "trip" / "t2.jpg", color=(9, 9, 9))
    again = update(index, CFG, encoder=tiny_encoder)  # no flag: as the index was built
    assert again.follow_links and str((corpus["outside"] / "trip" / "t2.jpg").resolve()) in _paths(index)
    off = update(index, replace(CFG, follow_links=False), encoder=tiny_encoder)
    assert off.published and away not in _paths(index) and trip not in _paths(index)
    assert IndexReader.open(index).manifest.follow_links is False


def test_the_command_line_flag(corpus: dict[str, Path]) -> None:
    photos, index = corpus["photos"], corpus["index"]
    args = ["--index", str(index), "--model", "tiny-clip", "--workers", "0", "--no-progress", "--json"]
    report = json.loads(run_main("indexer", "build", str(photos), *args).stdout)
    assert sorted(report["outside_links"]) == sorted(str(photos / n) for n in ("away.jpg", "passwd.jpg", "trip"))
    report = json.loads(run_main("indexer", "update", *args, "--follow-links").stdout)
    assert report["follow_links"] and report["outside_links"] == {} and report["embedded"] >= 2
