"""The training run: build everything from a :class:`TrainConfig`, loop, log, evaluate, save.

Run directory layout::

    OUTPUT/config.json             the options of the (last) launch
    OUTPUT/log.jsonl               one line per logging step ("kind": "train") and evaluation ("val")
    OUTPUT/checkpoints/step_N.pt   resumable checkpoints (every --save-every steps and at the end)
    OUTPUT/model.pt                final weights, ``create_model("ARCH:OUTPUT/model.pt")``
    OUTPUT/curves.png              loss and validation recall
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retrieval import create_model
from retrieval.registry import ModelSpec

from .checkpoint import (
    Progress,
    checkpoint_path,
    export_model,
    load_checkpoint,
    prune_checkpoints,
    resolve_resume,
    restore,
    save_checkpoint,
)
from .config import TrainConfig
from .data import read_pairs
from .distributed import DistContext, all_reduce_sum, barrier, init_distributed, shutdown_distributed
from .optim import OptimSettings, build_optimizer, build_scheduler
from .plot import plot_curves
from .sources import BatchSource, build_source
from .step import accumulate_gradients, check_finite, optimizer_step
from .validate import ValSet, evaluate_recall


@dataclass(frozen=True)
class TrainResult:
    steps: int
    loss: float
    skipped_images: int
    output_dir: Path
    model_path: Path
    log_path: Path
    plot_path: Path | None
    last_eval: dict[str, float] | None


def set_train_mode(model: torch.nn.Module, lock_image: bool) -> None:
    model.train()
    if lock_image:
        model.visual.eval()


def lock_image_tower(model: torch.nn.Module) -> None:
    """LiT: the whole image tower (trunk and projection) is frozen; its outputs come from the cache."""
    for p in model.visual.parameters():
        p.requires_grad_(False)
    model.visual.eval()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


class _Logger:
    """Appends JSONL records (main process only) and remembers the last evaluation."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled
        self.last_eval: dict[str, float] | None = None

    def write(self, record: dict[str, Any]) -> None:
        if record.get("kind") == "val":
            self.last_eval = {k: v for k, v in record.items() if "@" in k}
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def _truncate_log(path: Path, after_step: int) -> None:
    """On resume, drop log lines from steps the resumed run will redo."""
    if not path.is_file():
        return
    lines = [l for l in path.read_text().splitlines() if l.strip() and json.loads(l).get("step", 0) <= after_step]
    path.write_text("".join(l + "\n" for l in lines))


def train(cfg: TrainConfig, ctx: DistContext | None = None) -> TrainResult:
    """Train as ``cfg`` says; the library entry point behind ``python -m train``."""
    owns_ctx = ctx is None
    ctx = ctx or init_distributed(cfg.device)
    threads_before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, ctx)
    finally:
        torch.set_num_threads(threads_before)
        if owns_ctx:
            shutdown_distributed(ctx)


def _train(cfg: TrainConfig, ctx: DistContext) -> TrainResult:
    out = cfg.output_dir
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    seed_everything(cfg.seed)
    encoder = create_model(cfg.model, device=ctx.device)
    raw = encoder.model
    if cfg.lock_image:
        lock_image_tower(raw)
    source: BatchSource = build_source(cfg, encoder, ctx)
    steps_per_epoch = source.micro_per_epoch // cfg.accum_steps
    total = cfg.steps if cfg.steps is not None else cfg.epochs * steps_per_epoch
    if steps_per_epoch < 1:
        from retrieval.errors import TrainingError

        raise TrainingError(
            f"an epoch holds {source.micro_per_epoch} micro-batches, fewer than --accum-steps {cfg.accum_steps}; "
            "use more data or a smaller --batch-size"
        )
    optimizer = build_optimizer(raw, OptimSettings(cfg.lr, cfg.wd, cfg.beta1, cfg.beta2, cfg.eps))
    scheduler = build_scheduler(optimizer, cfg.warmup, total)

    progress = Progress()
    resume_from = resolve_resume(cfg.resume, out)
    log = _Logger(out / "log.jsonl", ctx.is_main)
    if resume_from is not None:
        progress = restore(load_checkpoint(resume_from), raw, optimizer, scheduler)
        if ctx.is_main:
            _truncate_log(log.path, progress.step)
    elif ctx.is_main and log.path.exists():
        log.path.unlink()
    barrier(ctx)

    model: torch.nn.Module = raw
    if ctx.distributed:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [ctx.device] if ctx.device.type == "cuda" else None
        model = DistributedDataParallel(raw, device_ids=device_ids, find_unused_parameters=True)
    val = _val_set(cfg)
    meta = {"spec": str(ModelSpec.parse(cfg.model)), "arch": ModelSpec.parse(cfg.model).arch, "config": cfg.to_dict()}

    from tqdm import tqdm

    bar = tqdm(total=total, initial=progress.step, desc="training", unit="step", disable=not (cfg.progress and ctx.is_main))
    skipped, loss, seen, t0 = 0, float("nan"), 0, time.perf_counter()
    set_train_mode(raw, cfg.lock_image)
    while progress.step < total:
        batches = source.batches(progress.epoch, progress.micro_in_epoch)
        while progress.step < total and progress.micro_in_epoch + cfg.accum_steps <= steps_per_epoch * cfg.accum_steps:
            micro = [next(batches) for _ in range(cfg.accum_steps)]
            result = accumulate_gradients(model, micro, ctx, cfg.lock_image, cfg.precision)
            lr = optimizer.param_groups[0]["lr"]
            optimizer_step(raw, optimizer, scheduler, cfg.grad_clip)
            loss, seen = result.loss, seen + result.samples
            skipped += int(all_reduce_sum(result.skipped, ctx))
            check_finite(loss, progress.step + 1)
            progress = replace(progress, step=progress.step + 1, micro_in_epoch=progress.micro_in_epoch + cfg.accum_steps)
            if progress.micro_in_epoch >= steps_per_epoch * cfg.accum_steps:
                progress = Progress(step=progress.step, epoch=progress.epoch + 1, micro_in_epoch=0)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", T=f"{raw.logit_scale.exp().item():.1f}")
            if progress.step % max(1, cfg.log_every) == 0 or progress.step == total:
                now = time.perf_counter()
                log.write(
                    {
                        "kind": "train",
                        "step": progress.step,
                        "epoch": progress.epoch,
                        "loss": loss,
                        "temperature": float(raw.logit_scale.exp().item()),
                        "lr": lr,
                        "samples_per_s": seen / max(now - t0, 1e-9),
                        "skipped_images": skipped,
                    }
                )
                seen, t0 = 0, now
            if val is not None and cfg.eval_every and progress.step % cfg.eval_every == 0 and progress.step != total:
                _evaluate(encoder, val, progress, log, ctx, cfg)
            if cfg.save_every and progress.step % cfg.save_every == 0 and progress.step != total:
                _save(out, raw, optimizer, scheduler, progress, meta, cfg, ctx)
            if progress.micro_in_epoch == 0:
                break
    bar.close()
    if val is not None:
        _evaluate(encoder, val, progress, log, ctx, cfg)
    _save(out, raw, optimizer, scheduler, progress, meta, cfg, ctx)
    plot_path = None
    if ctx.is_main:
        export_model(out / "model.pt", raw, meta)
        plot_path = plot_curves(log.path, out / "curves.png")
    barrier(ctx)
    return TrainResult(
        steps=progress.step,
        loss=loss,
        skipped_images=skipped,
        output_dir=out,
        model_path=out / "model.pt",
        log_path=log.path,
        plot_path=plot_path,
        last_eval=log.last_eval,
    )


def _val_set(cfg: TrainConfig) -> ValSet | None:
    if cfg.val_data is None:
        return None
    pairs = read_pairs(cfg.val_data, cfg.img_key, cfg.caption_key, cfg.image_root, cfg.split_key, cfg.val_split)
    return ValSet.from_pairs(pairs, cfg.max_val_images)


def _evaluate(encoder, val: ValSet, progress: Progress, log: _Logger, ctx: DistContext, cfg: TrainConfig) -> None:
    if ctx.is_main:
        scores = evaluate_recall(encoder, val)
        log.write({"kind": "val", "step": progress.step, "epoch": progress.epoch, **scores})
        set_train_mode(encoder.model, cfg.lock_image)
    barrier(ctx)


def _save(out: Path, raw, optimizer, scheduler, progress: Progress, meta: dict, cfg: TrainConfig, ctx: DistContext) -> None:
    if ctx.is_main:
        save_checkpoint(checkpoint_path(out, progress.step), raw, optimizer, scheduler, progress, meta)
        prune_checkpoints(out, cfg.keep_checkpoints)
    barrier(ctx)
