"""The one model factory: ``create_model(spec)`` returns a ready :class:`Encoder`.

The indexer, the query layer, the UI, the trainer and the tests all build models here.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelError, ModelUnavailableError, UnknownModelError
from .encoder import Encoder, check_precision, resolve_precision, select_device
from .modelid import RANDOM_SEED, expected_fingerprint, file_fingerprint  # noqa: F401  (part of this module's API)
from .onnximage import OnnxVisual
from .registry import RANDOM, ModelSpec, check_known, project_config, resolve_package_path, resolve_weights
from .towers import add_semantic_bridge, add_text_anchor, anchored_clip_class

log = logging.getLogger(__name__)

OFFLINE_HELP = (
    "Pretrained open_clip weights are downloaded on first use, which needs internet access. "
    "Offline, download the checkpoint on a connected machine and pass its path instead: "
    "--model ARCH:/path/to/checkpoint.pt (or .safetensors). The built-in model "
    "(--model builtin) needs no download."
)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' per-load report for the duration of one load, then restore it."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        yield
        return
    before = hf_logging.get_verbosity()
    bar_was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)
        if bar_was_on:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _seeded() -> Iterator[None]:
    """Random initialisation that is the same in every process, so ``:random`` specs agree."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        yield


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a checkpoint (.safetensors or a torch pickle, optionally wrapped in ``state_dict``)."""
    path = Path(path)
    if not path.is_file():
        raise ModelUnavailableError(f"checkpoint file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # any reader failure means the file is not a checkpoint we can use
        raise ModelUnavailableError(f"cannot read checkpoint {path}: {exc}") from exc
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ModelUnavailableError(f"{path} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _resolve_refs(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _resolve_refs(v) for k, v in obj.items()}
    if isinstance(obj, str) and obj.split(":", 1)[0] in {"pkgdir", "pkgfile", "package"}:
        return resolve_package_path(obj)
    return obj


def _map_by_order(
    src: dict[str, torch.Tensor], dst_keys: dict[str, torch.Tensor], what: str
) -> dict[str, torch.Tensor]:
    """Map a state dict onto another module's keys position by position, checking shapes."""
    if len(src) != len(dst_keys):
        raise ModelError(f"{what}: {len(src)} tensors in the weights, {len(dst_keys)} in the model")
    out = {}
    for (sk, sv), (dk, dv) in zip(src.items(), dst_keys.items()):
        if sv.shape != dv.shape:
            raise ModelError(f"{what}: {sk} {tuple(sv.shape)} does not fit {dk} {tuple(dv.shape)}")
        out[dk] = sv
    return out


def _load_tower_weights(model: torch.nn.Module, towers: dict[str, dict[str, Any]]) -> None:
    for attr, how in towers.items():
        module = model.get_submodule(attr)
        src = load_state_dict_file(how["source"])
        drop = tuple(how.get("drop_prefixes", ()))
        src = {k: v for k, v in src.items() if not k.startswith(drop)}
        if "keep_prefixes" in how:
            src = {k: v for k, v in src.items() if k.startswith(tuple(how["keep_prefixes"]))}
        dst = {k: v for k, v in module.state_dict().items() if not k.startswith(drop)}
        if how.get("key_map") == "by_order":
            src = _map_by_order(src, dst, attr)
        module.load_state_dict(src, strict=True)


def _apply_checkpoint(model: torch.nn.Module, path: str, partial: bool, arch: str) -> None:
    sd = load_state_dict_file(path)
    own = model.state_dict()
    unexpected = [k for k in sd if k not in own]
    missing = [] if partial else [k for k in own if k not in sd]
    other_shape = [k for k in sd if k in own and sd[k].shape != own[k].shape]
    if unexpected or missing or other_shape:
        found = [
            f"{len(other_shape)} of another shape (e.g. {other_shape[0]}: {tuple(sd[other_shape[0]].shape)} "
            f"there, {tuple(own[other_shape[0]].shape)} here)"
            if other_shape
            else "",
            f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
            f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
        ]
        trained_as = _trained_arch(path)
        hint = f"; it was trained as {trained_as}: use {trained_as}:{path}" if trained_as and trained_as != arch else ""
        raise ModelError(
            f"{path} does not fit the {arch} architecture: of its tensors, " + ", ".join(f for f in found if f) + hint
        )
    model.load_state_dict(sd, strict=not partial)


def _trained_arch(path: str) -> str | None:
    """The architecture ``python -m train`` recorded in a checkpoint's ``meta``, if any."""
    try:
        meta = torch.load(path, map_location="cpu", weights_only=True).get("meta") or {}
        return str(meta["arch"]) if meta.get("arch") else None
    except Exception:  # not a torch pickle with meta (safetensors, another trainer's file)
        return None


def _project_model(spec: ModelSpec, cfg: dict[str, Any]) -> tuple[torch.nn.Module, Any, str]:
    import open_clip

    model_cfg = _resolve_refs(cfg["model_cfg"])
    with _seeded(), _quiet_transformers():
        if cfg["family"] == "open_clip":
            model = open_clip.CLIP(**model_cfg)
        elif cfg["family"] == "open_clip_custom":
            model = anchored_clip_class()(**model_cfg)
        else:
            raise ModelError(f"config {spec.arch!r} has unknown family {cfg['family']!r}")
    if "semantic_bridge" in cfg:
        add_semantic_bridge(model, cfg["semantic_bridge"], int(model_cfg["embed_dim"]))
    _load_tower_weights(model, _resolve_refs(cfg.get("tower_weights", {})))
    if getattr(model.visual, "anchor", None) is not None:
        add_text_anchor(model)  # the pretrained text tower, before fine-tuned layers load over it

    weights = resolve_weights(spec)
    if weights == RANDOM:
        fingerprint = f"{RANDOM}-seed{RANDOM_SEED}"
    else:
        path = str(weights)
        if not Path(path).is_file():
            raise ModelUnavailableError(
                f"weights for {spec.arch!r} not found at {path}; reinstall the package, or pass "
                f"--model {spec.arch}:/path/to/checkpoint"
            )
        # Project models may ship only what training changed (heads, top layers).
        _apply_checkpoint(model, path, partial=bool(cfg.get("tower_weights")), arch=spec.arch)
        fingerprint = file_fingerprint(path)

    tok_cfg = _resolve_refs(cfg["tokenizer"])
    if tok_cfg["kind"] == "hf":
        with _quiet_transformers():
            tokenizer = open_clip.tokenizer.HFTokenizer(tok_cfg["name"], context_length=tok_cfg["context_length"])
    else:
        tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=tok_cfg["context_length"])
    return model, tokenizer, fingerprint


def _image_model(
    spec: ModelSpec, cfg: dict[str, Any], device: torch.device, precision: str
) -> tuple[torch.nn.Module, str] | None:
    """The image tower alone, or None where it cannot be built alone with the weights the full
    model would have: random weights (the full model's random initialisation draws the text
    tower's numbers in between), or a checkpoint that leaves part of the tower to that
    initialisation. Where the tower runs in fp32 on the CPU and has been exported
    (:mod:`retrieval.models.onnximage`), that export; else the tower built with timm
    (:mod:`retrieval.models.imagetower`)."""
    from . import onnximage
    from .imagetower import ImageTowerModel, load_image_side, supports

    path = resolve_weights(spec)
    if path == RANDOM or not supports(cfg) or not isinstance(path, Path) or not path.is_file():
        return None  # random weights (see above), or missing ones: the full path says what is missing
    fingerprint = file_fingerprint(path)
    if onnximage.applies(device, resolve_precision(precision, device, bf16_on_cpu=bool(cfg.get("cpu_bf16")))):
        exported = onnximage.load(f"{spec.arch}/{fingerprint}", int(cfg["preprocess"]["image_size"]))
        if exported is not None:
            return exported, fingerprint
    model = ImageTowerModel(cfg)
    towers = _resolve_refs(cfg.get("tower_weights", {}))
    state = load_state_dict_file(path)
    covered = set(state) | {k for k in model.state_dict() if k.startswith(tuple(f"{t}." for t in towers))}
    if any(k not in covered for k in model.state_dict()):
        return None
    _load_tower_weights(model, towers)
    load_image_side(model, state, str(path))
    return model, fingerprint


def _open_clip_model(spec: ModelSpec) -> tuple[torch.nn.Module, Any, str, dict[str, Any]]:
    import open_clip

    weights = resolve_weights(spec)
    if weights is None:
        raise ModelUnavailableError(
            f"{spec.arch!r} needs weights: a pretrained tag (one of "
            f"{', '.join(open_clip.list_pretrained_tags_by_model(spec.arch)) or 'none'}), "
            f"a local checkpoint path, or 'random'. Example: --model {spec.arch}:/path/to/ckpt.pt"
        )
    if weights == RANDOM:
        with _seeded(), _quiet_transformers():
            model = open_clip.create_model(spec.arch, pretrained=None)
        fingerprint = f"{RANDOM}-seed{RANDOM_SEED}"
    elif isinstance(weights, Path):
        if not weights.is_file():
            raise ModelUnavailableError(f"checkpoint file not found: {spec.weights}")
        with _quiet_transformers():
            try:
                model = open_clip.create_model(spec.arch, pretrained=spec.weights)
            except (RuntimeError, KeyError, ValueError) as exc:
                raise ModelError(f"{spec.weights} does not fit {spec.arch}: {exc}") from exc
        fingerprint = file_fingerprint(weights)
    else:
        tags = open_clip.list_pretrained_tags_by_model(spec.arch)
        if spec.weights not in tags:
            raise UnknownModelError(
                f"{spec.arch!r} has no pretrained tag {spec.weights!r}; known tags: {', '.join(tags) or 'none'}"
            )
        try:
            with _quiet_transformers():
                model = open_clip.create_model(spec.arch, pretrained=spec.weights)
        except Exception as exc:  # network stacks raise many types; all mean "could not fetch"
            raise ModelUnavailableError(f"could not load {spec}: {exc}. {OFFLINE_HELP}") from exc
        fingerprint = f"tag-{spec.weights}"
    try:
        with _quiet_transformers():
            tokenizer = open_clip.get_tokenizer(spec.arch)
    except Exception as exc:  # HF tokenizers download too
        raise ModelUnavailableError(f"could not load the tokenizer of {spec.arch}: {exc}. {OFFLINE_HELP}") from exc
    pp = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    size = model.visual.image_size
    preprocess = {
        "image_size": size[0] if isinstance(size, (tuple, list)) else size,
        "mean": list(pp.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        "std": list(pp.get("std", open_clip.OPENAI_DATASET_STD)),
    }
    return model, tokenizer, fingerprint, preprocess


def create_model(
    spec: str | ModelSpec | None = None,
    device: str | torch.device | None = None,
    training: bool = False,
    precision: str = "auto",
    towers: str = "both",
) -> Encoder:
    """Build the encoder for ``spec`` (default: the built-in model) on ``device`` (default: cuda if present).

    ``towers="image"`` (a build) builds only the image tower where the model allows it (the
    built-in model): same vectors, a fraction of the load time; the text tower is then built
    the first time the encoder is asked for text.

    For inference (the default) the image tower's BatchNorms are folded into its convolutions on
    first use (same vectors, faster); ``training=True`` keeps the towers exactly as built.
    ``precision`` (``auto``, ``fp32``, ``bf16``) is the encoder's autocast (``retrieval.models.encoder.resolve_precision``).
    """
    check_precision(precision)
    if towers not in ("both", "image"):
        raise ModelError(f"towers must be 'both' or 'image', not {towers!r}")
    parsed = ModelSpec.parse(spec)
    check_known(parsed)
    cfg = project_config(parsed.arch)
    chosen = select_device(device)
    image_only = _image_model(parsed, cfg, chosen, precision) if cfg and towers == "image" and not training else None
    text_loader, fold = None, not training
    if cfg is not None:
        channels_last = bool(cfg.get("channels_last", False))
        if image_only is not None:
            (model, fingerprint), tokenizer = image_only, None
            text_loader = functools.partial(create_model, parsed, device=device, precision=precision)
            if isinstance(model.visual, OnnxVisual):  # exported: folded, and fed plain NCHW arrays
                channels_last = fold = False
        else:
            model, tokenizer, fingerprint = _project_model(parsed, cfg)
        preprocess = cfg["preprocess"]
        micro = cfg.get("cpu_micro_batch")
        cpu_bf16 = bool(cfg.get("cpu_bf16", False))
    else:
        model, tokenizer, fingerprint, preprocess = _open_clip_model(parsed)
        channels_last, micro, cpu_bf16 = False, None, False
    return Encoder(
        model=model,
        tokenizer=tokenizer,
        preprocess=preprocess,
        spec=str(parsed),
        fingerprint=f"{parsed.arch}/{fingerprint}",
        device=chosen,
        channels_last=channels_last,
        cpu_micro_batch=int(micro) if micro else None,
        cpu_bf16=cpu_bf16,
        fold_batchnorm=fold,
        precision=precision,
        text_loader=text_loader,
    )
