"""The index directory format: atomic generations, the reader, filters, metadata updates, the lock."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from retrieval.errors import IndexFormatError, IndexLockedError, IndexNotFoundError, InvalidQueryError
from retrieval.index import store
from retrieval.index.manifest import METADATA_SCHEMA, SCHEMA_VERSION, Manifest
from retrieval.index.store import (
    CURRENT,
    IndexReader,
    WriterLock,
    live_generation,
    new_generation,
    update_metadata,
    write_generation,
)

DIM = 8


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _metadata(root: Path, n: int) -> pa.Table:
    rows = []
    for i in range(n):
        rows.append(
            {
                "path": str(root / ("a" if i % 2 == 0 else "b") / f"{i}.{'jpg' if i % 3 else 'png'}"),
                "size": 100 + i,
                "mtime": datetime(2020, 1, 1 + i, tzinfo=timezone.utc).timestamp(),
                "sha256": f"{i:064x}",
                "width": 10,
                "height": 20,
                "file_type": "jpeg" if i % 3 else "png",
                "captured_at": datetime(2019, 6, 1 + i, 12, tzinfo=timezone.utc) if i < 3 else None,
                "camera_make": "Canon" if i == 0 else None,
                "camera_model": None,
                "gps_lat": None,
                "gps_lon": None,
                "tags": ["cat"] if i == 1 else [],
                "tag_scores": [0.9] if i == 1 else [],
            }
        )
    return pa.Table.from_pylist(rows, schema=METADATA_SCHEMA)


def _manifest() -> Manifest:
    return Manifest(model_spec="test", model_fingerprint="test/fp", embed_dim=DIM, roots=("/photos",))


@pytest.fixture(params=["parquet", "mapped"])
def index(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, np.ndarray]:
    """A 6-row index; "mapped" lowers the size above which the Arrow copy of the metadata is written."""
    if request.param == "mapped":
        monkeypatch.setattr(store, "MAP_METADATA_ABOVE", 0)
    vecs = _vectors(6)
    write_generation(tmp_path / "idx", vecs, _metadata(tmp_path, 6), _manifest())
    return tmp_path / "idx", vecs


def test_round_trip_and_search(index: tuple[Path, np.ndarray]) -> None:
    path, vecs = index
    reader = IndexReader.open(path)
    assert len(reader) == 6 and reader.manifest.count == 6 and reader.manifest.index_type == "Flat"
    assert reader.manifest.schema_version == SCHEMA_VERSION and reader.manifest.roots == ("/photos",)
    assert reader.vectors.dtype == np.float16 and isinstance(reader.vectors, np.memmap)
    scores, ids = reader.search_vectors(vecs[[4]], k=3)
    assert ids[0, 0] == 4 and scores[0, 0] == pytest.approx(1.0, abs=1e-2)
    row = reader.row(0)
    assert row["camera_make"] == "Canon" and row["captured_at"].year == 2019 and row["tags"] == []
    assert reader.rows_for_paths([row["path"], "/nope.jpg"]).tolist() == [0, -1]
    manifest = json.loads((reader.generation_dir / "manifest.json").read_text())
    assert manifest["count"] == 6 and manifest["embed_dim"] == DIM and manifest["build_time"]


def test_large_metadata_is_memory_mapped_not_decoded(index: tuple[Path, np.ndarray]) -> None:
    path, _ = index
    mapped = (live_generation(path) / "metadata.arrow").is_file()
    assert mapped == (store.MAP_METADATA_ABOVE == 0)
    before = pa.total_allocated_bytes()
    reader = IndexReader.open(path)
    allocated = pa.total_allocated_bytes() - before
    assert (allocated == 0) == mapped  # Parquet is decoded into Arrow's memory pool; the mapped file is not
    assert reader.metadata.equals(IndexReader.open(path, mmap=False).metadata)


def test_filters(index: tuple[Path, np.ndarray]) -> None:
    path, _ = index
    reader = IndexReader.open(path)
    root = Path(reader.row(0)["path"]).parents[1]
    assert reader.filter_mask() is None
    assert reader.filter_mask(folder=str(root / "a")).tolist() == [True, False, True, False, True, False]
    assert reader.filter_mask(file_types=[".PNG"]).tolist() == [True, False, False, True, False, False]
    assert reader.filter_mask(file_types=["jpg"]).sum() == 4
    assert reader.filter_mask(tag="CAT").tolist() == [False, True, False, False, False, False]
    # rows 0-2 have a capture date in June 2019, rows 3-5 fall back to their mtime in January 2020
    assert reader.filter_mask(date_from="2019-06-02", date_to="2019-06-02").tolist() == [False, True] + [False] * 4
    assert reader.filter_mask(date_from="2020-01-01").tolist() == [False] * 3 + [True] * 3
    combined = reader.filter_mask(folder=str(root / "b"), date_to="2019-12-31")
    assert combined.tolist() == [False, True, False, False, False, False]
    for bad in (
        {"file_types": ["exe"]},
        {"date_from": "yesterday"},
        {"date_from": "2021-01-01", "date_to": "2020-01-01"},
    ):
        with pytest.raises(InvalidQueryError):
            reader.filter_mask(**bad)


def test_generations_swap_and_cleanup(index: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, _ = index
    first = live_generation(path)
    old_reader = IndexReader.open(path)
    stale = path / "gen-19990101T000000000000Z-deadbeef"
    stale.mkdir()
    (stale / "vectors.npy").write_bytes(b"half written")
    write_generation(path, _vectors(3, seed=1), _metadata(tmp_path, 3), _manifest())
    second = live_generation(path)
    assert second != first and (path / CURRENT).read_text().strip() == second.name
    assert first.is_dir() and not stale.exists(), "the previous generation stays, stale ones go"
    assert len(IndexReader.open(path)) == 3
    assert old_reader.search_vectors(_vectors(1), k=6)[1].shape == (1, 6), "an open reader keeps working"
    write_generation(path, _vectors(2, seed=2), _metadata(tmp_path, 2), _manifest())
    assert not first.exists() and second.is_dir()


def test_update_metadata_reuses_vectors(index: tuple[Path, np.ndarray]) -> None:
    path, vecs = index
    before = IndexReader.open(path)
    tags = pa.array([["dog"]] * 6, pa.list_(pa.string()))
    table = before.metadata.set_column(before.metadata.schema.get_field_index("tags"), "tags", tags)
    update_metadata(path, table)
    after = IndexReader.open(path)
    assert after.generation_dir != before.generation_dir
    assert after.row(3)["tags"] == ["dog"] and after.filter_mask(tag="dog").all()
    assert np.array_equal(np.asarray(after.vectors), np.asarray(before.vectors))
    with pytest.raises(IndexFormatError):
        update_metadata(path, table.slice(0, 5))
    with pytest.raises(IndexFormatError):
        update_metadata(path, table.take([1, 0, 2, 3, 4, 5]))


def test_writer_lock_is_exclusive(tmp_path: Path) -> None:
    with WriterLock(tmp_path / "idx"):
        with pytest.raises(IndexLockedError):
            WriterLock(tmp_path / "idx").acquire()
        with pytest.raises(IndexLockedError):
            write_generation(tmp_path / "idx", _vectors(2), _metadata(tmp_path, 2), _manifest())
    WriterLock(tmp_path / "idx").acquire().release()


def test_open_errors(tmp_path: Path, index: tuple[Path, np.ndarray]) -> None:
    with pytest.raises(IndexNotFoundError):
        IndexReader.open(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexNotFoundError):
        IndexReader.open(tmp_path / "empty")
    path, _ = index
    manifest_file = live_generation(path) / "manifest.json"
    data = json.loads(manifest_file.read_text())
    manifest_file.write_text(json.dumps({**data, "schema_version": 99}))
    with pytest.raises(IndexFormatError, match="schema version"):
        IndexReader.open(path)
    manifest_file.write_text(json.dumps(data))
    mapped = live_generation(path) / "metadata.arrow"
    if mapped.is_file():
        mapped.write_bytes(b"ARROW1 cut short")
        with pytest.raises(IndexFormatError, match="metadata.arrow holds 16 bytes"):
            IndexReader.open(path)
    (live_generation(path) / "metadata.parquet").unlink()
    with pytest.raises(IndexFormatError):
        IndexReader.open(path)


def test_write_rejects_mismatched_inputs(tmp_path: Path) -> None:
    with pytest.raises(IndexFormatError):
        write_generation(tmp_path / "idx", _vectors(3), _metadata(tmp_path, 2), _manifest())
    with pytest.raises(IndexFormatError):
        write_generation(tmp_path / "idx", _vectors(2), _metadata(tmp_path, 2).drop(["sha256"]), _manifest())
    assert live_generation(tmp_path / "idx") is None


def test_a_failed_generation_is_discarded_and_the_live_one_stays(index: tuple[Path, np.ndarray]) -> None:
    index_dir, vectors = index
    live = live_generation(index_dir)
    with pytest.raises(RuntimeError, match="disk full"):
        with new_generation(index_dir) as gen:
            (gen / "vectors.npy").write_bytes(b"partial")
            raise RuntimeError("disk full")
    assert not gen.exists()
    assert live_generation(index_dir) == live
    assert len(IndexReader.open(index_dir)) == len(vectors)
    with WriterLock(index_dir):  # the lock was released
        pass
