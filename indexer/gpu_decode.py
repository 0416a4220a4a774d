"""Decode JPEGs on the GPU (nvJPEG through ``torchvision.io.decode_jpeg``), resize and normalise there.

CPU workers only read bytes (and the EXIF orientation, from the header); batches of JPEG
bytes are decoded on ``device`` in one call, then each image is turned upright, resized
(shorter side, bicubic, antialiased), centre-cropped and normalised on the device to the
model's ``preprocess``. Files that are not JPEG (PNG, HEIC...) are decoded by the workers
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
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from retrieval.encoder import normalize_pixels
from retrieval.errors import ImageDecodeError
from retrieval.imageio import load_image

JPEG_MAGIC = b"\xff\xd8\xff"
_EXIF_ORIENTATION = 0x0112
Transform = Callable[[Image.Image], torch.Tensor]


@dataclass(frozen=True)
class PixelSpec:
    """The model's eval preprocessing as numbers: shorter side ``resize``, crop ``size``, mean/std."""

    size: int
    resize: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_preprocess(cls, preprocess: dict[str, Any]) -> "PixelSpec":
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


def jpeg_orientation(data: bytes) -> int:
    """EXIF orientation (1-8) from the header only (Pillow opens lazily, no pixels decoded)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return 1  # unreadable or refused header: the decoder will report the file
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1


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


def resize_crop_normalize(image: torch.Tensor, spec: PixelSpec, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 ``[3, H, W]`` -> normalised ``[3, size, size]`` like torchvision Resize+CenterCrop+Normalize."""
    _, h, w = image.shape
    short, long = (h, w) if h <= w else (w, h)
    new_long = int(spec.resize * long / short)
    new_h, new_w = (spec.resize, new_long) if h <= w else (new_long, spec.resize)
    x = image.unsqueeze(0).float()
    if (new_h, new_w) != (h, w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
        x = x.clamp_(0, 255).round_()  # Pillow resizes in 8 bits
    x = center_crop(x, spec.size)
    if x.shape[-2:] != (spec.size, spec.size):  # smaller than the crop: pad like CenterCrop does
        x = F.pad(x, (0, spec.size - x.shape[-1], 0, spec.size - x.shape[-2]))
    return normalize_pixels(x, spec.mean, spec.std)[0].to(dtype)


@contextlib.contextmanager
def _torchvision_decode_quiet() -> Iterator[None]:
    """torchvision >= 0.29 warns on every decode that TorchCodec supersedes it; once is enough."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision.io")
        yield


def jpeg_at_input_scale(image: Image.Image, data: bytes, orientation: int, spec: PixelSpec,
                        draft_size: int | None) -> torch.Tensor | None:
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
    if image.format != "JPEG" or image.mode != "RGB" or orientation != 1 or short != spec.resize or spec.resize < spec.size:
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


def jpeg_decodes_on(device: "str | torch.device") -> bool:
    """Whether ``torchvision.io.decode_jpeg`` works on ``device`` (nvJPEG on CUDA): one tiny probe."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "JPEG")
    try:
        from torchvision.io import decode_jpeg

        with _torchvision_decode_quiet():
            decode_jpeg(byte_tensor(buffer.getvalue()), device=device)
    except (ImportError, RuntimeError):  # no decoders in this torchvision, no nvJPEG, no usable GPU, a driver mismatch...
        return False
    return True


def byte_tensor(data: bytes) -> torch.Tensor:
    """``data`` as a uint8 tensor over a writable copy (``torch.frombuffer`` warns on read-only bytes)."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def jpeg_file(index: int, data: bytes, orientation: int | None = None) -> EncodedFile | None:
    """A JPEG's bytes for the device and its EXIF orientation (read from the header unless given),
    or None when ``data`` is not a JPEG."""
    if not is_jpeg(data):
        return None
    return EncodedFile(index=index, data=byte_tensor(data),
                       orientation=jpeg_orientation(data) if orientation is None else orientation)


def read_jpeg(index: int, path: str) -> EncodedFile | None:
    """:func:`jpeg_file` of the file at ``path``; raises ``OSError``."""
    with open(path, "rb") as f:
        return jpeg_file(index, f.read())


def read_for_device(index: int, path: str, transform: Transform, draft_size: int | None) -> EncodedFile:
    """The CPU side of one file: JPEG bytes and orientation, else Pillow-decoded pixels."""
    try:
        item = read_jpeg(index, path)
    except OSError as exc:
        return EncodedFile(index=index, reason="unreadable", detail=str(exc))
    return item or _pillow(EncodedFile(index=index), path, transform, draft_size)


def _pillow(item: EncodedFile, path: str, transform: Transform, draft_size: int | None) -> EncodedFile:
    try:
        item.pixels = transform(load_image(path, draft_size=draft_size))
    except ImageDecodeError as exc:
        item.reason, item.detail = exc.reason, exc.detail
    return item


def decode_on_device(items: Sequence[EncodedFile], paths: Sequence[str], spec: PixelSpec, device: "str | torch.device",
                     transform: Transform, draft_size: int | None = None,
                     dtype: torch.dtype = torch.float32) -> PixelBatch:
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
    rows, tensors, failed = [], [], []
    for it in items:
        if it.index in decoded:
            img = orient(decoded[it.index], it.orientation)
            tensors.append(resize_crop_normalize(img, spec, dtype))
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
    pixels = torch.stack(tensors) if tensors else torch.zeros((0, 3, spec.size, spec.size), dtype=dtype, device=device)
    return PixelBatch(pixels=pixels, rows=rows, failed=failed, counts=counts, seconds=time.perf_counter() - start)


class _ReadDataset(Dataset[EncodedFile]):
    def __init__(self, paths: Sequence[str], transform: Transform, draft_size: int | None) -> None:
        self.paths, self.transform, self.draft_size = list(paths), transform, draft_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> EncodedFile:
        return read_for_device(i, self.paths[i], self.transform, self.draft_size)


def _as_list(items: list[EncodedFile]) -> list[EncodedFile]:
    return items


def iter_device_batches(paths: Sequence[str], preprocess: dict[str, Any], transform: Transform,
                        device: "str | torch.device", batch_size: int = 128, workers: int = 4,
                        draft_size: int | None = None, dtype: torch.dtype = torch.float32) -> Iterator[PixelBatch]:
    """Model-ready batches for ``paths`` in order: workers read (and prefetch) while the device decodes."""
    spec = PixelSpec.from_preprocess(preprocess)
    loader = DataLoader(_ReadDataset(paths, transform, draft_size), batch_size=batch_size, shuffle=False,
                        num_workers=workers, collate_fn=_as_list,
                        prefetch_factor=4 if workers > 0 else None, persistent_workers=False)
    for items in loader:
        batch = decode_on_device(items, paths, spec, device, transform, draft_size, dtype)
        yield batch
