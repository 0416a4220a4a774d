"""Embedding throughput: ``indexer build`` end to end against the model's forward pass alone.

Generates a collection of realistic JPEGs itself (500x375, quality 90, smooth colour fields
with edges and sensor-like noise; 50,000 by default, cached in ``--dir``), then for each
model measures, on ``--device`` (cuda when present):

* ``model_ips``: forward pass only, on a float pixel batch already on the device, which is
  what the decode stage hands the model;
* ``device_build``: a real ``indexer.api.build`` of the folder with ``gpu_decode=True`` (workers
  hash the files, read their EXIF facts and send the JPEG bytes; ``decode_jpeg`` on the
  device, resize and normalise there; the model; then the FAISS index, Parquet and the
  catalog are written), with the mean GPU utilisation over the build;
* ``pillow_build``: the same build with the Pillow decode stage (``draft`` decode in the workers).

Each build reports ``embed_ips`` (files over the decode+embed loop's wall time: the rate the
issue's target is about), ``build_ips`` (files over the whole build, index training and
writing included), ``ratio`` (``embed_ips / model_ips``) and its stage timings, which say
where the time goes: ``decode_wait`` (the model waiting for the workers), ``decode_device``
(main process: JPEG decode, resize, normalise) and ``embed`` (starting the model and
collecting its results). A warm-up build of other files (``--warm``, 512) runs first.

On a GPU machine:  python bench/bench_gpu_embed.py --out bench/results/gpu_embed.jsonl
On CPU (a check that it runs; CPU figures only):
    python bench/bench_gpu_embed.py --count 1000 --warm 64 --device cpu --models tiny-clip,builtin
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from indexer import BuildConfig, build  # noqa: E402
from retrieval.errors import ModelUnavailableError  # noqa: E402
from retrieval.models.factory import create_model  # noqa: E402


def _write_jpeg(job: tuple[str, int]) -> None:
    from PIL import Image

    path, seed = job
    if os.path.exists(path):
        return
    rng = np.random.default_rng(seed)
    field = rng.uniform(0, 255, (int(rng.integers(3, 9)), int(rng.integers(4, 12)), 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(field).resize((500, 375), Image.BICUBIC), dtype=np.float32)
    for _ in range(int(rng.integers(2, 7))):  # a few hard-edged objects
        x0, y0 = int(rng.integers(0, 450)), int(rng.integers(0, 330))
        img[y0 : y0 + int(rng.integers(20, 160)), x0 : x0 + int(rng.integers(20, 200))] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 6, img.shape)  # sensor noise keeps the file size photo-like
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)


def generate(folder: Path, count: int, processes: int, first_seed: int = 0) -> list[str]:
    jobs = [(str(folder / f"{i // 1000:03d}" / f"img_{i:06d}.jpg"), first_seed + i) for i in range(count)]
    with Pool(processes) as pool:
        for _ in pool.imap_unordered(_write_jpeg, jobs, chunksize=64):
            pass
    return [path for path, _ in jobs]


class UtilisationSampler:
    """Mean GPU utilisation (%) over a block, from torch (pynvml) or nvidia-smi; None when neither works."""

    def __init__(self, device: torch.device, period: float = 0.2) -> None:
        self.device, self.period, self.samples = device, period, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> float | None:
        try:
            return float(torch.cuda.utilization(self.device))
        except (ModuleNotFoundError, RuntimeError, ValueError):
            pass  # no pynvml: ask nvidia-smi below
        if shutil.which("nvidia-smi") is None:
            return None
        out = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=utilization.gpu",
                "--format=csv,noheader,nounits",
                f"--id={self.device.index or 0}",
            ],
            capture_output=True,
            text=True,
        )
        return float(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else None

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            value = self._sample()
            if value is not None:
                self.samples.append(value)

    def __enter__(self) -> UtilisationSampler:
        if self.device.type == "cuda":
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return round(float(np.mean(self.samples)), 1) if self.samples else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_only(encoder, batch: int, seconds: float) -> float:
    size = encoder.image_size
    pixels = torch.randn(batch, 3, size, size, device=encoder.device)
    for _ in range(2):
        encoder.encode_pixels(pixels)
    _sync(encoder.device)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or done < 3 * batch:
        encoder.encode_pixels(pixels)
        done += batch
    _sync(encoder.device)
    return done / (time.perf_counter() - start)


def timed_build(encoder, folder: Path, warm: Path, config: BuildConfig) -> dict:
    """One warm-up build, then the measured build of ``folder`` into a fresh index."""
    with tempfile.TemporaryDirectory() as tmp:
        build([warm], Path(tmp) / "warm-up", config, encoder=encoder)
        with UtilisationSampler(encoder.device) as util:
            report = build([folder], Path(tmp) / "index", config, encoder=encoder)
            _sync(encoder.device)
    t = report.timings
    loop = t.decode_wait + t.decode_device + t.embed
    return {
        "embed_ips": round(report.embedded / loop, 1),
        "build_ips": round(report.embedded / t.total, 1),
        "gpu_util_pct": util.mean,
        "embedded": report.embedded,
        "device_decoded": report.device_decoded,
        "pillow_decoded": report.pillow_decoded,
        "bad": len(report.new_bad),
        "precision": report.precision,
        "timings_s": {k: round(v, 2) for k, v in vars(t).items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=50_000, help="JPEGs to generate and embed")
    p.add_argument("--dir", default=os.environ.get("BENCH_JPEG_DIR", "/tmp/bench_gpu_embed_jpegs"))
    p.add_argument("--models", default="ViT-B-32:random,builtin")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=0, help="default 256 on GPU, 32 on CPU")
    p.add_argument("--workers", type=int, default=-1, help="reader/decoder processes (default: CPUs - 1)")
    p.add_argument("--precision", default="auto", help="the model's precision (auto: bf16 on CUDA)")
    p.add_argument("--warm", type=int, default=512, help="files in the warm-up build before each measured one")
    p.add_argument("--model-seconds", type=float, default=10.0, help="how long to time the forward pass alone")
    p.add_argument("--skip-pillow", action="store_true", help="skip the Pillow (indexer decode stage) path")
    p.add_argument("--out", default="", help="append JSON lines here")
    args = p.parse_args()
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    cpus = len(os.sched_getaffinity(0))
    workers = args.workers if args.workers >= 0 else max(1, cpus - 1)
    batch = args.batch_size or (256 if on_gpu else 32)
    tick = time.perf_counter()
    folder, warm = Path(args.dir) / "photos", Path(args.dir) / "warm-up"
    generate(folder, args.count, max(1, cpus))
    generate(warm, args.warm, max(1, cpus), first_seed=10**9)
    print(f"{args.count} JPEGs ready in {folder} ({time.perf_counter() - tick:.0f} s)", file=sys.stderr)
    config = BuildConfig(batch_size=batch, workers=workers, device=str(device), precision=args.precision)
    gpu_name = torch.cuda.get_device_name(device) if on_gpu else "none (CPU figures only)"
    for spec in [s for s in args.models.split(",") if s]:
        row: dict = {
            "model": spec,
            "device": str(device),
            "gpu": gpu_name,
            "count": args.count,
            "batch": batch,
            "workers": workers,
            "cpus": cpus,
        }
        try:
            encoder = create_model(spec, device=str(device), precision=args.precision)
        except ModelUnavailableError as exc:
            row["skipped"] = str(exc)
            print(json.dumps(row), flush=True)
            continue
        row["precision"] = encoder.resolved_precision
        row["model_ips"] = round(model_only(encoder, batch, args.model_seconds), 1)
        row["device_build"] = timed_build(encoder, folder, warm, replace(config, gpu_decode=True))
        row["device_build"]["ratio"] = round(row["device_build"]["embed_ips"] / row["model_ips"], 3)
        if not args.skip_pillow:
            row["pillow_build"] = timed_build(encoder, folder, warm, replace(config, gpu_decode=False))
            row["pillow_build"]["ratio"] = round(row["pillow_build"]["embed_ips"] / row["model_ips"], 3)
        print(json.dumps(row), flush=True)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
        del encoder


if __name__ == "__main__":
    main()
