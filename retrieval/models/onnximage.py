"""The image tower through ONNX Runtime, for builds on a CPU: no timm or torchvision to import, and faster.

A build on a CPU exports its model's image tower once (:func:`retrieval.models.onnxexport.fast_image_encoder`),
its BatchNorms folded, into the cache dir in a folder named by the weights' fingerprint
(:func:`folder_for`): the graph as ONNX Runtime optimized it and a small ``image.json``. The
next build loads that graph instead of building the tower: reading it costs about what reading
the weights costs, where building the tower with timm costs the import of timm and torchvision
(seconds). ONNX Runtime also runs the built-in model's tower faster than torch on this CPU
(``docs/performance.md``). The export checks itself against the torch tower before it is kept.

Used where the tower would run in fp32 on the CPU; a GPU, a CPU with native bf16 and
``RETRIEVAL_FAST_IMAGE=0`` keep torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import onnxtext
from .imagetower import ImageHalf

FORMAT = 1
FOLDER = "image-onnx"
MODEL_FILE, INFO_FILE = "image.onnx", "image.json"
ENV = "RETRIEVAL_FAST_IMAGE"
INPUT, OUTPUT = "pixels", "embedding"


def enabled() -> bool:
    """Whether builds may use an exported image tower (``RETRIEVAL_FAST_IMAGE=0`` says no)."""
    return os.environ.get(ENV, "1").strip() != "0"


def folder_for(fingerprint: str) -> Path:
    """Where the image tower of the weights with this fingerprint is kept (beside its text tower)."""
    return onnxtext.folder_for(fingerprint, FOLDER)


def applies(device: torch.device, precision: str) -> bool:
    """Whether the exported tower stands in for torch's: on a CPU, in fp32 (``precision`` resolved), unless switched off."""
    return enabled() and device.type == "cpu" and precision == "fp32"


def read_info(folder: Path) -> dict[str, Any] | None:
    """The export's ``image.json`` if it is one this ONNX Runtime made, else None."""
    import onnxruntime as ort

    try:
        info = json.loads((folder / INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    current = info.get("format") == FORMAT and info.get("onnxruntime") == ort.__version__
    return info if current and (folder / MODEL_FILE).is_file() else None


class OnnxVisual(nn.Module):
    """``pixels [B, 3, H, W] -> embedding [B, D]``, run by ONNX Runtime.

    Its threads follow torch's intra-op thread count at each call, which a build sets from
    the free cores before each batch (:class:`retrieval.cores.TorchThreads`); one runner is
    kept per count. Its threads do not spin, so a descheduled one holds no one up.
    """

    def __init__(self, folder: Path, image_size: int) -> None:
        super().__init__()
        self.folder = folder
        self.image_size = (image_size, image_size)
        self._runners: dict[int, Any] = {}
        self._runner(max(1, torch.get_num_threads()))  # a broken graph fails here, not in the first batch

    def _runner(self, threads: int) -> Any:
        if threads not in self._runners:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.graph_optimization_level = (
                ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            )  # NCHWc convolutions: CPU-specific, so made here
            options.log_severity_level = 3
            self._runners[threads] = ort.InferenceSession(
                str(self.folder / MODEL_FILE), options, providers=["CPUExecutionProvider"]
            )
        return self._runners[threads]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        runner = self._runner(max(1, torch.get_num_threads()))
        array = np.ascontiguousarray(pixels.detach().float().cpu().numpy())
        return torch.from_numpy(runner.run([OUTPUT], {INPUT: array})[0])


def load(fingerprint: str, image_size: int) -> ImageHalf | None:
    """The exported image tower of the weights with ``fingerprint``, or None (none yet, not current, switched off)."""
    if not enabled():
        return None
    folder = folder_for(fingerprint)
    info = read_info(folder)
    if info is None or info.get("fingerprint") != fingerprint:
        return None
    try:
        return ImageHalf(OnnxVisual(folder, image_size), int(info["embed_dim"]), float(info["logit_scale"]))
    except Exception:  # ONNX Runtime refuses the file in many types: the torch tower is always there
        return None
