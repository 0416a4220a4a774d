"""Sharded builds: torchrun with 2 gloo processes equals a one-process build; shard merges equal one index."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from indexer import BuildConfig, build
from indexer.distributed import DistContext, build_distributed, shard_bounds
from indexer.merge import Shard, merge_shards
from indexer.tag import TagConfig, tag_index
from retrieval import open_index
from retrieval.errors import RetrievalError
from retrieval.index import ann
from retrieval.index.manifest import METADATA_SCHEMA, Manifest
from retrieval.index.store import IndexReader
from retrieval.ranks import detect

from .conftest import REPO, write_image

CFG = BuildConfig(workers=0, batch_size=4)


def _photos(root: Path, n: int = 24) -> Path:
    for i in range(n):
        color = ((37 * i) % 256, (91 * i) % 256, (53 * i + 40) % 256)
        write_image(root / f"d{i % 3}" / f"p{i:03d}.{'png' if i % 5 == 0 else 'jpg'}", size=(40 + i, 30), color=color)
    (root / "d1" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole jpeg")
    return root


def _assert_same_index(a: Path, b: Path) -> None:
    ra, rb = IndexReader.open(a), IndexReader.open(b)
    assert len(ra) == len(rb) > 0
    assert ra.metadata.column("path").to_pylist() == rb.metadata.column("path").to_pylist()
    assert ra.metadata.column("sha256").to_pylist() == rb.metadata.column("sha256").to_pylist()
    assert np.allclose(np.asarray(ra.vectors, np.float32), np.asarray(rb.vectors, np.float32), atol=2e-3)
    assert ra.manifest.index_type == rb.manifest.index_type
    assert (ra.manifest.model_fingerprint, ra.manifest.roots, ra.manifest.bad_count, ra.manifest.tagging) == (
        rb.manifest.model_fingerprint,
        rb.manifest.roots,
        rb.manifest.bad_count,
        rb.manifest.tagging,
    )
    assert ra.metadata.column("tags").to_pylist() == rb.metadata.column("tags").to_pylist()


def test_detect_and_shard_bounds() -> None:
    assert detect({}) == DistContext(0, 1, 0)
    assert detect({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == DistContext(3, 4, 1)
    with pytest.raises(RetrievalError):
        detect({"RANK": "4", "WORLD_SIZE": "4"})
    for n, world in [(0, 3), (7, 3), (10, 4), (2, 5)]:
        parts = [shard_bounds(n, r, world) for r in range(world)]
        assert parts[0][0] == 0 and parts[-1][1] == n
        assert all(parts[i][1] == parts[i + 1][0] for i in range(world - 1))
        assert max(hi - lo for lo, hi in parts) - min(hi - lo for lo, hi in parts) <= 1


def test_sharded_path_in_one_process_matches_build(tmp_path: Path, tiny_encoder) -> None:
    """The staging/merge route (world of one) gives the same generation, also incrementally."""
    photos = _photos(tmp_path / "photos")
    one, many = tmp_path / "one", tmp_path / "sharded"
    build([photos], one, CFG, encoder=tiny_encoder)
    report = build_distributed(many.resolve(), [str(photos.resolve())], CFG, DistContext(), encoder=tiny_encoder)
    assert report.published and report.embedded == 24
    assert [b.path for b in report.new_bad] == [str((photos / "d1" / "broken.jpg").resolve())]
    _assert_same_index(one, many)
    assert not (many / ".staging").exists()
    (many / ".staging" / "run-killed").mkdir(parents=True)  # a killed run's leftovers go at the next run
    for index in (one, many):  # new photos are tagged on update the same way
        tag_index(
            TagConfig(index_dir=index, labels=["red", "green", "blue"], k=1, min_probability=None), encoder=tiny_encoder
        )
    # change the folder: one file gone, one added, one moved (its vector is reused)
    (photos / "d0" / "p000.png").unlink()
    write_image(photos / "d2" / "new.jpg", color=(1, 2, 3))
    os.rename(photos / "d1" / "p001.jpg", photos / "d2" / "moved.jpg")
    os.utime(photos / "d2" / "p002.jpg", (1e9, 1e9))  # touched: a new time, the same content
    build([photos], one, CFG, encoder=tiny_encoder)
    again = build_distributed(many.resolve(), [], CFG, DistContext(), encoder=tiny_encoder, must_exist=True)
    assert not (many / ".staging").exists()
    assert (again.embedded, again.reused, again.removed, again.tagged, again.touched) == (1, 1, 2, 1, 1)
    assert again.reused_paths == [str((photos / "d2" / "moved.jpg").resolve())]
    _assert_same_index(one, many)
    unchanged = build_distributed(many.resolve(), [], CFG, DistContext(), encoder=tiny_encoder)
    assert not unchanged.published and unchanged.generation == IndexReader.open(many).generation_dir.name


def _shards(tmp_path: Path, vectors: np.ndarray, cuts: list[int]) -> list[Shard]:
    out = []
    for i, (lo, hi) in enumerate(zip([0] + cuts, cuts + [len(vectors)])):
        np.save(tmp_path / f"s{i}.npy", vectors[lo:hi])
        rows = [
            {
                "path": f"/x/{j}.jpg",
                "size": j,
                "mtime": 0.0,
                "sha256": str(j),
                "width": 1,
                "height": 1,
                "file_type": "jpeg",
            }
            for j in range(lo, hi)
        ]
        pq.write_table(pa.Table.from_pylist(rows, schema=METADATA_SCHEMA), tmp_path / f"s{i}.parquet")
        out.append(Shard(tmp_path / f"s{i}.npy", tmp_path / f"s{i}.parquet"))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("ondisk", [False, True])
def test_ivf_merge_equals_one_index(tmp_path: Path, ondisk: bool) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((1500, 32)).astype(np.float32)
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float16)
    shards = _shards(tmp_path, vectors, [500, 501, 1100])  # one shard of a single row
    manifest = Manifest(model_spec="synthetic", model_fingerprint="f", embed_dim=32)
    result = merge_shards(tmp_path / "idx", shards, manifest, tmp_path / "staging", "IVF8,PQ8x4", ondisk=ondisk)
    assert result.ondisk is ondisk and result.manifest.count == 1500
    reader = IndexReader.open(tmp_path / "idx")
    assert (reader.generation_dir / "index.ivfdata").exists() is ondisk
    assert np.array_equal(np.asarray(reader.vectors), vectors)
    assert reader.metadata.column("path").to_pylist() == [f"/x/{j}.jpg" for j in range(1500)]
    reference = ann.build(vectors.astype(np.float32), "IVF8,PQ8x4")
    queries = vectors[::97].astype(np.float32)
    ref_scores, ref_ids = reference.search(queries, 10)
    got_scores, got_ids = reader.ann.index.search(queries, 10)
    assert np.array_equal(ref_ids, got_ids) and np.allclose(ref_scores, got_scores, atol=1e-5)
    scores, ids = reader.search_vectors(queries, 1)  # exact re-ranking finds each query itself
    assert np.array_equal(ids[:, 0], np.arange(0, 1500, 97))


@pytest.mark.slow
def test_torchrun_two_ranks_equals_one_process(tmp_path: Path, tiny_encoder) -> None:
    photos = _photos(tmp_path / "photos", n=30)
    single, dist = tmp_path / "single", tmp_path / "dist"
    build([photos], single, CFG, encoder=tiny_encoder)
    logs = tmp_path / "logs"  # each rank's stdout in its own file: two ranks printing at once interleave on one pipe
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "--log-dir",
        str(logs),
        "--redirects",
        "1",
        "-m",
        "indexer",
        "build",
        str(photos),
        "--index",
        str(dist),
        "--model",
        "tiny-clip",
        "--workers",
        "0",
        "--batch-size",
        "4",
        "--device",
        "cpu",
        "--json",
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    outputs = sorted(logs.glob("*/attempt_0/*/stdout.log"), key=lambda f: int(f.parent.name))
    reports = [json.loads(line) for f in outputs for line in f.read_text().splitlines() if line.startswith("{")]
    assert len(reports) == 2 and reports[0] == reports[1]  # every rank returns rank 0's report
    assert reports[0]["published"] and reports[0]["embedded"] == 30 and len(reports[0]["new_bad"]) == 1
    _assert_same_index(single, dist)
    index = open_index(dist, model="tiny-clip")
    assert len(index) == 30


def _refuse_writes_past(limit: int) -> Callable[[], None]:
    """A ``preexec_fn``: the child (and its children) may not write past byte ``limit`` of a file (EFBIG)."""

    def limit_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return limit_files


@pytest.mark.slow
def test_torchrun_rank_whose_shard_the_disk_refuses_stops_the_build_cleanly(tmp_path: Path) -> None:
    """Rank 0 embeds 600 good photos (a 77 KB shard of 64-d vectors, past the 48 KB limit; the file
    list and the catalog stay below it); rank 1 gets only corrupt files and writes nothing. The
    build stops with the disk's reason on one line, and nothing is published."""
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(600):
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(photos / f"a{i:04d}.png")
        (photos / f"z{i:04d}.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    index_dir, logs = tmp_path / "index", tmp_path / "logs"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "--log-dir",
        str(logs),
        "--redirects",
        "2",  # each rank's stderr in its own file
        "-m",
        "indexer",
        "build",
        str(photos),
        "--index",
        str(index_dir),
        "--model",
        "mini-clip",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--no-progress",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240, preexec_fn=_refuse_writes_past(48_000)
    )
    assert done.returncode != 0
    texts = [f.read_text() for f in sorted(logs.glob("*/attempt_0/*/stderr.log"), key=lambda f: int(f.parent.name))]
    rank0, rank1 = ([line for line in text.splitlines() if line.startswith("error: ")] for text in texts)
    assert len(rank0) == 1 and rank0[0].startswith("error: could not write rank 0's shard"), done.stderr[-3000:]
    assert "the disk took only" in rank0[0] and "Traceback" not in texts[0]
    # rank 1 says the same, naming rank 0, unless torchrun stopped it first (it stops the other
    # workers as soon as one exits with an error)
    assert rank1 in ([], [f"error: rank 0: {rank0[0].removeprefix('error: ')}"])
    assert not (index_dir / "CURRENT").exists() and not list(index_dir.glob("gen-*"))
    assert not (index_dir / ".staging").exists() or not any((index_dir / ".staging").iterdir())
