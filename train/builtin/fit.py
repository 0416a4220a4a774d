"""Train the tops of the built-in model's towers on cached features; pick the epoch on val, or average a soup."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from retrieval.models.encoder import resolve_precision
from train.metrics import RetrievalScores
from train.step import autocast_for

from .batches import TrainData, evaluate_split
from .config import FitConfig
from .features import FeatureCache
from .objective import contrastive, multi_positive
from .towers import image_top, image_top_modules, random_windows, text_top_modules


@dataclass
class FitResult:
    state: dict[str, torch.Tensor]
    best_epoch: int
    val: RetrievalScores
    history: list[dict[str, float]] = field(default_factory=list)
    reports: dict[str, RetrievalScores] = field(default_factory=dict)
    members: list[dict[str, torch.Tensor]] = field(default_factory=list)  # a soup's ingredients


_CPU = torch.device("cpu")  # the recipe trains on cached features, on the CPU
_HEADS = frozenset({"visual.head", "visual.bridge.proj", "text.proj"})


class _Tops:
    """The trainable parameters of both towers, by ``state_dict`` prefix."""

    def __init__(self, model: nn.Module, cfg: FitConfig) -> None:
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


def _param_groups(tops: _Tops, cfg: FitConfig) -> list[dict]:
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


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


class _Trainer:
    """One optimiser over the tower tops, stepping through the warm-up + cosine schedule."""

    def __init__(self, model: nn.Module, data: TrainData, cfg: FitConfig) -> None:
        self.model, self.data, self.cfg = model, data, cfg
        self.tops = _Tops(model, cfg)
        for p in model.parameters():
            p.requires_grad_(False)
        for m in self.tops.modules.values():
            for p in m.parameters():
                p.requires_grad_(True)
        model.logit_scale.requires_grad_(True)
        self.opt = torch.optim.AdamW(_param_groups(self.tops, cfg))
        self.base_lrs = [g["lr"] for g in self.opt.param_groups]
        self.steps_per_epoch = len(data.train_images) // cfg.batch_size
        if self.steps_per_epoch == 0:  # it trained nothing (loss nan) and wrote the untrained weights
            raise ValueError(
                f"{len(data.train_images)} training images are fewer than one batch of {cfg.batch_size}; "
                f"pass --batch-size {max(1, len(data.train_images))} or less"
            )
        self.total = self.steps_per_epoch * cfg.epochs
        self.step = 0
        self.captions_per_image = cfg.captions_per_image[0]  # each soup member sets its own
        self.ema = {k: v.clone() for k, v in self.tops.state().items()} if cfg.ema_decay > 0 else None

    def epoch(self, epoch: int, rng: np.random.Generator, gen: torch.Generator) -> dict[str, float]:
        """Train one pass over the training images; return the epoch's log row (loss, temperature)."""
        cfg, data, model = self.cfg, self.data, self.model
        self.tops.train_mode()
        t0 = time.perf_counter()
        perm = rng.permutation(data.train_images)
        losses = []
        for b in tqdm(range(self.steps_per_epoch), desc=f"epoch {epoch}/{cfg.epochs}", unit="step", leave=False):
            images = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            per = self.captions_per_image
            caps = np.concatenate(
                [rng.choice(data.caps_of[i], per, replace=len(data.caps_of[i]) < per) for i in images]
            )
            use_window = cfg.window_p > 0 and cfg.train_conv_head
            window = random_windows(len(images), 7, cfg.window_min, cfg.window_p, gen) if use_window else None
            with autocast_for(_CPU, cfg.precision):  # matmuls in bf16; weights, optimiser and loss in fp32
                img = image_top(model, data.image_batch(images, rng, cfg.views), window)
                txt = data.text_embed(model, caps, cfg)
            objective = contrastive if per == 1 else multi_positive
            loss = objective(img.float(), txt.float(), model.logit_scale, cfg.label_smoothing)
            for g, lr in zip(self.opt.param_groups, self.base_lrs):
                g["lr"] = lr * _lr_factor(self.step, self.total, cfg.warmup_steps)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.step += 1
            losses.append(float(loss.detach()))
            if self.ema is not None:
                _ema_update(self.ema, model, cfg.ema_decay)
        model.eval()
        return {
            "epoch": epoch,
            "loss": float(np.mean(losses)),
            "seconds": time.perf_counter() - t0,
            "scale": float(model.logit_scale.detach().exp()),
        }

    def validate(self) -> tuple[RetrievalScores, dict[str, torch.Tensor]]:
        """Val recall of the current weights (of their EMA when there is one), and that state."""
        current = self.tops.state()
        if self.ema is not None:
            self.model.load_state_dict(self.ema, strict=False)
        val = evaluate_split(self.model, self.data, self.cfg)
        state = self.tops.state()
        if self.ema is not None:
            self.model.load_state_dict(current, strict=False)
        return val, state

    def snapshot(self) -> tuple[dict[str, torch.Tensor], dict, int]:
        return self.tops.state(), copy.deepcopy(self.opt.state_dict()), self.step

    def restore(self, snap: tuple[dict[str, torch.Tensor], dict, int]) -> None:
        state, opt_state, step = snap
        self.model.load_state_dict(state, strict=False)
        self.opt.load_state_dict(copy.deepcopy(opt_state))
        self.step = step


def _with_val(row: dict, val: RetrievalScores) -> dict:
    return {
        **row,
        **{f"t2i_{k}": v for k, v in val.text_to_image.items()},
        **{f"i2t_{k}": v for k, v in val.image_to_text.items()},
    }


def _log_row(log: Callable[[str], None], row: dict) -> None:
    log(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))


def _branch_rngs(seed: int, branch: int) -> tuple[np.random.Generator, torch.Generator]:
    """Independent streams for soup member ``branch`` (member 0 keeps the run's own streams);
    also reseeds torch's global generator, which the fine-tuned layers' dropout draws from."""
    sub = int(np.random.SeedSequence([seed, branch]).generate_state(1)[0])
    torch.manual_seed(sub)
    return np.random.default_rng(sub), torch.Generator().manual_seed(sub)


def average_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The uniform weight average of states that share keys (non-float tensors from the first)."""
    return {
        k: torch.stack([s[k] for s in states]).mean(0) if v.is_floating_point() else v.clone()
        for k, v in states[0].items()
    }


def checked(cfg: FitConfig) -> FitConfig:
    """``cfg`` with its precision resolved (``auto``: bf16 on a CPU with native bf16, where the recipe's
    steps run 2.2x faster with the same recall, else fp32), or ValueError (ModelError for the precision)
    for settings that cannot run; checked before any work."""
    if cfg.soup < 1 or not 0 <= cfg.soup_from < cfg.epochs:
        raise ValueError(f"soup needs at least 1 member and 0 <= soup_from < epochs (got {cfg.soup}, {cfg.soup_from})")
    if not cfg.captions_per_image or min(cfg.captions_per_image) < 1:
        raise ValueError(f"captions_per_image needs counts >= 1 (got {list(cfg.captions_per_image)})")
    if cfg.soup > 1 and cfg.ema_decay > 0:
        raise ValueError(
            "a soup averages final weights and does not combine with an EMA; pass --soup 1 to use --ema-decay"
        )
    return replace(cfg, precision=resolve_precision(cfg.precision, _CPU, bf16_on_cpu=True))  # measured: 2.2x


def fit(
    model: nn.Module,
    cache: FeatureCache,
    cfg: FitConfig,
    log: Callable[[str], None] = lambda s: None,
    report_splits: tuple[str, ...] = (),
) -> FitResult:
    """Train the tower tops of ``model``; leave it holding the chosen state, and return that state.

    With ``cfg.soup == 1`` the chosen state is the best epoch on val. With ``cfg.soup = K > 1``
    the run is shared up to epoch ``cfg.soup_from`` (0: from the initialisation), then K members
    finish the schedule from that point, each with its own data order, views and captions (and
    its own entry of ``cfg.captions_per_image``), and the chosen state is the average of their
    final weights (a model soup, Wortsman et al. 2022). ``report_splits`` (e.g. ``("test",)``)
    are scored once, with the chosen state, at the end.
    """
    if cfg.text_layers > cache.n_top:
        raise ValueError(
            f"the cache holds hidden states before the last {cache.n_top} layers; cannot train {cfg.text_layers}"
        )
    cfg = checked(cfg)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    data = TrainData(model, cache, cfg)
    trainer = _Trainer(model, data, cfg)
    history: list[dict] = []
    if cfg.soup == 1:
        best = _best_epoch(trainer, rng, gen, history, log)
    else:
        best = _soup(trainer, rng, gen, history, log)
    best.history = history
    model.load_state_dict(best.state, strict=False)
    model.eval()
    best.reports = {name: evaluate_split(model, data, cfg, name) for name in report_splits if name in set(data.split)}
    return best


def _best_epoch(
    trainer: _Trainer, rng: np.random.Generator, gen: torch.Generator, history: list[dict], log: Callable[[str], None]
) -> FitResult:
    best: FitResult | None = None
    for epoch in range(1, trainer.cfg.epochs + 1):
        row = trainer.epoch(epoch, rng, gen)
        val, state = trainer.validate()
        history.append(_with_val(row, val))
        _log_row(log, history[-1])
        if best is None or val.mean_recall > best.val.mean_recall:
            best = FitResult(state=state, best_epoch=epoch, val=val)
    assert best is not None
    return best


def _soup(
    trainer: _Trainer, rng: np.random.Generator, gen: torch.Generator, history: list[dict], log: Callable[[str], None]
) -> FitResult:
    cfg = trainer.cfg
    for epoch in range(1, cfg.soup_from + 1):
        history.append(trainer.epoch(epoch, rng, gen))
        _log_row(log, history[-1])
    start = trainer.snapshot()
    members = []
    for branch in range(cfg.soup):
        if branch:
            trainer.restore(start)
            rng, gen = _branch_rngs(cfg.seed, branch)
        trainer.captions_per_image = cfg.captions_per_image[branch % len(cfg.captions_per_image)]
        for epoch in range(cfg.soup_from + 1, cfg.epochs + 1):
            row = {"member": branch, **trainer.epoch(epoch, rng, gen)}
            if epoch == cfg.epochs:
                row = _with_val(row, trainer.validate()[0])
            history.append(row)
            _log_row(log, row)
        members.append(trainer.tops.state())
    trainer.model.load_state_dict(average_states(members), strict=False)
    val, state = trainer.validate()
    history.append(_with_val({"epoch": cfg.epochs, "member": "soup"}, val))
    _log_row(log, history[-1])
    return FitResult(state=state, best_epoch=cfg.epochs, val=val, members=members)


@torch.no_grad()
def _ema_update(ema: dict[str, torch.Tensor], model: nn.Module, decay: float) -> None:
    live = model.state_dict()
    for k, v in ema.items():
        if v.dtype.is_floating_point:
            v.mul_(decay).add_(live[k], alpha=1 - decay)
        else:
            v.copy_(live[k])
