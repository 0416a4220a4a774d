"""Date order and paging over a real index of real Flickr8k photos, and the tiered ranking that keeps
pages consistent on a real approximate (IVF-PQ) FAISS index."""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np
import pytest

from retrieval import CalibrationError, InvalidQueryError, open_index
from retrieval.index.ann import AnnSearcher
from retrieval.query import ranking
from retrieval.zeroshot.relevance import RELEVANCE, RelevanceCalibration, calibration_paths
from tests.conftest import SHARED_DATA, run_main

N_PHOTOS = 48
DAY = 86_400.0
BASE = datetime(2020, 1, 1, tzinfo=timezone.utc).timestamp()


@pytest.fixture(scope="module")
def dated_index(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, float]]:
    """Real photos, each written on its own day in a shuffled order (no EXIF: the mtime is the capture time)."""
    if not (SHARED_DATA / "flickr8k" / "images").is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    root = tmp_path_factory.mktemp("paging")
    photos = root / "photos"
    photos.mkdir()
    days = np.random.default_rng(0).permutation(N_PHOTOS)
    taken: dict[str, float] = {}
    for day, src in zip(days, sorted((SHARED_DATA / "flickr8k" / "images").glob("*.jpg"))[100 : 100 + N_PHOTOS]):
        dst = photos / src.name
        shutil.copy(src, dst)
        when = BASE + float(day) * DAY
        os.utime(dst, (when, when))
        taken[str(dst.resolve())] = when
    run_main("indexer", "build", str(photos), "--index", str(root / "index"), "--model", "tiny-clip")
    return photos, root / "index", taken


@pytest.fixture
def calibrated(private_cache: Path, tiny_encoder) -> RelevanceCalibration:
    calibration = RelevanceCalibration(tiny_encoder.fingerprint, slope=8.0, intercept=0.0)
    calibration.save(calibration_paths(tiny_encoder, RELEVANCE)[-1])
    return calibration


@pytest.mark.parametrize("sort", ["relevance", "date", "-date"])
def test_pages_cover_one_big_query_without_gaps_or_repeats(dated_index, calibrated, sort) -> None:
    _, index_dir, _ = dated_index
    idx = open_index(index_dir)
    big = idx.search("people in a park", k=1000, sort=sort, min_relevance=0.3)
    assert len(big) > 10
    pages = [idx.search("people in a park", k=7, offset=o, sort=sort, min_relevance=0.3) for o in range(0, 70, 7)]
    assert [r.path for page in pages for r in page] == [r.path for r in big]
    assert [r.rank for page in pages for r in page] == list(range(1, len(big) + 1))
    assert idx.search("people in a park", k=5, offset=len(big), sort=sort, min_relevance=0.3) == []


def test_date_order_sorts_exactly_the_matches_by_capture_time(dated_index, calibrated) -> None:
    _, index_dir, taken = dated_index
    idx = open_index(index_dir)
    text_vec = idx.encoder.encode_texts(["a dog running"])[0]
    vectors = np.asarray(idx.reader.vectors, np.float32)
    relevance = np.asarray(calibrated.probability(vectors @ text_vec))
    paths = idx.reader.metadata.column("path").to_pylist()
    for threshold in (None, 0.3):
        cut = 0.5 if threshold is None else threshold  # None: the documented default for date order
        matches = {paths[i] for i in np.flatnonzero(relevance >= cut)}
        oldest = idx.search("a dog running", k=N_PHOTOS, sort="date", min_relevance=threshold)
        assert oldest.matched == len(matches) == len(oldest) and {r.path for r in oldest} == matches
        times = [r.taken_at.timestamp() for r in oldest]
        assert times == sorted(times) and times == [taken[r.path] for r in oldest]
        newest = idx.search("a dog running", k=N_PHOTOS, sort="-date", min_relevance=threshold)
        assert [r.path for r in newest] == [r.path for r in reversed(oldest)]


def test_bad_paging_and_sort_are_refused(dated_index, calibrated) -> None:
    photos, index_dir, _ = dated_index
    idx = open_index(index_dir)
    with pytest.raises(InvalidQueryError, match="offset must be at least 0"):
        idx.search("a dog", offset=-1)
    with pytest.raises(InvalidQueryError, match="unknown sort 'name'"):
        idx.search("a dog", sort="name")
    with pytest.raises(InvalidQueryError, match="image-only query has no relevance"):
        idx.search(f"@{sorted(photos.glob('*.jpg'))[0]}", sort="date")


def test_date_order_without_a_calibration_says_so(dated_index) -> None:
    _, index_dir, _ = dated_index
    with pytest.raises(CalibrationError, match="date order needs a relevance calibration"):
        open_index(index_dir).search("a dog", sort="date")


def test_the_cli_pages_sorts_and_says_how_many_matched(dated_index, calibrated) -> None:
    _, index_dir, taken = dated_index
    common = ("retrieval", "search", "a dog running", "--index", str(index_dir), "--sort", "-date", "-k", "4")
    as_json = run_main(*common, "--json")
    first = json.loads(as_json.stdout)
    assert as_json.stderr.strip().endswith("matched (relevance >= 0.50); showing 1-4, newest first")
    second = json.loads(run_main(*common, "--json", "--offset", "4").stdout)
    assert [r["rank"] for r in first + second] == list(range(1, 9))
    assert {"rank", "score", "relevance", "taken_at"} <= set(first[0])
    stamps = [datetime.fromisoformat(r["taken_at"]).timestamp() for r in first + second]
    assert stamps == sorted(stamps, reverse=True) and stamps == [taken[r["path"]] for r in first + second]
    text = run_main(*common).stdout.splitlines()
    assert text[0].endswith("matched (relevance >= 0.50); showing 1-4, newest first")
    assert len(text) == 5 and text[1].lstrip().startswith("1 ")
    for args, message in (
        (("--offset", "-3"), "error: --offset must be 0 or more, not -3"),
        (("--sort", "size"), "error: unknown --sort 'size'; sort by one of: relevance, date, -date"),
    ):
        bad = run_main("retrieval", "search", "a dog", "--index", str(index_dir), *args, check=False)
        assert bad.returncode == 2 and bad.stderr.strip() == message


def _ivf_searcher(n: int = 4000, dim: int = 32, seed: int = 0) -> AnnSearcher:
    """A real IVF-PQ index over clustered unit vectors, with few probes and no re-rank slack: the
    approximate top-k then changes with k, which is what paging has to survive."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, dim)).astype(np.float32)
    vectors = centres[rng.integers(0, 40, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = faiss.index_factory(dim, "IVF32,PQ8x4", faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index.add(vectors)
    return AnnSearcher(index, vectors.astype(np.float16), nprobe=3, rerank=1, use_gpu=False)


def test_the_tiered_ranking_pages_an_approximate_index_consistently() -> None:
    searcher = _ivf_searcher()
    queries = np.random.default_rng(1).standard_normal((20, searcher.dim)).astype(np.float32)
    naive_broken = 0
    for q in queries / np.linalg.norm(queries, axis=1, keepdims=True):

        def search_at(depth: int, q: np.ndarray = q) -> tuple[np.ndarray, np.ndarray]:
            s, i = searcher.search(q[None, :], depth)
            return s[0], i[0]

        big = ranking.ranked(search_at, 200).ids
        pages = np.concatenate([ranking.ranked(search_at, o + 25).ids[o:] for o in range(0, 200, 25)])
        assert len(big) == 200 and len(set(big.tolist())) == 200
        assert pages.tolist() == big.tolist()
        naive = [searcher.search(q[None, :], o + 25)[1][0][o:] for o in range(0, 200, 25)]
        naive_broken += len(set(np.concatenate(naive).tolist())) != 200
    assert naive_broken > 0  # slicing ever-deeper approximate searches does repeat or skip photos
