"""Export a model's text tower to ONNX once, for the torch-free query path (:mod:`retrieval.models.onnxtext`).

Needs torch and the ``onnx`` package (torch's exporter writes through it); a build calls
:func:`ensure_text_onnx` with its encoder, which builds its text tower only when there is no
export yet. Only models whose tokenizer is a Hugging Face one with a ``tokenizer.json``
(the built-in model's) can be exported: open_clip's own BPE tokenizer has no torch-free twin
here, so those models keep the torch path.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ModelError, RetrievalWarning
from .encoder import Encoder
from .onnxtext import (
    _MAX_DIFF,
    _PROBES,
    DATA_FILE,
    FORMAT,
    INFO_FILE,
    MODEL_FILE,
    TOKENIZER_FILE,
    OnnxTextEncoder,
    enabled,
    folder_for,
)
from .registry import ModelSpec, project_config, resolve_package_path

OPSET = 17


class _TextTower(torch.nn.Module):
    """``ids -> unit text embedding``, the graph a query runs (the mask is computed from the ids)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.model.encode_text(ids).float(), dim=-1)


def _tokenizer_file(encoder: Encoder) -> tuple[Path, int] | None:
    """The ``tokenizer.json`` and context length of a project model's Hugging Face tokenizer, if it has one."""
    cfg = project_config(ModelSpec.parse(encoder.spec).arch)
    tok = (cfg or {}).get("tokenizer") or {}
    if tok.get("kind") != "hf":
        return None
    path = Path(resolve_package_path(tok["name"])) / "tokenizer.json"
    return (path, int(tok["context_length"])) if path.is_file() else None


def ensure_text_onnx(encoder: Encoder) -> Path | None:
    """The folder of this encoder's exported text tower, exported now if it is not there yet.

    None when the model cannot take the fast path (see the module docstring), when
    ``RETRIEVAL_FAST_TEXT=0``, or when the export failed: that costs queries their speed, never
    a build, and a warning says so.
    """
    if not enabled():
        return None
    source = _tokenizer_file(encoder)
    if source is None:
        return None
    folder = folder_for(encoder.fingerprint)
    if _current(folder):
        return folder
    try:
        encoder = encoder.with_text()  # an image-only encoder (a build's) builds its text tower now
        if encoder._text_pad_id() is None:
            return None
        return _export(encoder, folder, *source)
    except Exception as exc:  # the exporter fails in many types; each costs only the fast path
        warnings.warn(
            f"the text tower was not exported for fast queries ({type(exc).__name__}: {exc}); "
            "text queries load the full model",
            RetrievalWarning,
            stacklevel=2,
        )
        return None


def _optimize(traced: Path, out: Path, data_file: str | None = DATA_FILE) -> None:
    """Save the graph as ONNX Runtime optimizes it (fused attention and layer norms), its weights in
    a file beside it: a query then loads it with no optimization pass (0.03 s of CPU, not 0.3 s)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # ALL adds CPU-specific layouts
    options.optimized_model_filepath = str(out)
    if data_file:
        options.add_session_config_entry("session.optimized_model_external_initializers_file_name", data_file)
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    options.log_severity_level = 3
    ort.InferenceSession(str(traced), options, providers=["CPUExecutionProvider"])


def _move_into_place(tmp: Path, folder: Path, current: Callable[[Path], bool]) -> None:
    """Publish a checked export: ``tmp`` becomes ``folder`` whole or not at all. An export another
    ONNX Runtime made is replaced; one that another build made meanwhile (``current``) is kept."""
    if folder.exists():
        shutil.rmtree(folder, ignore_errors=True)
    try:
        os.rename(tmp, folder)
    except OSError:
        if not current(folder):
            raise


def _current(folder: Path) -> bool:
    """Whether ``folder`` holds a whole export this ONNX Runtime reads: one made by another ONNX
    Runtime, or whose files are not the sizes the export wrote (cut short), is made again."""
    import onnxruntime as ort

    try:
        info = json.loads((folder / INFO_FILE).read_text(encoding="utf-8"))
        whole = all((folder / name).stat().st_size == size for name, size in info.get("sizes", {}).items())
    except (OSError, ValueError, AttributeError):
        return False
    return whole and info.get("format") == FORMAT and info.get("onnxruntime") == ort.__version__


def _export(encoder: Encoder, folder: Path, tokenizer_json: Path, context_length: int) -> Path:
    import onnxruntime as ort

    model = encoder.model if encoder.device.type == "cpu" else copy.deepcopy(encoder.model).cpu()
    tower = _TextTower(model).eval()
    pad = encoder._text_pad_id()
    assert pad is not None

    def ids_of(texts: list[str]) -> torch.Tensor:
        ids = encoder.tokenizer(texts).cpu()
        return ids[:, : max(1, int((ids != pad).sum(1).max()))]

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=folder.parent))
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # the tracer's notes on shapes; the check below is what counts
            torch.onnx.export(
                tower,
                (ids_of(_PROBES[:2]),),
                str(tmp / "traced.onnx"),
                input_names=["input_ids"],
                output_names=["embedding"],
                opset_version=OPSET,
                dynamo=False,
                dynamic_axes={"input_ids": {0: "texts", 1: "tokens"}, "embedding": {0: "texts"}},
            )
            want = tower(ids_of(_PROBES)).numpy()
        _optimize(tmp / "traced.onnx", tmp / MODEL_FILE)
        (tmp / "traced.onnx").unlink()
        shutil.copyfile(tokenizer_json, tmp / TOKENIZER_FILE)
        hf = getattr(encoder.tokenizer, "tokenizer", None)
        info = {
            "format": FORMAT,
            "spec": encoder.spec,
            "fingerprint": encoder.fingerprint,
            "embed_dim": int(want.shape[1]),
            "context_length": context_length,
            "pad_id": pad,
            "pad_token": str(getattr(hf, "pad_token", None) or "[PAD]"),
            "opset": OPSET,
            "onnxruntime": ort.__version__,
            "sizes": {name: (tmp / name).stat().st_size for name in (MODEL_FILE, DATA_FILE, TOKENIZER_FILE)},
        }
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        fast = OnnxTextEncoder.load(tmp, threads=1)
        if fast is None:
            raise ModelError("ONNX Runtime cannot load the exported text tower")
        diff = float(np.abs(fast.encode_texts(_PROBES) - want).max())
        if diff > _MAX_DIFF:
            raise ModelError(f"the exported text tower differs from the model by {diff:.2e}")
        del fast
        _move_into_place(tmp, folder, _current)
        return folder
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fast_image_encoder(encoder: Encoder) -> Encoder:
    """A build's image-only encoder with its tower run by ONNX Runtime, exported now if it is not yet.

    Only where the tower runs in fp32 on the CPU (:mod:`retrieval.models.onnximage`); elsewhere, or
    when the export fails (a warning says so), ``encoder`` itself. The export costs seconds,
    once per model and machine; every later build loads it in a fraction of a second.
    """
    from . import onnximage
    from .imagetower import ImageTowerModel

    if (
        not isinstance(encoder.model, ImageTowerModel)  # the towers retrieval.models.imagetower builds
        or not onnximage.applies(encoder.device, encoder.resolved_precision)
        or encoder.folded_batchnorms  # folded under inference mode: its tensors cannot be traced
    ):
        return encoder
    folder = onnximage.folder_for(encoder.fingerprint)
    try:
        model = onnximage.load(encoder.fingerprint, encoder.image_size)
        if model is None:  # none yet, another ONNX Runtime's, or a damaged file: (re-)export
            _export_image(encoder, folder)
            model = onnximage.load(encoder.fingerprint, encoder.image_size)
        if model is None:
            raise ModelError("ONNX Runtime cannot load the exported image tower")
    except Exception as exc:  # the exporter fails in many types; each costs only speed
        warnings.warn(
            f"the image tower was not exported ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            "the build runs it with torch",
            RetrievalWarning,
            stacklevel=2,
        )
        return encoder
    # the exported tower in place of the torch one: folded, fed plain NCHW arrays; text as before
    return dataclasses.replace(encoder, model=model, channels_last=False, fold_batchnorm=False)


def _export_image(encoder: Encoder, folder: Path) -> None:
    import onnxruntime as ort

    from . import onnximage

    size = encoder.image_size
    probe = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0))
    tower = encoder.model.visual.eval()  # as built: ONNX Runtime folds the BatchNorms into the convolutions
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=folder.parent))
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # the tracer's notes; the check below is what counts
            tower = tower.to(memory_format=torch.contiguous_format)
            torch.onnx.export(
                tower,
                (probe[:2],),
                str(tmp / "traced.onnx"),
                input_names=[onnximage.INPUT],
                output_names=[onnximage.OUTPUT],
                opset_version=OPSET,
                dynamo=False,
                dynamic_axes={onnximage.INPUT: {0: "images"}, onnximage.OUTPUT: {0: "images"}},
            )
            want = tower(probe).float().numpy()
            if encoder.channels_last:
                tower.to(memory_format=torch.channels_last)
        _optimize(tmp / "traced.onnx", tmp / onnximage.MODEL_FILE, data_file=None)
        (tmp / "traced.onnx").unlink()
        info = {
            "format": onnximage.FORMAT,
            "spec": encoder.spec,
            "fingerprint": encoder.fingerprint,
            "embed_dim": int(want.shape[1]),
            "logit_scale": float(encoder.model.logit_scale.detach()),
            "image_size": size,
            "opset": OPSET,
            "onnxruntime": ort.__version__,
        }
        (tmp / onnximage.INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        got = onnximage.OnnxVisual(tmp, size)(probe).numpy()
        diff = float(np.abs(got - want).max())
        if diff > _MAX_DIFF * max(1.0, float(np.abs(want).max())):
            raise ModelError(f"the exported image tower differs from the model by {diff:.2e}")
        _move_into_place(tmp, folder, lambda f: onnximage.read_info(f) is not None)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
