"""AdamW with decay only on weight matrices, and a linear-warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class OptimSettings:
    lr: float
    wd: float
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6


def exclude_from_decay(name: str, param: torch.nn.Parameter) -> bool:
    """Norm weights, biases and the temperature (all below 2-D), and the logit scale/bias by name."""
    return param.ndim < 2 or name.rsplit(".", 1)[-1] in {"logit_scale", "logit_bias"}


def param_groups(model: torch.nn.Module, wd: float) -> list[dict]:
    """Two AdamW groups over the trainable parameters: with and without weight decay."""
    decay, no_decay = [], []
    decay_names, no_decay_names = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if exclude_from_decay(name, p):
            no_decay.append(p)
            no_decay_names.append(name)
        else:
            decay.append(p)
            decay_names.append(name)
    return [
        {"params": no_decay, "weight_decay": 0.0, "names": no_decay_names},
        {"params": decay, "weight_decay": wd, "names": decay_names},
    ]


def build_optimizer(model: torch.nn.Module, settings: OptimSettings) -> torch.optim.AdamW:
    groups = param_groups(model, settings.wd)
    return torch.optim.AdamW(groups, lr=settings.lr, betas=(settings.beta1, settings.beta2), eps=settings.eps)


@dataclass(frozen=True)
class WarmupCosine:
    """Multiplier of the base lr at ``step``: linear 1/W..1 over ``warmup`` steps, then cosine to 0 at ``total``.

    A picklable callable, so the scheduler's state dict can be saved and restored.
    """

    warmup: int
    total: int

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        decay_steps = max(1, self.total - self.warmup)
        progress = min(1.0, (step - self.warmup) / decay_steps)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warmup, total))
