"""``python -m train`` (or ``torchrun --nproc_per_node=K -m train``): contrastive training."""

from __future__ import annotations

import os
import sys

from retrieval.errors import RetrievalError

from .checkpoint import list_checkpoints
from .config import parse_config
from .loop import train


def main(argv: list[str] | None = None) -> int:
    cfg = None
    try:
        cfg = parse_config(argv)
        result = train(cfg)
    except RetrievalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":
            saved = list_checkpoints(cfg.output_dir) if cfg is not None else []
            print(
                "\ninterrupted; "
                + (
                    f"go on with --resume latest (the last checkpoint is {saved[-1].stem}; later steps are redone)"
                    if saved
                    else "no checkpoint was written yet (--save-every N writes one every N steps)"
                ),
                file=sys.stderr,
            )
        return 130
    if os.environ.get("RANK", "0") == "0":
        print(
            f"trained {result.steps} steps, final loss {result.loss:.4f}, "
            f"images skipped (missing or undecodable): {result.skipped_images}"
        )
        if result.last_eval:
            print("validation: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(result.last_eval.items())))
        print(f"model: {result.model_path}\nlog: {result.log_path}\ncurves: {result.plot_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
