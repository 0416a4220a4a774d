"""Cold start of a text query: the full torch path, the fast path and the floor, in one run.

Each round runs, in a new process each, one after the other (so machine load hits all alike):

* ``full``: ``python -m retrieval search TEXT --index DIR`` with ``RETRIEVAL_FAST_TEXT=0``
  (torch, open_clip and both towers);
* ``fast``: the same command as a user runs it (the text tower through ONNX Runtime);
* ``floor``: a Python process that only imports numpy, faiss and pyarrow and reads the
  index's files (manifest, vectors, FAISS index, metadata): what any query must pay.

It reports the median over rounds of wall time, CPU time (user + system) and peak memory (each
run is a child of a forked measuring process, whose ``RUSAGE_CHILDREN`` is that one run's),
the imports' total and largest packages
(``-X importtime``), the load average, and the ratios. The index must be built with the
built-in model (``python -m indexer build PHOTOS --index DIR``, which exports the text tower).

    python bench/bench_cold_start.py --index DIR --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FLOOR = """
import json, sys
from pathlib import Path
import numpy as np, faiss, pyarrow.parquet as pq
index = Path(sys.argv[1])
gen = index / (index / "CURRENT").read_text().strip()
json.loads((gen / "manifest.json").read_text())
vectors = np.load(gen / "vectors.npy", mmap_mode="r")
ann = faiss.read_index(str(gen / "index.faiss"))
table = pq.ParquetFile(gen / "metadata.parquet", memory_map=True).read()
print(len(vectors), ann.ntotal, table.num_rows)
"""


def commands(index: Path, query: str) -> dict[str, tuple[list[str], dict[str, str]]]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), RETRIEVAL_DEVICE="cpu")
    search = [sys.executable, "-X", "importtime", "-m", "retrieval", "search", query, "--index", str(index)]
    return {
        "full": (search, {**env, "RETRIEVAL_FAST_TEXT": "0"}),
        "fast": (search, env),
        "floor": ([sys.executable, "-X", "importtime", "-c", FLOOR, str(index)], env),
    }


def run_once(cmd: list[str], env: dict[str, str]) -> dict:
    """Wall, CPU and peak RSS of one child process, and its import times by top-level package."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed ({proc.returncode}):\n{err[-2000:]}")
    total, packages = 0.0, {}
    for m in re.finditer(r"^import time:\s+\d+ \|\s+(\d+) \| (\s*)(\S+)$", err, re.M):
        seconds, nested, name = int(m.group(1)) / 1e6, m.group(2), m.group(3)
        if not nested:  # a top-level import: its cumulative time holds everything it pulled in
            total += seconds
        if "." not in name and name not in packages:  # a package, with all it imported, wherever it was first
            packages[name] = seconds
    return {"wall": wall, "import_total": total, "imports": packages, "stdout": out}


def measured(cmd: list[str], env: dict[str, str]) -> dict:
    """:func:`run_once` in a forked child, so ``RUSAGE_CHILDREN`` of that child covers one process."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        import resource

        result = run_once(cmd, env)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        result.update(cpu=usage.ru_utime + usage.ru_stime, peak_mb=usage.ru_maxrss / 1024)
        os.write(write, json.dumps(result).encode())
        os._exit(0)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 1 << 16):
        chunks.append(chunk)
    os.close(read)
    os.waitpid(pid, 0)
    if not chunks:
        raise SystemExit(f"measuring {cmd} failed")
    return json.loads(b"".join(chunks))


def procs_running() -> int:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("procs_running"):
            return int(line.split()[1])
    return -1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", type=Path, required=True, help="an index built with the built-in model")
    ap.add_argument("--query", default="a cat")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", type=Path, help="append the result as one JSON line")
    args = ap.parse_args()

    cmds = commands(args.index, args.query)
    runs: dict[str, list[dict]] = {name: [] for name in cmds}
    load_before = os.getloadavg()
    running = []
    for cmd, env in cmds.values():  # a warm-up round: the page cache holds every file after it
        measured(cmd, env)
    for _ in range(args.runs):
        for name, (cmd, env) in cmds.items():
            running.append(procs_running())
            runs[name].append(measured(cmd, env))
    load_after = os.getloadavg()
    same = runs["full"][0]["stdout"] == runs["fast"][0]["stdout"]

    print(
        f"cold start of `python -m retrieval search {args.query!r}`: median of {args.runs} runs each, "
        f"interleaved; load average {load_before[0]:.2f} -> {load_after[0]:.2f}, runnable tasks at each start "
        f"median {statistics.median(running)} on {os.cpu_count()} CPUs"
    )
    print("\n| path | wall (s) | CPU (s) | peak RSS (MB) | imports (s) | largest packages, with what they import (s) |")
    print("|---|---:|---:|---:|---:|---|")
    summary = {}
    for name, rs in runs.items():
        med = {key: statistics.median(r[key] for r in rs) for key in ("wall", "cpu", "peak_mb")}
        packages = {p for r in rs for p in r["imports"]}
        by_pkg = {p: statistics.median(r["imports"].get(p, 0.0) for r in rs) for p in packages}
        med["imports"] = statistics.median(r["import_total"] for r in rs)
        top = sorted(by_pkg.items(), key=lambda kv: -kv[1])[:5]
        summary[name] = {**med, "top_imports": dict(top), "walls": [r["wall"] for r in rs]}
        print(
            f"| {name} | {med['wall']:.2f} | {med['cpu']:.2f} | {med['peak_mb']:.0f} | {med['imports']:.2f} | "
            + ", ".join(f"{p} {t:.2f}" for p, t in top)
            + " |"
        )
    full, fast, floor = summary["full"], summary["fast"], summary["floor"]
    print(
        f"\nfast / full: wall {fast['wall'] / full['wall']:.2f}x, CPU {fast['cpu'] / full['cpu']:.2f}x, "
        f"memory {fast['peak_mb'] / full['peak_mb']:.2f}x; fast - floor: wall {fast['wall'] - floor['wall']:.2f} s, "
        f"CPU {fast['cpu'] - floor['cpu']:.2f} s; same printed results: {same}"
    )
    if args.out:
        with open(args.out, "a") as f:
            f.write(
                json.dumps(
                    {
                        "bench": "cold_start",
                        "query": args.query,
                        "runs": args.runs,
                        "load": [load_before, load_after],
                        "same_results": same,
                        **summary,
                    }
                )
                + "\n"
            )


if __name__ == "__main__":
    main()
