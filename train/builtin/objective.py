"""Contrastive objectives for the built-in model's tops."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from train.loss import MAX_LOGIT_SCALE, clip_loss

from .towers import normalized


def contrastive(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Symmetric InfoNCE over ``B`` images and ``B`` captions, one positive each: the CLIP loss, in fp32."""
    return clip_loss(img.float(), txt.float(), logit_scale, label_smoothing=smoothing)


def multi_positive(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor, smoothing: float) -> torch.Tensor:
    """InfoNCE with ``n`` captions per image: ``txt`` is ``[B * n, D]``, captions of image ``i`` at rows ``i*n .. i*n+n-1``.

    Image -> text spreads the target evenly over the image's ``n`` captions; text -> image is
    the usual one-positive cross-entropy (the images of a batch are distinct).
    """
    n = len(txt) // len(img)
    logits = logit_scale.clamp(max=MAX_LOGIT_SCALE).exp() * normalized(img) @ normalized(txt).t()
    owner = torch.arange(len(img)).repeat_interleave(n)
    target = torch.zeros_like(logits)
    target[owner, torch.arange(len(txt))] = 1.0 / n
    target = target * (1 - smoothing) + smoothing / logits.shape[1]
    i2t = -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
    t2i = F.cross_entropy(logits.t(), owner, label_smoothing=smoothing)
    return (i2t + t2i) / 2
