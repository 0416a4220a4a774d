"""Data-parallel training: process group setup and the all-gather behind a global-batch loss.

Each process computes the *global* CLIP loss over the features gathered from every process,
with its own slice replaced by its local (differentiable) features. Its gradient is then the
part of the global gradient that flows through its own samples; DDP *averages* gradients over
processes, so the loss is multiplied by ``world_size`` before ``backward`` and the averaged
result equals the single-process gradient of the same global batch.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.distributed as dist

from retrieval.models.encoder import select_device
from retrieval.ranks import DistContext, detect

from .loss import clip_loss


def init_distributed(device: str | None = None) -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment, or run alone."""
    ctx = detect()
    chosen = select_device(device)
    if not ctx.is_distributed:
        return replace(ctx, device=chosen)
    if chosen.type == "cuda":
        chosen = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(chosen)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
    return replace(ctx, device=chosen)


def shutdown_distributed(ctx: DistContext) -> None:
    if ctx.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.is_distributed:
        dist.barrier()


def gather_with_local_grad(local: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Concatenate every process's rows (sizes may differ); only this process's rows carry grad."""
    if not ctx.is_distributed:
        return local
    size = torch.tensor([local.shape[0]], device=local.device)
    sizes = [torch.zeros_like(size) for _ in range(ctx.world_size)]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    longest = max(counts)
    padded = local.detach().new_zeros((longest, *local.shape[1:]))
    padded[: local.shape[0]] = local.detach()
    parts = [torch.zeros_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(parts, padded)
    pieces = [p[:c] for p, c in zip(parts, counts)]
    pieces[ctx.rank] = local
    return torch.cat(pieces)


def global_count(n: int, ctx: DistContext) -> tuple[int, int]:
    """Sum and minimum of ``n`` over processes, so every process takes the same decision on empty batches."""
    if not ctx.is_distributed:
        return n, n
    total = torch.tensor([n], device=ctx.device)
    smallest = torch.tensor([n], device=ctx.device)
    dist.all_reduce(total)
    dist.all_reduce(smallest, op=dist.ReduceOp.MIN)
    return int(total.item()), int(smallest.item())


def global_clip_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor, ctx: DistContext
) -> torch.Tensor:
    """CLIP loss of the global micro-batch (negatives from every process), same value on every process."""
    all_images = gather_with_local_grad(image_features.float(), ctx)
    all_texts = gather_with_local_grad(text_features.float(), ctx)
    return clip_loss(all_images, all_texts, logit_scale)


def all_reduce_sum(value: float, ctx: DistContext) -> float:
    if not ctx.is_distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return float(t.item())
