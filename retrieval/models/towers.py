"""Optional image-tower tops that project models enable from their config.

``semantic_bridge`` (ConSE: Norouzi et al. 2014, "Zero-shot learning by convex combination
of semantic embeddings"): the image trunk's own pretrained classifier gives class
probabilities; their top-k, renormalised, weight a fixed matrix of class-name embeddings
made by the frozen text tower, which lands the image in the text tower's space. A learned
projection of that vector is added to the usual image projection.

``semantic_bridge.anchor`` adds a parameter-free zero-shot *anchor* to the embedding: the
ConSE vector itself (softer probabilities, centred on the mean class-name embedding) on the
image side and the *frozen* text tower's own sentence embedding (centred the same way) on the
text side, each unit length, scaled by ``sqrt(weight)`` and concatenated after the learned,
unit-length embedding. The cosine of two such vectors is
``(learned cosine + weight * anchor cosine) / (1 + weight)``: one vector per image, so any
index searches it, and a score that keeps the pretrained towers' own knowledge of concepts
the training captions never mention.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError


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
    anchor: AnchorConfig | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BridgeConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k != "anchor"}
        anchor = AnchorConfig.from_dict(d["anchor"], int(d["num_classes"])) if d.get("anchor") else None
        cfg = cls(**known, anchor=anchor)
        if not 1 <= cfg.top_k <= cfg.num_classes or cfg.temperature <= 0:
            raise ModelError(f"semantic_bridge: bad top_k {cfg.top_k} or temperature {cfg.temperature}")
        return cfg


@dataclass(frozen=True)
class AnchorConfig:
    """The ``semantic_bridge.anchor`` block: how much of the fixed ConSE score the embedding carries."""

    weight: float
    temperature: float = 1.0
    top_k: int = 1000

    @classmethod
    def from_dict(cls, d: dict[str, Any], num_classes: int) -> AnchorConfig:
        try:
            cfg = cls(**d)
        except TypeError as exc:
            raise ModelError(f"semantic_bridge.anchor: {exc}") from exc
        if cfg.weight <= 0 or cfg.temperature <= 0 or not 1 <= cfg.top_k <= num_classes:
            raise ModelError(f"semantic_bridge.anchor: bad weight, temperature or top_k in {d}")
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

    def semantic(
        self, pooled: torch.Tensor, temperature: float | None = None, top_k: int | None = None
    ) -> torch.Tensor:
        """The ConSE vector: a convex combination of class-name embeddings, ``[B, text_dim]``."""
        probs = F.softmax(self.classifier(pooled.float()) / (temperature or self.temperature), dim=-1)
        k = top_k or self.top_k
        if k >= probs.shape[-1]:  # every class: a plain mix, no sort
            return probs @ self.class_embeddings
        top, idx = probs.topk(k, dim=-1)
        top = top / top.sum(-1, keepdim=True)
        return torch.einsum("bk,bkd->bd", top, self.class_embeddings[idx])

    def center(self) -> torch.Tensor:
        """The mean class-name embedding: the anchor's origin on both sides."""
        return self.class_embeddings.mean(0)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.proj(self.semantic(pooled))


class BridgedVisual(nn.Module):
    """An open_clip timm image tower (``trunk`` -> pooled -> ``head``) plus a :class:`SemanticBridge`.

    ``trunk`` and ``head`` keep their names, so the tower's ``state_dict`` keys do not change.
    """

    def __init__(self, visual: nn.Module, bridge: SemanticBridge, anchor: AnchorConfig | None = None) -> None:
        super().__init__()
        self.trunk = visual.trunk
        self.head = visual.head
        self.bridge = bridge
        self.anchor = anchor
        self.image_size = getattr(visual, "image_size", None)

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled trunk features -> learned joint embedding (unnormalised)."""
        return self.head(pooled) + self.bridge(pooled)

    def embed(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled trunk features -> the full embedding: learned, plus the anchor when configured."""
        learned = self.project(pooled)
        if self.anchor is None:
            return learned
        a = self.anchor
        conse = self.bridge.semantic(pooled, a.temperature, a.top_k) - self.bridge.center()
        return anchored(learned, conse, a.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.trunk(x))


def anchored(learned: torch.Tensor, anchor: torch.Tensor, weight: float) -> torch.Tensor:
    """``[unit(learned), sqrt(weight) * unit(anchor)]``: cosines add up with ``weight`` on the anchor."""
    learned, anchor = F.normalize(learned.float(), dim=-1), F.normalize(anchor.float(), dim=-1)
    return torch.cat([learned, math.sqrt(weight) * anchor], dim=-1)


class TextAnchor(nn.Module):
    """The frozen text tower's pooled sentence embedding: the text side of the anchor.

    Holds an untouched copy of the pretrained transformer, taken before fine-tuned layers are
    loaded over the live one; it never trains.
    """

    def __init__(self, text: nn.Module) -> None:
        super().__init__()
        self.transformer = copy.deepcopy(text.transformer)
        self.pooler = copy.deepcopy(text.pooler)
        self.pad_token_id = text.config.pad_token_id
        self.requires_grad_(False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return pooled_sentences(self.transformer, self.pooler, self.pad_token_id, ids)


def pooled_sentences(transformer: nn.Module, pooler: nn.Module, pad_token_id: int, ids: torch.Tensor) -> torch.Tensor:
    """A Hugging Face text tower's pooled output (before any projection) for token ids."""
    mask = (ids != pad_token_id).long()
    return pooler(transformer(input_ids=ids, attention_mask=mask), mask)


def anchor_of(model: nn.Module) -> AnchorConfig | None:
    """The anchor a model's embeddings carry: its image tower's config once the text side exists."""
    return getattr(model.visual, "anchor", None) if hasattr(model, "text_anchor") else None


def anchor_text(model: nn.Module, learned: torch.Tensor, frozen_pooled: torch.Tensor) -> torch.Tensor:
    """Learned text embeddings -> the model's full ones, given the frozen tower's pooled output."""
    cfg = anchor_of(model)
    if cfg is None:
        return learned
    return anchored(learned, frozen_pooled.float() - model.visual.bridge.center(), cfg.weight)


def add_semantic_bridge(model: nn.Module, block: dict[str, Any], embed_dim: int) -> None:
    """Replace ``model.visual`` with a :class:`BridgedVisual` built from the config ``block``."""
    if not hasattr(model.visual, "trunk") or not hasattr(model.visual, "head"):
        raise ModelError("semantic_bridge needs a timm image tower (visual.trunk + visual.head)")
    cfg = BridgeConfig.from_dict(block)
    model.visual = BridgedVisual(model.visual, SemanticBridge(cfg, embed_dim), cfg.anchor)


def add_text_anchor(model: nn.Module) -> None:
    """Give an anchored model the frozen copy of its text tower; call before fine-tuned weights load.

    The model (built from :func:`anchored_clip_class`) then returns ``[learned, anchor]`` from
    ``encode_text`` as its image tower does.
    """
    if not isinstance(model, anchored_clip_class()):
        raise ModelError("a semantic_bridge anchor needs the open_clip_custom family")
    model.text_anchor = TextAnchor(model.text)


@functools.cache
def anchored_clip_class() -> type:
    """open_clip's ``CustomTextCLIP`` with an anchored ``encode_text`` (open_clip imported lazily)."""
    import open_clip

    class _AnchoredCLIP(open_clip.CustomTextCLIP):
        """``CustomTextCLIP`` whose text embedding carries the anchor of a :class:`BridgedVisual`."""

        def output_dim(self) -> int | None:
            """Width of the embedding with the anchor (``None``: the text projection's width)."""
            if anchor_of(self) is None:
                return None
            return self.text.proj.out_features + self.visual.bridge.class_embeddings.shape[1]

        def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
            out = self.text(text)
            if anchor_of(self) is not None:
                out = anchor_text(self, out, self.text_anchor(text))
            return F.normalize(out, dim=-1) if normalize else out

    return _AnchoredCLIP


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
    out = [
        pooled_sentences(
            text.transformer, text.pooler, text.config.pad_token_id, tokenizer(list(texts[s : s + batch_size]))
        )
        for s in range(0, len(texts), batch_size)
    ]
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
