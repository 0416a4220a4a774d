"""Held-out retrieval recall during training: text->image and image->text R@1/5/10 (percent).

Scoring is :mod:`train.metrics` (Karpathy protocol); this module only embeds the held-out
pairs with the weights being trained.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from retrieval.models.encoder import Encoder, embed_files

from .data import PairTable
from .metrics import recall_at_k

KS = (1, 5, 10)


@dataclass(frozen=True)
class ValSet:
    """Gallery images and their captions; ``caption_image[j]`` is the gallery row of caption ``j``."""

    images: list[str]
    captions: list[str]
    caption_image: np.ndarray

    @classmethod
    def from_pairs(cls, pairs: PairTable, max_images: int | None = None) -> ValSet:
        images = pairs.unique_images()[: max_images or None]
        row = {p: i for i, p in enumerate(images)}
        keep = [(c, row[p]) for p, c in zip(pairs.images, pairs.captions) if p in row]
        return cls(images=images, captions=[c for c, _ in keep], caption_image=np.array([r for _, r in keep], np.int64))


def recall_scores(image_emb: np.ndarray, text_emb: np.ndarray, caption_image: np.ndarray) -> dict[str, float]:
    """Flat ``t2i_R@K`` / ``i2t_R@K`` percentages, as logged, from :func:`train.metrics.recall_at_k`."""
    scores = recall_at_k(image_emb, text_emb, caption_image, KS)
    flat = {f"t2i_{k}": v for k, v in scores.text_to_image.items()}
    flat.update({f"i2t_{k}": v for k, v in scores.image_to_text.items()})
    return flat


def evaluate_recall(encoder: Encoder, val: ValSet, batch_size: int = 64) -> dict[str, float]:
    """Embed the validation set with the encoder's current weights (eval mode) and score it."""
    model = encoder.model
    was_training = model.training
    model.eval()
    try:
        image_emb, decoded = embed_files(encoder, val.images, batch_size=batch_size)
        ok = np.flatnonzero(decoded)
        remap = np.full(len(val.images), -1)
        remap[ok] = np.arange(len(ok))
        keep = remap[val.caption_image] >= 0
        with torch.no_grad():
            text_emb = encoder.encode_texts([c for c, k in zip(val.captions, keep) if k], batch_size=256)
        return recall_scores(image_emb, text_emb, remap[val.caption_image][keep])
    finally:
        model.train(was_training)
