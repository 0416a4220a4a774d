"""What paging costs on an approximate index, and whether pages agree with one big query.

Builds a real IVF-PQ index (``retrieval.index.ann.build``, the factory the indexer picks for N) over N
clustered unit vectors, then for a few hundred queries times page 1 (k=10) the old way (one
search at k) against the tiered ranking (``retrieval.query.ranking``), and a deep page (offset 1000),
and checks that 10 pages of 50 equal one query for 500 and that naive slicing would not.

    python bench/bench_paging.py --n 200000 --dim 64

Speed is a ratio against the plain search in the same run (a busy machine moves absolute times).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrieval.index import ann  # noqa: E402
from retrieval.query import ranking  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--queries", type=int, default=200)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((1000, a.dim)).astype(np.float32)
    vectors = centres[rng.integers(0, 1000, a.n)] + 0.7 * rng.standard_normal((a.n, a.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    factory = ann.choose_factory(a.n, a.dim)
    t0 = time.perf_counter()
    searcher = ann.AnnSearcher(ann.build(vectors, factory), vectors.astype(np.float16), use_gpu=False)
    print(
        f"{a.n:,} x {a.dim} vectors, {factory}, nprobe {searcher.nprobe}, re-rank {searcher.rerank}; "
        f"built in {time.perf_counter() - t0:.0f} s"
    )
    queries = rng.standard_normal((a.queries, a.dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    times = {"plain k=10": 0.0, "tiered page 1 (k=10)": 0.0, "tiered offset 1000 (k=10)": 0.0}
    agree = naive_ok = 0
    for q in queries:

        def at(depth: int, q: np.ndarray = q) -> tuple[np.ndarray, np.ndarray]:
            s, i = searcher.search(q[None, :], depth)
            return s[0], i[0]

        t = time.perf_counter()
        at(10)
        times["plain k=10"] += time.perf_counter() - t
        t = time.perf_counter()
        ranking.ranked(at, 10)
        times["tiered page 1 (k=10)"] += time.perf_counter() - t
        t = time.perf_counter()
        ranking.ranked(at, 1010)
        times["tiered offset 1000 (k=10)"] += time.perf_counter() - t
        big = ranking.ranked(at, 500).ids.tolist()
        pages = [x for o in range(0, 500, 50) for x in ranking.ranked(at, o + 50).ids[o:].tolist()]
        agree += pages == big and len(set(big)) == 500
        naive = [x for o in range(0, 500, 50) for x in at(o + 50)[1][o:].tolist()]
        naive_ok += len(set(naive)) == 500
    base = times["plain k=10"]
    for name, total in times.items():
        print(f"{name:28s} {1000 * total / a.queries:7.2f} ms/query  {total / base:5.2f}x plain")
    print(
        f"10 pages of 50 == one query for 500: {agree}/{a.queries} queries; "
        f"slicing deeper plain searches instead: {naive_ok}/{a.queries} without a repeat or gap"
    )


if __name__ == "__main__":
    main()
