"""Auto-tagging a real index built by the indexer with the tiny model."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer.api import build, update
from indexer.config import BuildConfig
from indexer.tag import TagConfig, clear_tags, tag_index, tags_for_vectors
from retrieval.errors import IndexLockedError, ModelMismatchError
from retrieval.index.store import IndexReader, WriterLock, live_generation
from retrieval.models.factory import create_model
from retrieval.zeroshot.classify import ZeroShotClassifier
from retrieval.zeroshot.relevance import NO_MATCH, NoMatchCalibration, default_calibration_path

REPO = Path(__file__).resolve().parents[1]
LABELS = ["cat", "dog", "beach", "car"]


pytestmark = pytest.mark.usefixtures("private_cache")


@pytest.fixture(scope="module")
def encoder(tiny_encoder):
    return tiny_encoder


@pytest.fixture()
def index(tmp_path, encoder) -> Path:
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(7)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, size=(36, 36, 3), dtype=np.uint8)).save(photos / f"p{i:02d}.png")
    index_dir = tmp_path / "index"
    build([photos], index_dir, BuildConfig(model="tiny-clip", workers=0), encoder=encoder)
    return index_dir


def test_tagging_publishes_top_labels_without_touching_vectors(index, encoder):
    before = IndexReader.open(index, mmap=False)
    gen_before = live_generation(index)
    report = tag_index(TagConfig(index_dir=index, labels=LABELS, k=2, min_probability=None), encoder=encoder)
    after = IndexReader.open(index, mmap=False)
    assert live_generation(index) != gen_before
    assert report.total == len(after) == 12 and report.tagged == 12
    np.testing.assert_array_equal(after.vectors, before.vectors)
    assert after.metadata.column("path").equals(before.metadata.column("path"))

    clf = ZeroShotClassifier(encoder, LABELS, no_match=None)
    vecs = np.asarray(after.vectors, np.float32)
    expected = clf.predict(vecs / np.linalg.norm(vecs, axis=1, keepdims=True), k=2)
    tags = after.metadata.column("tags").to_pylist()
    scores = after.metadata.column("tag_scores").to_pylist()
    for row, exp, sc in zip(tags, expected, scores):
        assert row == [p.label for p in exp]
        np.testing.assert_allclose(sc, [p.probability for p in exp], rtol=1e-3)
        assert sc == sorted(sc, reverse=True)
    assert sum(report.label_counts.values()) == 24

    label = tags[0][0]
    mask = after.filter_mask(tag=label)
    assert mask is not None and list(np.flatnonzero(mask)) == [i for i, t in enumerate(tags) if label in t]


def test_min_probability_and_no_match_leave_images_untagged(index, encoder):
    reader = IndexReader.open(index, mmap=False)
    clf = ZeroShotClassifier(encoder, LABELS, no_match=None)
    probs = clf.probabilities(np.asarray(reader.vectors, np.float32))
    cut = float(np.median(probs.max(axis=1)))
    result = tags_for_vectors(clf, reader.vectors, k=4, min_probability=cut)
    for row, sc, p in zip(result.tags, result.scores, probs):
        assert all(s >= cut for s in sc) and len(row) == int((p >= cut).sum())
    assert any(not row for row in result.tags)

    best = clf.scores(np.asarray(reader.vectors, np.float32)).max(axis=1)
    clf.no_match = NoMatchCalibration(encoder.fingerprint, threshold=float(np.median(best)))
    rejected = tags_for_vectors(clf, reader.vectors, k=1)
    assert [not row for row in rejected.tags] == list(best < np.median(best))


@pytest.mark.slow
def test_by_default_unlikely_labels_are_not_tags(tmp_path):
    """Without a floor, every photo got its top k labels however unlikely, and a tag filter
    matched most photos; by default a label needs 10% (the built-in model, real photos)."""
    from skimage import data

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("chelsea", "rocket", "coffee", "astronaut"):
        Image.fromarray(getattr(data, name)()).convert("RGB").save(photos / f"{name}.jpg")
    build([photos], tmp_path / "idx", BuildConfig(model="builtin", workers=0))
    labels = ["a cat", "a rocket", "a cup of coffee", "an astronaut", "a dog", "a car", "a beach", "a tree"]
    tag_index(TagConfig(index_dir=tmp_path / "idx", labels=labels, k=3))
    meta = IndexReader.open(tmp_path / "idx", mmap=False).metadata.to_pydict()
    assert all(s >= 0.1 for row in meta["tag_scores"] for s in row)
    tags = dict(zip((Path(p).stem for p in meta["path"]), meta["tags"]))
    assert tags["chelsea"][0] == "a cat" and tags["rocket"][0] == "a rocket"
    assert sum(len(t) for t in tags.values()) < 3 * 4, tags
    everything = tag_index(TagConfig(index_dir=tmp_path / "idx", labels=labels, k=3, min_probability=0))
    assert sum(everything.label_counts.values()) == 3 * 4


def test_tagging_refuses_another_model_and_a_locked_index(index):
    other = create_model("tiny-clip", device="cpu")
    other.fingerprint = "tiny-clip/other-weights"  # same architecture, different weights identity
    with pytest.raises(ModelMismatchError):
        tag_index(TagConfig(index_dir=index, labels=LABELS), encoder=other)
    with WriterLock(index):
        with pytest.raises(IndexLockedError):
            tag_index(TagConfig(index_dir=index, labels=LABELS, model="tiny-clip"))


@pytest.mark.slow
def test_indexer_tag_command(index, tmp_path):
    labels_file = tmp_path / "tags.txt"
    labels_file.write_text("\n".join(LABELS) + "\n")
    env = {**os.environ, "RETRIEVAL_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run(
        [sys.executable, "-m", "indexer", "tag", "--index", str(index), "--labels-file", str(labels_file), "--k", "1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr
    assert "tagged 12 of 12" in out.stdout
    assert "photos that later builds and updates add are tagged the same way" in out.stdout
    tags = IndexReader.open(index).metadata.column("tags").to_pylist()
    assert all(len(t) == 1 and t[0] in LABELS for t in tags)

    def indexer(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "indexer", *args, "--index", str(index)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )

    stats = indexer("stats")
    assert (
        stats.returncode == 0 and f"tags:        4 labels ({', '.join(LABELS)}); new photos are tagged" in stats.stdout
    )
    refused = indexer("tag", "--clear", "--labels", "cat,dog")
    assert refused.returncode != 0 and "--clear takes no labels" in refused.stderr
    cleared = indexer("tag", "--clear")
    assert cleared.returncode == 0 and "later updates will not tag new photos" in cleared.stdout
    assert all(t == [] for t in IndexReader.open(index).metadata.column("tags").to_pylist())
    assert "tags:        -" in indexer("stats").stdout


def _add_photos(folder: Path, names: list[str], seed: int) -> None:
    rng = np.random.default_rng(seed)
    for name in names:
        Image.fromarray(rng.integers(0, 255, size=(36, 36, 3), dtype=np.uint8)).save(folder / name)


def test_updates_tag_new_photos_the_way_the_index_was_tagged(index, encoder):
    tag_index(TagConfig(index_dir=index, labels=LABELS, k=2, min_probability=None), encoder=encoder)
    before = IndexReader.open(index, mmap=False)
    old_tags = dict(zip(before.metadata.column("path").to_pylist(), before.metadata.column("tags").to_pylist()))
    photos = index.parent / "photos"
    (photos / "p00.png").unlink()
    _add_photos(photos, ["new1.png", "new2.png", "new3.png"], seed=99)

    report = update(index, BuildConfig(model="tiny-clip", workers=0), encoder=encoder)
    assert report.embedded == 3 and report.tagged == 3
    assert "tags: 3 of 3 new photo(s) tagged" in report.summary()
    after = IndexReader.open(index, mmap=False)
    assert after.manifest.tagging == before.manifest.tagging and after.manifest.tagging["labels"] == LABELS
    paths = after.metadata.column("path").to_pylist()
    tags = dict(zip(paths, after.metadata.column("tags").to_pylist()))
    assert str(photos / "p00.png") not in tags
    assert {p: t for p, t in tags.items() if p in old_tags} == {p: t for p, t in old_tags.items() if p in tags}
    new = [i for i, p in enumerate(paths) if Path(p).name.startswith("new")]
    expected = tags_for_vectors(ZeroShotClassifier(encoder, LABELS), after.vectors[new], k=2)
    assert [tags[paths[i]] for i in new] == expected.tags and all(len(t) == 2 for t in expected.tags)
    mask = after.filter_mask(tag=expected.tags[0][0])
    assert mask is not None and bool(mask[new[0]])


def test_clearing_tags_stops_the_tagging_of_new_photos(index, encoder):
    tag_index(TagConfig(index_dir=index, labels=LABELS, k=1, min_probability=None), encoder=encoder)
    clear_tags(index)
    cleared = IndexReader.open(index, mmap=False)
    assert cleared.manifest.tagging == {} and all(t == [] for t in cleared.metadata.column("tags").to_pylist())
    _add_photos(index.parent / "photos", ["later.png"], seed=5)
    report = update(index, BuildConfig(model="tiny-clip", workers=0), encoder=encoder)
    assert report.embedded == 1 and report.tagged is None and "tags:" not in report.summary()
    assert all(t == [] for t in IndexReader.open(index).metadata.column("tags").to_pylist())


def test_a_rebuild_whose_model_cannot_use_the_labels_publishes_and_says_so(index, encoder):
    """One label needs the model's no-match calibration; a rebuild with weights that have none
    cannot tag, but it must not lose the build over that."""
    NoMatchCalibration(encoder.fingerprint, threshold=0.0).save(default_calibration_path(encoder, NO_MATCH))
    tag_index(TagConfig(index_dir=index, labels=["cat"], k=1, min_probability=None), encoder=encoder)
    other = create_model("tiny-clip", device="cpu")
    other.fingerprint = "tiny-clip/other-weights"
    report = build([], index, BuildConfig(model="tiny-clip", workers=0, rebuild=True), encoder=other)
    assert report.published and report.embedded == 12 and report.tagged is None
    assert "one label ('cat')" in report.tag_error
    assert any(
        n.startswith("the new photos were not tagged: one label") and "indexer tag --index" in n
        for n in report.notices()
    )
    after = IndexReader.open(index)
    assert after.manifest.model_fingerprint == "tiny-clip/other-weights" and len(after) == 12
