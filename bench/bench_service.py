"""Search service throughput and latency against the in-process ``Index.search``, in one run.

For each index size, a synthetic index of unit 512-d vectors is built the way
``bench_scale.py`` builds one (its ``generate`` and ``build`` phases: sharded float16
vectors, IVF-PQ through ``indexer.merge`` above ``ann.choose_factory``'s flat limit), then:

* service: ``python -m retrieval serve --no-warm`` in its own process; 1, 4 and 16 client
  threads (keep-alive HTTP/1.1 connections, request bodies serialised beforehand) send
  ``POST /search`` with a precomputed text-like query vector (``{"vector": [...], "k": 10}``)
  for a fixed time; requests/s over the whole window, p50/p99 per request;
* in-process: the same query vectors through ``Index.search(vec, 10, modality="text")`` from
  the same number of threads in this process;
* the service's own work per request, timed in this process step by step (parse and validate
  the body, check ``CURRENT``, the ANN search, build the response, write its JSON).

The model is never loaded (the synthetic index has none): what is measured is the HTTP
layer, JSON, validation, the filter-free ANN search and the metadata lookup. Both sides run
FAISS with one OpenMP thread per call (``OMP_NUM_THREADS=1``), concurrency comes from the
clients. The client threads share this process with the in-process reference's, so on a
small machine they compete with the server for the same cores: compare the two columns of
one run, not runs on different machines.

    nice -n 10 python bench/bench_service.py --sizes 10000,100000 --out bench/results/service.jsonl
    nice -n 10 python bench/bench_service.py --sizes 1000000            # minutes to build
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
K = 10


def build(args: argparse.Namespace, n: int) -> tuple[Path, np.ndarray]:
    """The synthetic index for ``n`` vectors (made once per work folder) and its text-like queries."""
    work = Path(args.workdir) / f"n{n}_d{args.dim}_s{args.seed}"
    index = work / "index"
    base = [
        sys.executable,
        str(REPO / "bench" / "bench_scale.py"),
        "--sizes",
        str(n),
        "--dim",
        str(args.dim),
        "--workdir",
        args.workdir,
        "--seed",
        str(args.seed),
        "--queries",
        str(args.queries),
    ]
    for phase in ("generate", "build"):
        if phase == "build" and (index / "CURRENT").exists():
            break
        if phase == "generate" and (work / "queries.npz").exists():
            continue
        subprocess.run([*base, "--phase", phase], check=True, stdout=subprocess.DEVNULL)
    return index, np.load(work / "queries.npz")["text"].astype(np.float32)


def start_server(index: Path) -> tuple[subprocess.Popen[str], int]:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "retrieval", "serve", "--index", f"bench={index}", "--port", "0", "--no-warm"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        found = re.search(r"at http://\S+:(\d+) ", line)
        if found:
            port = int(found[1])
            break
    else:
        raise SystemExit("the service did not start")
    while True:  # listening before serving: wait for the first answer
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                conn.close()
                return proc, port
        except OSError:
            time.sleep(0.05)


def run_clients(clients: int, seconds: float, work) -> tuple[float, float, float, int]:
    """``clients`` threads calling ``work(thread, i)`` for ``seconds``; requests/s, p50 and p99 ms, errors."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    stop = threading.Event()
    start = threading.Barrier(clients + 1)

    def loop(t: int) -> None:
        call = work(t)
        start.wait()
        i = 0
        while not stop.is_set():
            t0 = time.perf_counter()
            ok = call(i)
            latencies[t].append(time.perf_counter() - t0)
            errors[t] += not ok
            i += 1

    threads = [threading.Thread(target=loop, args=(t,)) for t in range(clients)]
    for th in threads:
        th.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    ms = np.concatenate([np.array(x) for x in latencies]) * 1e3
    return len(ms) / wall, float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), sum(errors)


def http_work(port: int, bodies: list[bytes]):
    def make(t: int):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"content-type": "application/json"}

        def call(i: int) -> bool:
            conn.request("POST", "/search", body=bodies[(i * 7 + t) % len(bodies)], headers=headers)
            response = conn.getresponse()
            response.read()
            return response.status == 200

        return call

    return make


def local_work(index, queries: np.ndarray):
    def make(t: int):
        def call(i: int) -> bool:
            return len(index.search(queries[(i * 7 + t) % len(queries)], K, modality="text")) == K

        return call

    return make


def handler_work_ms(index, body: bytes, repeat: int = 300) -> dict[str, float]:
    """The service's own work per request beside the ANN search, timed in this process: parse and
    validate the body, check ``CURRENT``, build the response, write its JSON."""
    from retrieval.service.indexes import Served
    from retrieval.service.models import SearchRequest
    from retrieval.service.queries import respond

    served = Served("bench", index)
    req = SearchRequest.model_validate_json(body)
    results = index.search(np.asarray(req.vector, np.float32), K, modality="text")
    steps = {
        "parse": lambda: SearchRequest.model_validate_json(body),
        "check_current": index.refreshed,
        "ann_search": lambda: index.search(np.asarray(req.vector, np.float32), K, modality="text"),
        "respond": lambda: respond(served, results, req.as_kwargs()),
        "json": respond(served, results, req.as_kwargs()).model_dump_json,
    }
    out = {}
    for name, step in steps.items():
        step()
        t0 = time.perf_counter()
        for _ in range(repeat):
            step()
        out[f"work_{name}_ms"] = round((time.perf_counter() - t0) / repeat * 1e3, 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,100000")
    p.add_argument("--clients", default="1,4,16")
    p.add_argument("--seconds", type=float, default=4.0, help="measuring window per point")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=os.environ.get("BENCH_SERVICE_DIR", "/tmp/bench_service"))
    p.add_argument("--keep", action="store_true", help="keep the generated vectors and indexes")
    p.add_argument("--out", default="", help="append one JSON line per point here")
    args = p.parse_args()

    import faiss

    from retrieval.index.store import IndexReader
    from retrieval.query.search import Index

    faiss.omp_set_num_threads(1)
    for n in (int(s) for s in args.sizes.split(",")):
        t0 = time.perf_counter()
        index_dir, queries = build(args, n)
        build_s = time.perf_counter() - t0
        local = Index(IndexReader.open(index_dir))
        bodies = [json.dumps({"vector": q.tolist(), "k": K, "modality": "text"}).encode() for q in queries]
        work = handler_work_ms(local, bodies[0])
        print(json.dumps({"n": n, **work}), flush=True)
        proc, port = start_server(index_dir)
        try:
            for clients in (int(c) for c in args.clients.split(",")):
                run_clients(clients, min(1.0, args.seconds), http_work(port, bodies))  # warm both sides
                run_clients(clients, min(1.0, args.seconds), local_work(local, queries))
                rps, p50, p99, err = run_clients(clients, args.seconds, http_work(port, bodies))
                lrps, lp50, lp99, lerr = run_clients(clients, args.seconds, local_work(local, queries))
                row = {
                    "n": n,
                    "clients": clients,
                    "index_type": local.manifest.index_type,
                    "service_rps": round(rps, 1),
                    "service_p50_ms": round(p50, 2),
                    "service_p99_ms": round(p99, 2),
                    "inprocess_rps": round(lrps, 1),
                    "inprocess_p50_ms": round(lp50, 2),
                    "inprocess_p99_ms": round(lp99, 2),
                    "p50_overhead_ms": round(p50 - lp50, 2),
                    "errors": err + lerr,
                    **work,
                    "build_s": round(build_s, 1),
                    "cpus": os.cpu_count(),
                    "load_avg": round(os.getloadavg()[0], 1),
                }
                print(json.dumps(row), flush=True)
                if args.out:
                    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                    with open(args.out, "a") as f:
                        f.write(json.dumps(row) + "\n")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        if not args.keep:
            shutil.rmtree(Path(args.workdir) / f"n{n}_d{args.dim}_s{args.seed}", ignore_errors=True)


if __name__ == "__main__":
    main()
