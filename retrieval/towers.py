"""Optional image-tower tops that project models enable from their config.

``semantic_bridge`` (ConSE: Norouzi et al. 2014, "Zero-shot learning by convex combination
of semantic embeddings"): the image trunk's own pretrained classifier gives class
probabilities; their top-k, renormalised, weight a fixed matrix of class-name embeddings
made by the frozen text tower, which lands the image in the text tower's space. A learned
projection of that vector is added to the usual image projection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ModelError


@dataclass(frozen=True)
class BridgeConfig:
    """The ``semantic_bridge`` block of a model config."""

    num_classes: int
    in_features: int
    text_dim: int
    classnames: str = "imagenet"
    template: str = "a photo of a {}."
    top_k: int = 10
    temperature: float = 1.0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BridgeConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        cfg = cls(**known)
        if not 1 <= cfg.top_k <= cfg.num_classes or cfg.temperature <= 0:
            raise ModelError(f"semantic_bridge: bad top_k {cfg.top_k} or temperature {cfg.temperature}")
        return cfg


class SemanticBridge(nn.Module):
    """Pooled image features -> class probabilities -> mix of class-name text embeddings -> joint space."""

    def __init__(self, cfg: BridgeConfig, embed_dim: int) -> None:
        super().__init__()
        self.top_k, self.temperature = cfg.top_k, cfg.temperature
        self.classifier = nn.Linear(cfg.in_features, cfg.num_classes)
        # Filled by training (and shipped with the weights): one text-tower embedding per class name.
        self.register_buffer("class_embeddings", torch.zeros(cfg.num_classes, cfg.text_dim))
        self.proj = nn.Linear(cfg.text_dim, embed_dim, bias=False)

    def semantic(self, pooled: torch.Tensor) -> torch.Tensor:
        """The ConSE vector: a convex combination of class-name embeddings, ``[B, text_dim]``."""
        probs = F.softmax(self.classifier(pooled.float()) / self.temperature, dim=-1)
        top, idx = probs.topk(self.top_k, dim=-1)
        top = top / top.sum(-1, keepdim=True)
        return torch.einsum("bk,bkd->bd", top, self.class_embeddings[idx])

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.proj(self.semantic(pooled))


class BridgedVisual(nn.Module):
    """An open_clip timm image tower (``trunk`` -> pooled -> ``head``) plus a :class:`SemanticBridge`.

    ``trunk`` and ``head`` keep their names, so the tower's ``state_dict`` keys do not change.
    """

    def __init__(self, visual: nn.Module, bridge: SemanticBridge) -> None:
        super().__init__()
        self.trunk = visual.trunk
        self.head = visual.head
        self.bridge = bridge
        self.image_size = getattr(visual, "image_size", None)

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled trunk features -> joint embedding (unnormalised)."""
        return self.head(pooled) + self.bridge(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.trunk(x))


def add_semantic_bridge(model: nn.Module, block: dict[str, Any], embed_dim: int) -> None:
    """Replace ``model.visual`` with a :class:`BridgedVisual` built from the config ``block``."""
    if not hasattr(model.visual, "trunk") or not hasattr(model.visual, "head"):
        raise ModelError("semantic_bridge needs a timm image tower (visual.trunk + visual.head)")
    model.visual = BridgedVisual(model.visual, SemanticBridge(BridgeConfig.from_dict(block), embed_dim))


def class_names(source: str) -> list[str]:
    """Class names for a bridge: ``imagenet`` (open_clip's cleaned ImageNet-1k names)."""
    if source == "imagenet":
        import open_clip

        return list(open_clip.IMAGENET_CLASSNAMES)
    raise ModelError(f"semantic_bridge: unknown class-name set {source!r}")


@torch.inference_mode()
def text_features(model: nn.Module, tokenizer: Any, texts: Sequence[str], batch_size: int = 250) -> torch.Tensor:
    """The frozen text tower's pooled output (before its projection) for ``texts``."""
    text = model.text
    pad = text.config.pad_token_id
    out = []
    for s in range(0, len(texts), batch_size):
        ids = tokenizer(list(texts[s : s + batch_size]))
        mask = (ids != pad).long()
        hidden = text.transformer(input_ids=ids, attention_mask=mask)
        out.append(text.pooler(hidden, mask))
    return torch.cat(out).float()


def fill_class_embeddings(model: nn.Module, tokenizer: Any, classnames: str, template: str) -> torch.Tensor:
    """Compute the bridge's class-name embeddings with the model's own text tower, store and return them."""
    names = class_names(classnames)
    bridge: SemanticBridge = model.visual.bridge
    if len(names) != bridge.class_embeddings.shape[0]:
        raise ModelError(f"semantic_bridge: {len(names)} class names for {bridge.class_embeddings.shape[0]} classes")
    emb = text_features(model, tokenizer, [template.format(n) for n in names])
    bridge.class_embeddings.copy_(emb)
    return emb
