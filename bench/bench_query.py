"""Single-query latency and recall@10 of ``retrieval.index.ann.AnnSearcher`` on synthetic CLIP-like vectors.

Vectors are a two-level Gaussian mixture (super-centres -> thousands of centres -> points)
with anisotropic, randomly rotated noise, normalised to unit length and stored as float16.
Two query sets: "image" queries are perturbed data points; "text" queries add a fixed
modality-gap vector before renormalising, so they sit off the data manifold the way CLIP
text embeddings sit off the image cloud. Ground truth is exact search over the float16
vectors. Target (issue): 1M x 512-d, p50 <= 5 ms, recall@10 >= 0.95 on this 2-core CPU.

    nice -n 10 python bench/bench_query.py --sizes 10000,100000,1000000 --out bench/results/query.jsonl
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from retrieval.index import ann  # noqa: E402

K = 10
GRIDS = {
    # size -> factories ("auto" = ann.choose_factory); each is swept over nprobe x rerank
    10_000: ["Flat", "auto"],
    100_000: ["auto", "Flat", "IVF1024,PQ64x8", "IVF1024,PQ32x8", "IVF1024,PQ64x4fs", "IVF1024,PQ128x4fs"],
    1_000_000: ["auto", "IVF1024,PQ64x8", "IVF2048,PQ128x4fs"],
}
NPROBES = [8, 16, 32, 64]
RERANKS = [0, 10, 30]
MASK_FRACTIONS = [0.001, 0.01, 0.03, 0.1, 0.3]


@dataclass
class Row:
    n: int
    factory: str
    index_type: str
    build_s: float
    bytes_per_vector: float
    nprobe: int
    rerank: int
    queries: str
    p50_ms: float
    p99_ms: float
    recall_at_10: float


def clustered_vectors(n: int, dim: int, seed: int, centres: int = 4096, supers: int = 64) -> tuple[np.ndarray, dict]:
    """Unit float16 vectors from a two-level mixture, plus what is needed to draw queries alike."""
    rng = np.random.default_rng(seed)
    rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    spectrum = (np.arange(1, dim + 1) ** -0.5).astype(np.float32)
    spectrum /= np.linalg.norm(spectrum)
    model = {"rotation": rotation.astype(np.float32), "spectrum": spectrum}
    sup = _unit(rng.standard_normal((supers, dim)).astype(np.float32))
    cen = _unit(sup[rng.integers(0, supers, centres)] + 0.9 * _noise(rng, centres, model))
    out = np.empty((n, dim), dtype=np.float16)
    for start in range(0, n, 65_536):
        m = min(65_536, n - start)
        out[start : start + m] = _unit(cen[rng.integers(0, centres, m)] + 0.8 * _noise(rng, m, model))
    return out, model


def _noise(rng: np.random.Generator, m: int, model: dict) -> np.ndarray:
    """Noise of expected norm 1 with a 1/sqrt(rank) spectrum in a random basis (CLIP-like anisotropy)."""
    g = rng.standard_normal((m, len(model["spectrum"]))).astype(np.float32) * model["spectrum"]
    return g @ model["rotation"]


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def query_sets(vectors: np.ndarray, model: dict, q: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed + 1)
    base = vectors[rng.choice(len(vectors), size=q, replace=False)].astype(np.float32)
    gap = 1.5 * _unit(rng.standard_normal((1, vectors.shape[1])).astype(np.float32))
    return {
        "image": _unit(base + 0.5 * _noise(rng, q, model)),
        "text": _unit(base + gap + 1.0 * _noise(rng, q, model)),
    }


def load_or_make(n: int, dim: int, q: int, seed: int, cache: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    cache.mkdir(parents=True, exist_ok=True)
    stem = cache / f"clustered_{n}x{dim}_s{seed}"
    if not Path(f"{stem}.npy").exists():
        vectors, model = clustered_vectors(n, dim, seed)
        np.save(f"{stem}.npy", vectors)
        np.savez(f"{stem}_model.npz", **model)
    vectors = np.load(f"{stem}.npy", mmap_mode="r")
    model = dict(np.load(f"{stem}_model.npz"))
    return vectors, query_sets(vectors, model, q, seed)


def latency_and_recall(searcher: ann.AnnSearcher, queries: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    for query in queries[:10]:
        searcher.search(query, K)
    times, hits = [], 0
    for query, true_ids in zip(queries, truth):
        t0 = time.perf_counter()
        _, ids = searcher.search(query, K)
        times.append(time.perf_counter() - t0)
        hits += len(np.intersect1d(ids[0], true_ids))
    ms = np.array(times) * 1e3
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), hits / truth.size


def sweep(n: int, dim: int, factories: list[str], args: argparse.Namespace) -> list[Row]:
    vectors, qsets = load_or_make(n, dim, args.queries, args.seed, Path(args.cache))
    truth = {name: ann.exact_search(vectors, q, K)[1] for name, q in qsets.items()}
    rows = []
    for factory in factories:
        factory = ann.choose_factory(n, dim) if factory == "auto" else factory
        t0 = time.perf_counter()
        index = ann.build(vectors, factory, seed=args.seed)
        build_s = time.perf_counter() - t0
        size = faiss.serialize_index(index).nbytes / n
        is_ivf = faiss.try_extract_index_ivf(index) is not None
        exact = isinstance(faiss.downcast_index(index), faiss.IndexFlat)
        nprobes, reranks = _ints(args.nprobes) if is_ivf else [0], [0] if exact else _ints(args.reranks)
        combos = [(p, r) for p in nprobes for r in reranks]
        for nprobe, rerank in tqdm(combos, desc=f"{n} {factory}", leave=False):
            searcher = ann.AnnSearcher(index, vectors, nprobe=nprobe or None, rerank=rerank)
            for name, q in qsets.items():
                p50, p99, recall = latency_and_recall(searcher, q, truth[name])
                rows.append(
                    Row(
                        n,
                        factory,
                        ann.index_type(index),
                        round(build_s, 2),
                        round(size, 1),
                        nprobe,
                        rerank,
                        name,
                        round(p50, 3),
                        round(p99, 3),
                        round(recall, 4),
                    )
                )
        if args.masks and factory == ann.choose_factory(n, dim):
            mask_sweep(index, vectors, qsets["text"][: args.mask_queries], n)
        del index
    return rows


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def mask_sweep(index, vectors: np.ndarray, queries: np.ndarray, n: int) -> None:
    """Filtered search with default settings, each mask forced down both paths (exact rows vs ID selector)."""
    print(f"\nmasked text queries, N={n}, {ann.index_type(index)}, default nprobe/rerank")
    print("| allowed fraction | allowed rows | path | p50 ms | p99 ms | recall@10 |\n|---|---|---|---|---|---|")
    rng = np.random.default_rng(7)
    for fraction in MASK_FRACTIONS:
        mask = rng.random(n) < fraction
        truth = ann.exact_search(vectors, queries, K, rows=np.flatnonzero(mask))[1]
        for brute_force_rows in (n, 0):
            searcher = ann.AnnSearcher(index, vectors, brute_force_rows=brute_force_rows)
            times, hits = [], 0
            for query, true_ids in zip(queries, truth):
                t0 = time.perf_counter()
                _, ids = searcher.search(query, K, mask=mask)
                times.append((time.perf_counter() - t0) * 1e3)
                hits += len(np.intersect1d(ids[0][ids[0] >= 0], true_ids[true_ids >= 0]))
            p50, p99 = np.percentile(times, [50, 99])
            print(
                f"| {fraction} | {int(mask.sum())} | {searcher.plan(mask)} | {p50:.2f} | {p99:.2f} | "
                f"{hits / max(1, int((truth >= 0).sum())):.4f} |",
                flush=True,
            )


def markdown(rows: list[Row]) -> str:
    out = io.StringIO()
    out.write("| N | factory | build s | B/vec | nprobe | rerank | queries | p50 ms | p99 ms | recall@10 |\n")
    out.write("|---|---|---|---|---|---|---|---|---|---|\n")
    for r in rows:
        out.write(
            f"| {r.n} | {r.factory} | {r.build_s} | {r.bytes_per_vector} | {r.nprobe} | {r.rerank} | "
            f"{r.queries} | {r.p50_ms} | {r.p99_ms} | {r.recall_at_10} |\n"
        )
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated collection sizes")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=300, help="queries per query set")
    parser.add_argument("--factories", default="", help="override the grid: comma-free list separated by ';'")
    parser.add_argument("--nprobes", default=",".join(map(str, NPROBES)))
    parser.add_argument("--reranks", default=",".join(map(str, RERANKS)), help="0 = no re-ranking")
    parser.add_argument("--masks", action="store_true", help="also time filtered queries on the default index")
    parser.add_argument("--mask-queries", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1, help="faiss OpenMP threads (1 is best for single queries)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default=os.environ.get("BENCH_CACHE", "/tmp/bench_query_cache"))
    parser.add_argument("--out", default="", help="append JSON lines here")
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.threads)
    for n in (int(s) for s in args.sizes.split(",")):
        factories = args.factories.split(";") if args.factories else GRIDS.get(n, ["auto"])
        rows = sweep(n, args.dim, factories, args)
        print(markdown(rows), flush=True)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            with open(args.out, "a") as f:
                f.writelines(json.dumps(asdict(r)) + "\n" for r in rows)


if __name__ == "__main__":
    main()
