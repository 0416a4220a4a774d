"""The query layer over a real index built by the real indexer with the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import retrieval
from retrieval import InvalidQueryError, ModelMismatchError, open_index
from retrieval.query.texts import TextIndex
from tests.conftest import run_main, run_module, write_image

COLORS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (230, 220, 20)}


@pytest.fixture(scope="module")
def built_index(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("search")
    photos = root / "photos"
    for name, color in COLORS.items():
        write_image(photos / "jpegs" / f"{name}.jpg", size=(64, 48), color=color)
        write_image(photos / "pngs" / f"{name}.png", size=(48, 64), color=color)
    run_main("indexer", "build", str(photos), "--index", str(root / "index"), "--model", "tiny-clip")
    return photos, root / "index"


def test_text_search_returns_ranked_paths_with_scores_and_metadata(built_index) -> None:
    photos, index_dir = built_index
    idx = open_index(index_dir)
    results = idx.search("a red photo", k=5)
    assert len(results) == 5
    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True)
    assert all(isinstance(r.path, str) and Path(r.path).is_file() for r in results)
    assert all(r.path.startswith(str(photos.resolve())) for r in results)
    assert results[0].width in (64, 48) and results[0].file_type in ("jpeg", "png")
    # the scores are the exact cosines between the query and the stored vectors
    q = idx.encoder.encode_texts(["a red photo"])[0]
    row = int(idx.reader.rows_for_paths([results[0].path])[0])
    assert results[0].score == pytest.approx(float(np.asarray(idx.reader.vectors[row], np.float32) @ q), abs=1e-3)


def test_image_query_finds_the_identical_image_first(built_index) -> None:
    photos, index_dir = built_index
    idx = open_index(index_dir)
    target = photos / "pngs" / "blue.png"
    by_path = idx.search(target, k=3)
    assert by_path[0].path == str(target.resolve())
    assert by_path[0].score == pytest.approx(1.0, abs=1e-2)
    with Image.open(target) as im:
        by_pil = idx.search(im.convert("RGB"), k=1)
    assert by_pil[0].path == by_path[0].path


def test_more_like_this_excludes_the_image_itself(built_index) -> None:
    photos, index_dir = built_index
    idx = open_index(index_dir)
    target = str((photos / "jpegs" / "green.jpg").resolve())
    results = idx.more_like_this(target, k=3)
    assert len(results) == 3 and target not in [r.path for r in results]


def test_filters_restrict_results(built_index) -> None:
    photos, index_dir = built_index
    idx = open_index(index_dir)
    in_folder = idx.search("a photo", k=10, folder=str(photos / "pngs"))
    assert len(in_folder) == 4 and all(r.path.endswith(".png") for r in in_folder)
    jpegs = idx.search("a photo", k=10, file_types=["jpg"])
    assert len(jpegs) == 4 and all(r.file_type == "jpeg" for r in jpegs)
    assert idx.search("a photo", k=10, date_to="1990-01-01") == []


def test_describe_ranks_texts_for_an_image(built_index, tiny_encoder) -> None:
    photos, index_dir = built_index
    idx = open_index(index_dir)
    texts = ["a red square", "a dog", "a cat", "a rocket"]
    ranked = idx.describe(photos / "jpegs" / "red.jpg", texts, k=4)
    assert sorted(t.text for t in ranked) == sorted(texts)
    gallery = TextIndex.build(idx.encoder, texts)
    vec = idx.query_vector(photos / "jpegs" / "red.jpg")
    assert [t.text for t in ranked] == [texts[i] for i in np.argsort(-(gallery.vectors @ vec), kind="stable")]
    assert [t.score for t in idx.describe(photos / "jpegs" / "red.jpg", gallery, k=2)] == [t.score for t in ranked[:2]]


def test_bad_queries_raise_typed_errors(built_index) -> None:
    _, index_dir = built_index
    idx = open_index(index_dir)
    with pytest.raises(InvalidQueryError):
        idx.search("   ")
    with pytest.raises(InvalidQueryError):
        idx.search(np.zeros(7, np.float32))
    with pytest.raises(InvalidQueryError):
        idx.search("a photo", k=0)
    with pytest.raises(InvalidQueryError, match="whole number"):
        idx.search("a photo", k=2.5)
    # a huge k is capped at the index's size: it used to allocate k columns and run out of memory
    assert len(idx.search("a photo", k=10**12)) == len(idx) == len(idx.search("a photo", k=len(idx)))
    with pytest.raises(retrieval.ImageDecodeError):
        idx.search(Path(index_dir) / "does-not-exist.jpg")
    with pytest.raises(retrieval.ImageDecodeError, match="a folder, not an image file"):
        idx.search(Path(index_dir))


def test_queries_from_another_model_are_refused(built_index) -> None:
    _, index_dir = built_index
    with pytest.raises(ModelMismatchError):
        open_index(index_dir, model="builtin:random")


def test_module_level_search_uses_the_env_default(built_index, monkeypatch: pytest.MonkeyPatch) -> None:
    _, index_dir = built_index
    monkeypatch.setenv("RETRIEVAL_INDEX", str(index_dir))
    assert retrieval.default_index_dir() == index_dir
    assert len(retrieval.search("a photo", k=2)) == 2


def test_search_cli_text_json_and_image(built_index) -> None:
    photos, index_dir = built_index
    out = run_main("retrieval", "search", "a blue photo", "--index", str(index_dir), "-k", "3").stdout
    lines = out.strip().splitlines()
    assert len(lines) == 3 and all(Path(line.split()[-1]).is_file() for line in lines)
    data = json.loads(run_main("retrieval", "search", "a photo", "--index", str(index_dir), "-k", "2", "--json").stdout)
    assert [set(d) >= {"path", "score"} for d in data] == [True, True]
    img = photos / "jpegs" / "yellow.jpg"
    top = run_main("retrieval", "search", "--image", str(img), "--index", str(index_dir), "-k", "1").stdout
    assert top.split()[-1] == str(img.resolve())
    pngs = run_main("retrieval", "search", "a photo", "--index", str(index_dir), "-k", "50", "--type", "PNG").stdout
    assert len(pngs.splitlines()) == len(COLORS) and all(line.endswith(".png") for line in pngs.splitlines())
    in_folder = run_main(
        "retrieval",
        "search",
        "a photo",
        "--index",
        str(index_dir),
        "-k",
        "50",
        "--folder",
        str(photos / "jpegs"),
        "--date-from",
        "2000-01-01",
    ).stdout
    assert len(in_folder.splitlines()) == len(COLORS) and all("/jpegs/" in line for line in in_folder.splitlines())


def test_search_cli_says_which_filter_leaves_nothing(built_index, tmp_path: Path) -> None:
    photos, index_dir = built_index

    def search(*flags: str) -> str:
        return run_main("retrieval", "search", "a photo", "--index", str(index_dir), *flags).stdout.strip()

    assert (
        search("--folder", str(tmp_path / "elsewhere"))
        == f"no results: no indexed photo is in or under {tmp_path / 'elsewhere'}"
    )
    assert search("--tag", "dog") == (
        "no results: the index has no tags yet: python -m indexer tag --index DIR --labels-file tags.txt"
    )
    assert search("--type", "gif") == "no results: the index holds no gif files (it holds jpeg, png)"
    assert (
        search("--folder", str(photos / "jpegs"), "--type", "png")
        == "no results: no photo passes all the filters together"
    )
    assert search("--date-to", "1990-01-01").startswith(
        "no results: no photo was taken (or, without EXIF, written) between"
    )


def test_search_cli_reports_missing_index_cleanly(tmp_path: Path) -> None:
    proc = run_module("retrieval", "search", "a cat", "--index", str(tmp_path / "nope"), check=False)
    assert proc.returncode == 2 and "no index" in proc.stderr and "Traceback" not in proc.stderr


def test_public_api_is_guarded() -> None:
    for name in retrieval.__all__:
        assert hasattr(retrieval, name), name
    for name in ("search", "open_index", "create_model", "Result", "Index"):
        assert name in retrieval.__all__


def test_an_index_emptied_by_removal_searches_to_no_results(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    write_image(photos / "only.jpg", size=(40, 40))
    index_dir = tmp_path / "index"
    run_main("indexer", "build", str(photos), "--index", str(index_dir), "--model", "tiny-clip")
    run_main("indexer", "remove", str(photos / "only.jpg"), "--index", str(index_dir))
    idx = open_index(index_dir)
    assert len(idx) == 0
    assert idx.search("anything", k=5) == []
    assert idx.search("anything", k=5, file_types=["jpeg"]) == []


def test_a_held_index_follows_updates_and_rebuilds_with_another_model(tmp_path: Path, tiny_encoder) -> None:
    """A server holds an index: refresh() picks up a generation published by another process and
    keeps the loaded model, unless the index was rebuilt with another one; the one-call search
    does the same instead of loading the model again for each generation."""
    import torch

    import indexer
    from retrieval.query.search import _cached_index

    photos, index_dir = tmp_path / "photos", tmp_path / "index"
    for name in ("red", "green"):
        write_image(photos / f"{name}.jpg", color=COLORS[name])
    indexer.build([photos], index_dir, indexer.BuildConfig(model="tiny-clip", workers=0), encoder=tiny_encoder)
    held = open_index(index_dir)
    assert held.refresh() is False and len(held.search("a photo", k=5)) == 2
    loaded = held.encoder
    assert len(retrieval.search("a photo", index=index_dir)) == 2
    one_call = _cached_index(str(index_dir.resolve())).encoder

    write_image(photos / "blue.jpg", color=COLORS["blue"])
    indexer.update(index_dir, indexer.BuildConfig(workers=0), encoder=tiny_encoder)
    assert len(held.search("a photo", k=5)) == 2, "a held index is a snapshot until refreshed"
    assert held.refresh() is True and held.encoder is loaded and len(held.search("a photo", k=5)) == 3
    assert len(retrieval.search("a photo", index=index_dir)) == 3
    assert _cached_index(str(index_dir.resolve())).encoder is one_call, "the model is not loaded again"

    state = {k: v + 1 if v.is_floating_point() else v for k, v in tiny_encoder.model.state_dict().items()}
    torch.save(state, tmp_path / "other.pt")
    indexer.build(
        [photos], index_dir, indexer.BuildConfig(model=f"tiny-clip:{tmp_path / 'other.pt'}", workers=0, rebuild=True)
    )
    assert held.refresh() is True and held.encoder is not loaded
    assert held.encoder.fingerprint == held.manifest.model_fingerprint
    assert [r.path for r in held.search(Path(photos / "blue.jpg"), k=1)] == [str((photos / "blue.jpg").resolve())]


def test_relevance_is_for_text_queries_only(built_index, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a calibration installed, text results carry relevance; image results never do."""
    from retrieval.zeroshot.relevance import RELEVANCE, RelevanceCalibration, calibration_paths

    photos, index_dir = built_index
    monkeypatch.setenv("RETRIEVAL_CACHE_DIR", str(tmp_path / "cache"))
    assert not open_index(index_dir).has_relevance  # tiny-clip ships no calibration
    with pytest.raises(retrieval.CalibrationError):
        open_index(index_dir).search("a red photo", k=2, min_relevance=0.5)

    plain = open_index(index_dir)
    path = calibration_paths(plain.encoder, RELEVANCE)[-1]
    RelevanceCalibration(plain.encoder.fingerprint, slope=20.0, intercept=-2.0).save(path)
    idx = open_index(index_dir)
    assert idx.has_relevance
    text = idx.search("a red photo", k=8)
    assert all(r.relevance is not None and 0.0 <= r.relevance <= 1.0 for r in text)
    vec = idx.encoder.encode_texts(["a red photo"])[0]
    assert [r.relevance for r in idx.search(vec, k=8, modality="text")] == [r.relevance for r in text]
    assert all(r.relevance is None for r in idx.search(vec, k=3))  # a bare vector has no known modality
    assert all(r.relevance is None for r in idx.search(photos / "pngs" / "red.png", k=3))
    assert all(r.relevance is None for r in idx.more_like_this(text[0].path, k=2))
    with pytest.raises(InvalidQueryError):
        idx.search(photos / "pngs" / "red.png", k=3, min_relevance=0.5)
    cut = sorted(r.relevance for r in text)[len(text) // 2]
    kept = idx.search("a red photo", k=8, min_relevance=cut)
    assert kept and len(kept) < len(text) and all(r.relevance >= cut for r in kept)
    for bad in (80.0, -0.1, float("nan")):  # a percentage, not a probability: refused, not "no results"
        with pytest.raises(InvalidQueryError, match="between 0 and 1"):
            idx.search("a red photo", k=8, min_relevance=bad)
