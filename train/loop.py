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

from retrieval import Encoder, create_model
from retrieval.atomic import replacing
from retrieval.errors import TrainingError
from retrieval.index.store import writes_refused_as_errors
from retrieval.models.registry import ModelSpec

from .checkpoint import (
    Progress,
    check_resumable,
    checkpoint_path,
    clear_earlier_run,
    earlier_run,
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
from .optim import OptimSettings, WarmupCosine, build_optimizer, build_scheduler
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
    lines = [
        line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= after_step
    ]
    with replacing(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in lines))


def train(cfg: TrainConfig, ctx: DistContext | None = None) -> TrainResult:
    """Train as ``cfg`` says; the library entry point behind ``python -m train``."""
    owns_ctx = ctx is None
    ctx = ctx or init_distributed(cfg.device)
    threads_before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        with writes_refused_as_errors(
            f"the training run in {cfg.output_dir}",
            "checkpoints already written are intact; make room and go on with --resume latest",
            cfg.output_dir,
        ):
            return _train(cfg, ctx)
    finally:
        torch.set_num_threads(threads_before)
        if owns_ctx:
            shutdown_distributed(ctx)


@dataclass
class _Run:
    """Everything one training run holds, built once by :func:`_setup`."""

    cfg: TrainConfig
    ctx: DistContext
    encoder: Encoder
    model: torch.nn.Module  # what the forward goes through (DDP-wrapped when distributed)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    source: BatchSource
    steps_per_epoch: int
    total_steps: int
    progress: Progress
    log: _Logger
    val: ValSet | None
    meta: dict[str, Any]

    @property
    def raw(self) -> torch.nn.Module:
        return self.encoder.model

    @property
    def micro_per_epoch(self) -> int:
        """Micro-batches used per epoch (a tail shorter than --accum-steps is dropped)."""
        return self.steps_per_epoch * self.cfg.accum_steps

    def epochs_done(self) -> float:
        return round(self.progress.epoch + self.progress.micro_in_epoch / self.micro_per_epoch, 4)


def _setup(cfg: TrainConfig, ctx: DistContext) -> _Run:
    out = cfg.output_dir
    resume_from = resolve_resume(cfg.resume, out)
    earlier = earlier_run(out) if cfg.resume is None else []  # --resume latest with no checkpoint yet starts afresh
    if earlier and not cfg.overwrite:
        raise TrainingError(
            f"{out} already holds a training run ({', '.join(earlier)}); go on with it with --resume "
            "latest, start afresh there with --overwrite, or choose another --output"
        )
    seed_everything(cfg.seed)
    encoder = create_model(cfg.model, device=ctx.device, training=True)
    raw = encoder.model
    if cfg.lock_image:
        lock_image_tower(raw)
    source = build_source(cfg, encoder, ctx)
    steps_per_epoch = source.micro_per_epoch // cfg.accum_steps
    if steps_per_epoch < 1:
        raise TrainingError(
            f"an epoch holds {source.micro_per_epoch} micro-batches per process, fewer than --accum-steps "
            f"{cfg.accum_steps}; use more data or a smaller --batch-size"
        )
    total = cfg.steps if cfg.steps is not None else cfg.epochs * steps_per_epoch
    optimizer = build_optimizer(raw, OptimSettings(cfg.lr, cfg.wd, cfg.beta1, cfg.beta2, cfg.eps))
    scheduler = build_scheduler(optimizer, cfg.warmup, total)
    spec = ModelSpec.parse(cfg.model)

    progress = Progress()
    log = _Logger(out / "log.jsonl", ctx.is_main)
    if resume_from is not None:
        ckpt = load_checkpoint(resume_from)
        check_resumable(ckpt, resume_from, cfg.to_dict(), spec.arch)
        progress = restore(ckpt, raw, optimizer, scheduler)
        if progress.step >= total:
            raise TrainingError(
                f"{resume_from} is at step {progress.step}, and this launch trains {total} steps in all: "
                "nothing to train; raise --epochs or --steps to go on"
            )
        # The schedule's shape follows this launch's flags (so --steps can be extended).
        scheduler.lr_lambdas = [WarmupCosine(cfg.warmup, total) for _ in optimizer.param_groups]
    if ctx.is_main:  # only now, once the data, the model and the checkpoint are known to be good
        if earlier:
            clear_earlier_run(out)
        out.mkdir(parents=True, exist_ok=True)
        with replacing(out / "config.json") as tmp:
            tmp.write_text(json.dumps(cfg.to_dict(), indent=2))
        if resume_from is not None:
            _truncate_log(log.path, progress.step)
        elif log.path.exists():
            log.path.unlink()
    barrier(ctx)

    model: torch.nn.Module = raw
    if ctx.is_distributed:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [ctx.device] if ctx.device.type == "cuda" else None
        model = DistributedDataParallel(raw, device_ids=device_ids, find_unused_parameters=cfg.find_unused)
    meta = {"spec": str(spec), "arch": spec.arch, "config": cfg.to_dict()}
    return _Run(
        cfg,
        ctx,
        encoder,
        model,
        optimizer,
        scheduler,
        source,
        steps_per_epoch,
        total,
        progress,
        log,
        _val_set(cfg),
        meta,
    )


def _advance(run: _Run, skipped: int) -> None:
    p = run.progress
    p = replace(
        p,
        step=p.step + 1,
        micro_in_epoch=p.micro_in_epoch + run.cfg.accum_steps,
        skipped_images=p.skipped_images + skipped,
    )
    if p.micro_in_epoch >= run.micro_per_epoch:
        p = replace(p, epoch=p.epoch + 1, micro_in_epoch=0)
    run.progress = p


def _train(cfg: TrainConfig, ctx: DistContext) -> TrainResult:
    from tqdm import tqdm

    run = _setup(cfg, ctx)
    bar = tqdm(
        total=run.total_steps,
        initial=run.progress.step,
        desc="training",
        unit="step",
        disable=not (cfg.progress and ctx.is_main),
    )
    loss, seen, trained, t0 = float("nan"), 0, 0, time.perf_counter()
    set_train_mode(run.raw, cfg.lock_image)
    while run.progress.step < run.total_steps:
        batches = run.source.batches(run.progress.epoch, run.progress.micro_in_epoch)
        epoch = run.progress.epoch
        while run.progress.step < run.total_steps and run.progress.epoch == epoch:
            micro = [next(batches) for _ in range(cfg.accum_steps)]
            result = accumulate_gradients(run.model, micro, ctx, cfg.lock_image, cfg.precision)
            lr = run.optimizer.param_groups[0]["lr"]
            optimizer_step(run.raw, run.optimizer, run.scheduler, cfg.grad_clip)
            check_finite(result.loss, run.progress.step + 1)
            loss, seen, trained = result.loss, seen + result.samples, trained + result.samples
            _advance(run, int(all_reduce_sum(result.skipped, ctx)))
            step = run.progress.step
            temperature = float(run.raw.logit_scale.exp().item())
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", T=f"{temperature:.1f}")
            if step % max(1, cfg.log_every) == 0 or step == run.total_steps:
                now = time.perf_counter()
                run.log.write(
                    {
                        "kind": "train",
                        "step": step,
                        "epoch": run.epochs_done(),
                        "loss": loss,
                        "temperature": temperature,
                        "lr": lr,
                        "samples_per_s": seen / max(now - t0, 1e-9),
                        "skipped_images": run.progress.skipped_images,
                    }
                )
                seen, t0 = 0, now
            if step == run.total_steps:
                break
            if run.val is not None and cfg.eval_every and step % cfg.eval_every == 0:
                _evaluate(run)
                t0 = time.perf_counter()
            if cfg.save_every and step % cfg.save_every == 0:
                _save(run)
                t0 = time.perf_counter()
    bar.close()
    if int(all_reduce_sum(trained, ctx)) == 0:
        raise TrainingError(
            f"no image of the training data could be read ({run.progress.skipped_images} missing or "
            "undecodable): nothing was trained"
        )
    return _finish(run, loss)


def _finish(run: _Run, loss: float) -> TrainResult:
    if run.val is not None:
        _evaluate(run)
    _save(run)
    out = run.cfg.output_dir
    plot_path = None
    if run.ctx.is_main:
        export_model(out / "model.pt", run.raw, run.meta)
        plot_path = plot_curves(run.log.path, out / "curves.png")
    barrier(run.ctx)
    return TrainResult(
        steps=run.progress.step,
        loss=loss,
        skipped_images=run.progress.skipped_images,
        output_dir=out,
        model_path=out / "model.pt",
        log_path=run.log.path,
        plot_path=plot_path,
        last_eval=run.log.last_eval,
    )


def _val_set(cfg: TrainConfig) -> ValSet | None:
    if cfg.val_data is None:
        return None
    pairs = read_pairs(cfg.val_data, cfg.img_key, cfg.caption_key, cfg.image_root, cfg.split_key, cfg.val_split)
    return ValSet.from_pairs(pairs, cfg.max_val_images)


def _evaluate(run: _Run) -> None:
    if run.ctx.is_main and run.val is not None:
        scores = evaluate_recall(run.encoder, run.val)
        run.log.write({"kind": "val", "step": run.progress.step, "epoch": run.epochs_done(), **scores})
        set_train_mode(run.raw, run.cfg.lock_image)
    barrier(run.ctx)


def _save(run: _Run) -> None:
    if run.ctx.is_main:
        out = run.cfg.output_dir
        save_checkpoint(
            checkpoint_path(out, run.progress.step), run.raw, run.optimizer, run.scheduler, run.progress, run.meta
        )
        prune_checkpoints(out, run.cfg.keep_checkpoints)
    barrier(run.ctx)
