"""Checkpoints that resume exactly: weights, optimizer, schedule, position in the data, RNG states.

A checkpoint keeps the model weights under ``state_dict`` and holds only tensors and plain
Python values, so ``retrieval.create_model("ARCH:/path/step_000100.pt")`` loads it directly
(``torch.load(weights_only=True)``), just like the exported ``model.pt``.
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from retrieval.atomic import replacing
from retrieval.errors import TrainingError

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"step_(\d+)\.pt$")


@dataclass(frozen=True)
class Progress:
    """Where training stands: optimizer steps done, current epoch, micro-batches consumed in it."""

    step: int = 0
    epoch: int = 0
    micro_in_epoch: int = 0
    skipped_images: int = 0


def capture_rng() -> dict[str, Any]:
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_path(output_dir: Path, step: int) -> Path:
    return output_dir / CHECKPOINT_DIR / f"step_{step:07d}.pt"


def list_checkpoints(output_dir: Path) -> list[Path]:
    found = [
        (int(m.group(1)), p) for p in (output_dir / CHECKPOINT_DIR).glob("step_*.pt") if (m := _NAME.search(p.name))
    ]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str | None, output_dir: Path) -> Path | None:
    """``latest`` means the newest checkpoint in the run directory (None when there is none yet)."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not path.is_file():
        raise TrainingError(f"checkpoint to resume from not found: {path}")
    return path


# What decides which samples each step sees, and the position in the data: a resumed run keeps them.
RESUME_KEEPS = (
    "batch_size",
    "accum_steps",
    "seed",
    "train_split",
    "max_train_samples",
    "train_num_samples",
    "img_key",
    "caption_key",
    "split_key",
    "lock_image",
    "augment",
)


def check_resumable(ckpt: dict[str, Any], path: Path, config: dict[str, Any], arch: str) -> None:
    """Refuse a checkpoint of another architecture, or one trained with other data-order options."""
    from .config import option_name

    meta = ckpt.get("meta") or {}
    if meta.get("arch") and meta["arch"] != arch:
        raise TrainingError(
            f"cannot resume from {path}: it holds a {meta['arch']} model, and this launch trains {arch}"
        )
    saved = meta.get("config") or {}
    changed = [k for k in RESUME_KEEPS if k in saved and saved[k] != config.get(k)]
    if changed:
        was = ", ".join(f"{option_name(k)}={saved[k]}" for k in changed)
        now = ", ".join(f"{option_name(k)}={config.get(k)}" for k in changed)
        raise TrainingError(
            f"cannot resume from {path}: it was trained with {was}, and this launch says {now}; "
            "these decide which samples each step sees, so give the same ones (or start afresh with "
            "--overwrite, or in another --output)"
        )


def earlier_run(output_dir: Path) -> list[str]:
    """What an earlier training run left in ``output_dir`` (empty when nothing)."""
    found = []
    checkpoints = list_checkpoints(output_dir)
    if checkpoints:
        found.append(f"checkpoints up to {checkpoints[-1].stem}")
    found += [name for name in ("model.pt", "log.jsonl") if (output_dir / name).is_file()]
    return found


def clear_earlier_run(output_dir: Path) -> None:
    """Delete an earlier run's checkpoints, log, curves and model (``--overwrite``); the feature cache stays."""
    for old in list_checkpoints(output_dir):
        old.unlink(missing_ok=True)
    for name in ("model.pt", "log.jsonl", "curves.png"):
        (output_dir / name).unlink(missing_ok=True)


def _atomic_save(obj: Any, path: Path) -> None:
    """Through a temporary file and a rename; a failed write leaves the previous file and no partial one.

    torch writes through a Python file object here, not a path: given a path, its zip writer
    reports every refused write (disk full, quota, file size limit) as "unexpected pos", with
    no errno; through a file object the operating system's own error is there to raise. A
    Ctrl-C during the write is raised as the KeyboardInterrupt it is.
    """
    with replacing(path) as tmp:
        try:
            with open(tmp, "wb") as f:
                torch.save(obj, f)
        except RuntimeError as exc:
            refused = exc.__context__
            if isinstance(refused, OSError) and refused.errno is not None:
                raise OSError(refused.errno, refused.strerror, str(path)) from exc
            if isinstance(refused, (KeyboardInterrupt, SystemExit)):  # Ctrl-C mid-write: the zip writer's
                raise refused from None  # close then fails too ("unexpected pos"); the interrupt is what happened
            raise


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    progress: Progress,
    meta: dict[str, Any],
) -> None:
    _atomic_save(
        {
            "state_dict": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "progress": asdict(progress),
            "rng": capture_rng(),
            "meta": meta,
        },
        path,
    )


def prune_checkpoints(output_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` step checkpoints (``keep <= 0`` keeps everything)."""
    if keep <= 0:
        return
    for old in list_checkpoints(output_dir)[:-keep]:
        old.unlink(missing_ok=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise TrainingError(f"cannot read checkpoint {path}: {exc}") from exc


def restore(
    ckpt: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> Progress:
    """Load every saved state back in place and return the saved progress."""
    try:
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise TrainingError(f"checkpoint does not fit this model/optimizer: {exc}") from exc
    restore_rng(ckpt["rng"])
    return Progress(**ckpt["progress"])


def export_model(path: Path, model: torch.nn.Module, meta: dict[str, Any]) -> None:
    """The trained weights alone, loadable by the factory as ``ARCH:/path/model.pt``."""
    _atomic_save({"state_dict": model.state_dict(), "meta": meta}, path)
