"""The ANN layer on real FAISS indexes over synthetic clustered unit vectors."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from retrieval.errors import AnnConfigError, InvalidQueryError, ModelMismatchError
from retrieval.index import ann

N, DIM, K = 20_000, 64, 10
FACTORY = "IVF128,PQ16x8"


def clustered(n: int, dim: int, seed: int, centres: int = 300) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim)).astype(np.float32)
    noise = 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    x = (c[rng.integers(0, centres, n)] + noise) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def perturbed_queries(vectors: np.ndarray, q: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = vectors[rng.choice(len(vectors), q, replace=False)].astype(np.float32)
    x = base + 0.3 * rng.standard_normal(base.shape).astype(np.float32) / np.sqrt(base.shape[1])
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    per_query = [len(np.intersect1d(f[f >= 0], t[t >= 0])) / max(1, (t >= 0).sum()) for f, t in zip(found, truth)]
    return float(np.mean(per_query))


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread():
    """OpenMP spin-waiting makes FAISS training several times slower on a busy 2-core box."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return clustered(N, DIM, seed=1)


@pytest.fixture(scope="module")
def ivfpq(data: np.ndarray):
    return ann.build(data, FACTORY, seed=0)


@pytest.fixture(scope="module")
def queries(data: np.ndarray) -> np.ndarray:
    return perturbed_queries(data, 100, seed=2)


def test_choose_factory_flat_below_threshold_ivfpq_above() -> None:
    assert ann.choose_factory(0, 512) == "Flat"
    assert ann.choose_factory(ann.FLAT_BELOW - 1, 512) == "Flat"
    for n, dim in [(ann.FLAT_BELOW, 512), (100_000, 512), (1_000_000, 512), (50_000, 16), (30_000, 100)]:
        factory = ann.choose_factory(n, dim)
        assert factory.startswith("IVF") and ",PQ" in factory
        nlist = int(factory[3 : factory.index(",")])
        m = int(factory.split(",PQ")[1].split("x")[0])
        assert dim % m == 0 and 39 * nlist <= n


def test_small_collection_gets_exact_flat_index(data: np.ndarray) -> None:
    small = data[:500]
    index = ann.build(small)
    assert ann.index_type(index).startswith("IndexFlat")
    q = perturbed_queries(small, 5, seed=3)
    scores, ids = ann.AnnSearcher(index, small).search(q, K)
    true_scores, true_ids = ann.exact_search(small, q, K)
    np.testing.assert_array_equal(ids, true_ids)
    np.testing.assert_allclose(scores, true_scores, atol=1e-5)


def test_flat_index_with_broad_mask_goes_through_selector(data: np.ndarray) -> None:
    small = data[:3000]
    mask = np.random.default_rng(6).random(len(small)) < 0.5
    searcher = ann.AnnSearcher(ann.build(small), small)
    assert searcher.plan(mask) == "ann+selector"
    q = perturbed_queries(small, 10, seed=7)
    scores, ids = searcher.search(q, K, mask=mask)
    true_scores, true_ids = ann.exact_search(small, q, K, rows=np.flatnonzero(mask))
    np.testing.assert_array_equal(ids, true_ids)
    np.testing.assert_allclose(scores, true_scores, atol=1e-5)


def test_ivfpq_recall_with_rerank_is_high(data, ivfpq, queries) -> None:
    assert "IVFPQ" in ann.index_type(ivfpq) and f"ntotal={N}" in ann.index_type(ivfpq)
    _, truth = ann.exact_search(data, queries, K)
    _, reranked = ann.AnnSearcher(ivfpq, data, nprobe=16).search(queries, K)
    _, raw = ann.AnnSearcher(ivfpq, data, nprobe=16, rerank=0).search(queries, K)
    assert recall(reranked, truth) >= 0.95
    assert recall(reranked, truth) > recall(raw, truth)


def test_reranked_scores_are_exact_cosines_best_first(data, ivfpq, queries) -> None:
    scores, ids = ann.AnnSearcher(ivfpq, data).search(queries, K)
    assert scores.dtype == np.float32 and ids.dtype == np.int64 and ids.shape == (len(queries), K)
    exact = np.einsum("qd,qkd->qk", queries, data[ids].astype(np.float32))
    np.testing.assert_allclose(scores, exact, atol=1e-5)
    assert np.all(np.diff(scores, axis=1) <= 0)


def test_single_vector_query_and_shape_errors(data, ivfpq, queries) -> None:
    searcher = ann.AnnSearcher(ivfpq, data)
    scores, ids = searcher.search(queries[0], K)
    assert scores.shape == ids.shape == (1, K)
    with pytest.raises(ModelMismatchError):
        searcher.search(np.ones((1, DIM + 1), dtype=np.float32), K)
    with pytest.raises(InvalidQueryError):
        searcher.search(queries, K, mask=np.ones(N - 1, dtype=bool))
    with pytest.raises(InvalidQueryError):
        searcher.search(queries, 0)


def test_selective_mask_is_searched_exactly(data, ivfpq, queries) -> None:
    mask = np.zeros(N, dtype=bool)
    mask[np.random.default_rng(4).choice(N, 200, replace=False)] = True
    searcher = ann.AnnSearcher(ivfpq, data)
    assert searcher.plan(mask) == "exact"
    scores, ids = searcher.search(queries, K, mask=mask)
    true_scores, true_ids = ann.exact_search(data, queries, K, rows=np.flatnonzero(mask))
    assert mask[ids].all()
    np.testing.assert_array_equal(ids, true_ids)
    np.testing.assert_allclose(scores, true_scores, atol=1e-5)


def test_broad_mask_uses_id_selector_and_still_returns_k(data, ivfpq, queries) -> None:
    mask = np.random.default_rng(5).random(N) < 0.1
    searcher = ann.AnnSearcher(ivfpq, data, nprobe=8, brute_force_rows=100)
    assert searcher.plan(mask) == "ann+selector"
    scores, ids = searcher.search(queries, K, mask=mask)
    assert (ids >= 0).all() and mask[ids].all()
    _, truth = ann.exact_search(data, queries, K, rows=np.flatnonzero(mask))
    assert recall(ids, truth) >= 0.9
    exact = np.einsum("qd,qkd->qk", queries, data[ids].astype(np.float32))
    np.testing.assert_allclose(scores, exact, atol=1e-5)


@pytest.mark.parametrize("brute_force_rows", [0, None])
def test_fewer_allowed_rows_than_k_pads_with_minus_one(data, ivfpq, queries, brute_force_rows) -> None:
    mask = np.zeros(N, dtype=bool)
    allowed = [7, 4242, 19_999]
    mask[allowed] = True
    searcher = ann.AnnSearcher(ivfpq, data, brute_force_rows=brute_force_rows)
    scores, ids = searcher.search(queries[:3], K, mask=mask)
    for row_s, row_i in zip(scores, ids):
        assert sorted(row_i[:3].tolist()) == allowed
        assert (row_i[3:] == -1).all() and np.isneginf(row_s[3:]).all() and np.isfinite(row_s[:3]).all()
    empty = ann.AnnSearcher(ivfpq, data).search(queries[:2], K, mask=np.zeros(N, dtype=bool))
    assert (empty[1] == -1).all()


@pytest.mark.parametrize(
    ("mmap", "map_lists_above", "lists_type"),
    [
        (False, 0, "ArrayInvertedLists"),
        (True, 0, "OnDiskInvertedLists"),  # a file above the limit: its inverted lists are mapped
        (True, ann.MAP_LISTS_ABOVE, "ArrayInvertedLists"),  # a small IVF file is read into RAM even with mmap
    ],
)
def test_save_load_round_trip(tmp_path, data, ivfpq, queries, mmap, map_lists_above, lists_type) -> None:
    path = tmp_path / "ann.faiss"
    ann.save(ivfpq, path)
    assert path.is_file() and [p.name for p in tmp_path.iterdir()] == ["ann.faiss"]
    loaded = ann.load(path, mmap=mmap, map_lists_above=map_lists_above)
    assert ann.index_type(loaded) == ann.index_type(ivfpq)
    # an index nothing else holds: the downcast view inside index_type outlived it (a segfault)
    assert ann.index_type(ann.load(path, mmap=mmap, map_lists_above=map_lists_above)) == ann.index_type(ivfpq)
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(loaded).invlists)
    assert type(lists).__name__ == lists_type
    before = ann.AnnSearcher(ivfpq, data).search(queries, K)
    after = ann.AnnSearcher(loaded, data).search(queries, K)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_array_equal(before[0], after[0])


def test_flat_index_mmap_round_trip(tmp_path, data) -> None:
    small = data[:800]
    ann.save(ann.build(small), tmp_path / "flat.faiss")
    q = perturbed_queries(small, 4, seed=8)
    expected = ann.exact_search(small, q, K)[1]
    for mmap in (False, True):
        loaded = ann.load(tmp_path / "flat.faiss", mmap=mmap)
        np.testing.assert_array_equal(ann.AnnSearcher(loaded, small).search(q, K)[1], expected)


def test_small_query_batches_run_faiss_single_threaded_and_restore_it(data, ivfpq, queries) -> None:
    before = faiss.omp_get_max_threads()
    searcher = ann.AnnSearcher(ivfpq, data)
    one = np.concatenate([searcher.search(q, K)[1] for q in queries])
    np.testing.assert_array_equal(one, searcher.search(queries, K)[1])
    assert faiss.omp_get_max_threads() == before


def test_memmapped_vectors_work_as_rerank_store(tmp_path, data, ivfpq, queries) -> None:
    np.save(tmp_path / "vectors.npy", data)
    mapped = np.load(tmp_path / "vectors.npy", mmap_mode="r")
    expected = ann.AnnSearcher(ivfpq, data).search(queries, K)
    got = ann.AnnSearcher(ivfpq, mapped).search(queries, K)
    np.testing.assert_array_equal(expected[1], got[1])


@pytest.mark.parametrize("factory", ["IVF-banana", "PQ7", "IVF64,PQ5x8"])
def test_bad_factory_string_is_a_typed_error(data, factory) -> None:
    with pytest.raises(AnnConfigError, match="factory"):
        ann.build(data[:2000], factory)
    assert issubclass(AnnConfigError, InvalidQueryError)


def test_too_few_vectors_to_train_is_a_typed_error(data) -> None:
    with pytest.raises(AnnConfigError, match="at least 4096"):
        ann.build(data[:1000], "IVF4096,Flat")


def test_user_factories_hnsw_and_ivfflat_search_correctly(data, queries) -> None:
    subset = data[:5000]
    _, truth = ann.exact_search(subset, queries, K)
    for factory in ["HNSW16", "IVF64,Flat"]:
        index = ann.build(subset, factory)
        _, ids = ann.AnnSearcher(index, subset, nprobe=16).search(queries, K)
        assert recall(ids, truth) >= 0.9, factory
