"""End-to-end text query latency: encode the text with the built-in model, then search.

Builds (once, cached) an index of N synthetic clustered vectors published under the built-in
model's fingerprint, opens it with ``retrieval.open_index`` as a user would, and times
``idx.search(text, k=10)`` for Flickr8k test captions (or a built-in list when the data is
absent). It reports p50/p99 of the whole call and of its two parts: the text encoder and
the index search (ANN + exact re-rank + metadata rows). Issue targets on this 2-core CPU:
p50 <= 30 ms end to end; p50 <= 5 ms for the index part at 1M vectors.

    nice -n 10 python bench/bench_text_query.py --sizes 10000,100000,1000000
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bench_query import clustered_vectors  # noqa: E402

from retrieval import create_model, open_index  # noqa: E402
from retrieval.index.manifest import METADATA_SCHEMA, Manifest  # noqa: E402
from retrieval.index.store import live_generation, write_generation  # noqa: E402

FALLBACK_QUERIES = [
    "a dog running on the beach",
    "two children playing in a fountain",
    "a man riding a bike",
    "a snowy mountain",
    "a crowd at a concert",
    "a cat sleeping on a sofa",
]


def captions(n: int) -> list[str]:
    pairs = ROOT.parent / "shared" / "data" / "flickr8k" / "pairs.csv"
    if not pairs.is_file():
        return (FALLBACK_QUERIES * (n // len(FALLBACK_QUERIES) + 1))[:n]
    with open(pairs) as f:
        rows = [r["caption"] for r in csv.DictReader(f) if r["split"] == "test"]
    return rows[:: max(1, len(rows) // n)][:n]


def synthetic_metadata(n: int) -> pa.Table:
    paths = pa.array([f"/synthetic/{i // 1000:04d}/{i}.jpg" for i in range(n)], pa.string())
    cols = {
        "path": paths,
        "size": pa.array(np.full(n, 100_000, np.int64)),
        "mtime": pa.array(np.zeros(n)),
        "sha256": pa.array([f"{i:064x}" for i in range(n)], pa.string()),
        "width": pa.array(np.full(n, 500, np.int32)),
        "height": pa.array(np.full(n, 375, np.int32)),
        "file_type": pa.array(["jpeg"] * n, pa.string()),
    }
    for name in METADATA_SCHEMA.names:
        if name not in cols:
            cols[name] = (
                pa.nulls(n, METADATA_SCHEMA.field(name).type)
                if "tag" not in name
                else pa.array([[]] * n, METADATA_SCHEMA.field(name).type)
            )
    return pa.table(cols).cast(METADATA_SCHEMA)


def ensure_index(n: int, encoder, cache: Path) -> Path:
    index_dir = cache / f"text_query_{n}_{encoder.fingerprint.replace('/', '_')}"
    if live_generation(index_dir) is None:
        vectors, _ = clustered_vectors(n, encoder.embed_dim, seed=0)
        manifest = Manifest(
            model_spec=encoder.spec,
            model_fingerprint=encoder.fingerprint,
            embed_dim=encoder.embed_dim,
            roots=("/synthetic",),
        )
        write_generation(index_dir, vectors, synthetic_metadata(n), manifest)
    return index_dir


def pct(values: list[float]) -> dict[str, float]:
    a = np.asarray(values) * 1000
    return {"p50_ms": round(float(np.percentile(a, 50)), 2), "p99_ms": round(float(np.percentile(a, 99)), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the text encoder")
    parser.add_argument("--cache", default="/tmp/bench_text_query")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    encoder = create_model(args.model, device="cpu")
    texts = captions(args.queries)
    for n in (int(s) for s in args.sizes.split(",")):
        idx = open_index(ensure_index(n, encoder, Path(args.cache)), model=encoder)
        for t in texts[:10]:  # warm up caches and allocators
            idx.search(t, k=10)
        total, encode, search = [], [], []
        for t in texts:
            t0 = time.perf_counter()
            idx.search(t, k=10)
            t1 = time.perf_counter()
            vec = encoder.encode_texts([t])[0]
            t2 = time.perf_counter()
            idx.search(vec, k=10, modality="text")
            t3 = time.perf_counter()
            total.append(t1 - t0)
            encode.append(t2 - t1)
            search.append(t3 - t2)
        print(
            json.dumps(
                {
                    "n": n,
                    "index_type": idx.manifest.index_type,
                    "queries": len(texts),
                    "threads": args.threads,
                    "end_to_end": pct(total),
                    "encode": pct(encode),
                    "index_search": pct(search),
                }
            )
        )


if __name__ == "__main__":
    main()
