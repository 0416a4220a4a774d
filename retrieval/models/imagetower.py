"""A project model's image tower alone, for a build: no text tower, no open_clip, no transformers.

A build embeds photos. It needs the text tower only to export it for fast queries (once per
model and machine) or to tag new photos, and loads it then (:attr:`Encoder.text_loader`).
For a project model whose image tower is a timm trunk (the built-in model), this builds the
tower open_clip's ``TimmModel`` builds, with the same parameter names, and loads the same
weights, so it gives the same vectors. It skips importing open_clip, transformers and the
BERT text tower, and building and initialising the text tower and its frozen copy.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from .towers import BridgeConfig, BridgedVisual, SemanticBridge

_OWN = ("visual.", "logit_scale")  # the keys of a full checkpoint that belong to the image side


def supports(cfg: dict[str, Any]) -> bool:
    """Whether a project config's image tower can be built alone: a timm trunk with a linear head."""
    vision = cfg.get("model_cfg", {}).get("vision_cfg", {})
    return (
        cfg.get("family") == "open_clip_custom"
        and bool(vision.get("timm_model_name"))
        and vision.get("timm_proj", "linear") == "linear"
        and vision.get("timm_pool", "avg") == "avg"
        and not vision.get("timm_model_pretrained", False)
    )


class _TimmTower(nn.Module):
    """``trunk`` (a timm model without its classifier, average-pooled) and ``head.proj``: the
    modules and parameter names of open_clip's ``TimmModel`` with ``pool="avg", proj="linear"``."""

    def __init__(self, vision: dict[str, Any], embed_dim: int) -> None:
        super().__init__()
        import timm

        self.trunk = timm.create_model(vision["timm_model_name"], pretrained=False)
        self.trunk.reset_classifier(0, global_pool="avg")
        head = OrderedDict(
            drop=nn.Dropout(0.0),
            proj=nn.Linear(self.trunk.num_features, embed_dim, bias=bool(vision.get("timm_proj_bias", False))),
        )
        self.head = nn.Sequential(head)
        size = int(vision.get("image_size", 224))
        self.image_size = (size, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


class ImageHalf(nn.Module):
    """The image half of a CLIP model: ``visual``, ``logit_scale``, ``encode_image`` and the
    embedding's width. Its encoder builds the text tower when text is asked of it
    (:attr:`~retrieval.models.encoder.Encoder.text_loader`)."""

    def __init__(self, visual: nn.Module, dim: int, logit_scale: float) -> None:
        super().__init__()
        self.visual = visual
        self._dim = dim
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale)))

    def output_dim(self) -> int:
        return self._dim

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.visual(image)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        raise ModelError("this model holds the image tower only; the encoder loads the text tower when asked for text")


class ImageTowerModel(ImageHalf):
    """A project model's image half built with timm, its weights still to load (:func:`load_image_side`)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        model_cfg = cfg["model_cfg"]
        embed_dim = int(model_cfg["embed_dim"])
        tower = _TimmTower(model_cfg["vision_cfg"], embed_dim)
        if "semantic_bridge" in cfg:
            bridge = BridgeConfig.from_dict(cfg["semantic_bridge"])
            visual: nn.Module = BridgedVisual(tower, SemanticBridge(bridge, embed_dim), bridge.anchor)
            dim = embed_dim + (bridge.text_dim if bridge.anchor else 0)
        else:
            visual, dim = tower, embed_dim
        super().__init__(visual, dim, math.log(1 / 0.07))


def load_image_side(model: ImageTowerModel, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a full model's checkpoint's image-side tensors (``visual.*``, ``logit_scale``) into ``model``.

    The checkpoint may hold part of the tower (what training changed); every image-side tensor
    it holds must fit.
    """
    own = model.state_dict()
    mine = {k: v for k, v in state.items() if k.startswith(_OWN)}
    unknown = [k for k in mine if k not in own]
    other_shape = [k for k in mine if k in own and mine[k].shape != own[k].shape]
    if unknown or other_shape:
        bad = (unknown or other_shape)[0]
        raise ModelError(
            f"{source} does not fit this model's image tower: {bad} ({len(unknown) + len(other_shape)} such)"
        )
    model.load_state_dict(mine, strict=False)
