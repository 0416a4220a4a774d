"""Large-index benchmark: build, open and query a published generation of N synthetic vectors.

Vectors are the clustered, anisotropic, unit 512-d mixture of ``bench_query.py``, generated
in float16 chunks straight into memmapped shard files (never N float32 vectors in RAM).
The index is built the way a distributed build does it (``indexer.merge``: train on a
sample, encode each shard, merge the inverted lists, publish a generation). Each phase runs
in its own process so its peak RSS (``ru_maxrss``) is its own:

* build: seconds per step, peak RSS, bytes per vector on disk (index, vectors, metadata);
* open: ``IndexReader.open`` time and RSS right after it (index and vectors memory-mapped);
* query: single-query p50/p99 and recall@10 against exact search, image- and text-like queries.

    nice -n 10 python bench/bench_scale.py --sizes 1000000 --out bench/results/scale.jsonl
    nice -n 10 python bench/bench_scale.py --sizes 1000000 --ondisk   # merge_ondisk (.ivfdata)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
from bench_query import _noise, _unit, latency_and_recall, query_sets  # noqa: E402

K = 10
SHARDS = 4


def _rss_mb(field: str = "VmRSS") -> float:
    """Resident MiB from /proc/self/status: VmRSS (all), RssAnon (heap) or RssFile (mapped files)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


class AnonPeak:
    """Peak RssAnon while a block runs. ru_maxrss also counts pages of memory-mapped files,
    which the kernel can drop at will; anonymous memory is what a build really needs."""

    def __init__(self, period: float = 0.05) -> None:
        self.peak, self.period = 0.0, period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, _rss_mb("RssAnon"))
            if self._stop.wait(self.period):
                return

    def __enter__(self) -> AnonPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _work(args: argparse.Namespace, n: int) -> Path:
    return Path(args.workdir) / f"n{n}_d{args.dim}_s{args.seed}"


def phase_generate(args: argparse.Namespace, n: int) -> dict:
    """Shard files of float16 unit vectors, their metadata, and the two query sets."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from retrieval.index.manifest import METADATA_SCHEMA

    work = _work(args, n)
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    dim = args.dim
    rotation, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    spectrum = (np.arange(1, dim + 1) ** -0.5).astype(np.float32)
    model = {"rotation": rotation.astype(np.float32), "spectrum": spectrum / np.linalg.norm(spectrum)}
    sup = _unit(rng.standard_normal((64, dim)).astype(np.float32))
    cen = _unit(sup[rng.integers(0, 64, 4096)] + 0.9 * _noise(rng, 4096, model))
    t0 = time.perf_counter()
    bounds = np.linspace(0, n, SHARDS + 1).astype(np.int64)
    for s in range(SHARDS):
        lo, hi = int(bounds[s]), int(bounds[s + 1])
        out = np.lib.format.open_memmap(work / f"shard-{s}.npy", mode="w+", dtype=np.float16, shape=(hi - lo, dim))
        for start in range(0, hi - lo, 65_536):
            m = min(65_536, hi - lo - start)
            out[start : start + m] = _unit(cen[rng.integers(0, 4096, m)] + 0.8 * _noise(rng, m, model))
        out.flush()
        del out
        paths = pa.array([f"/synthetic/{i // 1000:06d}/{i:09d}.jpg" for i in range(lo, hi)], pa.string())
        cols = {f.name: pa.nulls(hi - lo, f.type) for f in METADATA_SCHEMA}
        cols.update(
            path=paths,
            size=pa.array(np.full(hi - lo, 200_000, np.int64)),
            mtime=pa.array(np.zeros(hi - lo)),
            sha256=paths,
            width=pa.array(np.full(hi - lo, 500, np.int32)),
            height=pa.array(np.full(hi - lo, 375, np.int32)),
            file_type=pa.array(["jpeg"] * (hi - lo)),
        )
        pq.write_table(pa.table(cols, schema=METADATA_SCHEMA), work / f"shard-{s}.parquet")
    np.savez(work / "model.npz", **model)
    sample = np.load(work / "shard-0.npy", mmap_mode="r")
    qsets = query_sets(sample, model, args.queries, args.seed)
    np.savez(work / "queries.npz", **qsets)
    return {"generate_s": round(time.perf_counter() - t0, 1), "generate_peak_rss_mb": round(_peak_mb())}


def _shards(work: Path):
    from indexer.merge import Shard

    return [Shard(work / f"shard-{s}.npy", work / f"shard-{s}.parquet") for s in range(SHARDS)]


def phase_build(args: argparse.Namespace, n: int) -> dict:
    import faiss

    from indexer.merge import merge_shards
    from retrieval.index.manifest import Manifest

    faiss.omp_set_num_threads(args.build_threads)
    work = _work(args, n)
    index_dir = work / ("index-ondisk" if args.ondisk else "index")
    shutil.rmtree(index_dir, ignore_errors=True)
    shutil.rmtree(work / "staging", ignore_errors=True)
    manifest = Manifest(model_spec="synthetic", model_fingerprint="synthetic", embed_dim=args.dim)
    t0 = time.perf_counter()
    with AnonPeak() as anon:
        result = merge_shards(
            index_dir, _shards(work), manifest, work / "staging", args.factory or None, ondisk=args.ondisk
        )
    total = time.perf_counter() - t0
    shutil.rmtree(work / "staging", ignore_errors=True)
    sizes = {p.name: p.stat().st_size for p in result.generation.iterdir()}
    ann_bytes = sizes.get("index.faiss", 0) + sizes.get("index.ivfdata", 0)
    t = result.times
    return {
        "factory": result.manifest.index_type,
        "ondisk": result.ondisk,
        "build_s": round(total, 1),
        "train_s": round(t.train, 1),
        "encode_s": round(t.encode, 1),
        "merge_s": round(t.merge, 1),
        "write_s": round(t.write, 1),
        "build_peak_rss_mb": round(_peak_mb()),
        "build_peak_anon_mb": round(anon.peak),
        "ann_bytes_per_vector": round(ann_bytes / n, 1),
        "vectors_bytes_per_vector": round(sizes["vectors.npy"] / n, 1),
        "metadata_bytes_per_vector": round(sizes["metadata.parquet"] / n, 1),
        "mapped_metadata_bytes_per_vector": round(sizes.get("metadata.arrow", 0) / n, 1),
        "disk_bytes_per_vector": round(sum(sizes.values()) / n, 1),
    }


def _truth(work: Path, queries: np.ndarray) -> np.ndarray:
    """Exact top-K over all shards (float16 vectors), chunk by chunk."""
    from retrieval.index import ann

    best_s = np.full((len(queries), K), -np.inf, np.float32)
    best_i = np.full((len(queries), K), -1, np.int64)
    offset = 0
    for s in range(SHARDS):
        arr = np.load(work / f"shard-{s}.npy", mmap_mode="r")
        sc, ids = ann.exact_search(arr, queries, K)
        all_s = np.concatenate([best_s, sc], 1)
        all_i = np.concatenate([best_i, ids + offset], 1)
        order = np.argsort(-all_s, axis=1, kind="stable")[:, :K]
        best_s, best_i = np.take_along_axis(all_s, order, 1), np.take_along_axis(all_i, order, 1)
        offset += len(arr)
    return best_i


def phase_query(args: argparse.Namespace, n: int) -> dict:
    import faiss

    from retrieval.index.store import IndexReader

    faiss.omp_set_num_threads(1)
    work = _work(args, n)
    index_dir = work / ("index-ondisk" if args.ondisk else "index")
    rss0, anon0 = _rss_mb(), _rss_mb("RssAnon")
    t0 = time.perf_counter()
    reader = IndexReader.open(index_dir, mmap=True)
    open_s = time.perf_counter() - t0
    row = {
        "open_s": round(open_s, 3),
        "rss_after_open_mb": round(_rss_mb() - rss0, 1),
        "anon_after_open_mb": round(_rss_mb("RssAnon") - anon0, 1),
        "searcher_device": reader.ann.device,
        "nprobe": reader.ann.nprobe,
        "rerank": reader.ann.rerank,
    }
    qsets = dict(np.load(work / "queries.npz"))
    default_rerank = reader.ann.rerank
    for name, q in qsets.items():
        truth = _truth(work, q)
        for rerank in (default_rerank, 0):
            reader.ann.rerank = rerank
            p50, p99, recall = latency_and_recall(reader.ann, q, truth)
            tag = f"{name}_rerank{rerank}"
            row.update(
                {
                    f"{tag}_p50_ms": round(p50, 3),
                    f"{tag}_p99_ms": round(p99, 3),
                    f"{tag}_recall_at_10": round(recall, 4),
                }
            )
    row["query_peak_rss_mb"] = round(_peak_mb())
    return row


PHASES = {"generate": phase_generate, "build": phase_build, "query": phase_query}


def _child(args: argparse.Namespace, phase: str, n: int) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--phase",
        phase,
        "--sizes",
        str(n),
        "--dim",
        str(args.dim),
        "--queries",
        str(args.queries),
        "--seed",
        str(args.seed),
        "--workdir",
        args.workdir,
        "--factory",
        args.factory,
        "--build-threads",
        str(args.build_threads),
    ] + (["--ondisk"] if args.ondisk else [])
    done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000000")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--factory", default="", help="FAISS factory (default: retrieval.index.ann.choose_factory)")
    p.add_argument("--ondisk", action="store_true", help="merge with faiss.contrib.ondisk (index.ivfdata)")
    p.add_argument("--build-threads", type=int, default=2)
    p.add_argument("--workdir", default=os.environ.get("BENCH_SCALE_DIR", "/tmp/bench_scale"))
    p.add_argument("--keep", action="store_true", help="keep the generated vectors and index")
    p.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    p.add_argument("--out", default="", help="append one JSON line per size here")
    args = p.parse_args()
    if args.phase:
        print(json.dumps(PHASES[args.phase](args, int(args.sizes))))
        return
    for n in (int(s) for s in args.sizes.split(",")):
        row: dict = {"n": n, "dim": args.dim, "shards": SHARDS}
        if not (_work(args, n) / "queries.npz").exists():
            row.update(_child(args, "generate", n))
        row.update(_child(args, "build", n))
        row.update(_child(args, "query", n))
        print(json.dumps(row), flush=True)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
        if not args.keep:
            shutil.rmtree(_work(args, n), ignore_errors=True)


if __name__ == "__main__":
    main()
