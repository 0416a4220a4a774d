"""A self-checking index: checksums written with each generation, damage found before it gives an answer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from indexer import BuildConfig, build, stats
from indexer.verify import verify
from retrieval.errors import IndexDamagedError, IndexFormatError, InvalidQueryError
from retrieval.index import checksums, store
from retrieval.index.manifest import METADATA_SCHEMA, Manifest
from retrieval.index.store import IndexReader, live_generation, write_generation
from retrieval.query.search import open_index

from .conftest import run_main, write_image

CFG = BuildConfig(workers=0, batch_size=4)
COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200)]


@pytest.fixture
def built(tmp_path: Path, tiny_encoder) -> Path:
    photos, index = tmp_path / "photos", tmp_path / "idx"
    for i, color in enumerate(COLORS):
        write_image(photos / f"p{i}.jpg", color=color)
    build([photos], index, CFG, encoder=tiny_encoder)
    return index


def _flip(path: Path, at: int | None = None) -> None:
    """One byte inverted in place: the size stays, as with a bad sector or a stray write."""
    data = bytearray(path.read_bytes())
    at = len(data) // 2 if at is None else at
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def _gen(index: Path) -> Path:
    gen = live_generation(index)
    assert gen is not None
    return gen


def test_every_file_of_a_generation_has_a_checksum_and_verify_records_when(built: Path) -> None:
    gen = _gen(built)
    recorded = json.loads((gen / "manifest.json").read_text())["checksums"]
    assert set(recorded["files"]) == {p.name for p in gen.iterdir() if p.name != "manifest.json"}
    assert recorded["algorithm"] == "xxh3_64"
    assert stats(built).checksums and stats(built).verified == ""
    result = verify(built)
    assert result.outcome == "ok" and result.files == len(recorded["files"])
    assert stats(built).verified.endswith(": ok") and result.at in stats(built).verified


@pytest.mark.parametrize("name", ["vectors.npy", "index.faiss", "metadata.parquet", "manifest.json"])
def test_a_flipped_byte_in_any_file_is_found_before_a_search_answers(built: Path, tiny_encoder, name: str) -> None:
    _flip(_gen(built) / name)
    with pytest.raises(IndexFormatError, match=r"damaged; rebuild it with `python -m indexer build FOLDER --index "):
        open_index(built, model=tiny_encoder).search("a red square", k=3)
    with pytest.raises(IndexFormatError, match="damaged"):
        verify(built)


def test_the_error_names_the_damaged_file(built: Path) -> None:
    _flip(_gen(built) / "index.faiss")
    with pytest.raises(IndexDamagedError, match=r"index\.faiss does not match its checksum") as caught:
        IndexReader.open(built)
    assert caught.value.path == str(_gen(built) / "index.faiss")


def test_a_manifest_changed_by_hand_no_longer_matches_itself(built: Path) -> None:
    manifest = _gen(built) / "manifest.json"
    data = json.loads(manifest.read_text())
    data["ann_params"] = {"nprobe": 1}
    manifest.write_text(json.dumps(data))
    with pytest.raises(IndexFormatError, match="does not match its own checksum"):
        IndexReader.open(built)


def test_an_index_without_checksums_opens_and_says_it_is_not_verified(built: Path, tiny_encoder) -> None:
    manifest = _gen(built) / "manifest.json"
    data = json.loads(manifest.read_text())
    del data["checksums"]
    manifest.write_text(json.dumps(data))
    assert len(open_index(built, model=tiny_encoder).search("a red square", k=3)) == 3
    assert verify(built).outcome == "not verified"
    assert not stats(built).checksums
    shown = run_main("indexer", "stats", "--index", str(built)).stdout
    assert "verified:    not verified (written without checksums" in shown


def _big_index(tmp_path: Path, rows: int, dim: int = 64, nan_row: int | None = None) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(rows, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    if nan_row is not None:
        vectors[nan_row] = np.nan
    meta = pa.table(
        {
            "path": [f"/photos/{i}.jpg" for i in range(rows)],
            "size": [1] * rows,
            "mtime": [0.0] * rows,
            "sha256": [f"{i:064x}" for i in range(rows)],
            "width": [1] * rows,
            "height": [1] * rows,
            "file_type": ["jpeg"] * rows,
        }
    )
    for f in METADATA_SCHEMA:
        if f.name not in meta.column_names:
            meta = meta.append_column(f, pa.nulls(rows, f.type))
    write_generation(
        tmp_path / "big",
        vectors,
        meta.select(METADATA_SCHEMA.names),
        Manifest(model_spec="test", model_fingerprint="t", embed_dim=dim, roots=("/photos",)),
        "Flat",
    )
    return tmp_path / "big", vectors


def test_vectors_are_checked_chunk_by_chunk_as_rows_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large memory-mapped vectors.npy is not read whole on open: rows are checked with their chunk when first read."""
    monkeypatch.setattr(checksums, "LAZY_ABOVE", 0)  # as a vectors.npy of more than 32 MiB is
    index, vectors = _big_index(tmp_path, rows=5_000)  # 640 KB of float16: ten 64 KiB chunks
    gen = _gen(index)
    header = (gen / "vectors.npy").stat().st_size - vectors.size * 2
    last = len(vectors) - 1
    _flip(gen / "vectors.npy", at=header + last * 128 + 3)  # inside the last row, in the last chunk

    reader = IndexReader.open(index)  # opens: only the first chunk (with the header) is checked
    assert isinstance(reader.vectors, checksums.CheckedVectors)
    assert reader.checks._done["vectors.npy"].sum() == 1
    scores, ids = reader.search_vectors(vectors[:1], k=1)
    assert ids[0, 0] == 0 and scores[0, 0] == pytest.approx(1.0, abs=1e-2)
    chunk = checksums.CHUNK_BYTES
    where = (header + last * 128) // chunk * chunk
    with pytest.raises(IndexDamagedError, match=rf"vectors\.npy does not match its checksum \(bytes {where:,}-"):
        reader.search_vectors(vectors[last:], k=1)
    with pytest.raises(IndexDamagedError, match="vectors.npy"):
        np.asarray(IndexReader.open(index).vectors[-5:])
    with pytest.raises(IndexDamagedError):
        verify(index)


def test_scores_that_are_not_finite_never_reach_a_user(tmp_path: Path) -> None:
    index, vectors = _big_index(tmp_path, rows=50, nan_row=7)
    reader = IndexReader.open(index)  # the NaN row was written with its checksum: only the scores show it
    with pytest.raises(IndexDamagedError, match="not finite"):
        reader.search_vectors(vectors[:1], k=50, mask=np.ones(50, bool))  # scored exactly, every row


def test_a_metadata_only_update_keeps_the_checksums_of_the_files_it_shares(built: Path) -> None:
    before = json.loads((_gen(built) / "manifest.json").read_text())["checksums"]["files"]
    reader = IndexReader.open(built)
    store.update_metadata(built, reader.metadata)
    after = json.loads((_gen(built) / "manifest.json").read_text())["checksums"]["files"]
    assert after["vectors.npy"] == before["vectors.npy"] and after["index.faiss"] == before["index.faiss"]
    assert verify(built).outcome == "ok"


def test_text_queries_with_a_nul_byte_are_refused(built: Path, tiny_encoder) -> None:
    with pytest.raises(InvalidQueryError, match="NUL byte"):
        open_index(built, model=tiny_encoder).search("a red\x00square")


def test_the_command_line_says_which_file_is_damaged_in_one_line(built: Path) -> None:
    assert run_main("indexer", "verify", "--index", str(built)).stdout.startswith("ok: ")
    _flip(_gen(built) / "metadata.parquet")
    for module, args in (
        ("indexer", ["verify", "--index", str(built)]),
        ("retrieval", ["search", "a red square", "--index", str(built)]),
    ):
        proc = run_main(module, *args, check=False)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert (
            len(lines) == 1 and "metadata.parquet does not match its checksum" in lines[0] and "--rebuild" in lines[0]
        )
    assert "damaged" in json.loads((built / "verified.json").read_text())["outcome"]


def test_a_faiss_error_reaches_the_user_as_one_readable_line(built: Path) -> None:
    """An index without checksums (written before them) whose FAISS file is garbage: FAISS's own words,
    without its C++ function, source file and line."""
    manifest = _gen(built) / "manifest.json"
    data = json.loads(manifest.read_text())
    del data["checksums"]
    manifest.write_text(json.dumps(data))
    (_gen(built) / "index.faiss").write_bytes(b"IxFQ" + bytes(64))
    proc = run_main("retrieval", "search", "a red square", "--index", str(built), check=False)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert 'Index type 0x51467849 ("IxFQ") not recognized' in lines[0]
    assert "Error in" not in lines[0] and ".cpp" not in lines[0] and "--rebuild" in lines[0]
