"""Training curves from the JSONL log: loss per step and validation recall per evaluation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from retrieval.atomic import replacing


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(log_path: Path, out_path: Path) -> Path:
    """Write a PNG with the loss curve and, when there are evaluations, the recall curves."""
    # An explicit Agg canvas: no pyplot, no process-wide backend switch.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = read_log(log_path)
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    fig = Figure(figsize=(11, 4))
    FigureCanvasAgg(fig)
    ax_loss, ax_val = fig.subplots(1, 2)
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], lw=1)
    ax_loss.set(xlabel="step", ylabel="contrastive loss", title="training loss")
    ax_loss.grid(alpha=0.3)
    for key, style in (
        ("t2i_R@1", "-"),
        ("t2i_R@5", "-"),
        ("t2i_R@10", "-"),
        ("i2t_R@1", "--"),
        ("i2t_R@5", "--"),
        ("i2t_R@10", "--"),
    ):
        points = [(r["step"], r[key]) for r in val if key in r]
        if points:
            ax_val.plot(*zip(*points), style, marker="o", ms=3, label=key)
    ax_val.set(xlabel="step", ylabel="recall (%)", title="validation recall", ylim=(0, 100))
    ax_val.grid(alpha=0.3)
    if val:
        ax_val.legend(fontsize=8)
    fig.tight_layout()
    with replacing(out_path) as tmp:
        fig.savefig(tmp, dpi=100)
    return out_path
