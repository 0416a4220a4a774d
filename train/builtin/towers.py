"""Split the built-in model's towers into a frozen bottom (cached once) and a trainable top.

Everything here works on the real open_clip model returned by ``create_model``; the top
modules are the model's own submodules, so what training changes is saved under the
model's ``state_dict()`` keys and loads back with ``create_model("builtin")``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def image_bottom(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """EfficientNet trunk up to (excluding) ``conv_head``: ``[B, 320, 7, 7]``."""
    trunk = model.visual.trunk
    return trunk.blocks(trunk.bn1(trunk.conv_stem(pixels)))


def image_top(model: nn.Module, feats: torch.Tensor, window: torch.Tensor | None = None) -> torch.Tensor:
    """``conv_head`` -> ``bn2`` -> pool -> projection: the rest of ``model.encode_image``.

    ``window`` (``[B, 1, H, W]`` of 0/1) restricts the average pooling to a sub-window of
    the feature map: a crop augmentation that costs no extra trunk pass. It assumes the
    config's ``timm_pool`` is ``avg``, the only pooling this recipe trains.
    """
    if feats.dim() == 2:  # already pooled by a frozen conv_head
        return _project(model, feats)
    trunk = model.visual.trunk
    x = trunk.bn2(trunk.conv_head(feats))
    if window is None:
        x = trunk.forward_head(x)
    else:
        x = (x * window).sum((2, 3)) / window.sum((2, 3))
    return _project(model, x)


def _project(model: nn.Module, pooled: torch.Tensor) -> torch.Tensor:
    """Pooled trunk features -> embedding: the tower's ``embed`` (semantic bridge, anchor) or its head."""
    embed = getattr(model.visual, "embed", model.visual.head)
    return embed(pooled)


def random_windows(n: int, size: int, min_side: int, p: float, gen: torch.Generator) -> torch.Tensor:
    """``[n, 1, size, size]`` masks: with probability ``p`` a random rectangle, else everything."""
    masks = torch.ones((n, 1, size, size))
    for i in range(n):
        if float(torch.rand((), generator=gen)) >= p:
            continue
        h, w = (int(torch.randint(min_side, size + 1, (), generator=gen)) for _ in range(2))
        y, x = (
            int(torch.randint(0, size - h + 1, (), generator=gen)),
            int(torch.randint(0, size - w + 1, (), generator=gen)),
        )
        masks[i].zero_()
        masks[i, :, y : y + h, x : x + w] = 1
    return masks


def image_top_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Trainable image modules by their prefix in ``model.state_dict()``."""
    trunk = model.visual.trunk
    mods = {"visual.trunk.conv_head": trunk.conv_head, "visual.trunk.bn2": trunk.bn2, "visual.head": model.visual.head}
    bridge = getattr(model.visual, "bridge", None)
    if bridge is not None:
        mods["visual.bridge.proj"] = bridge.proj
    return mods


def _bert(model: nn.Module) -> nn.Module:
    return model.text.transformer


def text_layer_count(model: nn.Module) -> int:
    return len(_bert(model).encoder.layer)


def _layers(model: nn.Module) -> nn.ModuleList:
    return _bert(model).encoder.layer


def _mask_for(model: nn.Module, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(config=_bert(model).config, inputs_embeds=hidden, attention_mask=mask)


def text_bottom(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, n_top: int) -> torch.Tensor:
    """MiniLM hidden states after all but the last ``n_top`` layers: ``[B, L, 384]``."""
    bert = _bert(model)
    hidden = bert.embeddings(input_ids=ids)
    att = _mask_for(model, hidden, mask)
    for layer in list(_layers(model))[: text_layer_count(model) - n_top]:
        hidden = layer(hidden, attention_mask=att)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    return hidden


def text_top(model: nn.Module, hidden: torch.Tensor, mask: torch.Tensor, n_top: int, buckets: int = 1) -> torch.Tensor:
    """The last ``n_top`` MiniLM layers, mean pooling over real tokens, projection.

    ``buckets > 1`` runs the batch in length-sorted groups trimmed to their longest
    caption: the same result, with less work spent on padding.
    """
    if buckets > 1 and len(hidden) > buckets and hidden.dim() == 3:
        lengths = mask.sum(1)
        order = torch.argsort(lengths)
        parts = []
        for rows in torch.tensor_split(order, buckets):
            width = int(lengths[rows].max())
            parts.append(text_top(model, hidden[rows, :width], mask[rows, :width], n_top))
        return torch.cat(parts)[torch.argsort(order)]
    if hidden.dim() == 2:  # already pooled by a frozen text tower
        return model.text.proj(hidden)
    n = text_layer_count(model)
    hidden = text_layers(model, hidden, mask, n - n_top, n)
    m = mask.to(hidden.dtype).unsqueeze(-1)
    pooled = (hidden * m).sum(1) / m.sum(1)
    return model.text.proj(pooled)


def text_layers(model: nn.Module, hidden: torch.Tensor, mask: torch.Tensor, first: int, stop: int) -> torch.Tensor:
    """Run MiniLM layers ``first .. stop-1`` on hidden states."""
    att = _mask_for(model, hidden, mask)
    for layer in list(_layers(model))[first:stop]:
        hidden = layer(hidden, attention_mask=att)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    return hidden


def text_top_modules(model: nn.Module, n_top: int) -> dict[str, nn.Module]:
    n = text_layer_count(model)
    mods: dict[str, nn.Module] = {f"text.transformer.encoder.layer.{i}": _layers(model)[i] for i in range(n - n_top, n)}
    mods["text.proj"] = model.text.proj
    return mods


def normalized(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=-1)
