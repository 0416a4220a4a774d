"""Train the tops of the built-in model's towers on cached features; pick the epoch on val."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from retrieval.towers import anchor_of, anchor_text
from train.metrics import RetrievalScores, recall_at_k

from .features import FeatureCache
from .objective import contrastive, multi_positive
from .towers import image_top, image_top_modules, normalized, random_windows, text_layer_count, text_layers, text_top, text_top_modules


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 15
    batch_size: int = 512
    head_lr: float = 1e-3
    scale_lr: float = 1e-3
    tower_lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 20
    label_smoothing: float = 0.1
    captions_per_image: int = 1
    ema_decay: float = 0.0
    text_layers: int = 4
    train_conv_head: bool = False
    views: tuple[str, ...] = ("center", "flip", "crop")
    window_p: float = 0.5
    window_min: int = 4
    text_buckets: int = 4
    seed: int = 0


@dataclass
class FitResult:
    state: dict[str, torch.Tensor]
    best_epoch: int
    val: RetrievalScores
    history: list[dict[str, float]] = field(default_factory=list)
    reports: dict[str, RetrievalScores] = field(default_factory=dict)


_HEADS = frozenset({"visual.head", "visual.bridge.proj", "text.proj"})


class _Tops:
    """The trainable parameters of both towers, by ``state_dict`` prefix."""

    def __init__(self, model: nn.Module, cfg: TrainConfig) -> None:
        self.model = model
        img = image_top_modules(model)
        if not cfg.train_conv_head:
            img = {k: v for k, v in img.items() if k in _HEADS}
        txt = text_top_modules(model, cfg.text_layers)
        self.modules = {**img, **txt}
        self.heads = [m for k, m in self.modules.items() if k in _HEADS]
        self.towers = [m for k, m in self.modules.items() if k not in _HEADS]

    def prefixes(self) -> tuple[str, ...]:
        return tuple(self.modules) + ("logit_scale",)

    def state(self) -> dict[str, torch.Tensor]:
        keep = self.prefixes()
        return {
            k: v.detach().clone()
            for k, v in self.model.state_dict().items()
            if any(k == p or k.startswith(p + ".") for p in keep)
        }

    def train_mode(self) -> None:
        self.model.eval()
        for m in self.towers + self.heads:
            if not isinstance(m, nn.BatchNorm2d):
                m.train()
        self.model.visual.trunk.bn2.eval()


def _param_groups(tops: _Tops, cfg: TrainConfig) -> list[dict]:
    def split(mods: list[nn.Module]) -> tuple[list, list]:
        decay, no_decay = [], []
        for m in mods:
            for p in m.parameters():
                (decay if p.ndim >= 2 else no_decay).append(p)
        return decay, no_decay

    hd, hn = split(tops.heads)
    td, tn = split(tops.towers)
    return [
        {"params": hd, "lr": cfg.head_lr, "weight_decay": cfg.weight_decay},
        {"params": hn, "lr": cfg.head_lr, "weight_decay": 0.0},
        {"params": [tops.model.logit_scale], "lr": cfg.scale_lr, "weight_decay": 0.0},
        {"params": td, "lr": cfg.tower_lr, "weight_decay": cfg.weight_decay},
        {"params": tn, "lr": cfg.tower_lr, "weight_decay": 0.0},
    ]


class _Data:
    """Cached features in memory, and the sampling of (image view, one of its captions) batches."""

    def __init__(self, model: nn.Module, cache: FeatureCache, cfg: TrainConfig) -> None:
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

    def text_embed(self, model: nn.Module, caps: np.ndarray, cfg: TrainConfig) -> torch.Tensor:
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
def pooled_text(model: nn.Module, cache: FeatureCache, hidden: "np.ndarray", mask: torch.Tensor, chunk: int = 512) -> torch.Tensor:
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
        np.save(path.with_suffix(".tmp.npy"), out)
        path.with_suffix(".tmp.npy").rename(path)
    return torch.from_numpy(np.load(path))


@torch.inference_mode()
def pooled_images(model: nn.Module, feats: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Frozen ``conv_head`` -> ``bn2`` -> average pool over cached trunk maps, once."""
    trunk = model.visual.trunk
    parts = [trunk.forward_head(trunk.bn2(trunk.conv_head(feats[s : s + chunk].float()))) for s in
             tqdm(range(0, len(feats), chunk), desc="frozen conv_head", unit="batch", leave=False)]
    return torch.cat(parts)


@torch.inference_mode()
def _advance(model: nn.Module, hidden: torch.Tensor, mask: torch.Tensor, first: int, stop: int, chunk: int = 512) -> torch.Tensor:
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
def evaluate_split(model: nn.Module, data: _Data, cfg: TrainConfig, split: str = "val", chunk: int = 500) -> RetrievalScores:
    """Recall@K on a split from the cached centre views and captions (same numbers as the full model)."""
    images, caps, owner = data.split_layout(split)
    pos = data.view_pos["center"]
    img = torch.cat([image_top(model, data.views["center"][pos[images[s : s + chunk]]].float()) for s in range(0, len(images), chunk)])
    txt = [data.text_embed(model, caps[s : s + chunk], cfg) for s in range(0, len(caps), chunk)]
    return recall_at_k(normalized(img), normalized(torch.cat(txt)), owner)


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def fit(
    model: nn.Module,
    cache: FeatureCache,
    cfg: TrainConfig,
    log: Callable[[str], None] = lambda s: None,
    report_splits: tuple[str, ...] = (),
) -> FitResult:
    """Train the tower tops of ``model``; leave it holding the best-on-val state, and return that state.

    ``report_splits`` (e.g. ``("test",)``) are scored once, with the chosen state, at the end.
    """
    if cfg.text_layers > cache.n_top:
        raise ValueError(f"the cache holds hidden states before the last {cache.n_top} layers; cannot train {cfg.text_layers}")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    data = _Data(model, cache, cfg)
    tops = _Tops(model, cfg)
    for p in model.parameters():
        p.requires_grad_(False)
    for m in tops.modules.values():
        for p in m.parameters():
            p.requires_grad_(True)
    model.logit_scale.requires_grad_(True)
    opt = torch.optim.AdamW(_param_groups(tops, cfg))
    base_lrs = [g["lr"] for g in opt.param_groups]
    steps_per_epoch = len(data.train_images) // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    ema = {k: v.clone() for k, v in tops.state().items()} if cfg.ema_decay > 0 else None
    best: FitResult | None = None
    history = []
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        tops.train_mode()
        t0 = time.perf_counter()
        perm = rng.permutation(data.train_images)
        losses = []
        for b in tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{cfg.epochs}", unit="step", leave=False):
            images = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            per = cfg.captions_per_image
            caps = np.concatenate([rng.choice(data.caps_of[i], per, replace=len(data.caps_of[i]) < per) for i in images])
            use_window = cfg.window_p > 0 and cfg.train_conv_head
            window = random_windows(len(images), 7, cfg.window_min, cfg.window_p, gen) if use_window else None
            img = image_top(model, data.image_batch(images, rng, cfg.views), window)
            txt = data.text_embed(model, caps, cfg)
            objective = contrastive if per == 1 else multi_positive
            loss = objective(img, txt, model.logit_scale, cfg.label_smoothing)
            for g, lr in zip(opt.param_groups, base_lrs):
                g["lr"] = lr * _lr_factor(step, total, cfg.warmup_steps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            losses.append(float(loss.detach()))
            if ema is not None:
                _ema_update(ema, model, cfg.ema_decay)
        model.eval()
        current = tops.state()
        if ema is not None:
            model.load_state_dict(ema, strict=False)
        val = evaluate_split(model, data, cfg)
        state = tops.state()
        if ema is not None:
            model.load_state_dict(current, strict=False)
        row = {"epoch": epoch, "loss": float(np.mean(losses)), "seconds": time.perf_counter() - t0,
               "scale": float(model.logit_scale.exp()), **{f"t2i_{k}": v for k, v in val.text_to_image.items()},
               **{f"i2t_{k}": v for k, v in val.image_to_text.items()}}
        history.append(row)
        log(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        if best is None or val.mean_recall > best.val.mean_recall:
            best = FitResult(state=state, best_epoch=epoch, val=val)
    assert best is not None
    best.history = history
    model.load_state_dict(best.state, strict=False)
    model.eval()
    best.reports = {name: evaluate_split(model, data, cfg, name) for name in report_splits if name in set(data.split)}
    return best


@torch.no_grad()
def _ema_update(ema: dict[str, torch.Tensor], model: nn.Module, decay: float) -> None:
    live = model.state_dict()
    for k, v in ema.items():
        if v.dtype.is_floating_point:
            v.mul_(decay).add_(live[k], alpha=1 - decay)
        else:
            v.copy_(live[k])
