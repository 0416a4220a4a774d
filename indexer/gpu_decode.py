"""Decode JPEGs on the GPU (nvJPEG through ``torchvision.io.decode_jpeg``), resize and normalise there.

CPU workers only read bytes (and the EXIF orientation, from the header) and send a batch's
JPEGs as one tensor (:func:`pack_jpegs`); they are decoded on ``device`` in one call, then
turned upright, resized (shorter side, bicubic, antialiased; images of one shape together),
centre-cropped and normalised on the device to the model's ``preprocess``. Files that are not JPEG (PNG, HEIC...) are decoded by the workers
with Pillow ``draft`` and the model's own transform; a JPEG the device cannot decode falls
back to Pillow too, one file at a time. Both are counted. With ``device="cpu"`` the same
code runs on CPU, which is what the tests exercise here. ``indexer build`` uses it through
:mod:`indexer.device_stage` (``--gpu-decode``).
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from retrieval.errors import ImageDecodeError
from retrieval.imageio import load_image
from retrieval.models.encoder import normalize_pixels

JPEG_MAGIC = b"\xff\xd8\xff"
JPEG_END = b"\xff\xd9"  # EOI, the end-of-image marker
Transform = Callable[[Image.Image], torch.Tensor]
# float pixels resized in one call. On a GPU, few calls (launches) matter: 256 MB, 150 photos of
# 500x375. On a CPU, staying in cache does: 16 MB, 27 images of 224x224, is 1.3-2x faster than
# one image or a whole 256-image batch per call (measured on 2,048 Flickr8k images).
GROUP_ELEMENTS = {"cuda": 1 << 26, "cpu": 1 << 22}


@dataclass(frozen=True)
class PixelSpec:
    """The model's eval preprocessing as numbers: shorter side ``resize``, crop ``size``, mean/std."""

    size: int
    resize: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_preprocess(cls, preprocess: dict[str, Any]) -> PixelSpec:
        size = int(preprocess["image_size"])
        return cls(size, int(preprocess.get("resize", size)), tuple(preprocess["mean"]), tuple(preprocess["std"]))


@dataclass
class EncodedFile:
    """What a CPU worker hands over: JPEG bytes to decode on the device, or pixels it decoded itself."""

    index: int
    data: torch.Tensor | None = None
    orientation: int = 1
    pixels: torch.Tensor | None = None
    reason: str | None = None
    detail: str = ""
    packed_size: int = 0  # while ``data`` travels inside a batch's :func:`pack_jpegs` tensor: its length there


@dataclass
class PixelBatch:
    """Model-ready pixels on the device; ``rows[i]`` is the input position of ``pixels[i]``.

    ``failed`` holds ``(input position, reason, detail)`` of the files nothing could decode.
    """

    pixels: torch.Tensor
    rows: list[int]
    failed: list[tuple[int, str, str]] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    seconds: float = 0.0


def is_jpeg(data: bytes) -> bool:
    return data[:3] == JPEG_MAGIC


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply EXIF orientation to ``[C, H, W]`` the way ``PIL.ImageOps.exif_transpose`` does."""
    ops: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {
        2: lambda x: x.flip(-1),
        3: lambda x: x.flip(-1, -2),
        4: lambda x: x.flip(-2),
        5: lambda x: x.transpose(-1, -2),
        6: lambda x: torch.rot90(x, -1, (-2, -1)),
        7: lambda x: x.transpose(-1, -2).flip(-1, -2),
        8: lambda x: torch.rot90(x, 1, (-2, -1)),
    }
    op = ops.get(orientation)
    return op(image) if op else image


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The centre ``size`` square of ``[..., H, W]`` (a view), placed as torchvision's ``CenterCrop`` places it."""
    h, w = x.shape[-2:]
    top, left = max(int(round((h - size) / 2.0)), 0), max(int(round((w - size) / 2.0)), 0)
    return x[..., top : top + size, left : left + size]


def resize_crop_normalize_many(
    images: Sequence[torch.Tensor], spec: PixelSpec, dtype: torch.dtype = torch.float32, max_elements: int | None = None
) -> torch.Tensor:
    """uint8 ``[3, H, W]`` images -> normalised ``[N, 3, size, size]``, in order.

    Images of one shape (one camera, one export size) are resized together, in chunks of at most
    ``max_elements`` float pixels (default: ``GROUP_ELEMENTS`` for the images' device): a handful
    of device calls for a batch instead of eight per image, whose launch cost alone would hold a
    GPU back to a few thousand images a second.
    """
    if not images:
        return torch.zeros((0, 3, spec.size, spec.size), dtype=dtype)
    device = images[0].device
    max_elements = max_elements or GROUP_ELEMENTS.get(device.type, GROUP_ELEMENTS["cuda"])
    out = torch.empty((len(images), 3, spec.size, spec.size), dtype=dtype, device=device)
    groups: dict[tuple[int, ...], list[int]] = {}
    for k, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(k)
    for shape, members in groups.items():
        step = max(1, max_elements // max(1, shape[0] * shape[1] * shape[2]))
        for start in range(0, len(members), step):
            chunk = members[start : start + step]
            out[chunk] = _resize_crop_normalize(torch.stack([images[k] for k in chunk]), spec).to(dtype)
    return out


def _resize_crop_normalize(x: torch.Tensor, spec: PixelSpec) -> torch.Tensor:
    """uint8 ``[N, 3, H, W]`` of one shape -> normalised float32 ``[N, 3, size, size]``."""
    h, w = x.shape[-2:]
    short, long = (h, w) if h <= w else (w, h)
    new_long = int(spec.resize * long / short)
    new_h, new_w = (spec.resize, new_long) if h <= w else (new_long, spec.resize)
    x = x.float()
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
        x = x.clamp_(0, 255).round_()  # Pillow resizes in 8 bits
    x = center_crop(x, spec.size)
    if x.shape[-2:] != (spec.size, spec.size):  # smaller than the crop: pad like CenterCrop does
        x = F.pad(x, (0, spec.size - x.shape[-1], 0, spec.size - x.shape[-2]))
    return normalize_pixels(x, spec.mean, spec.std)


@contextlib.contextmanager
def _torchvision_decode_quiet() -> Iterator[None]:
    """torchvision >= 0.29 warns on every decode that TorchCodec supersedes it; once is enough."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision.io")
        yield


def jpeg_at_input_scale(
    image: Image.Image, data: bytes, orientation: int, spec: PixelSpec, draft_size: int | None
) -> torch.Tensor | None:
    """uint8 ``[3, size, size]`` pixels of an upright RGB JPEG already at the model's scale, else None.

    ``image`` is the file's parsed header (``retrieval.imageio.open_image``), ``data`` its bytes,
    ``orientation`` its EXIF orientation (only 1, upright, is decoded here).
    When the shorter side already equals ``spec.resize`` and Pillow's ``draft`` would not reduce
    the scale, there is nothing to resize: torchvision's libjpeg-turbo decode gives the same
    pixels as Pillow's (all 8,000 Flickr8k images compared equal) in two thirds of the time, as
    a tensor, without Pillow's copy out of its own pixel buffer. Anything else (other sizes,
    modes and formats, a file torchvision refuses) returns None and goes to Pillow.
    """
    short = min(image.size)
    if (
        image.format != "JPEG"
        or image.mode != "RGB"
        or orientation != 1
        or short != spec.resize
        or spec.resize < spec.size
    ):
        return None
    if draft_size and short >= 2 * draft_size:  # Pillow would decode this at a reduced scale
        return None
    try:
        from torchvision.io import decode_jpeg

        with _torchvision_decode_quiet():
            pixels = decode_jpeg(byte_tensor(data))
    except (ImportError, RuntimeError):  # a torchvision without its decoders, or a file it refuses
        return None
    return center_crop(pixels, spec.size) if pixels.shape == (3, image.height, image.width) else None


def device_decodable(image: Image.Image, data: bytes) -> bool:
    """Whether a JPEG (its parsed header and its bytes) goes to the device's batched decode.

    Baseline RGB and grey JPEGs that end with their end-of-image marker do (nvJPEG decodes them
    in one batched call, on the hardware JPEG engines of an A100 or H100). The others are
    decoded by Pillow (``draft`` scaled) in the worker processes instead, in parallel:
    progressive JPEGs, which nvJPEG would decode one at a time with their entropy decoding on
    the main process's single CPU thread; CMYK ones, which it refuses; and files that do not
    end with the marker: truncated ones, which Pillow then reports exactly as on the Pillow
    path, and those with data appended, such as a phone's motion-photo video.
    """
    return (
        image.format == "JPEG"
        and image.mode in ("RGB", "L")
        and not image.info.get("progressive")
        and data.endswith(JPEG_END)
    )


def jpeg_decodes_on(device: str | torch.device) -> bool:
    """Whether ``torchvision.io.decode_jpeg`` works on ``device`` (nvJPEG on CUDA): one tiny probe."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "JPEG")
    try:
        from torchvision.io import decode_jpeg

        with _torchvision_decode_quiet():
            decode_jpeg(byte_tensor(buffer.getvalue()), device=device)
    except (
        ImportError,
        RuntimeError,
    ):  # no decoders in this torchvision, no nvJPEG, no usable GPU, a driver mismatch...
        return False
    return True


def byte_tensor(data: bytes) -> torch.Tensor:
    """``data`` as a uint8 tensor over a writable copy (``torch.frombuffer`` warns on read-only bytes)."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def jpeg_file(index: int, data: bytes, orientation: int) -> EncodedFile | None:
    """A JPEG's bytes for the device with its EXIF orientation (``indexer.exif.photo_info`` reads it),
    or None when ``data`` is not a JPEG."""
    if not is_jpeg(data):
        return None
    return EncodedFile(index=index, data=byte_tensor(data), orientation=orientation)


def pack_jpegs(files: Sequence[EncodedFile]) -> torch.Tensor | None:
    """Move the JPEG bytes of ``files`` into one tensor, in order; each file keeps only its length.

    A batch sent from a worker process as one tensor is one shared-memory block (and, on CUDA,
    one pinned copy), where a tensor per file costs the receiving process a block each: about
    120 us a file, against 7 us packed, measured here. :func:`unpack_jpegs` undoes it.
    """
    jpegs = [f for f in files if f.data is not None]
    if not jpegs:
        return None
    packed = torch.cat([f.data for f in jpegs])  # type: ignore[misc]
    for f in jpegs:
        f.packed_size, f.data = len(f.data), None  # type: ignore[arg-type]
    return packed


def unpack_jpegs(files: Sequence[EncodedFile], packed: torch.Tensor | None) -> None:
    """Give each packed file of ``files`` its bytes back, as a view into ``packed`` (no copy)."""
    offset = 0
    for f in files:
        if f.packed_size:
            assert packed is not None, "files were packed but no bytes came with them"
            f.data, f.packed_size = packed[offset : offset + f.packed_size], 0
            offset += len(f.data)


def _pillow(item: EncodedFile, path: str, transform: Transform, draft_size: int | None) -> EncodedFile:
    try:
        item.pixels = transform(load_image(path, draft_size=draft_size))
    except ImageDecodeError as exc:
        item.reason, item.detail = exc.reason, exc.detail
    return item


def decode_on_device(
    items: Sequence[EncodedFile],
    paths: Sequence[str],
    spec: PixelSpec,
    device: str | torch.device,
    transform: Transform,
    draft_size: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> PixelBatch:
    """Decode the JPEG bytes among ``items`` in one device call and stack every decodable file."""
    from torchvision.io import ImageReadMode, decode_jpeg

    start = time.perf_counter()
    device = torch.device(device)
    counts: Counter = Counter()
    jpegs = [it for it in items if it.data is not None]
    decoded: dict[int, torch.Tensor] = {}
    with _torchvision_decode_quiet():
        if jpegs:
            try:
                images = decode_jpeg([it.data for it in jpegs], mode=ImageReadMode.RGB, device=device)
                decoded = {it.index: img for it, img in zip(jpegs, images)}
            except RuntimeError:  # one bad file fails the whole batch call: retry one by one
                for it in jpegs:
                    try:
                        decoded[it.index] = decode_jpeg(it.data, mode=ImageReadMode.RGB, device=device)
                    except RuntimeError:
                        counts["device_decode_failed"] += 1
    upright = [orient(decoded[it.index], it.orientation) for it in items if it.index in decoded]
    resized = resize_crop_normalize_many(upright, spec, dtype) if upright else None
    rows, tensors, failed = [], [], []
    for it in items:
        if it.index in decoded:
            tensors.append(resized[counts["device"]])  # type: ignore[index]
            counts["device"] += 1
        else:
            if it.data is not None:  # a JPEG the device could not decode: Pillow, on this CPU
                it = _pillow(EncodedFile(index=it.index), paths[it.index], transform, draft_size)
            if it.pixels is None:
                failed.append((it.index, it.reason or "corrupt", it.detail))
                counts["failed"] += 1
                continue
            counts["pillow"] += 1
            pixels = it.pixels.pin_memory() if device.type == "cuda" else it.pixels
            tensors.append(pixels.to(device, dtype=dtype, non_blocking=True))
        rows.append(it.index)
    if resized is not None and len(tensors) == len(resized):  # all decoded here, in order: no second copy
        pixels = resized
    else:
        pixels = (
            torch.stack(tensors) if tensors else torch.zeros((0, 3, spec.size, spec.size), dtype=dtype, device=device)
        )
    return PixelBatch(pixels=pixels, rows=rows, failed=failed, counts=counts, seconds=time.perf_counter() - start)
