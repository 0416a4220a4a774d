"""Reading the text in photos through the real OCR engine (rapidocr-onnxruntime's PP-OCR models),
on words rendered with PIL onto real photos (Flickr8k when it is there, else a smooth gradient)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from indexer.api import build, stats, update
from indexer.cli.stats import format_stats
from indexer.config import BuildConfig
from indexer.text import OcrConfig, ocr_index
from retrieval.errors import TextNotIndexedError
from retrieval.index.store import IndexReader
from retrieval.query.search import Index
from retrieval.query.textmatch import TEXT_WEIGHT, TextQuery, normalize

from .conftest import SHARED_DATA, run_main, run_module

pytest.importorskip("rapidocr_onnxruntime")
pytestmark = pytest.mark.usefixtures("private_cache")

FONT_PATHS = [
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"),
    Path("/usr/share/fonts/truetype/liberation/LiberationSans-Bold.ttf"),
]
FLICKR = SHARED_DATA / "flickr8k" / "images"


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for path in FONT_PATHS:
        if path.is_file():
            return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)


def _background(i: int) -> Image.Image:
    """A real photo (the first Flickr8k photos hold no text) or, without the data, a smooth gradient."""
    photos = sorted(FLICKR.glob("*.jpg"))[1:12] if FLICKR.is_dir() else []
    if photos:
        return Image.open(photos[i % len(photos)]).convert("RGB").resize((320, 240))
    x = np.linspace(0, 1, 320)[None, :, None]
    y = np.linspace(0, 1, 240)[:, None, None]
    rgb = np.concatenate([60 + 120 * x + 0 * y, 90 + 100 * y + 0 * x, 140 + 60 * x * y], axis=2)
    return Image.fromarray(np.clip(rgb + 7 * i, 0, 255).astype(np.uint8))


def photo(path: Path, i: int, text: str | None = None) -> Path:
    img = _background(i)
    if text:
        draw = ImageDraw.Draw(img)
        draw.text((24, 90), text, font=_font(34), fill=(255, 255, 255), stroke_width=3, stroke_fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, quality=92)
    return path


def _ocr_columns(index_dir: Path) -> dict[str, tuple[str | None, float | None]]:
    meta = IndexReader.open(index_dir).metadata
    return {
        Path(p).name: (t, c)
        for p, t, c in zip(*(meta.column(n).to_pylist() for n in ("path", "ocr_text", "ocr_confidence")))
    }


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    photo(folder / "sign.jpg", 0, "EXIT 12")
    photo(folder / "plain1.jpg", 1)
    photo(folder / "plain2.jpg", 2)
    return folder


def test_matching_normalises_spaces_and_case_and_allows_one_edit_in_long_words() -> None:
    assert normalize("EXIT12!") == "exit 12"
    assert TextQuery.parse("EXIT 12").score("EXIT12") == 1.0
    assert TextQuery.parse("exit12").score("Exit 12") == 1.0
    assert TextQuery.parse("12").score("year 2012") == 0.0  # a short word is a whole word
    assert TextQuery.parse("harbour").score("HARB0UR") == pytest.approx(0.9 * (1 - 1 / 7))
    assert TextQuery.parse("hale").score("HALE") > TextQuery.parse("hale").score("WHALE") > 0  # a word beats a part
    assert TextQuery.parse("harbour").score("HARBOR") > 0  # one deletion
    assert TextQuery.parse("harbour").score("HAMBURG") == 0.0
    assert TextQuery.parse("cat").score("cap") == 0.0  # three letters: exact only
    assert TextQuery.parse("exit north").score("EXIT") == 0.0  # every word, for the filter
    assert TextQuery.parse("exit north").score("EXIT", every_word=False) == 0.5


@pytest.mark.slow
def test_build_with_ocr_reads_the_rendered_words_and_contains_finds_them(photos: Path, tmp_path: Path) -> None:
    index_dir = tmp_path / "index"
    out = run_module(
        "indexer", "build", str(photos), "--index", str(index_dir), "--model", "tiny-clip", "--ocr", "--no-progress"
    ).stdout
    assert "text: read 3 photo(s), 1 with text" in out and "| ocr " in out  # the report and the stage timings
    text = _ocr_columns(index_dir)
    assert normalize(text["sign.jpg"][0] or "").replace(" ", "") == "exit12"
    assert text["sign.jpg"][1] is not None and 0.5 < text["sign.jpg"][1] <= 1.0
    assert text["plain1.jpg"] == ("", None) and text["plain2.jpg"] == ("", None)  # read, nothing there

    found = json.loads(
        run_module("retrieval", "search", "--contains", "EXIT 12", "--index", str(index_dir), "--json").stdout
    )
    assert [Path(r["path"]).name for r in found] == ["sign.jpg"]
    assert found[0]["ocr_text"] == text["sign.jpg"][0] and found[0]["text_score"] == 1.0
    assert Index.open(index_dir, model="tiny-clip").search("north", contains="north") == []
    assert "text (OCR):  read in 3 of 3 photos" in format_stats(stats(index_dir))


def test_contains_on_an_index_without_text_says_how_to_add_it(photos: Path, tmp_path: Path, tiny_encoder) -> None:
    index_dir = tmp_path / "index"
    build([photos], index_dir, BuildConfig(model="tiny-clip", workers=0), encoder=tiny_encoder)
    proc = run_main("retrieval", "search", "--contains", "EXIT", "--index", str(index_dir), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and f"python -m indexer ocr --index {index_dir}" in proc.stderr
    with pytest.raises(TextNotIndexedError):
        Index.open(index_dir, model=tiny_encoder).search("exit", contains="exit")


def test_indexer_ocr_adds_text_incrementally_and_updates_read_new_photos(
    photos: Path, tmp_path: Path, tiny_encoder
) -> None:
    index_dir = tmp_path / "index"
    build([photos], index_dir, BuildConfig(model="tiny-clip", workers=0), encoder=tiny_encoder)
    assert set(_ocr_columns(index_dir).values()) == {(None, None)}  # not read

    first = ocr_index(OcrConfig(index_dir=index_dir, checkpoint=2))  # publishes after 2 photos, then after 3
    assert (first.reading.read, first.reading.with_text, first.already) == (3, 1, 0)
    again = ocr_index(OcrConfig(index_dir=index_dir))
    assert (again.reading.read, again.already) == (0, 3)  # only photos without text are read

    idx = Index.open(index_dir, model=tiny_encoder)
    hits = idx.search("a sign", contains="exit")
    assert [Path(r.path).name for r in hits] == ["sign.jpg"] and hits[0].text_score == 1.0
    plain = idx.search("exit", k=3)  # a plain query ranks the photo whose text holds the word first
    assert Path(plain[0].path).name == "sign.jpg" and plain[0].text_score == 1.0
    stored = np.asarray(idx.reader.vectors[idx.reader.rows_for_paths([plain[0].path])[0]], np.float32)
    cosine = float(stored / np.linalg.norm(stored) @ idx.query_vector("exit"))
    assert plain[0].score == pytest.approx(cosine + TEXT_WEIGHT * 1.0, abs=1e-4)  # the hybrid, as documented

    photo(photos / "shop.jpg", 3, "Bakery")
    report = update(index_dir, BuildConfig(workers=0), encoder=tiny_encoder)
    assert report.embedded == 1 and report.ocr_read == 1 and report.ocr_with_text == 1
    assert "bakery" in normalize(_ocr_columns(index_dir)["shop.jpg"][0] or "")
    idx.reload()
    assert [Path(r.path).name for r in idx.search("shop", contains="BAKERY")] == ["shop.jpg"]


@pytest.mark.slow
def test_a_photo_the_engine_fails_on_is_counted_and_costs_only_its_text(
    photos: Path, tmp_path: Path, tiny_encoder
) -> None:
    index_dir = tmp_path / "index"
    build([photos], index_dir, BuildConfig(model="tiny-clip", workers=0), encoder=tiny_encoder)
    (photos / "plain2.jpg").write_bytes(b"\xff\xd8\xff not a jpeg any more")  # damaged after it was indexed
    proc = run_module("indexer", "ocr", "--index", str(index_dir), "--no-progress")
    assert "text: read 2 photo(s), 1 with text, 1 failed" in proc.stdout
    assert "ocr failed: " in proc.stdout and "plain2.jpg" in proc.stdout
    text = _ocr_columns(index_dir)
    assert text["plain2.jpg"] == (None, None)  # no text kept: tried again next time
    assert text["plain1.jpg"] == ("", None) and "exit" in normalize(text["sign.jpg"][0] or "")
    found = Index.open(index_dir, model=tiny_encoder).search("exit", contains="exit 12")
    assert [Path(r.path).name for r in found] == ["sign.jpg"]


def test_the_app_filters_by_text_and_shows_the_text_found(
    photos: Path, tmp_path: Path, tiny_encoder, monkeypatch
) -> None:
    pytest.importorskip("streamlit.testing.v1")
    from streamlit.testing.v1 import AppTest

    index_dir = tmp_path / "index"
    build([photos], index_dir, BuildConfig(model="tiny-clip", workers=0, ocr=True), encoder=tiny_encoder)
    monkeypatch.setenv("RETRIEVAL_UI_INDEXES", str(index_dir))
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "ui" / "app.py"), default_timeout=60)
    at.run()
    at.sidebar.text_input(key="search_contains").input("exit 12").run()  # the filter alone is a query
    assert not at.exception and not at.error
    names = [c.value.split("**")[1] for c in at.caption if c.value.startswith("**") and "score" in c.value]
    assert names == ["sign.jpg"]
    at.button(key="results-open-0").click().run()
    assert not at.exception
    shown = [c.value for c in at.code]
    assert shown and normalize(shown[0]).replace(" ", "") == "exit12"
    assert any(c.value.startswith("OCR confidence") for c in at.caption)
    at.sidebar.text_input(key="search_contains").input("north").run()
    assert at.warning and "No photo's text holds" in at.warning[0].value
