"""Retrieval metrics for image-caption corpora (Flickr8k/30k, COCO Karpathy protocol).

Each caption belongs to exactly one image; an image may have several captions.

* text -> image R@K: share of captions whose own image is among the K most similar images.
* image -> text R@K: share of images with at least one of their captions among the K most
  similar captions.

Ranks count the candidates scoring strictly higher than the best correct one, so ties are
resolved in the query's favour. Results are percentages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_KS = (1, 5, 10)


@dataclass(frozen=True)
class RetrievalScores:
    text_to_image: dict[str, float]
    image_to_text: dict[str, float]

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {
            "text_to_image": {k: round(v, 4) for k, v in self.text_to_image.items()},
            "image_to_text": {k: round(v, 4) for k, v in self.image_to_text.items()},
        }

    @property
    def mean_recall(self) -> float:
        values = list(self.text_to_image.values()) + list(self.image_to_text.values())
        return float(sum(values) / len(values))


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).float()


def retrieval_ranks(
    image_emb: np.ndarray | torch.Tensor,
    text_emb: np.ndarray | torch.Tensor,
    caption_image: Sequence[int] | np.ndarray | torch.Tensor,
    chunk: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """0-based rank of the correct item per caption (t2i) and per image (i2t, best caption).

    Embeddings are compared by dot product (pass L2-normalised vectors for cosine).
    """
    img = _as_tensor(image_emb)
    txt = _as_tensor(text_emb)
    owner = torch.as_tensor(np.asarray(caption_image), dtype=torch.long)
    if txt.shape[0] != owner.shape[0]:
        raise ValueError(f"{txt.shape[0]} caption embeddings but {owner.shape[0]} caption->image entries")
    if owner.numel() and (owner.min() < 0 or owner.max() >= img.shape[0]):
        raise ValueError("caption->image mapping points outside the image embeddings")
    t2i = torch.empty(txt.shape[0], dtype=torch.long)
    for s in range(0, txt.shape[0], chunk):
        sims = txt[s : s + chunk] @ img.t()
        own = sims.gather(1, owner[s : s + chunk, None])
        t2i[s : s + chunk] = (sims > own).sum(1)
    i2t = torch.empty(img.shape[0], dtype=torch.long)
    for s in range(0, img.shape[0], chunk):
        sims = img[s : s + chunk] @ txt.t()
        is_own = owner[None, :] == torch.arange(s, min(s + chunk, img.shape[0]))[:, None]
        best_own = sims.masked_fill(~is_own, float("-inf")).max(1, keepdim=True).values
        i2t[s : s + chunk] = (sims > best_own).sum(1)
    return t2i, i2t


def recall_at_k(
    image_emb: np.ndarray | torch.Tensor,
    text_emb: np.ndarray | torch.Tensor,
    caption_image: Sequence[int] | np.ndarray | torch.Tensor,
    ks: Sequence[int] = DEFAULT_KS,
) -> RetrievalScores:
    """Recall@K in percent in both directions. Images without captions count as misses in i2t."""
    t2i, i2t = retrieval_ranks(image_emb, text_emb, caption_image)
    return RetrievalScores(
        text_to_image={f"R@{k}": 100.0 * float((t2i < k).double().mean()) for k in ks},
        image_to_text={f"R@{k}": 100.0 * float((i2t < k).double().mean()) for k in ks},
    )


def topk_accuracy(
    logits: np.ndarray | torch.Tensor, labels: Sequence[int] | np.ndarray, ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Top-K classification accuracy in percent (``top1``, ``top5``)."""
    scores = _as_tensor(logits)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    own = scores.gather(1, y[:, None])
    rank = (scores > own).sum(1)
    return {f"top{k}": 100.0 * float((rank < k).double().mean()) for k in ks}


def per_class_accuracy(
    logits: np.ndarray | torch.Tensor, labels: Sequence[int] | np.ndarray, n_classes: int
) -> list[float]:
    """Top-1 accuracy in percent for each class (NaN for classes with no samples)."""
    pred = _as_tensor(logits).argmax(1)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    out = []
    for c in range(n_classes):
        sel = y == c
        out.append(100.0 * float((pred[sel] == c).double().mean()) if sel.any() else float("nan"))
    return out
