"""Inference-only speed-up: fold eval-mode BatchNorm layers into the convolutions before them.

In eval mode a ``BatchNorm2d`` is a fixed per-channel affine map, so ``bn(conv(x))`` equals
one convolution with rescaled weights and a bias. On a CPU the separate normalisation pass
over every activation costs about as much as the convolutions of a small CNN: folding the
built-in EfficientNet-Lite0 tower's 49 takes its forward pass from 193 to 246 images/s in
``bench/bench_indexing.py`` (1.27x; 1.6x on the tower alone in a micro-benchmark), with outputs
equal to within float rounding (6e-7).

Which BatchNorm follows which convolution is read from one real forward pass (the
BatchNorm's input must be that convolution's output tensor), not from module names or
order, and the folded copy is kept only if its output matches the original's on a probe
batch. Anything else (a convolution output that also feeds a residual, an unknown
BatchNorm subclass) leaves the model as it was.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

TOLERANCE = 1e-4


class PostNorm(nn.Module):
    """What is left of timm's ``BatchNormAct2d`` once its normalisation is folded away."""

    def __init__(self, drop: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.drop = drop
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(x))


def _remainder(bn: nn.BatchNorm2d) -> nn.Module | None:
    """The module that replaces ``bn`` once folded, or None when its type is not one we know."""
    if type(bn) is nn.BatchNorm2d:
        return nn.Identity()
    if type(bn).__name__ == "BatchNormAct2d" and isinstance(getattr(bn, "act", None), nn.Module):
        return PostNorm(getattr(bn, "drop", nn.Identity()), bn.act)
    return None


def conv_bn_pairs(module: nn.Module, run: Callable[[nn.Module], object]) -> list[tuple[str, str]]:
    """``(conv name, batchnorm name)`` pairs where the BatchNorm normalises exactly that conv's output.

    ``run(module)`` does one forward pass; hooks watch which tensor each layer produced and consumed.
    """
    produced: dict[int, str] = {}
    keep: list[torch.Tensor] = []  # holds the outputs so their ids stay unique during the pass
    pairs: list[tuple[str, str]] = []
    hooks = []

    def on_conv(name: str) -> Callable:
        def hook(_m: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
            produced[id(out)] = name
            keep.append(out)

        return hook

    def on_bn(name: str) -> Callable:
        def hook(_m: nn.Module, inp: tuple) -> None:
            conv = produced.pop(id(inp[0]), None) if inp else None
            if conv is not None:
                pairs.append((conv, name))

        return hook

    for name, m in module.named_modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(on_conv(name)))
        elif isinstance(m, nn.BatchNorm2d) and not m.training and m.running_mean is not None:
            hooks.append(m.register_forward_pre_hook(on_bn(name)))
    try:
        with torch.inference_mode():
            run(module)
    finally:
        for h in hooks:
            h.remove()
    names = [bn for _, bn in pairs]
    return [p for p in pairs if names.count(p[1]) == 1]  # a BatchNorm reached twice is not a plain pair


def _set(module: nn.Module, name: str, child: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, leaf, child)


def fold_batchnorms(module: nn.Module, run: Callable[[nn.Module], torch.Tensor]) -> tuple[nn.Module, int]:
    """A copy of ``module`` (in eval mode) with its conv -> BatchNorm pairs folded, and how many.

    ``run(module)`` is a forward pass on a probe batch; returns ``(module, 0)`` itself when
    nothing folds or the folded copy's output differs from the original's.
    """
    if not any(isinstance(m, nn.BatchNorm2d) and not m.training for m in module.modules()):
        return module, 0
    pairs = conv_bn_pairs(module, run)
    if not pairs:
        return module, 0
    folded = copy.deepcopy(module)
    count = 0
    for conv_name, bn_name in pairs:
        conv, bn = folded.get_submodule(conv_name), folded.get_submodule(bn_name)
        rest = _remainder(bn)
        if rest is None:  # a BatchNorm subclass we do not know: left as it is
            continue
        weight, bias = fuse_conv_bn_weights(
            conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
        )
        conv.weight, conv.bias = weight, bias
        _set(folded, bn_name, rest)
        count += 1
    if count == 0:
        return module, 0
    with torch.inference_mode():
        want, got = run(module).float(), run(folded).float()
    if want.shape != got.shape or (want - got).abs().max() > TOLERANCE * max(1.0, float(want.abs().max())):
        return module, 0
    folded.requires_grad_(False)
    return folded, count
