"""Indexing throughput versus the model's pure forward pass on the same images.

    nice -n 10 python bench/bench_indexing.py [--images 1000] [--model builtin:random]

Prints one JSON line: the pipeline's images/s (decode in worker processes overlapped with
embedding; each round adds a new chunk of images to the same index incrementally), the
forward pass's images/s on the same chunk's pre-decoded tensors (measured just before and
after, averaged), and their ratio. Target: ratio >= 0.9 on a 2-core CPU.

The encoder is the one a build loads (the image tower alone; on a CPU, exported to ONNX
Runtime where the model allows it). With ``--compare-torch`` it also times the same tower in
torch on the same tensors, in the same rounds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexer import BuildConfig, build  # noqa: E402
from retrieval.imageio import is_image_path, load_image  # noqa: E402
from retrieval.models.encoder import PRECISION_HELP, PRECISIONS, Encoder  # noqa: E402
from retrieval.models.factory import create_model  # noqa: E402
from retrieval.models.onnxexport import fast_image_encoder  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k" / "images"


@dataclass(frozen=True)
class BenchArgs:
    data: Path
    images: int
    model: str
    batch_size: int
    workers: int | None
    threads: int | None
    device: str | None
    rounds: int
    precision: str = "auto"
    compare_torch: bool = False


def parse_args(argv: list[str] | None = None) -> BenchArgs:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of images")
    p.add_argument("--images", type=int, default=1000, help="how many images to index")
    p.add_argument("--model", default="builtin:random", help="model spec (random weights are fine for speed)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=None, help="decode workers (default: the indexer's choice)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--device", default=None)
    p.add_argument("--rounds", type=int, default=4, help="alternating forward/pipeline rounds")
    p.add_argument("--precision", choices=list(PRECISIONS), default="auto", help=PRECISION_HELP)
    p.add_argument("--compare-torch", action="store_true", help="also time the image tower in torch")
    a = p.parse_args(argv)
    return BenchArgs(
        a.data,
        a.images,
        a.model,
        a.batch_size,
        a.workers,
        a.threads,
        a.device,
        max(1, a.rounds),
        a.precision,
        a.compare_torch,
    )


def forward_rate(encoder: Encoder, pixels: torch.Tensor, batch_size: int) -> float:
    """Images/s of ``encode_pixels`` alone on already-transformed tensors."""
    encoder.encode_pixels(pixels[:batch_size])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(pixels), batch_size):
        encoder.encode_pixels(pixels[i : i + batch_size])
    return len(pixels) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.data.is_dir():
        print(f"no images at {args.data}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    files = sorted(p for p in args.data.iterdir() if is_image_path(p))[: args.images]
    encoder = fast_image_encoder(create_model(args.model, device=args.device, precision=args.precision, towers="image"))
    in_torch = create_model(args.model, device=args.device, precision=args.precision) if args.compare_torch else None
    config = BuildConfig(batch_size=args.batch_size, workers=args.workers)
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        photos.mkdir()
        # Warm-up, as forward_rate has one: a throwaway build pays the pipeline's one-time costs
        # (imports, Pillow plugins, the first DataLoader) outside the measured rounds.
        warm = Path(tmp) / "warm-up"
        warm.mkdir()
        for p in files[: args.batch_size]:  # copies: a build does not follow links out of its folder
            shutil.copyfile(p, warm / p.name)
        build([warm], Path(tmp) / "warm-up-index", config, encoder=encoder)
        # Rounds alternate forward / pipeline / forward on a fresh chunk each, so that load from
        # other processes on a shared machine drifts equally over both measurements.
        step = -(-len(files) // args.rounds)
        for start in range(0, len(files), step):
            chunk = files[start : start + step]
            pixels = torch.stack([encoder.transform(load_image(p, draft_size=2 * encoder.image_size)) for p in chunk])
            before = forward_rate(encoder, pixels, args.batch_size)
            torch_rate = forward_rate(in_torch, pixels, args.batch_size) if in_torch else None
            for p in chunk:
                shutil.copyfile(p, photos / p.name)
            report = build([photos], Path(tmp) / "index", config, encoder=encoder)
            after = forward_rate(encoder, pixels, args.batch_size)
            t = report.timings
            rounds.append(
                {
                    "images": report.embedded,
                    "forward": (before + after) / 2,
                    "torch": torch_rate,
                    "pipeline": report.embedded / (t.decode_wait + t.embed),
                    "timings": vars(t),
                }
            )
    n = sum(r["images"] for r in rounds)
    forward = n / sum(r["images"] / r["forward"] for r in rounds)
    pipeline = n / sum(r["images"] / r["pipeline"] for r in rounds)
    ratios = sorted(r["pipeline"] / r["forward"] for r in rounds)
    print(
        json.dumps(
            {
                "images": n,
                "model": args.model,
                "device": str(encoder.device),
                "precision": encoder.resolved_precision,
                "torch_threads": torch.get_num_threads(),
                "workers": config.resolved_workers(encoder.device.type == "cuda"),
                "batch_size": args.batch_size,
                "pipeline_images_per_s": round(pipeline, 2),
                "forward_images_per_s": round(forward, 2),
                "ratio": round(pipeline / forward, 3),
                "image_tower": type(encoder.model.visual).__name__,
                "forward_torch_images_per_s": (
                    round(n / sum(r["images"] / r["torch"] for r in rounds), 2) if in_torch else None
                ),
                "ratio_per_round": [round(r, 3) for r in ratios],
                "decode_wait_s": round(sum(r["timings"]["decode_wait"] for r in rounds), 2),
                "decode_cpu_s": round(sum(r["timings"]["decode_cpu"] for r in rounds), 2),
                "embed_s": round(sum(r["timings"]["embed"] for r in rounds), 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
