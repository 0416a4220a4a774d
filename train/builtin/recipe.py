"""The whole built-in model recipe: cache tower bottoms, train the tops, write the weights."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from retrieval.atomic import replacing
from retrieval.index.store import writes_refused_as_errors
from retrieval.models.encoder import Encoder
from retrieval.models.factory import create_model
from retrieval.models.registry import project_config
from retrieval.models.towers import fill_class_embeddings

from .features import CacheSpec, build_cache
from .fit import FitConfig, FitResult, checked, fit

BASE_SPEC = "builtin:random"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "retrieval" / "train-builtin"


@dataclass(frozen=True)
class RecipeConfig:
    data: Path
    out: Path
    cache_dir: Path
    train: FitConfig = field(default_factory=FitConfig)
    cache_text_layers: int = 2
    threads: int | None = None


@dataclass
class RecipeResult:
    out: Path
    fit: FitResult
    seconds: dict[str, float]

    def summary(self) -> dict:
        return {
            "weights": str(self.out),
            "bytes": self.out.stat().st_size,
            "best_epoch": self.fit.best_epoch,
            "val": self.fit.val.as_dict(),
            **{f"{k} (cached features, chosen epoch)": v.as_dict() for k, v in self.fit.reports.items()},
            "seconds": self.seconds,
            "history": self.fit.history,
        }


def save_weights(state: dict[str, torch.Tensor], out: Path, metadata: dict[str, str]) -> None:
    """Write the trained tensors (model ``state_dict`` keys) as safetensors, atomically.

    Float matrices are stored as float16 (loading casts them back into the float32 model):
    the fine-tuned MiniLM layers would not fit the 25 MB budget in float32. Vectors (biases,
    norms) and the temperature keep float32.
    """
    from safetensors.torch import save_file

    def packed(v: torch.Tensor) -> torch.Tensor:
        return v.half() if v.is_floating_point() and v.ndim >= 2 else v

    with replacing(out) as tmp:
        save_file({k: packed(v).contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)


def _fill_bridge(encoder: Encoder) -> dict[str, torch.Tensor]:
    """Compute the semantic bridge's class-name embeddings (if the config has a bridge); they ship with the weights."""
    block = project_config("builtin").get("semantic_bridge")
    if block is None:
        return {}
    emb = fill_class_embeddings(encoder.model, encoder.tokenizer, block["classnames"], block["template"])
    return {"visual.bridge.class_embeddings": emb.clone()}


def cache_spec(encoder: Encoder, cfg: RecipeConfig) -> CacheSpec:
    """What the feature cache of a recipe run holds (its key: same spec, same cache folder)."""
    return CacheSpec(
        pairs=str(cfg.data / "pairs.csv"),
        image_root=str(cfg.data / "images"),
        n_top=max(cfg.cache_text_layers, cfg.train.text_layers),  # the cache must start below every trained layer
        views=tuple(v for v in cfg.train.views if v != "center"),
        context_length=int(project_config("builtin")["tokenizer"]["context_length"]),
        fingerprint=encoder.fingerprint,
    )


def run(cfg: RecipeConfig, log: Callable[[str], None] = lambda s: None) -> RecipeResult:
    """The whole recipe: feature cache, fit, weights file. A write the disk refuses is FileWriteError."""
    with writes_refused_as_errors(
        f"the built-in model's files ({cfg.cache_dir}, {cfg.out})",
        "files written before are intact; a finished feature cache is reused on the next run",
    ):
        return _run(cfg, log)


def _run(cfg: RecipeConfig, log: Callable[[str], None]) -> RecipeResult:
    train = checked(cfg.train)  # before the cache is built; the file records the precision that ran
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    encoder = create_model(BASE_SPEC, device="cpu", training=True)
    spec = cache_spec(encoder, cfg)
    shipped_buffers = _fill_bridge(encoder)
    cache = build_cache(encoder, spec, cfg.cache_dir)
    t1 = time.perf_counter()
    log(f"feature cache ready at {cache.root} ({t1 - t0:.0f}s)")
    log(f"training the tops in {train.precision}" + (" (auto)" if cfg.train.precision == "auto" else ""))
    result = fit(encoder.model, cache, train, log=log, report_splits=("test",))
    t2 = time.perf_counter()
    meta = {
        "recipe": json.dumps(asdict(train)),
        "best_epoch": str(result.best_epoch),
        "val": json.dumps(result.val.as_dict()),
    }
    save_weights({**result.state, **shipped_buffers}, cfg.out, meta)
    return RecipeResult(
        out=cfg.out, fit=result, seconds={"cache": t1 - t0, "train": t2 - t1, "total": time.perf_counter() - t0}
    )
