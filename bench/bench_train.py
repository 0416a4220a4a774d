"""Trainer throughput and learning on Flickr8k: a from-scratch small CLIP for a fixed number of steps.

Trains ``--model`` (default ``mini-clip``) on the first caption of ``--images`` Flickr8k train
images, evaluates held-out text->image / image->text recall on ``--val-images`` val images
(all five captions each), and prints a Markdown table (samples/s, loss, recall).

    nice -n 10 python bench/bench_train.py --steps 120 --threads 1
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from train.config import TrainConfig  # noqa: E402
from train.loop import train  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "flickr8k"


def write_subsets(folder: Path, n_train: int, n_val: int) -> tuple[Path, Path]:
    train_rows: dict[str, str] = {}
    val_rows: list[tuple[str, str]] = []
    val_images: set[str] = set()
    with open(DATA / "pairs.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["split"] == "train" and len(train_rows) < n_train:
                train_rows.setdefault(row["image"], row["caption"])
            elif row["split"] == "val" and (row["image"] in val_images or len(val_images) < n_val):
                val_images.add(row["image"])
                val_rows.append((row["image"], row["caption"]))
    paths = folder / "train.csv", folder / "val.csv"
    for path, rows in zip(paths, (list(train_rows.items()), val_rows)):
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "caption"])
            writer.writerows(rows)
    return paths


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="mini-clip")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--val-images", type=int, default=500)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--out", default=None, help="append a JSON line here")
    args = ap.parse_args()
    if not (DATA / "pairs.csv").is_file():
        print(f"Flickr8k not found at {DATA}", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        train_csv, val_csv = write_subsets(Path(tmp), args.images, args.val_images)
        cfg = TrainConfig(
            model=args.model,
            train_data=str(train_csv),
            val_data=str(val_csv),
            image_root=str(DATA / "images"),
            output=str(Path(tmp) / "run"),
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            warmup=max(1, args.steps // 20),
            log_every=1,
            threads=args.threads,
            workers=args.workers,
            max_val_images=args.val_images,
            progress=True,
        ).validate()
        start = time.perf_counter()
        result = train(cfg)
        wall = time.perf_counter() - start
        records = [json.loads(line) for line in result.log_path.read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    speed = sorted(r["samples_per_s"] for r in records if r["kind"] == "train")
    ev = result.last_eval or {}
    row = {
        "model": args.model,
        "train_images": args.images,
        "val_images": args.val_images,
        "steps": args.steps,
        "batch": args.batch_size,
        "threads": args.threads,
        "wall_s": round(wall, 1),
        "samples_per_s_median": round(speed[len(speed) // 2], 1),
        "loss_first10": round(sum(losses[:10]) / 10, 3),
        "loss_last10": round(sum(losses[-10:]) / 10, 3),
        **{k: round(v, 2) for k, v in sorted(ev.items())},
    }
    print("| " + " | ".join(row) + " |")
    print("|" + "---|" * len(row))
    print("| " + " | ".join(str(v) for v in row.values()) + " |")
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
