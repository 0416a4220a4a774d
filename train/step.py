"""One optimizer step: forward/backward over ``accum_steps`` micro-batches, then update.

Gradient accumulation sums the gradients of the per-micro-batch losses divided by the
number of micro-batches, so the step follows the *mean micro-batch loss*. Each micro-batch's
loss uses only its own (globally gathered) negatives; accumulation grows the number of
samples per update, not the similarity matrix.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from retrieval.errors import TrainingError

from .data import Batch
from .distributed import DistContext, global_clip_loss, global_count
from .loss import MAX_LOGIT_SCALE


@dataclass(frozen=True)
class StepResult:
    loss: float
    samples: int  # global samples that contributed
    skipped: int  # local samples dropped as undecodable


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on GPU (``auto``/``bf16``) or on CPU when asked (``bf16``); fp32 otherwise."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _features(model: torch.nn.Module, batch: Batch, locked_image: bool, device: torch.device):
    texts = batch.texts.to(device, non_blocking=True)
    if locked_image:
        out = model(None, texts)
        image_features = batch.images.to(device, non_blocking=True)
    else:
        out = model(batch.images.to(device, non_blocking=True), texts)
    if isinstance(out, dict):
        image_out, text_features, scale = out["image_features"], out["text_features"], out["logit_scale"]
    else:
        image_out, text_features, scale = out[0], out[1], out[2]
    return (image_features if locked_image else image_out), text_features, scale


def _share_scale(log_scale: torch.Tensor, world_size: int) -> torch.Tensor:
    """The same value, with 1/world_size of the gradient.

    Every process computes the whole global loss, so each one sees the full gradient of the
    temperature; after DDP averages the ``world_size``-scaled losses, this factor makes the
    temperature's gradient the single-process one, like the feature gradients.
    """
    if world_size == 1:
        return log_scale
    return log_scale.detach() + (log_scale - log_scale.detach()) / world_size


def accumulate_gradients(
    model: torch.nn.Module,
    batches: Sequence[Batch],
    ctx: DistContext,
    locked_image: bool = False,
    precision: str = "auto",
) -> StepResult:
    """Forward and backward every micro-batch; gradients end up in ``.grad`` (DDP-synced on the last)."""
    no_sync = getattr(model, "no_sync", None)
    total, samples, skipped = 0.0, 0, 0
    for i, batch in enumerate(batches):
        skipped += batch.skipped
        n_global, n_min = global_count(len(batch), ctx)
        if n_min == 0:
            if ctx.is_distributed:  # every process raises together; an empty forward is not possible
                raise TrainingError("every image of a micro-batch failed to decode on some process; clean the data set")
            continue
        last = i == len(batches) - 1
        sync = contextlib.nullcontext() if (last or no_sync is None) else no_sync()
        with sync:
            with autocast_for(ctx.device, precision):
                image_features, text_features, scale = _features(model, batch, locked_image, ctx.device)
            log_scale = _share_scale(torch.log(scale.float()), ctx.world_size)
            loss = global_clip_loss(image_features, text_features, log_scale, ctx)
            (loss * ctx.world_size / len(batches)).backward()
        total += loss.item() / len(batches)
        samples += n_global
    return StepResult(loss=total, samples=samples, skipped=skipped)


def optimizer_step(
    raw_model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    grad_clip: float | None = None,
) -> None:
    """Clip (optionally), update, advance the schedule, keep ``exp(t) <= 100``."""
    if grad_clip is not None:
        params = [p for g in optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    with torch.no_grad():
        raw_model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)


def check_finite(loss: float, step: int) -> None:
    if not math.isfinite(loss):
        raise TrainingError(f"loss became {loss} at step {step}; lower --lr or add --grad-clip")
