"""A build's "load model" stage: both towers, the image tower alone, its export, and reading the weights.

Each round starts four new processes, one after the other (so machine load hits all alike).
Each imports what a build has imported before the stage (``indexer.api``: torch, numpy,
faiss, pyarrow), then times one step:

* ``both towers``: ``create_model("builtin")``, open_clip's model with its text tower;
* ``image tower (timm)``: ``create_model("builtin", towers="image")`` with
  ``RETRIEVAL_FAST_IMAGE=0``: the tower built with timm, as a build on a GPU loads it;
* ``image tower (exported)``: the same call where the tower has been exported
  (``retrieval.models.onnximage``), as a build on a CPU loads it;
* ``read weights``: reading the built-in model's weight files and nothing else
  (the EfficientNet-Lite0 checkpoint and ``builtin-v1.safetensors``): the floor.

It prints the median over rounds of the step's wall and CPU seconds and the packages the step
imported, and the ratios. The export is made first, into a temporary cache folder.

    python bench/bench_build_load.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STEP = """
import json, sys, time
import indexer.api  # noqa: F401  what a build has imported before its load stage
before = set(sys.modules)
wall, cpu = time.perf_counter(), time.process_time()
from retrieval.models.factory import create_model, load_state_dict_file
from retrieval.models.registry import project_config, resolve_package_path
step = sys.argv[1]
if step == "both towers":
    create_model("builtin", device="cpu")
elif step.startswith("image tower"):
    create_model("builtin", device="cpu", towers="image")
else:
    cfg = project_config("builtin")
    for ref in {how["source"] for how in cfg["tower_weights"].values()} | {cfg["default_weights"]}:
        load_state_dict_file(resolve_package_path(ref))
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
new = sorted({m.split(".")[0] for m in set(sys.modules) - before})
print(json.dumps({"wall": wall, "cpu": cpu, "imported": new}))
"""
STEPS = ("both towers", "image tower (timm)", "image tower (exported)", "read weights")
EXPORT = """
from retrieval.models.factory import create_model
from retrieval.models.onnxexport import fast_image_encoder
print(type(fast_image_encoder(create_model("builtin", device="cpu", towers="image")).model.visual).__name__)
"""


def run(step: str, cache: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), RETRIEVAL_DEVICE="cpu", RETRIEVAL_CACHE_DIR=cache)
    if step == "image tower (timm)":
        env["RETRIEVAL_FAST_IMAGE"] = "0"
    proc = subprocess.run([sys.executable, "-c", STEP, step], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{step} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    cache = tempfile.mkdtemp(prefix="build-load-")
    env = dict(os.environ, PYTHONPATH=str(ROOT), RETRIEVAL_DEVICE="cpu", RETRIEVAL_CACHE_DIR=cache)
    made = subprocess.run([sys.executable, "-c", EXPORT], cwd=ROOT, env=env, capture_output=True, text=True)
    if made.stdout.strip() != "OnnxVisual":
        raise SystemExit(f"the image tower was not exported:\n{made.stderr[-2000:]}")
    for step in STEPS:  # a warm-up round: the page cache holds every file after it
        run(step, cache)
    load_before = os.getloadavg()[0]
    runs: dict[str, list[dict]] = {step: [] for step in STEPS}
    for _ in range(args.runs):
        for step in STEPS:
            runs[step].append(run(step, cache))
    load_after = os.getloadavg()[0]
    print(
        f"a build's load-model stage, built-in model, CPU: median of {args.runs} runs each, interleaved; "
        f"load average {load_before:.2f} -> {load_after:.2f} on {os.cpu_count()} CPUs\n"
    )
    print("| step | wall (s) | CPU (s) | packages it imports |\n|---|---:|---:|---|")
    med = {}
    for step, rs in runs.items():
        med[step] = {k: statistics.median(r[k] for r in rs) for k in ("wall", "cpu")}
        imported = ", ".join(p for p in rs[0]["imported"] if not p.startswith("_")) or "-"
        print(f"| {step} | {med[step]['wall']:.2f} | {med[step]['cpu']:.2f} | {imported} |")
    shutil.rmtree(cache, ignore_errors=True)
    both, timm, exported, floor = (med[s]["wall"] for s in STEPS)
    print(
        f"\nwall against both towers: image tower (timm) {timm / both:.2f}x, exported {exported / both:.3f}x; "
        f"exported - read weights: {exported - floor:.2f} s"
    )


if __name__ == "__main__":
    main()
