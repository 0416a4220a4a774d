"""Smoke test required by the issue: a tiny CLIP trained from scratch on Flickr8k must learn.

A few hundred training pairs at 32 px for about a minute on a small CPU: the loss must fall
clearly and text->image recall on the training pairs must be well above chance.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from train.config import TrainConfig
from train.loop import train

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k"
N_IMAGES = 384


@pytest.mark.slow
@pytest.mark.data
@pytest.mark.timeout(600)
@pytest.mark.skipif(not (DATA / "pairs.csv").is_file(), reason="Flickr8k not present in ../shared/data")
def test_tiny_clip_learns_flickr8k_from_scratch(tmp_path):
    first_caption: dict[str, str] = {}
    with open(DATA / "pairs.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["split"] == "train" and row["image"] not in first_caption:
                first_caption[row["image"]] = row["caption"]
            if len(first_caption) == N_IMAGES:
                break
    subset = tmp_path / "pairs.csv"
    with open(subset, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        writer.writerows(first_caption.items())

    cfg = TrainConfig(
        model="mini-clip",
        train_data=str(subset),
        val_data=str(subset),
        image_root=str(DATA / "images"),
        output=str(tmp_path / "run"),
        epochs=10,
        batch_size=64,
        lr=2e-3,
        warmup=6,
        wd=0.1,
        log_every=1,
        eval_every=30,
        progress=False,
        device="cpu",
        threads=1,
        max_val_images=N_IMAGES,
    ).validate()
    result = train(cfg)

    records = [json.loads(line) for line in result.log_path.read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert len(losses) == 60
    early, late = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert late < 0.75 * early, (early, late)
    chance_at_10 = 100.0 * 10 / N_IMAGES
    assert result.last_eval is not None
    assert result.last_eval["t2i_R@10"] > 3 * chance_at_10, result.last_eval
    assert result.last_eval["i2t_R@10"] > 3 * chance_at_10, result.last_eval
    assert result.plot_path is not None and result.plot_path.stat().st_size > 10_000
