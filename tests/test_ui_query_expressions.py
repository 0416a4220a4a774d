"""The app's search box takes query expressions; sort, "more results" and "more / less like this",
driven by ``streamlit.testing`` over a real tiny-clip index of real Flickr8k photos."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from retrieval import create_model, open_index
from retrieval.zeroshot.relevance import RELEVANCE, RelevanceCalibration, calibration_paths
from tests.conftest import SHARED_DATA

pytest.importorskip("streamlit.testing.v1")
from streamlit.testing.v1 import AppTest  # noqa: E402

from tests.test_ui_app import build_index, captions, result_names  # noqa: E402

APP = str(Path(__file__).resolve().parents[1] / "ui" / "app.py")
N_PHOTOS = 24
DAY = 86_400


@pytest.fixture(scope="module")
def dated(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    """An index of real photos, photo i written on day i (no EXIF), and a relevance calibration for its model."""
    if not (SHARED_DATA / "flickr8k" / "images").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    base = tmp_path_factory.mktemp("ui-expr")
    photos = base / "photos"
    photos.mkdir()
    day_of: dict[str, int] = {}
    for i, src in enumerate(sorted((SHARED_DATA / "flickr8k" / "images").glob("*.jpg"))[200 : 200 + N_PHOTOS]):
        shutil.copy(src, photos / src.name)
        os.utime(photos / src.name, (1.6e9 + i * DAY, 1.6e9 + i * DAY))
        day_of[src.name] = i
    return build_index(photos, base / "index", "tiny-clip"), day_of


def app(monkeypatch, tmp_path: Path, index: Path) -> AppTest:
    cache = tmp_path / "cache"
    monkeypatch.setenv("RETRIEVAL_CACHE_DIR", str(cache))
    encoder = create_model("tiny-clip")
    RelevanceCalibration(encoder.fingerprint, slope=8.0, intercept=0.0).save(calibration_paths(encoder, RELEVANCE)[-1])
    monkeypatch.setenv("RETRIEVAL_UI_INDEXES", str(index))
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


def library(index: Path, query: str) -> list[str]:
    return [Path(r.path).name for r in open_index(index).search(query, k=6)]


def test_expressions_in_the_box_and_a_parse_error_says_where(monkeypatch, tmp_path, dated):
    at = app(monkeypatch, tmp_path, dated[0])
    at.text_input(key="search_query").input("people - a dog + 2:grass").run()
    assert not at.exception and not at.error
    assert len(result_names(at)) == 24
    at.text_input(key="search_query").input("people + + grass").run()
    assert not at.exception
    assert "column 8" in at.error[0].value and result_names(at) == []


def test_more_and_less_like_this_add_the_photo_to_the_query(monkeypatch, tmp_path, dated):
    at = app(monkeypatch, tmp_path, dated[0])
    at.sidebar.slider(key="search_k").set_value(6).run()
    at.text_input(key="search_query").input("a dog").run()
    third = result_names(at)[2]
    at.button(key="results-like-2").click().run()
    assert not at.exception and not at.error
    box = at.text_input(key="search_query").value
    assert box.startswith("a dog + @") and box.endswith(third)
    assert result_names(at) == library(dated[0], box)  # the app searches the expression the box shows
    second = result_names(at)[1]
    at.button(key="results-unlike-1").click().run()
    assert not at.exception and not at.error
    assert at.text_input(key="search_query").value == f"{box} - @{Path(box.split('@')[1]).parent / second}"
    assert result_names(at) == library(dated[0], at.text_input(key="search_query").value)


def test_sort_by_date_and_more_results(monkeypatch, tmp_path, dated):
    index, day_of = dated
    at = app(monkeypatch, tmp_path, index)
    at.sidebar.slider(key="search_k").set_value(4).run()
    at.text_input(key="search_query").input("people outside").run()
    at.sidebar.selectbox(key="search_sort").set_value("Newest first").run()
    assert not at.exception and not at.error
    assert any("matched (relevance at least 50%), newest first" in c for c in captions(at))
    page = result_names(at)
    assert len(page) == 4 and [day_of[n] for n in page] == sorted((day_of[n] for n in page), reverse=True)
    at.button(key="search_more_results").click().run()
    two_pages = result_names(at)
    assert two_pages[:4] == page and len(two_pages) == len(set(two_pages)) > 4
    days = [day_of[n] for n in two_pages]
    assert days == sorted(days, reverse=True)
