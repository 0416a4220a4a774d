"""Embedding throughput: end to end (files -> vectors) against the model's forward pass alone.

Generates a collection of realistic JPEGs itself (500x375, quality 90, smooth colour fields
with edges and sensor-like noise; 50,000 by default, cached in ``--dir``), then for each
model measures, on ``--device`` (cuda when present):

* ``model_ips``: forward pass only, on a random pixel batch already on the device;
* ``device_e2e_ips``: ``indexer.gpu_decode`` (workers read bytes, ``decode_jpeg`` on the
  device, resize/normalise on the device) + forward pass, with the mean GPU utilisation;
* ``pillow_e2e_ips``: the indexer's own decode stage (hash, EXIF, Pillow ``draft`` decode in
  worker processes) + forward pass.

On a GPU machine:  python bench/bench_gpu_embed.py --out bench/results/gpu_embed.jsonl
On CPU (a check that it runs; CPU figures only):  nice -n 10 python bench/bench_gpu_embed.py --count 300 --device cpu
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from indexer.decode import DecodeDataset, iter_decoded  # noqa: E402
from indexer.gpu_decode import iter_device_batches  # noqa: E402
from indexer.scan import ScannedFile  # noqa: E402
from retrieval.errors import ModelUnavailableError  # noqa: E402
from retrieval.models import create_model  # noqa: E402


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


def generate(folder: Path, count: int, processes: int) -> list[str]:
    jobs = [(str(folder / f"{i // 1000:03d}" / f"img_{i:06d}.jpg"), i) for i in range(count)]
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
        out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                              f"--id={self.device.index or 0}"], capture_output=True, text=True)
        return float(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else None

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            value = self._sample()
            if value is not None:
                self.samples.append(value)

    def __enter__(self) -> "UtilisationSampler":
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


def model_only(encoder, batch: int, dtype: torch.dtype, seconds: float) -> float:
    size = encoder.image_size
    pixels = torch.randn(batch, 3, size, size, device=encoder.device, dtype=dtype)
    for _ in range(2):
        encoder.encode_pixels(pixels)
    _sync(encoder.device)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or done < 3 * batch:
        encoder.encode_pixels(pixels)
        done += batch
    _sync(encoder.device)
    return done / (time.perf_counter() - start)


def device_e2e(encoder, paths: list[str], batch: int, workers: int, dtype: torch.dtype) -> dict:
    counts: dict[str, int] = {}
    with UtilisationSampler(encoder.device) as util:
        start = time.perf_counter()
        for b in iter_device_batches(paths, encoder.preprocess, encoder.transform, encoder.device, batch, workers,
                                     draft_size=2 * encoder.image_size, dtype=dtype):
            if len(b.rows):
                encoder.encode_pixels(b.pixels)
            for key, value in b.counts.items():
                counts[key] = counts.get(key, 0) + value
        _sync(encoder.device)
        elapsed = time.perf_counter() - start
    return {"device_e2e_ips": round(len(paths) / elapsed, 1), "gpu_util_pct": util.mean, "decode_counts": counts}


def pillow_e2e(encoder, paths: list[str], batch: int, workers: int) -> float:
    files = [ScannedFile(path, os.stat(path).st_size, os.stat(path).st_mtime) for path in paths]
    dataset = DecodeDataset(files, encoder.transform, 2 * encoder.image_size)
    start = time.perf_counter()
    for b in iter_decoded(dataset, batch, workers, pin=encoder.device.type == "cuda"):
        if b.pixels is not None:
            encoder.encode_pixels(b.pixels)
    _sync(encoder.device)
    return len(files) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=50_000, help="JPEGs to generate and embed")
    p.add_argument("--dir", default=os.environ.get("BENCH_JPEG_DIR", "/tmp/bench_gpu_embed_jpegs"))
    p.add_argument("--models", default="ViT-B-32:random,builtin")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=0, help="default 256 on GPU, 32 on CPU")
    p.add_argument("--workers", type=int, default=-1, help="reader/decoder processes (default: CPUs - 1, at most 8)")
    p.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16")
    p.add_argument("--model-seconds", type=float, default=10.0, help="how long to time the forward pass alone")
    p.add_argument("--skip-pillow", action="store_true", help="skip the Pillow (indexer decode stage) path")
    p.add_argument("--out", default="", help="append JSON lines here")
    args = p.parse_args()
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    cpus = len(os.sched_getaffinity(0))
    workers = args.workers if args.workers >= 0 else max(1, min(8, cpus - 1))
    batch = args.batch_size or (256 if on_gpu else 32)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype] if on_gpu else torch.float32
    tick = time.perf_counter()
    paths = generate(Path(args.dir), args.count, max(1, cpus))
    print(f"{len(paths)} JPEGs ready in {args.dir} ({time.perf_counter() - tick:.0f} s)", file=sys.stderr)
    gpu_name = torch.cuda.get_device_name(device) if on_gpu else "none (CPU figures only)"
    for spec in [s for s in args.models.split(",") if s]:
        row: dict = {"model": spec, "device": str(device), "gpu": gpu_name, "count": len(paths), "batch": batch,
                     "workers": workers, "dtype": str(dtype).replace("torch.", "")}
        try:
            encoder = create_model(spec, device=str(device))
        except ModelUnavailableError as exc:
            row["skipped"] = str(exc)
            print(json.dumps(row), flush=True)
            continue
        row["model_ips"] = round(model_only(encoder, batch, dtype, args.model_seconds), 1)
        row.update(device_e2e(encoder, paths, batch, workers, dtype))
        if not args.skip_pillow:
            row["pillow_e2e_ips"] = round(pillow_e2e(encoder, paths, batch, workers), 1)
        print(json.dumps(row), flush=True)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
        del encoder


if __name__ == "__main__":
    main()
