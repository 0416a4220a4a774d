"""The CLIP objective: symmetric InfoNCE over the N x N image-text similarity matrix."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

INIT_LOGIT_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = math.log(100.0)


def clip_loss(
    image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Mean of the row-wise and column-wise cross-entropy of ``exp(t) * I @ T.T``.

    Features are L2-normalised here; ``logit_scale`` is the learnable log-temperature ``t``,
    clamped so that ``exp(t) <= 100``. Row i of each side is the positive pair of the other's row i.
    ``label_smoothing`` is cross-entropy's (the built-in recipe uses 0.1).
    """
    image_features = F.normalize(image_features, dim=-1)
    text_features = F.normalize(text_features, dim=-1)
    scale = logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
    logits = scale * image_features @ text_features.t()
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (
        F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
        + F.cross_entropy(logits.t(), labels, label_smoothing=label_smoothing)
    ) / 2
