"""Cached tower features held in memory: training batches, and val/test recall from them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from retrieval.atomic import replacing
from retrieval.models.towers import anchor_of, anchor_text
from train.metrics import RetrievalScores, recall_at_k

from .features import FeatureCache
from .towers import image_top, normalized, text_layer_count, text_layers, text_top

if TYPE_CHECKING:
    from .config import FitConfig


class TrainData:
    """Cached features in memory, and the sampling of (image view, one of its captions) batches."""

    def __init__(self, model: nn.Module, cache: FeatureCache, cfg: FitConfig) -> None:
        split = np.asarray(cache.image_split)
        self.train_images = np.flatnonzero(split == "train")
        self.views = {v: torch.from_numpy(np.array(cache.view(v))) for v in cfg.views}
        if not cfg.train_conv_head:
            self.views = {v: pooled_images(model, t) for v, t in self.views.items()}
        self.view_pos = {}
        for v in cfg.views:
            pos = np.full(len(cache.images), -1, dtype=np.int64)
            pos[cache.view_rows[v]] = np.arange(len(cache.view_rows[v]))
            self.view_pos[v] = pos
        hidden, mask = cache.text()
        self.hidden = torch.from_numpy(hidden if cfg.text_layers == 0 else np.array(hidden))
        self.mask = torch.from_numpy(mask.astype(np.int64))
        self.pooled: torch.Tensor | None = None
        # The frozen tower's pooled captions: the training input when no layer trains, and the
        # text side of the model's anchor (computed before any layer changes).
        frozen = pooled_text(model, cache, self.hidden, self.mask) if cfg.text_layers == 0 or anchor_of(model) else None
        self.frozen_pooled = frozen
        if cfg.text_layers == 0:
            self.pooled = frozen
        elif cfg.text_layers < cache.n_top:
            n = text_layer_count(model)
            self.hidden = _advance(model, self.hidden, self.mask, n - cache.n_top, n - cfg.text_layers)
        owner = cache.caption_image
        self.caps_of = [np.flatnonzero(owner == i) for i in range(len(cache.images))]
        self.split = split
        self.owner = owner

    def split_layout(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Images of a split, their captions, and each caption's image as a position in the split."""
        images = np.flatnonzero(self.split == name)
        caps = np.flatnonzero(np.isin(self.owner, images))
        remap = np.full(len(self.split), -1)
        remap[images] = np.arange(len(images))
        return images, caps, remap[self.owner[caps]]

    def image_batch(self, images: np.ndarray, rng: np.random.Generator, names: tuple[str, ...]) -> torch.Tensor:
        choice = rng.integers(0, len(names), len(images))
        out = torch.empty((len(images), *self.views[names[0]].shape[1:]), dtype=self.views[names[0]].dtype)
        for k, v in enumerate(names):
            sel = np.flatnonzero(choice == k)
            out[sel] = self.views[v][self.view_pos[v][images[sel]]]
        return out.float()

    def text_embed(self, model: nn.Module, caps: np.ndarray, cfg: FitConfig) -> torch.Tensor:
        """The model's embedding of captions ``caps`` (trainable top, plus the anchor when it has one)."""
        h, m = self.text_batch(caps)
        learned = text_top(model, h, m, cfg.text_layers, buckets=cfg.text_buckets)
        if self.frozen_pooled is None:
            return learned
        return anchor_text(model, learned, self.frozen_pooled[caps])

    def text_batch(self, caps: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pooled is not None:
            return self.pooled[caps].float(), self.mask[caps, :1]
        mask = self.mask[caps]
        width = int(mask.sum(1).max())
        return self.hidden[caps, :width].float(), mask[:, :width]


@torch.inference_mode()
def pooled_text(
    model: nn.Module, cache: FeatureCache, hidden: np.ndarray, mask: torch.Tensor, chunk: int = 512
) -> torch.Tensor:
    """Mean-pooled output of the frozen MiniLM top over every caption, computed once into the cache."""
    path = cache.root / "txt_pooled.npy"
    if not path.is_file():
        n = text_layer_count(model)
        lengths = mask.sum(1)
        order = torch.argsort(lengths)
        out = np.zeros((len(order), hidden.shape[2]), np.float32)
        for s in tqdm(range(0, len(order), chunk), desc="frozen text top", unit="batch"):
            rows = order[s : s + chunk].numpy()
            width = int(lengths[rows].max())
            h = torch.from_numpy(np.asarray(hidden[np.sort(rows), :width])).float()
            m = mask[np.sort(rows), :width]
            h = text_layers(model, h, m, n - cache.n_top, n)
            mf = m.unsqueeze(-1).float()
            out[np.sort(rows)] = ((h * mf).sum(1) / mf.sum(1)).numpy()
        with replacing(path) as tmp:
            np.save(tmp, out)
    return torch.from_numpy(np.load(path))


@torch.inference_mode()
def pooled_images(model: nn.Module, feats: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Frozen ``conv_head`` -> ``bn2`` -> average pool over cached trunk maps, once."""
    trunk = model.visual.trunk
    parts = [
        trunk.forward_head(trunk.bn2(trunk.conv_head(feats[s : s + chunk].float())))
        for s in tqdm(range(0, len(feats), chunk), desc="frozen conv_head", unit="batch", leave=False)
    ]
    return torch.cat(parts)


@torch.inference_mode()
def _advance(
    model: nn.Module, hidden: torch.Tensor, mask: torch.Tensor, first: int, stop: int, chunk: int = 512
) -> torch.Tensor:
    """Run the frozen layers ``first..stop-1`` between the cache and the trained top once, in place."""
    lengths = mask.sum(1)
    order = torch.argsort(lengths)
    for s in tqdm(range(0, len(order), chunk), desc="frozen text layers", unit="batch", leave=False):
        rows = order[s : s + chunk]
        width = int(lengths[rows].max())
        out = text_layers(model, hidden[rows, :width].float(), mask[rows, :width], first, stop)
        hidden[rows, :width] = out.to(hidden.dtype)
    return hidden


@torch.no_grad()
def evaluate_split(
    model: nn.Module, data: TrainData, cfg: FitConfig, split: str = "val", chunk: int = 500
) -> RetrievalScores:
    """Recall@K on a split from the cached centre views and captions (same numbers as the full model)."""
    images, caps, owner = data.split_layout(split)
    pos = data.view_pos["center"]
    img = torch.cat(
        [
            image_top(model, data.views["center"][pos[images[s : s + chunk]]].float())
            for s in range(0, len(images), chunk)
        ]
    )
    txt = [data.text_embed(model, caps[s : s + chunk], cfg) for s in range(0, len(caps), chunk)]
    return recall_at_k(normalized(img), normalized(torch.cat(txt)), owner)
