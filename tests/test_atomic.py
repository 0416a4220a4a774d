"""Whole-file writes: a failed write leaves the previous file and nothing else behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retrieval.atomic import replacing
from retrieval.errors import IndexFormatError, ModelMismatchError
from retrieval.query.texts import LEGACY_VECTORS, TextIndex


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("durable", [False, True])
def test_a_finished_write_replaces_the_file(tmp_path: Path, durable: bool) -> None:
    target = tmp_path / "sub" / "data.json"
    with replacing(target, durable=durable) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".") and tmp.suffix == ".json"
        tmp.write_text("one")
        assert not target.exists()  # nobody sees the new file before the block is done
    assert target.read_text() == "one"
    with replacing(target, durable=durable) as tmp:
        tmp.write_text("two")
    assert target.read_text() == "two" and _names(target.parent) == ["data.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "matrix.npy"
    np.save(target, np.arange(3))
    with pytest.raises(ZeroDivisionError), replacing(target) as tmp:
        np.save(tmp, np.arange(1000))
        assert tmp.is_file()
        _ = 1 / 0
    assert np.load(target).tolist() == [0, 1, 2]
    assert _names(tmp_path) == ["matrix.npy"]


def test_np_save_writes_the_temporary_name_itself(tmp_path: Path) -> None:
    """``np.save`` adds ``.npy`` to a name without it; the temporary name keeps the suffix."""
    target = tmp_path / "features.npy"
    with replacing(target) as tmp:
        np.save(tmp, np.ones((2, 3), np.float32))
    assert _names(tmp_path) == ["features.npy"] and np.load(target).shape == (2, 3)


def _gallery(texts: list[str], dim: int = 4, fingerprint: str = "model-a") -> TextIndex:
    rng = np.random.default_rng(len(texts))
    vectors = rng.normal(size=(len(texts), dim)).astype(np.float32)
    return TextIndex(texts, vectors / np.linalg.norm(vectors, axis=1, keepdims=True), fingerprint)


def test_text_index_saves_again_and_a_failed_save_keeps_the_previous_one(tmp_path: Path) -> None:
    folder = tmp_path / "captions"
    _gallery(["a cat", "a dog"]).save(folder)
    second = _gallery(["a red car", "a boat", "a tree"])
    second.save(folder)
    loaded = TextIndex.load(folder)
    assert loaded.texts == second.texts and loaded.model_fingerprint == "model-a"
    np.testing.assert_allclose(loaded.vectors, second.vectors, atol=1e-3)  # stored as float16
    assert len([n for n in _names(folder) if n.startswith("text_vectors")]) == 1

    before = _names(folder)
    broken = TextIndex([object(), object()], second.vectors[:2], "model-a")  # type: ignore[list-item]
    with pytest.raises(TypeError):  # the texts cannot be written: the vectors already were
        broken.save(folder)
    assert _names(folder) == before
    assert TextIndex.load(folder).texts == second.texts


def test_text_index_reads_the_single_file_layout_and_rejects_damage(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    gallery = _gallery(["a cat", "a dog"])
    np.save(old / LEGACY_VECTORS, gallery.vectors.astype(np.float16))
    (old / "texts.json").write_text(json.dumps({"model_fingerprint": "model-a", "texts": gallery.texts}))
    assert TextIndex.load(old).texts == ["a cat", "a dog"]
    gallery.save(old)  # the new layout replaces the single vectors file
    assert LEGACY_VECTORS not in _names(old) and TextIndex.load(old).texts == ["a cat", "a dog"]

    (old / "texts.json").write_text(json.dumps({"texts": ["a cat"]}))
    with pytest.raises(IndexFormatError, match="damaged text index"):
        TextIndex.load(old)
    (old / "texts.json").write_text(
        json.dumps(
            {
                "model_fingerprint": "model-a",
                "texts": ["a cat"],
                "vectors_file": [n for n in _names(old) if n.endswith(".npy")][0],
            }
        )
    )
    with pytest.raises(IndexFormatError, match="1 texts, 2 vectors"):
        TextIndex.load(old)


def test_text_index_from_another_model_is_refused(tmp_path: Path, tiny_encoder) -> None:
    _gallery(["a cat"], dim=tiny_encoder.embed_dim, fingerprint="another").save(tmp_path / "g")
    with pytest.raises(ModelMismatchError):
        TextIndex.load(tmp_path / "g", encoder=tiny_encoder)
    built = TextIndex.build(tiny_encoder, ["a cat", " ", "a dog"])
    built.save(tmp_path / "g")
    assert TextIndex.load(tmp_path / "g", encoder=tiny_encoder).texts == ["a cat", "a dog"]
