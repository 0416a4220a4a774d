"""Training configuration: every knob in one frozen dataclass, parsed once from the command line."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retrieval.errors import TrainingError


@dataclass(frozen=True)
class TrainConfig:
    """What to train, on what, and how.

    ``batch_size`` is the per-process micro-batch. One optimizer step consumes
    ``accum_steps`` micro-batches on each of the ``world_size`` processes, so the samples per
    step are ``batch_size * accum_steps * world_size``. Contrastive negatives come from the
    micro-batch gathered over all processes (``batch_size * world_size``), not from the
    accumulated batch: gradient accumulation averages per-micro-batch losses.
    """

    model: str
    train_data: str
    output: str
    val_data: str | None = None
    image_root: str | None = None
    img_key: str = "image"
    caption_key: str = "caption"
    split_key: str = "split"
    train_split: str | None = None
    val_split: str | None = None
    max_train_samples: int | None = None
    max_val_images: int = 1000
    train_num_samples: int | None = None  # WebDataset only: samples per epoch
    epochs: int = 1
    steps: int | None = None
    batch_size: int = 64
    accum_steps: int = 1
    lr: float = 5e-4
    wd: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    warmup: int = 0
    grad_clip: float | None = None
    lock_image: bool = False
    feature_cache: str | None = None
    augment: bool = True
    precision: str = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU (bf16 training of whole towers on a CPU is not measured); or "bf16" / "fp32"
    workers: int = 0
    find_unused: bool = False  # DDP: towers with parameters the loss never reaches (e.g. an unused pooler)
    threads: int | None = None  # torch intra-op threads for this run (1 is fastest on a busy small CPU)
    seed: int = 0
    save_every: int = 0
    keep_checkpoints: int = 3
    eval_every: int = 0
    log_every: int = 10
    resume: str | None = None
    overwrite: bool = False
    device: str | None = None
    progress: bool = True

    @property
    def output_dir(self) -> Path:
        return Path(self.output)

    @property
    def is_webdataset(self) -> bool:
        return _is_tar_spec(self.train_data)

    def validate(self) -> TrainConfig:
        if self.batch_size < 1 or self.accum_steps < 1:
            raise TrainingError("--batch-size and --accum-steps must be at least 1")
        if self.steps is None and self.epochs < 1:
            raise TrainingError("give --epochs >= 1 or --steps")
        if self.steps is not None and self.steps < 1:
            raise TrainingError("--steps must be at least 1")
        if self.lr < 0 or self.wd < 0 or self.warmup < 0 or self.eps <= 0:
            raise TrainingError("--lr, --wd and --warmup cannot be negative, and --eps must be above 0")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise TrainingError("--beta1 and --beta2 must be in [0, 1)")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise TrainingError("--grad-clip must be above 0")
        if self.precision not in {"auto", "bf16", "fp32"}:
            raise TrainingError(f"--precision must be auto, bf16 or fp32, not {self.precision!r}")
        if self.is_webdataset and self.steps is None and self.train_num_samples is None:
            raise TrainingError("WebDataset training needs --steps or --train-num-samples (shards have no length)")
        if not self.is_webdataset and not Path(self.train_data).exists():
            raise TrainingError(f"training data not found: {self.train_data}")
        if self.val_data is not None and not Path(self.val_data).exists():
            raise TrainingError(f"validation data not found: {self.val_data}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _is_tar_spec(spec: str) -> bool:
    return (
        spec.endswith(".tar")
        or (".tar" in spec and "{" in spec)
        or Path(spec).is_dir()
        and any(Path(spec).glob("*.tar"))
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train", description="Contrastive (CLIP) training.")
    d = TrainConfig
    p.add_argument(
        "--model", required=True, help="model spec for retrieval.create_model, e.g. mini-clip or ViT-B-32:random"
    )
    p.add_argument(
        "--train-data", required=True, help="pairs .csv/.parquet, or WebDataset shards (a.tar, dir/, s-{000..009}.tar)"
    )
    p.add_argument("--val-data", default=None, help="held-out pairs .csv/.parquet for recall@K")
    p.add_argument("--output", required=True, help="run directory: checkpoints, log.jsonl, curves.png, model.pt")
    p.add_argument(
        "--image-root",
        default=None,
        help="relative image paths resolve against this (default: the data file's folder, or its images/ "
        "subfolder when the images are there)",
    )
    p.add_argument("--csv-img-key", dest="img_key", default=d.img_key)
    p.add_argument("--csv-caption-key", dest="caption_key", default=d.caption_key)
    p.add_argument("--csv-split-key", dest="split_key", default=d.split_key)
    p.add_argument("--train-split", default=None, help="keep only rows whose split column equals this")
    p.add_argument("--val-split", default=None)
    p.add_argument("--max-train-samples", type=int, default=None)
    p.add_argument("--max-val-images", type=int, default=d.max_val_images)
    p.add_argument("--train-num-samples", type=int, default=None, help="WebDataset: samples per epoch")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="per-process micro-batch")
    p.add_argument("--accum-steps", type=int, default=d.accum_steps)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--wd", type=float, default=d.wd)
    p.add_argument("--beta1", type=float, default=d.beta1)
    p.add_argument("--beta2", type=float, default=d.beta2)
    p.add_argument("--eps", type=float, default=d.eps)
    p.add_argument("--warmup", type=int, default=d.warmup, help="linear warmup steps, then cosine decay")
    p.add_argument("--grad-clip", type=float, default=None)
    p.add_argument("--lock-image", action="store_true", help="LiT: freeze the image tower and cache its features")
    p.add_argument(
        "--feature-cache", default=None, help="folder for cached image features (default: OUTPUT/feature_cache)"
    )
    p.add_argument(
        "--no-augment", dest="augment", action="store_false", help="eval transform instead of random resized crop"
    )
    p.add_argument("--precision", default=d.precision, choices=["auto", "bf16", "fp32"])
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument(
        "--ddp-find-unused",
        dest="find_unused",
        action="store_true",
        help="DDP: allow parameters that get no gradient (e.g. a text model's unused pooler)",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads during the run (default: torch's choice)"
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--save-every", type=int, default=d.save_every, help="checkpoint every N steps (0: only at the end)")
    p.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints)
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="validation every N steps (0: only at the end)")
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument(
        "--resume",
        default=None,
        help="checkpoint path, or 'latest': the newest in OUTPUT/checkpoints (a fresh start when there is none)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start afresh in an OUTPUT that holds an earlier run, deleting its checkpoints, log and model "
        "(without it such an OUTPUT is refused unless resumed)",
    )
    p.add_argument("--device", default=None)
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def option_name(field: str) -> str:
    """The command-line flag that sets ``field`` (``batch_size`` -> ``--batch-size``)."""
    for action in build_parser()._actions:
        if action.dest == field and action.option_strings:
            return action.option_strings[0]
    return "--" + field.replace("_", "-")


def parse_config(argv: Sequence[str] | None = None) -> TrainConfig:
    """Parse command-line flags into a validated :class:`TrainConfig`."""
    ns = build_parser().parse_args(argv)
    return TrainConfig(**vars(ns)).validate()
