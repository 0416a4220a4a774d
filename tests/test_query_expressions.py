"""Query expressions: the parser, and weighted text and image terms searched over a real index of
real Flickr8k photos (tiny random-weight model: the arithmetic is the point, not the quality)."""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from retrieval import InvalidQueryError, Query, QuerySyntaxError, Term, open_index
from retrieval.zeroshot.relevance import RELEVANCE, RelevanceCalibration, calibration_paths
from tests.conftest import SHARED_DATA, run_main

N_PHOTOS = 40


# --- the syntax ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "a dog",
        "t-shirt",
        "a black-and-white photo",
        "-5 degrees",
        "rock -paper",
        "10:30 meeting",
        'a sign "stop - go" here',
        "a+b",
        "+5",
    ],
)
def test_text_without_a_spaced_operator_is_one_plain_term(text: str) -> None:
    query = Query.parse(text)
    assert query.terms == (Term(1.0, text=text),) and query.is_plain_text


def test_spaced_operators_weights_quotes_and_image_terms() -> None:
    assert Query.parse("dog + beach - people").terms == (
        Term(1, text="dog"),
        Term(1, text="beach"),
        Term(-1, text="people"),
    )
    assert Query.parse("2:sunset + 0.5:city").terms == (Term(2, text="sunset"), Term(0.5, text="city"))
    assert Query.parse("@photos/a.jpg - snow").terms == (Term(1, image="photos/a.jpg"), Term(-1, text="snow"))
    assert Query.parse('@"my photos/a - b.jpg" + t-shirt').terms == (
        Term(1, image="my photos/a - b.jpg"),
        Term(1, text="t-shirt"),
    )
    assert Query.parse('"rock - paper"').terms == (Term(1, text="rock - paper"),)
    assert Query.parse('"@home" + 3:"10:30"').terms == (Term(1, text="@home"), Term(3, text="10:30"))
    assert Query.parse("- people").terms == (Term(-1, text="people"),)
    added = Query.parse("a man", add=["red - white stripes"], subtract=["2:x + y"])
    assert added.terms == (Term(1, text="a man"), Term(1, text="red - white stripes"), Term(-2, text="x + y"))


def test_a_query_prints_back_as_the_syntax_that_parses_to_it() -> None:
    for text in ["dog + beach - people", '2:sunset + 0.5:"10:30"', '@"a b.jpg" - snow', "- people"]:
        query = Query.parse(text)
        assert Query.parse(str(query)) == query
    built = Query.text("rock - paper").plus(Term(image="/x/y z.jpg")).minus("snow", 2)
    assert Query.parse(str(built)) == built


@pytest.mark.parametrize(
    ("text", "column"), [("dog +", 5), ("dog + + cat", 5), ("dog - ", 5), ("0:dog + cat", 1), ('dog + @"a.jpg', 8)]
)
def test_an_expression_that_does_not_parse_says_where(text: str, column: int) -> None:
    with pytest.raises(QuerySyntaxError) as info:
        Query.parse(text)
    assert info.value.column == column and f"column {column}" in str(info.value)
    assert isinstance(info.value, InvalidQueryError)


# --- over a real index --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def flickr_index(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if not (SHARED_DATA / "flickr8k" / "images").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    root = tmp_path_factory.mktemp("expressions")
    photos = root / "photos"
    photos.mkdir()
    for src in sorted((SHARED_DATA / "flickr8k" / "images").glob("*.jpg"))[:N_PHOTOS]:
        shutil.copy(src, photos / src.name)
    run_main("indexer", "build", str(photos), "--index", str(root / "index"), "--model", "tiny-clip")
    return photos, root / "index"


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def test_an_expression_ranks_by_the_renormalized_weighted_sum_of_its_terms(flickr_index) -> None:
    _, index_dir = flickr_index
    idx = open_index(index_dir)
    dog, beach, people = idx.encoder.encode_texts(["dog", "beach", "people"])
    expected = _unit(2 * dog + beach - 0.5 * people)
    results = idx.search("2:dog + beach - 0.5:people", k=10)
    vectors = np.asarray(idx.reader.vectors, np.float32)
    truth = np.argsort(-(vectors @ expected))[:10]
    assert [r.path for r in results] == [idx.reader.row(int(i))["path"] for i in truth]
    for r in results:
        row = int(idx.reader.rows_for_paths([r.path])[0])
        assert r.score == pytest.approx(float(vectors[row] @ expected), abs=1e-3)
    built = Query((Term(2, text="dog"), Term(1, text="beach"), Term(-0.5, text="people")))
    assert [r.path for r in idx.search(built, k=10)] == [r.path for r in results]
    assert [r.path for r in idx.search("t-shirt", k=5)] == [r.path for r in idx.search(Query.text("t-shirt"), k=5)]


def test_image_terms_take_an_indexed_photo_or_a_file(flickr_index, tmp_path: Path) -> None:
    photos, index_dir = flickr_index
    idx = open_index(index_dir)
    target = sorted(photos.glob("*.jpg"))[3]
    top = idx.search(f"@{target}", k=1)[0]
    assert top.path == str(target.resolve()) and top.score == pytest.approx(1.0, abs=1e-2)
    assert top.relevance is None  # an image-only query has no calibrated relevance
    outside = tmp_path / "copy of it.jpg"
    shutil.copy(sorted((SHARED_DATA / "flickr8k" / "images").glob("*.jpg"))[N_PHOTOS], outside)
    found = idx.search(f'@"{outside}" - a dog', k=3)
    image_vec = idx.query_vector(outside)
    expected = _unit(image_vec - idx.encoder.encode_texts(["a dog"])[0])
    row = int(idx.reader.rows_for_paths([found[0].path])[0])
    assert found[0].score == pytest.approx(float(np.asarray(idx.reader.vectors[row], np.float32) @ expected), abs=1e-3)


def test_bad_image_terms_say_which(flickr_index, tmp_path: Path) -> None:
    _, index_dir = flickr_index
    idx = open_index(index_dir)
    with pytest.raises(InvalidQueryError, match=r"image term @nowhere/gone\.jpg: no such file"):
        idx.search("sunset + @nowhere/gone.jpg")
    notes = tmp_path / "notes.jpg"
    notes.write_text("not a photo")
    with pytest.raises(InvalidQueryError, match=r"image term @.*notes\.jpg is not an image"):
        idx.search(f"@{notes}")
    with pytest.raises(InvalidQueryError, match="cancel out"):
        idx.search("a dog - a dog")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_image_url_is_fetched_and_an_unreachable_one_is_one_clear_error(flickr_index) -> None:
    photos, index_dir = flickr_index
    idx = open_index(index_dir)
    target = sorted(photos.glob("*.jpg"))[5]

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(photos), **kwargs)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{target.name}"
        assert idx.search(f"@{url}", k=1)[0].path == str(target.resolve())
    finally:
        server.shutdown()
    with pytest.raises(InvalidQueryError, match=r"could not fetch it .*offline\?"):
        idx.search(f"@http://127.0.0.1:{_free_port()}/photo.jpg")


@pytest.fixture
def calibrated(private_cache: Path, tiny_encoder) -> RelevanceCalibration:
    """A relevance calibration for tiny-clip (found in the cache dir), so that results get a relevance."""
    calibration = RelevanceCalibration(tiny_encoder.fingerprint, slope=8.0, intercept=0.0)
    calibration.save(calibration_paths(tiny_encoder, RELEVANCE)[-1])
    return calibration


def test_relevance_of_an_expression_reads_its_text_terms(flickr_index, calibrated) -> None:
    photos, index_dir = flickr_index
    idx = open_index(index_dir)
    assert idx.has_relevance
    dog, people = idx.encoder.encode_texts(["dog", "people"])
    text_vec = _unit(dog - people)
    target = sorted(photos.glob("*.jpg"))[7]
    vectors = np.asarray(idx.reader.vectors, np.float32)
    for query in ("dog - people", f"dog - people + @{target}"):
        results = idx.search(query, k=8)
        for r in results:
            row = int(idx.reader.rows_for_paths([r.path])[0])
            assert r.relevance == pytest.approx(
                float(calibrated.probability(np.array([vectors[row] @ text_vec]))[0]), abs=1e-3
            )
    every = np.asarray(calibrated.probability(vectors @ text_vec))
    threshold = float(np.quantile(every, 0.7))
    kept = idx.search("dog - people", k=N_PHOTOS, min_relevance=threshold)
    assert kept and all(r.relevance >= threshold for r in kept)
    assert len(kept) == int((every >= threshold).sum())
    with pytest.raises(InvalidQueryError, match="text term"):
        idx.search(f"@{target}", min_relevance=0.5)


def test_the_cli_takes_expressions_add_and_subtract_and_refuses_bad_ones_in_one_line(flickr_index) -> None:
    _, index_dir = flickr_index
    out = run_main(
        "retrieval",
        "search",
        "a dog",
        "--add",
        "green - grass",
        "--subtract",
        "2:people",
        "--index",
        str(index_dir),
        "--json",
        "-k",
        "5",
    ).stdout
    idx = open_index(index_dir)
    expected = idx.search(Query((Term(1, text="a dog"), Term(1, text="green - grass"), Term(-2, text="people"))), k=5)
    assert [r["path"] for r in json.loads(out)] == [r.path for r in expected]
    bad = run_main("retrieval", "search", "a dog + + grass", "--index", str(index_dir), check=False)
    assert (
        bad.returncode == 2
        and bad.stderr.strip() == "error: expected a term after '+' at column 7 of 'a dog + + grass'"
    )
    missing = run_main("retrieval", "search", "a dog - @gone.jpg", "--index", str(index_dir), check=False)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert "image term @gone.jpg: no such file" in missing.stderr
