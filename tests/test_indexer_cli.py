"""``python -m indexer`` end to end: a real process for the first build and a build killed mid-way, the
commands' own ``main`` in this process for the rest (the same code, without an interpreter start each)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from indexer import BadFile, BuildConfig, IndexStats, build, update
from indexer.catalog import Catalog
from indexer.cli.stats import format_stats
from retrieval.index.store import IndexReader, catalog_url

from .conftest import REPO, run_main, run_module, write_image

TINY = ["--model", "tiny-clip", "--workers", "1", "--no-progress"]


def _json(proc: subprocess.CompletedProcess[str]) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_cli_build_stats_update_remove(photo_dir: Path, tmp_path: Path) -> None:
    idx = str(tmp_path / "idx")
    (photo_dir / "broken.jpg").write_bytes(b"")
    n_images = sum(1 for p in photo_dir.rglob("*") if p.is_file()) - 1
    first = _json(run_module("indexer", "build", str(photo_dir), "--index", idx, "--json", *TINY))
    assert first["embedded"] == n_images and first["published"] and first["new_bad"][0]["reason"] == "empty"
    assert set(first["timings"]) >= {"scan", "decode_wait", "embed", "write"}

    info = json.loads(run_main("indexer", "stats", "--index", idx, "--json").stdout)
    assert info["count"] == n_images and info["bad_count"] == 1 and info["roots"] == [str(photo_dir.resolve())]
    assert info["model_spec"] == "tiny-clip" and info["index_type"] == "Flat"
    assert info["bad_files"][0]["reason"] == "empty" and info["bad_files"][0]["path"].endswith("broken.jpg")
    text = format_stats(IndexStats(**{**info, "bad_files": [BadFile(**b) for b in info["bad_files"]]}))
    assert f"images:      {n_images}" in text and "broken.jpg: empty" in text

    write_image(photo_dir / "late.png", color=(9, 99, 199))
    second = _json(run_main("indexer", "update", "--index", idx, "--json", *TINY))
    assert second["embedded_paths"] == [str((photo_dir / "late.png").resolve())] and second["unchanged"] == n_images

    gone = _json(run_main("indexer", "remove", str(photo_dir / "late.png"), "--index", idx, "--json"))
    assert gone["removed"] == 1 and gone["count"] == n_images

    third = run_main("indexer", "update", "--index", idx, "--model", "tiny-clip", "--no-progress")
    assert "0 embedded" in third.stdout and "nothing changed" in third.stdout, "removed files stay out"

    missing = run_main("indexer", "stats", "--index", str(tmp_path / "nothing"), check=False)
    assert missing.returncode == 2 and "no index" in missing.stderr

    # a path that holds no indexed photo: said, and no new generation for nothing
    before = IndexReader.open(idx).generation_dir
    nothing = run_main("indexer", "remove", str(photo_dir / "not-there"), "--index", idx)
    assert "nothing changed" in nothing.stdout and "no supported images" not in nothing.stdout
    assert f"no indexed photo is at or under {photo_dir.resolve() / 'not-there'}" in nothing.stdout
    assert IndexReader.open(idx).generation_dir == before
    # remove and tag on a mistyped --index: one line, and no folder made there
    for command in (["remove", str(photo_dir)], ["tag", "--labels", "a,b"]):
        typo = run_main("indexer", *command, "--index", str(tmp_path / "idx-typo"), check=False)
        assert typo.returncode == 2 and "no index at" in typo.stderr and "Traceback" not in typo.stderr
        assert not (tmp_path / "idx-typo").exists()
    # --index naming a file: one line for every command
    a_file = photo_dir / "late.png"
    for command in (["build", str(photo_dir)], ["update"], ["remove", str(a_file)], ["tag", "--labels", "a,b"]):
        refused = run_main(
            "indexer",
            *command,
            "--index",
            str(a_file),
            *(TINY if command[0] != "remove" and command[0] != "tag" else []),
            check=False,
        )
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
        assert f"{a_file.resolve()} is a file, not an index folder" in refused.stderr, command


def test_a_damaged_current_or_catalog_says_how_to_recover_and_a_rebuild_does(photo_dir: Path, tmp_path: Path) -> None:
    idx = tmp_path / "idx"
    run_main("indexer", "build", str(photo_dir), "--index", str(idx), *TINY)
    count = len(IndexReader.open(idx))

    (idx / "catalog.db").write_bytes(b"this is not a database" * 100)  # a torn copy, a disk fault
    damaged = run_main("indexer", "update", "--index", str(idx), *TINY, check=False)
    assert damaged.returncode == 2 and "Traceback" not in damaged.stderr and "sqlalche.me" not in damaged.stderr
    assert damaged.stderr.strip() == (
        f"error: cannot open the catalog at {catalog_url(idx)}: file is not a database; "
        f"rebuild the index with `python -m indexer build FOLDER --index {idx} --rebuild` "
        "(it sets the damaged file aside)"
    )
    run_main("indexer", "build", str(photo_dir), "--index", str(idx), "--rebuild", *TINY)
    assert (idx / "catalog.db.damaged").is_file() and "bad" not in run_main(
        "indexer", "stats", "--index", str(idx)
    ).stderr

    (idx / "CURRENT").write_text("")
    for command in (["update"], ["stats"]):
        broken = run_main(
            "indexer", *command, "--index", str(idx), *(TINY if command == ["update"] else []), check=False
        )
        assert broken.returncode == 2 and f"--index {idx} --rebuild" in broken.stderr and "damaged" in broken.stderr
    rebuilt = run_main("indexer", "build", str(photo_dir), "--index", str(idx), "--rebuild", *TINY)
    assert "published generation" in rebuilt.stdout and len(IndexReader.open(idx)) == count


@pytest.mark.slow
def test_bf16_build_gives_the_fp32_vectors_within_bf16_rounding(photo_dir: Path, tmp_path: Path) -> None:
    """``--precision bf16`` autocasts the model on the CPU: the same index, vectors within bf16 rounding."""
    args = ["--model", "builtin:random", "--workers", "0", "--no-progress", "--json"]
    built = {}
    for precision in ("fp32", "bf16"):
        idx = tmp_path / precision
        report = _json(
            run_main("indexer", "build", str(photo_dir), "--index", str(idx), "--precision", precision, *args)
        )
        assert report["published"] and not report["new_bad"] and report["precision"] == precision
        reader = IndexReader.open(idx)
        order = np.argsort(reader.metadata.column("path").to_pylist())
        built[precision] = np.asarray(reader.vectors, np.float32)[order]
    fp32, bf16 = built["fp32"], built["bf16"]
    assert fp32.shape == bf16.shape and not np.array_equal(fp32, bf16)  # the autocast really ran
    assert (fp32 * bf16).sum(1).min() > 0.99
    bad = run_main(
        "indexer", "build", str(photo_dir), "--index", str(tmp_path / "x"), "--precision", "fp16", check=False
    )
    assert bad.returncode == 2 and "--precision" in bad.stderr and not (tmp_path / "x").exists()


def test_samples_command(tmp_path: Path) -> None:
    out = run_main("indexer", "samples", str(tmp_path / "s")).stdout.split()
    names = {Path(p).name for p in out}
    assert {"astronaut.jpg", "chelsea_the_cat.jpg", "coffee.jpg", "rocket.jpg"} <= names
    assert all(Path(p).stat().st_size > 1000 for p in out)
    (tmp_path / "taken").write_text("a file, not a folder")
    refused = run_main("indexer", "samples", str(tmp_path / "taken" / "s"), check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith(f"error: could not write the sample photos into {tmp_path / 'taken' / 's'}: ")

    # a second run changes nothing, and a file of one's own under a sample's name is never overwritten
    mine = tmp_path / "s" / "coffee.jpg"
    mine.write_bytes(b"my own coffee photo")
    again = run_main("indexer", "samples", str(tmp_path / "s"))
    assert mine.read_bytes() == b"my own coffee photo"
    assert str(mine) not in again.stdout.split() and len(again.stdout.split()) == len(out) - 1
    assert again.stderr.strip() == f"note: {mine} already holds something else; left as it was"


class _StderrWatcher:
    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.text = ""
        self._thread = threading.Thread(target=self._pump, args=(proc,), daemon=True)
        self._thread.start()

    def _pump(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        while chunk := os.read(proc.stderr.fileno(), 4096):
            self.text += chunk.decode("utf-8", "replace")

    def embedded_so_far(self) -> int:
        counts = [int(m.group(1)) for m in re.finditer(r"embedding:.*?\| *(\d+)/\d+", self.text)]
        return max(counts, default=0)


@pytest.mark.slow
def test_kill_during_build_leaves_previous_index_usable(tmp_path: Path) -> None:
    photos, idx = tmp_path / "photos", tmp_path / "idx"
    for i in range(12):
        write_image(photos / "old" / f"{i:03d}.png", color=(i * 20, 100, 50))
    run_module("indexer", "build", str(photos), "--index", str(idx), *TINY)
    before = IndexReader.open(idx)
    old_generation, probe = before.generation_dir, np.asarray(before.vectors[3], np.float32)[None]
    for i in range(600):
        write_image(photos / "new" / f"{i:03d}.png", size=(64, 48), color=(i % 250, (7 * i) % 250, 30))

    env = dict(os.environ, RETRIEVAL_DEVICE="cpu", PYTHONPATH=str(REPO))
    cmd = [
        sys.executable,
        "-m",
        "indexer",
        "build",
        str(photos),
        "--index",
        str(idx),
        "--model",
        "tiny-clip",
        "--workers",
        "1",
        "--batch-size",
        "1",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    watcher = _StderrWatcher(proc)
    deadline = time.monotonic() + 240
    while watcher.embedded_so_far() < 5 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"the build ended before it could be killed:\n{watcher.text[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert 5 <= watcher.embedded_so_far() < 600

    after_kill = IndexReader.open(idx)
    assert after_kill.generation_dir == old_generation and len(after_kill) == 12
    scores, ids = after_kill.search_vectors(probe, k=1)
    assert ids[0, 0] == 3 and scores[0, 0] > 0.99

    report = _json(run_module("indexer", "build", str(photos), "--index", str(idx), "--json", *TINY))
    assert report["published"] and report["count"] == 612 and report["unchanged"] == 12
    assert len(IndexReader.open(idx)) == 612
    assert not [
        p
        for p in idx.iterdir()
        if p.name.startswith("gen-") and p.name not in {report["generation"], old_generation.name}
    ], "stale generations are cleaned up"


def test_catalog_reconciled_after_kill_between_publish_and_commit(
    photo_dir: Path, tmp_path: Path, tiny_encoder
) -> None:
    idx, cfg = tmp_path / "idx", BuildConfig(workers=0)
    build([photo_dir], idx, cfg, encoder=tiny_encoder)
    shutil.copy(idx / "catalog.db", tmp_path / "catalog-before.db")
    write_image(photo_dir / "added.png", color=(5, 50, 150))
    assert update(idx, cfg, encoder=tiny_encoder).embedded == 1
    shutil.copy(tmp_path / "catalog-before.db", idx / "catalog.db")  # as if killed before the catalog commit
    assert Catalog(catalog_url(idx)).files().get(str((photo_dir / "added.png").resolve())) is None
    report = update(idx, cfg, encoder=tiny_encoder)
    assert report.embedded == 0 and not report.published
    assert Catalog(catalog_url(idx)).files()[str((photo_dir / "added.png").resolve())].status == "ok"


def test_mistakes_on_the_command_line_are_one_line_errors(photo_dir: Path, tmp_path: Path) -> None:
    """The index given as the photo folder, a negative batch size, a port that is none, a GPU that
    is not there, and a classify of nothing but unreadable files: one line each, exit 2, nothing made."""
    import torch

    same = run_main("indexer", "build", str(photo_dir), "--index", str(photo_dir), check=False)
    assert same.returncode == 2 and "is the folder of photos itself; an index needs a folder of its own" in same.stderr
    assert not (photo_dir / "CURRENT").exists() and not (photo_dir / "catalog.db").exists()
    into_photos = run_main("indexer", "build", str(photo_dir / "sub"), "--index", str(photo_dir), check=False)
    assert (
        into_photos.returncode == 2
        and "is a folder of photos; give the index a folder of its own" in into_photos.stderr
    )
    negative = run_main(
        "indexer", "build", str(photo_dir), "--index", str(tmp_path / "i"), "--batch-size", "-5", check=False
    )
    assert negative.returncode == 2 and "--batch-size: -5 is too small" in negative.stderr
    assert "Traceback" not in negative.stderr
    no_port = run_module("ui", "--index", str(tmp_path / "i"), "--port", "99999", check=False)
    assert no_port.returncode == 2 and "99999 is not a port number" in no_port.stderr
    if not torch.cuda.is_available():
        gpu = run_main(
            "indexer", "build", str(photo_dir), "--index", str(tmp_path / "g"), "--device", "cuda", check=False
        )
        assert gpu.returncode == 2 and "torch sees no CUDA GPU here; use --device cpu" in gpu.stderr
        assert not (tmp_path / "g").exists()
    (tmp_path / "bad.jpg").write_bytes(b"not a photo")
    nothing = run_main(
        "retrieval",
        "classify",
        str(tmp_path / "bad.jpg"),
        str(tmp_path / "gone.jpg"),
        "--labels",
        "cat,dog",
        "--model",
        "tiny-clip",
        check=False,
    )
    assert nothing.returncode == 2 and "nothing could be classified" in nothing.stderr
