"""Page logic of the Streamlit app, driven by ``streamlit.testing`` over real tiny-clip indexes."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw, ImageOps

from retrieval import create_model
from retrieval.zeroshot.relevance import RelevanceCalibration

pytest.importorskip("streamlit.testing.v1")
from streamlit.testing.v1 import AppTest  # noqa: E402

from ui.config import MODEL_ENV  # noqa: E402

APP = str(Path(__file__).resolve().parents[1] / "ui" / "app.py")
COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]


def write_photos(root: Path) -> None:
    """Two folders of small generated photos: JPEGs in ``a/``, JPEGs and PNGs in ``b/``."""
    for folder, ext_cycle in (("a", ["jpg"]), ("b", ["jpg", "png"])):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i, color in enumerate(COLORS):
            image = Image.new("RGB", (96, 72), color)
            ImageDraw.Draw(image).ellipse((10 + 4 * i, 10, 60, 60), fill="gray")
            image.save(root / folder / f"{folder}_{color}.{ext_cycle[i % len(ext_cycle)]}")


def build_index(photos: Path, index_dir: Path, model: str) -> Path:
    """A real index over ``photos`` built by the indexer's library API."""
    import indexer

    indexer.build([photos], index_dir, indexer.BuildConfig(model=model, workers=0))
    return index_dir


@pytest.fixture(scope="module")
def indexes(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("ui")
    photos = base / "photos"
    write_photos(photos)
    # A second model with different weights, for the Compare page: perturbed tiny-clip.
    encoder = create_model("tiny-clip")
    torch.manual_seed(1)
    state = {
        k: v + 0.5 * torch.randn_like(v) if v.is_floating_point() else v for k, v in encoder.model.state_dict().items()
    }
    checkpoint = base / "tiny-other.pt"
    torch.save(state, checkpoint)
    # A relevance calibration for that model (found next to its weights): results get a relevance.
    other = create_model(f"tiny-clip:{checkpoint}")
    RelevanceCalibration(other.fingerprint, slope=8.0, intercept=0.0).save(base / "tiny-other.relevance.json")
    empty = base / "empty-photos"
    empty.mkdir()
    return {
        "photos": photos,
        "main": build_index(photos, base / "index-main", "tiny-clip"),
        "other": build_index(photos, base / "index-other", f"tiny-clip:{checkpoint}"),
        "empty": build_index(empty, base / "index-empty", "tiny-clip"),
    }


def app(monkeypatch, *dirs: Path, page: str = "Search") -> AppTest:
    monkeypatch.setenv("RETRIEVAL_UI_INDEXES", os.pathsep.join(str(d) for d in dirs))
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    if page != "Search":
        at.sidebar.radio(key="page").set_value(page).run()
        assert not at.exception, at.exception
    return at


def captions(at: AppTest) -> list[str]:
    return [c.value for c in at.caption]


def result_names(at: AppTest) -> list[str]:
    return [c.split("**")[1] for c in captions(at) if c.startswith("**") and "score" in c]


def test_text_search_shows_a_grid_of_results(monkeypatch, indexes):
    at = app(monkeypatch, indexes["main"])
    at.text_input(key="search_query").input("a red photo").run()
    assert not at.exception and not at.error
    names = result_names(at)
    assert len(names) == 16
    assert len(at.get("image")) == 16
    assert any("results in" in c for c in captions(at))
    at.sidebar.slider(key="search_k").set_value(5).run()
    assert len(result_names(at)) == 5


def test_sidebar_filters_narrow_the_results(monkeypatch, indexes):
    at = app(monkeypatch, indexes["main"])
    at.text_input(key="search_query").input("a circle").run()
    folder_b = str((indexes["photos"] / "b").resolve())
    at.sidebar.selectbox(key="search_folder").set_value(folder_b).run()
    names = result_names(at)
    assert len(names) == 8 and all(n.startswith("b_") for n in names)
    at.sidebar.multiselect(key="search_types").set_value(["png"]).run()
    names = result_names(at)
    assert len(names) == 4 and all(n.endswith(".png") for n in names)


def test_empty_results_say_why(monkeypatch, indexes):
    at = app(monkeypatch, indexes["main"])
    at.text_input(key="search_query").input("a circle").run()
    at.sidebar.selectbox(key="search_folder").set_value(str((indexes["photos"] / "a").resolve())).run()
    at.sidebar.multiselect(key="search_types").set_value(["png"]).run()
    assert result_names(at) == []
    assert at.warning[0].value == "The filters leave nothing to search: no photo passes all the filters together."

    empty = app(monkeypatch, indexes["empty"])
    empty.text_input(key="search_query").input("anything").run()
    assert not empty.exception
    assert "index is empty" in empty.warning[0].value


def _png(color: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_search_by_uploaded_image_and_bad_upload(monkeypatch, indexes):
    at = app(monkeypatch, indexes["main"])
    at.file_uploader(key="search_upload").set_value(("query.png", _png("blue"), "image/png")).run()
    assert not at.exception and not at.error
    assert len(result_names(at)) == 16

    at.file_uploader(key="search_upload").set_value(("holiday.jpg", b"not a picture at all", "image/jpeg")).run()
    assert not at.exception
    assert "holiday.jpg" in at.error[0].value and "not an image we can read" in at.error[0].value
    assert result_names(at) == []


def test_open_result_and_more_like_this(monkeypatch, indexes):
    at = app(monkeypatch, indexes["main"])
    at.text_input(key="search_query").input("a green photo").run()
    first = result_names(at)[0]
    at.button(key="results-open-0").click().run()
    assert not at.exception
    assert at.subheader[0].value == first
    table = at.table[0].value
    assert {"path", "width", "height", "modified", "file_type"} <= set(table.index)
    assert "sha256" not in table.index
    at.button(key="search_selected-more").click().run()
    assert not at.exception
    names = result_names(at)
    assert len(names) == 15 and first not in names
    assert any("Showing photos like" in i.value for i in at.info)


def test_paths_outside_the_roots_are_refused(monkeypatch, indexes, tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(_png("red"))
    inside = next((indexes["photos"] / "a").glob("*.jpg"))
    for crafted in (str(secret), f"{indexes['photos']}/a/../../{secret.parent.name}/secret.png", "/etc/passwd"):
        at = AppTest.from_file(APP, default_timeout=60)
        monkeypatch.setenv("RETRIEVAL_UI_INDEXES", str(indexes["main"]))
        at.query_params["open"] = crafted
        at.run()
        assert not at.exception
        assert at.error and "Refused" in at.error[0].value, crafted
        assert not at.get("image")
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["open"] = str(inside)
    at.run()
    assert not at.error and at.subheader[0].value == inside.name and len(at.get("image")) == 1


def test_compare_page_shows_two_models_side_by_side(monkeypatch, indexes):
    at = app(monkeypatch, indexes["main"], indexes["other"], page="Compare")
    at.text_input(key="compare_query").input("a yellow photo").run()
    assert not at.exception and not at.error
    models = [c for c in captions(at) if c.startswith("model")]
    assert len(models) == 2 and "tiny-clip`" in models[0] and "tiny-other.pt" in models[1]
    assert len(at.get("image")) == 2 * 12

    # --model says how to query the main index; the other one is still read with its own model
    monkeypatch.setenv(MODEL_ENV, "tiny-clip")
    with_model = app(monkeypatch, indexes["main"], indexes["other"], page="Compare")
    with_model.text_input(key="compare_query").input("a yellow photo").run()
    assert not with_model.exception and not with_model.error
    assert len(with_model.get("image")) == 2 * 12
    monkeypatch.delenv(MODEL_ENV)

    single = app(monkeypatch, indexes["main"], page="Compare")
    assert "needs two indexes" in single.info[0].value


def test_describe_ranks_texts_for_an_indexed_photo(monkeypatch, indexes):
    at = app(monkeypatch, indexes["main"], page="Describe")
    at.radio(key="describe_source").set_value("From the index").run()
    at.text_area(key="describe_texts").input("a red square\na blue sky\na green field").run()
    assert not at.exception and not at.error
    ranked = at.dataframe[0].value
    assert sorted(ranked["text"]) == ["a blue sky", "a green field", "a red square"]
    assert list(ranked["score"]) == sorted(ranked["score"], reverse=True)


def test_classify_shows_probabilities(monkeypatch, indexes):
    at = app(monkeypatch, indexes["main"], page="Classify")
    at.text_area(key="classify_labels").input("red, green, blue").run()
    at.radio(key="classify_source").set_value("From the index").run()
    assert not at.exception and not at.error
    tables = at.dataframe
    assert len(tables) == 3
    for table in tables:
        assert set(table.value["label"]) == {"red", "green", "blue"}
        assert abs(table.value["probability"].sum() - 1.0) < 1e-3


def test_index_page_shows_counts_bad_files_and_updates(monkeypatch, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for color in ("red", "green", "blue"):
        Image.new("RGB", (40, 30), color).save(photos / f"{color}.jpg")
    index_dir = build_index(photos, tmp_path / "index", "tiny-clip")
    at = app(monkeypatch, index_dir, page="Index")
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Photos"] == "3" and metrics["Bad files"] == "0" and metrics["Embedding size"] == "16"
    assert "tiny-clip" in at.markdown[0].value

    Image.new("RGB", (40, 30), "white").save(photos / "white.png")
    Image.new("RGB", (40, 30), "black").save(photos / "black.jpg")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 this is not really a jpeg")
    (photos / "clip.mov").write_bytes(b"a video")
    at.button(key="index_update").click().run()
    assert not at.exception and not at.error
    assert "2 embedded" in at.success[0].value
    assert [w.value for w in at.warning] == ["Ignored 1 file that is not a supported image (mov 1)"]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Photos"] == "5" and metrics["Bad files"] == "1"
    bad = at.dataframe[0].value
    assert list(bad["path"]) == [str((photos / "broken.jpg").resolve())]
    assert bad["reason"][0] in {"not_an_image", "corrupt", "truncated"}

    at.sidebar.radio(key="page").set_value("Search").run()
    at.text_input(key="search_query").input("white").run()
    assert len(result_names(at)) == 5

    for f in photos.iterdir():  # the folder is suddenly empty, as an unmounted mount point is
        f.unlink()
    at.sidebar.radio(key="page").set_value("Index").run()
    at.button(key="index_update").click().run()
    assert not at.exception and not at.error
    assert at.warning[0].value.startswith("Kept 5 indexed photos under folders that cannot be read or are empty now")
    assert str(photos.resolve()) in at.warning[0].value
    assert f"python -m indexer remove FOLDER --index {index_dir}" in at.warning[0].value
    assert {m.label: m.value for m in at.metric}["Photos"] == "5"


def test_an_update_from_the_command_line_reaches_a_running_app(monkeypatch, tmp_path):
    """The app holds the index for every browser session; an update made outside it (the command line, a
    nightly job) must show on the next page run, not after a restart."""
    import indexer

    photos = tmp_path / "photos"
    photos.mkdir()
    for color in ("red", "green", "blue"):
        Image.new("RGB", (40, 30), color).save(photos / f"{color}.jpg")
    index_dir = build_index(photos, tmp_path / "index", "tiny-clip")
    at = app(monkeypatch, index_dir)
    at.text_input(key="search_query").input("red").run()
    assert sorted(result_names(at)) == ["blue.jpg", "green.jpg", "red.jpg"]

    (photos / "red.jpg").unlink()
    Image.new("RGB", (40, 30), "white").save(photos / "white.png")
    indexer.update(index_dir, indexer.BuildConfig(workers=0))  # another process, as far as the app knows
    at.run()
    assert not at.exception
    assert sorted(result_names(at)) == ["blue.jpg", "green.jpg", "white.png"]
    at.sidebar.radio(key="page").set_value("Index").run()
    assert {m.label: m.value for m in at.metric}["Photos"] == "3"


def test_min_relevance_slider_only_with_a_calibration(monkeypatch, indexes):
    plain = app(monkeypatch, indexes["main"])
    plain.text_input(key="search_query").input("a photo").run()
    assert not plain.exception and len(result_names(plain)) == 16
    assert [s.key for s in plain.sidebar.slider] == ["search_k"]
    assert "rel " not in " ".join(captions(plain))

    at = app(monkeypatch, indexes["other"])
    at.text_input(key="search_query").input("a photo").run()
    assert not at.exception and not at.error
    assert len(result_names(at)) == 16 and any("rel " in c for c in captions(at))
    at.sidebar.slider(key="search_min_relevance").set_value(1.0).run()
    assert result_names(at) == []
    assert "No photo is relevant enough" in at.warning[0].value


def test_duplicates_page_groups_copies_of_a_photo(monkeypatch, tmp_path, indexes):
    photos = tmp_path / "photos"
    photos.mkdir()
    big = Image.new("RGB", (120, 90), "red")
    ImageDraw.Draw(big).ellipse((20, 20, 80, 70), fill="white")
    big.save(photos / "holiday.jpg", quality=95)
    (photos / "holiday (copy).jpg").write_bytes((photos / "holiday.jpg").read_bytes())
    ImageOps.mirror(big).resize((60, 45)).save(photos / "holiday mirrored.jpg", quality=80)
    Image.new("RGB", (120, 90), "blue").save(photos / "sea.png")
    at = app(monkeypatch, build_index(photos, tmp_path / "index", "tiny-clip"), page="Duplicates")
    assert not at.exception and not at.error
    groups = [m.value for m in at.markdown if m.value.startswith("**Group")]
    assert groups and groups[0].startswith("**Group 1**") and "2 identical files" in groups[0]
    assert at.caption[0].value.startswith("1 group, 3 photos")
    cards = [c for c in captions(at) if c.startswith("**")]
    assert {c.split("**")[1] for c in cards[:2]} == {"holiday.jpg", "holiday (copy).jpg"}
    assert "keep · 120x90" in cards[0] and "keep" not in cards[1]
    assert cards[2].startswith("**holiday mirrored.jpg**") and "mirror image · 60x45" in cards[2]

    # identical files and a mirror image (by its fingerprint) still group at the strictest setting
    at.slider(key="dup_threshold").set_value(1.0).run()
    groups = [m.value for m in at.markdown if m.value.startswith("**Group")]
    assert len(groups) == 1 and "3 photos" in groups[0] and "2 identical files" in groups[0]

    none = app(monkeypatch, indexes["empty"], page="Duplicates")
    assert not none.exception and "No near-duplicates at 0.92" in none.info[0].value
