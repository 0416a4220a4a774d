"""Batched, normalised embedding of images and texts with any CLIP-style model."""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from ..errors import ImageDecodeError, ModelError
from ..imageio import load_image, to_rgb
from ..workers import SharedMemoryLoader
from .fold import fold_batchnorms

PRECISIONS = ("auto", "fp32", "bf16")  # Encoder.precision: see resolve_precision
PRECISION_HELP = (
    "model precision (default auto: bf16 on CUDA; on a CPU, bf16 where it has native bf16 (AVX512-BF16 "
    "or AMX) and the model gains from it, as the built-in model does; else fp32)"
)
_AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ModelError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    return precision


def native_cpu_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic in hardware (AVX512-BF16 or AMX); elsewhere oneDNN
    emulates it, which need not beat fp32."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def resolve_precision(precision: str, device: str | torch.device, *, bf16_on_cpu: bool) -> str:
    """What ``precision`` means on ``device``: ``fp32``, ``bf16`` or ``fp16`` (ModelError if unknown).

    ``auto`` is bf16 on CUDA (fp16 on a GPU without bf16). On a CPU it is bf16 only where the CPU
    has native bf16 *and* the model is known to gain from it (``bf16_on_cpu``, the model
    config's ``cpu_bf16``): there the built-in model indexes about 1.35x faster, encodes text
    2.7x and trains 2.2x faster with the same recall, while open_clip's ViT-B-32 runs 0.8x as
    fast, so it stays fp32. Everywhere else ``auto`` is fp32. ``fp32`` and ``bf16`` mean themselves.
    """
    if check_precision(precision) != "auto":
        return precision
    if torch.device(device).type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    on_cpu = torch.device(device).type == "cpu"
    return "bf16" if on_cpu and bf16_on_cpu and native_cpu_bf16() else "fp32"


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_malloc_tuned: bool | None = None


def tune_malloc() -> bool:
    """Let glibc keep freed activation buffers for reuse instead of returning them to the OS.

    By default glibc serves large blocks with ``mmap`` and unmaps them on free, so every CNN
    forward pass on the CPU page-faults its activations in afresh (kernel time was 44% of the
    built-in model's forward pass). Raising the mmap threshold to its 32 MB maximum and the trim
    threshold to 1 GB keeps those blocks in the heap. Process-wide and done once; returns
    whether it applied (glibc only; ``RETRIEVAL_MALLOC_TUNING=0`` turns it off).
    """
    global _malloc_tuned
    if _malloc_tuned is None:
        _malloc_tuned = False
        if os.environ.get("RETRIEVAL_MALLOC_TUNING", "1") != "0":
            try:
                libc = ctypes.CDLL("libc.so.6")
                _malloc_tuned = bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(
                    libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
                )
            except (OSError, AttributeError):
                pass
    return _malloc_tuned


def select_device(device: str | torch.device | None = None) -> torch.device:
    """Explicit device, else ``$RETRIEVAL_DEVICE``, else cuda when available, else cpu."""
    if device is None:
        device = os.environ.get("RETRIEVAL_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ModelError(f"unknown device {device!r}: use cpu, cuda or cuda:N (or mps on a Mac)") from exc
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} asked for, but torch sees no CUDA GPU here; use --device cpu")
    if chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise ModelError(f"device {device!r} asked for, but there are {torch.cuda.device_count()} CUDA GPU(s)")
    return chosen


def build_transform(preprocess: dict[str, Any], normalize: bool = True) -> Callable[[Image.Image], torch.Tensor]:
    """Eval-time image transform (resize shorter side, center crop, normalise). Picklable.

    It computes what torchvision's ``Resize`` (bicubic), ``CenterCrop``, ``ToTensor`` and
    ``Normalize`` compute on a Pillow image, with Pillow and torch alone: importing torchvision
    costs a build or an image query about 2 s.

    With ``normalize=False`` it stops at a ``uint8 [3, H, W]`` tensor: a quarter of the bytes
    to pass between processes, and no float work in a decode worker. ``Encoder.encode_pixels``
    finishes such a batch (:func:`normalize_pixels`) with the same arithmetic.
    """
    size = int(preprocess["image_size"])
    norm = (tuple(preprocess["mean"]), tuple(preprocess["std"])) if normalize else None
    return _Transform(int(preprocess.get("resize", size)), size, norm)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB Pillow image as a ``uint8 [3, H, W]`` view of its ``[H, W, 3]`` bytes (torchvision's ``PILToTensor``)."""
    return torch.from_numpy(np.array(image, np.uint8, copy=True)).permute(2, 0, 1)


def normalize_pixels(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``uint8 [B, 3, H, W]`` (or float in 0-255) to the model's float input, as ``ToTensor`` then ``Normalize`` compute it.

    The result keeps the input's memory layout. A channels-last batch (what :func:`stack_pixels`
    makes) is normalised through its contiguous ``[B, H, W, 3]`` view: on the CPU, broadcasting
    over dim 1 of a channels-last tensor is about 9x slower (0.11 against 0.012 ms per 224 px image).
    """
    x = pixels.float()
    channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    shape = (-1,) if channels_last else (1, -1, 1, 1)
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(shape)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(shape)
    (x.permute(0, 2, 3, 1) if channels_last else x).div_(255).sub_(m).div_(s)
    return x


def stack_pixels(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack ``[3, H, W]`` images into a channels-last ``[B, 3, H, W]`` batch.

    ``PILToTensor`` returns a ``[3, H, W]`` view of Pillow's ``[H, W, 3]`` bytes, so stacking the
    ``[H, W, 3]`` views is a plain copy; ``torch.stack`` of the ``[3, H, W]`` views transposes
    every image (0.045 against 0.004 ms per 224 px image), and a channels-last model would then
    transpose the batch back.
    """
    return torch.stack([x.permute(1, 2, 0) for x in images]).permute(0, 3, 1, 2)


class _Transform:
    """RGB, shorter side resized (bicubic), centre square cropped, then ``uint8 [3, H, W]`` or
    normalised float. Picklable, for decode workers.

    Each step is skipped when it would not change the image: Pillow copies the pixels even for
    a same-size resize or a whole-image crop (0.03 ms per 224 px image, a tenth of its decode).
    """

    def __init__(self, resize: int, size: int, norm: tuple[Sequence[float], Sequence[float]] | None) -> None:
        self.resize, self.size, self.norm = resize, size, norm

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = to_rgb(image)
        w, h = image.size
        if min(w, h) != self.resize:  # the shorter side to ``resize``, the longer in proportion, rounded down
            long = int(self.resize * max(w, h) / min(w, h))
            image = image.resize((self.resize, long) if w <= h else (long, self.resize), Image.Resampling.BICUBIC)
        if image.size != (self.size, self.size):
            image = _center_crop(image, self.size)
        pixels = pil_to_tensor(image)
        if self.norm is None:
            return pixels
        return normalize_pixels(pixels.unsqueeze(0).contiguous(), *self.norm)[0]


def _center_crop(image: Image.Image, size: int) -> Image.Image:
    """The centre ``size`` square, black-padded where the image is smaller (as ``CenterCrop`` places it)."""
    w, h = image.size
    if size > w or size > h:
        padded = Image.new(image.mode, (max(w, size), max(h, size)))
        padded.paste(image, ((size - w) // 2 if size > w else 0, (size - h) // 2 if size > h else 0))
        image, (w, h) = padded, padded.size
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass
class Encoder:
    """A model with its tokenizer and transform. ``encode_*`` return L2-normalised float32 arrays.

    ``fingerprint`` identifies the weights: two encoders with the same fingerprint produce
    vectors that may share an index.

    With ``fold_batchnorm`` (inference, the default of ``create_model``) the first image batch
    replaces ``model.visual`` by a copy whose BatchNorm layers are folded into the convolutions
    before them (:mod:`retrieval.models.fold`); training keeps the tower as built.

    An encoder built for images only (``create_model(spec, towers="image")``, a build) has no
    ``tokenizer`` but a ``text_loader``: the first call that needs text builds the full model
    with it and hands text to that model from then on.
    """

    model: torch.nn.Module
    tokenizer: Callable[..., torch.Tensor] | None
    preprocess: dict[str, Any]
    spec: str
    fingerprint: str
    device: torch.device
    channels_last: bool = False
    cpu_micro_batch: int | None = None
    cpu_bf16: bool = False  # the model config's "cpu_bf16": measured faster under bf16 on a CPU with native bf16
    fold_batchnorm: bool = False
    precision: str = "auto"
    text_loader: Callable[[], Encoder] | None = None
    folded_batchnorms: int = field(default=0, init=False)
    _with_text: Encoder | None = field(default=None, init=False, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)
    transform: Callable[[Image.Image], torch.Tensor] = field(init=False)
    pixel_transform: Callable[[Image.Image], torch.Tensor] = field(init=False)

    def __post_init__(self) -> None:
        check_precision(self.precision)
        self.model = self.model.to(self.device).eval()
        if self.device.type == "cpu":
            tune_malloc()
        if self.channels_last:
            self.model.visual.to(memory_format=torch.channels_last)
        self.transform = build_transform(self.preprocess)
        self.pixel_transform = build_transform(self.preprocess, normalize=False)

    @property
    def embed_dim(self) -> int:
        return int(self._probe_dim())

    def _probe_dim(self) -> int:
        declared = getattr(self.model, "output_dim", None)
        dim = declared() if callable(declared) else None
        if dim is not None:
            return int(dim)
        proj = getattr(self.model, "text_projection", None)
        if isinstance(proj, torch.Tensor):
            return proj.shape[1]
        text = getattr(self.model, "text", None)
        proj = getattr(text, "proj", None)
        if isinstance(proj, torch.nn.Linear):
            return proj.out_features
        return self.encode_texts(["probe"]).shape[1]

    @property
    def image_size(self) -> int:
        return int(self.preprocess["image_size"])

    @property
    def logit_scale(self) -> float:
        return float(self.model.logit_scale.exp().clamp(max=100).item())

    @property
    def resolved_precision(self) -> str:
        """What ``precision`` means on this device: ``fp32``, ``bf16`` or ``fp16`` (:func:`resolve_precision`)."""
        return resolve_precision(self.precision, self.device, bf16_on_cpu=self.cpu_bf16)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The forward passes' autocast (:attr:`resolved_precision`)."""
        dtype = _AUTOCAST[self.resolved_precision]
        return torch.autocast(self.device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Embed a transformed batch ``[B, 3, H, W]``; returns normalised float32 on CPU.

        The batch is either the model's float input (``transform``) or ``uint8`` pixels
        (``pixel_transform``), which are normalised here, on the model's device. On the CPU a
        model config's ``cpu_micro_batch`` splits the batch: a CNN's activations for 8 images
        stay in cache and in reusable heap blocks (the built-in model runs 2.4x faster in
        chunks of 8 than of 32).
        """
        step = self.cpu_micro_batch if self.device.type == "cpu" else None
        if step and len(pixels) > step:
            return torch.cat([self._encode_pixels(pixels[i : i + step]) for i in range(0, len(pixels), step)])
        return self._encode_pixels(pixels)

    def _fold(self) -> None:
        """Fold the image tower's BatchNorms once, checked on a seeded random probe batch."""
        with self._lock:
            if not self.fold_batchnorm:
                return
            size = self.image_size
            probe = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(self.device)
            if self.channels_last:
                probe = probe.contiguous(memory_format=torch.channels_last)
            visual, self.folded_batchnorms = fold_batchnorms(self.model.visual, lambda m: m(probe))
            if self.channels_last:
                visual.to(memory_format=torch.channels_last)
            self.model.visual = visual
            self.fold_batchnorm = False

    @torch.inference_mode()
    def start_encode_pixels(self, pixels: torch.Tensor) -> Callable[[], torch.Tensor]:
        """:meth:`encode_pixels`, with the wait for the result left to the function returned.

        On CUDA the model's work is queued and its result copied into pinned memory
        asynchronously, so the caller can prepare the next batch (decode JPEGs on the device,
        take the workers' next batch) while the GPU runs this one. Elsewhere the work is done
        here and the function only returns it.
        """
        if self.device.type != "cuda":
            done = self.encode_pixels(pixels)
            return lambda: done
        feats = self._embed_on_device(pixels)
        out = torch.empty(feats.shape, dtype=feats.dtype, pin_memory=True)
        out.copy_(feats, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record(torch.cuda.current_stream(self.device))  # the model's GPU, whichever is current

        def result() -> torch.Tensor:
            copied.synchronize()
            return out

        return result

    def _encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._embed_on_device(pixels).cpu()

    def _embed_on_device(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised float32 embeddings of ``pixels``, left on the model's device."""
        if self.fold_batchnorm:
            self._fold()
        pixels = pixels.to(self.device, non_blocking=True)
        # the layout the model wants, before normalising: a copy of uint8 moves a quarter of the bytes
        pixels = pixels.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        if pixels.dtype == torch.uint8:
            pixels = normalize_pixels(pixels, self.preprocess["mean"], self.preprocess["std"])
        with self._autocast():
            feats = self.model.encode_image(pixels)
        return F.normalize(feats.float(), dim=-1)

    def encode_images(self, images: Iterable[Image.Image | torch.Tensor], batch_size: int = 32) -> np.ndarray:
        """Embed PIL images (or transformed tensors). Returns ``[N, D]`` float32, unit length."""
        items = list(images)
        out = [np.zeros((0, self.embed_dim), np.float32)]
        for batch in _batches(items, batch_size):
            pixels = torch.stack([x if isinstance(x, torch.Tensor) else self.transform(x) for x in batch])
            out.append(self.encode_pixels(pixels).numpy())
        return np.concatenate(out).astype(np.float32, copy=False)

    def _text_pad_id(self) -> int | None:
        """The pad id of a Hugging Face text tower (attention-masked, so trailing padding can go), else None.

        open_clip's own text transformer needs the full context (fixed causal mask), so it keeps it.
        """
        text = getattr(self.model, "text", None)
        config = getattr(text, "config", None)
        pad = getattr(config, "pad_token_id", None)
        return int(pad) if pad is not None and hasattr(text, "transformer") else None

    def with_text(self) -> Encoder:
        """This encoder, or for an image-only one the full encoder its ``text_loader`` builds (once)."""
        if self.text_loader is None:
            return self
        with self._lock:
            if self._with_text is None:
                self._with_text = self.text_loader()
        return self._with_text

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str] | str, batch_size: int = 256) -> np.ndarray:
        """Embed texts. Returns ``[N, D]`` float32, unit length."""
        if self.text_loader is not None:
            return self.with_text().encode_texts(texts, batch_size)
        assert self.tokenizer is not None
        if isinstance(texts, str):
            texts = [texts]
        out = []
        pad = self._text_pad_id()
        for batch in _batches(list(texts), batch_size):
            tokens = self.tokenizer(list(batch))
            if pad is not None:  # drop the all-padding tail: a short query costs its own length, not the context's
                tokens = tokens[:, : max(1, int((tokens != pad).sum(1).max()))]
            tokens = tokens.to(self.device)
            with self._autocast():
                feats = self.model.encode_text(tokens)
            out.append(F.normalize(feats.float(), dim=-1).cpu().numpy())
        if not out:
            return np.zeros((0, self.embed_dim), np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)


class _ImageFiles(Dataset):
    """``uint8`` pixels of each file, and what went wrong with it (None when nothing): a typed
    error raised in a worker process would reach the main one as a RuntimeError holding a
    traceback, so the error travels as its ``(path, reason, detail)``."""

    def __init__(
        self, paths: Sequence[str | os.PathLike[str]], transform: Callable[[Image.Image], torch.Tensor], draft: int
    ) -> None:
        self.paths, self.transform, self.draft = list(paths), transform, draft

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, tuple[str, str, str] | None]:
        try:
            return self.transform(load_image(self.paths[i], draft_size=self.draft)), None
        except ImageDecodeError as exc:
            return torch.zeros(3, self.draft, self.draft, dtype=torch.uint8), (exc.path, exc.reason, exc.detail)


def _collate_files(
    items: list[tuple[torch.Tensor, tuple[str, str, str] | None]],
) -> tuple[torch.Tensor, list[tuple[str, str, str] | None]]:
    return torch.stack([pixels for pixels, _ in items]), [error for _, error in items]


def embed_files(
    encoder: Encoder,
    paths: Sequence[str | os.PathLike[str]],
    batch_size: int = 64,
    *,
    strict: bool = False,
    workers: int = 0,
    progress: bool = False,
    desc: str = "embed",
    leave: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Unit-length embeddings of the image files that decode, and a boolean mask of which did.

    Files are decoded ``batch_size`` at a time (in ``workers`` processes, or in this one with
    0) and each batch's decodable images are embedded together. A file that does not decode
    is left out, or with ``strict`` raises its :class:`ImageDecodeError`. ``progress`` shows a
    bar of batches named ``desc`` (kept on screen when done with ``leave``).
    """
    from tqdm import tqdm

    loader = SharedMemoryLoader(
        _ImageFiles(paths, encoder.pixel_transform, encoder.image_size),
        batch_size=batch_size,
        collate_fn=_collate_files,
        num_workers=workers,
    )
    ok = np.zeros(len(paths), bool)
    out = [np.zeros((0, encoder.embed_dim), np.float32)]
    batches = tqdm(loader, disable=not progress, desc=desc, unit="batch", leave=leave)
    for i, (pixels, errors) in enumerate(batches):
        good = [error is None for error in errors]
        if strict and not all(good):
            raise ImageDecodeError(*next(error for error in errors if error is not None))
        ok[i * batch_size : i * batch_size + len(good)] = good
        if any(good):
            out.append(encoder.encode_pixels(pixels[torch.tensor(good)] if not all(good) else pixels).numpy())
    return np.concatenate(out), ok
