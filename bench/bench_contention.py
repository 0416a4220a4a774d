"""Speed on a busy machine: builds and text queries with 0, 1 and 2 other busy processes.

A busy process is ``python -c "while True: pass"``, started and killed here. In each situation
it builds an index of the same Flickr8k photos with the built-in model as a build loads it
(the image tower; on this CPU through ONNX Runtime, its threads following torch's; loaded once) three
ways, interleaved over the rounds: the default (torch threads chosen from the free cores before each batch,
``retrieval.cores``), and torch fixed at 1 and at 2 threads (``RETRIEVAL_THREADS``). It
reports the builds' images/s (embedding and decoding time, as the build's summary does), each
as a ratio to the best fixed count in that situation (the goal: at least 0.9), and the median
latency of 30 text queries through the exported text tower with ONNX Runtime at 1 and 2 threads
and at its default (every usable core, threads that do not spin). The machine may be shared: the table shows the runnable tasks
(``procs_running``) and the load average at each cell.

    python bench/bench_contention.py [--photos 300] [--rounds 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "flickr8k" / "images"

from indexer.api import build  # noqa: E402
from indexer.config import BuildConfig  # noqa: E402
from retrieval.cores import busy_elsewhere  # noqa: E402
from retrieval.models.factory import create_model  # noqa: E402
from retrieval.models.onnxexport import ensure_text_onnx, fast_image_encoder  # noqa: E402
from retrieval.models.onnxtext import OnnxTextEncoder  # noqa: E402

POLICIES = {"default (free cores)": None, "fixed 1": "1", "fixed 2": "2"}
QUERIES = [
    "a dog running on the beach",
    "two children playing in a fountain",
    "a man riding a bike",
    "a snowy mountain",
    "a crowd at a concert",
    "a cat sleeping on a sofa",
] * 5


def start_busy(n: int) -> list[subprocess.Popen]:
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # until each is on a CPU (state R), not a fixed sleep
        if all(Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "R" for p in procs):
            break
        time.sleep(0.05)
    return procs


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
        p.wait()


def build_speed(photos: Path, encoder, threads: str | None) -> tuple[float, list[int]]:
    if threads is None:
        os.environ.pop("RETRIEVAL_THREADS", None)
    else:
        os.environ["RETRIEVAL_THREADS"] = threads
    index = Path(tempfile.mkdtemp(prefix="contention-"))
    try:
        report = build([photos], index, BuildConfig(workers=0, device="cpu"), encoder=encoder)
        return report.images_per_second, report.threads
    finally:
        os.environ.pop("RETRIEVAL_THREADS", None)
        shutil.rmtree(index, ignore_errors=True)


def query_ms(fast: OnnxTextEncoder) -> float:
    fast.encode_texts(QUERIES[:1])
    times = []
    for q in QUERIES:
        tick = time.perf_counter()
        fast.encode_texts([q])
        times.append(time.perf_counter() - tick)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=1, help="builds per cell (the best is kept)")
    args = ap.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"Flickr8k not found at {DATA}")
    folder = Path(tempfile.mkdtemp(prefix="contention-photos-"))
    for name in sorted(os.listdir(DATA))[: args.photos]:  # copies: a build does not follow links out of its folder
        shutil.copyfile(DATA / name, folder / name)
    text_folder = ensure_text_onnx(create_model("builtin", device="cpu", towers="image"))
    encoder = fast_image_encoder(create_model("builtin", device="cpu", towers="image"))  # what a CPU build runs
    encoders = {"1": OnnxTextEncoder.load(text_folder, threads=1), "2": OnnxTextEncoder.load(text_folder, threads=2)}
    build_speed(folder, encoder, None)  # warm-up: first-batch costs (BatchNorm folding, page cache)

    rows = []
    try:
        for busy in (0, 1, 2):
            procs = start_busy(busy)
            try:
                cell = {"busy": busy, "others": busy_elsewhere(), "load": os.getloadavg()[0]}
                speeds: dict[str, list[tuple[float, list[int]]]] = {name: [] for name in POLICIES}
                for _ in range(args.rounds):  # interleaved, so a change in the machine's load hits each alike
                    for name, threads in POLICIES.items():
                        speeds[name].append(build_speed(folder, encoder, threads))
                for name, runs in speeds.items():
                    cell[name] = max(runs, key=lambda r: r[0])
                cell["query"] = {t: query_ms(s) for t, s in encoders.items()}
                cell["query"]["default"] = query_ms(OnnxTextEncoder.load(text_folder))
                cell["load_after"] = os.getloadavg()[0]
                rows.append(cell)
            finally:
                stop(procs)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    print(
        f"{args.photos} Flickr8k photos, built-in model, CPU, decode inline; {os.cpu_count()} CPUs; "
        f"images/s (best of {args.rounds}); ratio = images/s / best fixed thread count in that row\n"
    )
    print(
        "| busy processes | other runnable tasks | load avg | default (free cores) | fixed 1 | fixed 2 | default / best fixed |"
        " threads the default used |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        if not r["default (free cores)"][0]:
            raise SystemExit("the builds embedded no photo: is the folder readable?")
        best = max(r["fixed 1"][0], r["fixed 2"][0])
        d = r["default (free cores)"]
        print(
            f"| {r['busy']} | {r['others']} | {r['load']:.1f}-{r['load_after']:.1f} | {d[0]:.1f} | {r['fixed 1'][0]:.1f} | "
            f"{r['fixed 2'][0]:.1f} | {d[0] / best:.2f} | {'-'.join(map(str, d[1]))} |"
        )
    print("\ntext query through the exported tower, median ms of 30 (ONNX Runtime intra-op threads)\n")
    print("| busy processes | 1 thread | 2 threads | default (every usable core) |\n|---:|---:|---:|---:|")
    for r in rows:
        q = r["query"]
        print(f"| {r['busy']} | {q['1']:.1f} | {q['2']:.1f} | {q['default']:.1f} |")


if __name__ == "__main__":
    main()
