"""What checksums cost: at publish time, on open, on a reader's first query, and for a full verify.

Builds a synthetic generation per size (random unit vectors, IVF-PQ above 10k as ``choose_factory``
picks, a metadata table with real-looking paths) through ``retrieval.index.store.new_generation``, so it
is sealed the way a build seals it. A twin index shares the same files by hard links but its
manifest has no checksums: it is the reference, opened and queried in the same run, alternately.
The page cache is warm (the files were just written); a cold read costs what the disk costs for
the chunks a query touches.

    python bench/bench_checksums.py                  # 10k and 1M vectors, 512-d
    python bench/bench_checksums.py --sizes 10000    # quick
    OMP_NUM_THREADS=1 python bench/bench_checksums.py --factory IVF256,PQ64x8   # on a busy 2-core machine
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa

from retrieval.index import ann, checksums, store
from retrieval.index.layout import CURRENT, INDEX_FILE, MANIFEST, VECTORS
from retrieval.index.manifest import METADATA_SCHEMA, Manifest
from retrieval.index.reader import IndexReader


def _vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float16)
    for start in range(0, n, 65_536):
        block = rng.standard_normal((min(65_536, n - start), dim), dtype=np.float32)
        out[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def _metadata(n: int) -> pa.Table:
    paths = pa.array([f"/photos/{i // 1000:04d}/IMG_{i:07d}.jpg" for i in range(n)])
    cols = {
        "path": paths,
        "size": pa.array(np.full(n, 2_000_000, np.int64)),
        "mtime": pa.array(np.zeros(n)),
        "sha256": pa.array([f"{i:064x}" for i in range(n)]),
        "width": pa.array(np.full(n, 4000, np.int32)),
        "height": pa.array(np.full(n, 3000, np.int32)),
        "file_type": pa.array(["jpeg"] * n),
    }
    return pa.table(
        {f.name: cols[f.name] if f.name in cols else pa.nulls(n, f.type) for f in METADATA_SCHEMA},
        schema=METADATA_SCHEMA,
    )


def _ann(vectors: np.ndarray, factory: str | None) -> faiss.Index:
    """The index a build makes (``choose_factory``'s pick unless ``factory``, trained as ``ann.build`` trains it)."""
    return ann.build(vectors, factory or ann.choose_factory(*vectors.shape))


def make_pair(root: Path, n: int, dim: int, factory: str | None) -> tuple[Path, Path, float, float]:
    """A sealed index and its unsealed twin; the seconds writing the files took, and sealing them."""
    vectors = _vectors(n, dim)
    index = _ann(vectors, factory if n >= ann.FLAT_BELOW else None)
    sealed = root / f"sealed-{n}"
    seal_s = 0.0
    real_seal = store.seal

    def timed_seal(gen: Path, previous: Path | None = None) -> None:
        nonlocal seal_s
        tick = time.perf_counter()
        real_seal(gen, previous)
        seal_s = time.perf_counter() - tick

    tick = time.perf_counter()
    store.seal = timed_seal
    try:
        with store.new_generation(sealed) as gen:
            ann.save(index, gen / INDEX_FILE)
            np.save(gen / VECTORS, vectors)
            store.write_metadata(gen, _metadata(n))
            manifest = Manifest(
                model_spec="bench", model_fingerprint="bench", embed_dim=dim, count=n, index_type=ann.index_type(index)
            )
            (gen / MANIFEST).write_text(manifest.to_json())
    finally:
        store.seal = real_seal
    write_s = time.perf_counter() - tick - seal_s
    gen = store.live_generation(sealed)
    plain = root / f"plain-{n}"
    (plain / gen.name).mkdir(parents=True)
    for f in gen.iterdir():
        if f.name != MANIFEST:
            os.link(f, plain / gen.name / f.name)
    data = json.loads((gen / MANIFEST).read_text())
    del data["checksums"]
    (plain / gen.name / MANIFEST).write_text(json.dumps(data))
    (plain / CURRENT).write_text(gen.name + "\n")
    return sealed, plain, write_s, seal_s


def _open_and_query(path: Path, queries: np.ndarray) -> tuple[float, float, float]:
    """Seconds to open, to answer a first query, and a second one."""
    tick = time.perf_counter()
    reader = IndexReader.open(path)
    opened = time.perf_counter()
    reader.search_vectors(queries[:1], k=10)
    first = time.perf_counter()
    reader.search_vectors(queries[1:2], k=10)
    return opened - tick, first - opened, time.perf_counter() - first


def measure(root: Path, n: int, dim: int, repeats: int, factory: str | None) -> dict[str, float]:
    sealed, plain, write_s, seal_s = make_pair(root, n, dim, factory)
    rng = np.random.default_rng(7)
    runs: dict[str, list[tuple[float, float, float]]] = {"sealed": [], "plain": []}
    for r in range(repeats):
        q = rng.standard_normal((2, dim)).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        for name, path in (
            (("sealed", sealed), ("plain", plain)) if r % 2 == 0 else (("plain", plain), ("sealed", sealed))
        ):
            runs[name].append(_open_and_query(path, q))
    med = {name: [statistics.median(col) for col in zip(*rows)] for name, rows in runs.items()}
    reader = IndexReader.open(sealed)
    hashed = sum(
        min(int(done.sum()) * reader.checks.chunk_bytes, int(reader.checks.files[name]["size"]))
        for name, done in reader.checks._done.items()
    )
    tick = time.perf_counter()
    reader.verify()
    verify_s = time.perf_counter() - tick
    size = sum(f.stat().st_size for f in reader.generation_dir.iterdir())
    manifest_kb = (reader.generation_dir / MANIFEST).stat().st_size / 1024
    shutil.rmtree(sealed)
    shutil.rmtree(plain)
    return {
        "n": n,
        "dim": dim,
        "bytes": size,
        "write_s": write_s,
        "seal_s": seal_s,
        "verify_s": verify_s,
        "manifest_kb": manifest_kb,
        "hashed_on_open_mb": hashed / 1e6,
        "open_sealed_ms": 1000 * med["sealed"][0],
        "open_plain_ms": 1000 * med["plain"][0],
        "first_query_sealed_ms": 1000 * med["sealed"][1],
        "first_query_plain_ms": 1000 * med["plain"][1],
        "second_query_sealed_ms": 1000 * med["sealed"][2],
        "second_query_plain_ms": 1000 * med["plain"][2],
    }


def hash_speed() -> float:
    """GB/s of XXH3-64 over 64 KiB chunks of an in-memory buffer, on this machine now (the reference)."""
    import xxhash

    data = memoryview(os.urandom(64 << 20))
    tick = time.perf_counter()
    for i in range(0, len(data), checksums.CHUNK_BYTES):
        xxhash.xxh3_64_hexdigest(data[i : i + checksums.CHUNK_BYTES])
    return len(data) / (time.perf_counter() - tick) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--factory",
        default=None,
        help="FAISS factory for sizes >= 10k (default: choose_factory's; fewer IVF lists train and "
        "add faster and leave the file sizes, which set the checksum cost, nearly as they are)",
    )
    parser.add_argument("--dir", default=None, help="where to write the indexes (default: a temporary folder)")
    args = parser.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="bench-checksums-"))
    print(
        f"chunk {checksums.CHUNK_BYTES // 1024} KiB, {args.dim}-d, medians of {args.repeats}, warm page cache; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; XXH3 here now: {hash_speed():.1f} GB/s"
    )
    print(
        "| vectors | files | write (s) | seal (s) | verify (s) | manifest | hashed on open | open: sealed / plain (ms) "
        "| first query: sealed / plain (ms) | second query: sealed / plain (ms) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in args.sizes:
        m = measure(root, n, args.dim, args.repeats, args.factory)
        print(
            f"| {n:,} | {m['bytes'] / 1e6:,.0f} MB | {m['write_s']:.2f} | {m['seal_s']:.2f} | {m['verify_s']:.2f} "
            f"| {m['manifest_kb']:.0f} KB | {m['hashed_on_open_mb']:,.0f} MB | {m['open_sealed_ms']:.1f} / {m['open_plain_ms']:.1f} "
            f"| {m['first_query_sealed_ms']:.2f} / {m['first_query_plain_ms']:.2f} "
            f"| {m['second_query_sealed_ms']:.2f} / {m['second_query_plain_ms']:.2f} |",
            flush=True,
        )
    print(f"XXH3 at the end: {hash_speed():.1f} GB/s; load average {os.getloadavg()[0]:.1f}")
    if not args.dir:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
