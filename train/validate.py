"""Held-out retrieval recall during training: text->image and image->text R@1/5/10.

Karpathy protocol: each image is one gallery item with several captions; a caption is a hit
at K when its image is in the top K, an image is a hit when any of its captions is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from retrieval.encoder import Encoder
from retrieval.errors import ImageDecodeError
from retrieval.imageio import load_image

from .data import PairTable

KS = (1, 5, 10)


@dataclass(frozen=True)
class ValSet:
    """Gallery images and their captions; ``caption_image[j]`` is the gallery row of caption ``j``."""

    images: list[str]
    captions: list[str]
    caption_image: np.ndarray

    @classmethod
    def from_pairs(cls, pairs: PairTable, max_images: int | None = None) -> "ValSet":
        images = pairs.unique_images()[: max_images or None]
        row = {p: i for i, p in enumerate(images)}
        keep = [(c, row[p]) for p, c in zip(pairs.images, pairs.captions) if p in row]
        return cls(images=images, captions=[c for c, _ in keep], caption_image=np.array([r for _, r in keep], np.int64))


def recall_at_k(
    image_emb: np.ndarray, text_emb: np.ndarray, caption_image: np.ndarray, ks: tuple[int, ...] = KS
) -> dict[str, float]:
    """``t2i_R@K`` and ``i2t_R@K`` (fractions in [0, 1]) from unit-length embeddings."""
    sims = text_emb @ image_emb.T  # [captions, images]
    order = np.argsort(-sims, axis=1, kind="stable")
    t2i_rank = np.argmax(order == caption_image[:, None], axis=1)
    i2t_rank = np.full(len(image_emb), np.iinfo(np.int64).max)
    text_order = np.argsort(-sims.T, axis=1, kind="stable")  # [images, captions]
    ranks_of_caption = np.empty_like(text_order)
    rows = np.arange(len(image_emb))[:, None]
    ranks_of_caption[rows, text_order] = np.arange(text_order.shape[1])[None, :]
    for j, img in enumerate(caption_image):
        i2t_rank[img] = min(i2t_rank[img], ranks_of_caption[img, j])
    has_caption = np.isin(np.arange(len(image_emb)), caption_image)
    out = {}
    for k in ks:
        out[f"t2i_R@{k}"] = float(np.mean(t2i_rank < k))
        out[f"i2t_R@{k}"] = float(np.mean(i2t_rank[has_caption] < k))
    return out


def evaluate_recall(encoder: Encoder, val: ValSet, batch_size: int = 64) -> dict[str, float]:
    """Embed the validation set with the encoder's current weights (eval mode) and score it."""
    model = encoder.model
    was_training = model.training
    model.eval()
    try:
        pil, ok = [], []
        for i, path in enumerate(val.images):
            try:
                pil.append(load_image(path, draft_size=encoder.image_size))
                ok.append(i)
            except ImageDecodeError:
                continue
        remap = np.full(len(val.images), -1)
        remap[ok] = np.arange(len(ok))
        keep = remap[val.caption_image] >= 0
        with torch.no_grad():
            image_emb = encoder.encode_images(pil, batch_size=batch_size)
            text_emb = encoder.encode_texts([c for c, k in zip(val.captions, keep) if k], batch_size=256)
        return recall_at_k(image_emb, text_emb, remap[val.caption_image][keep])
    finally:
        model.train(was_training)
