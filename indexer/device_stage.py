"""The decode stage with JPEGs decoded on the model's device (``BuildConfig.gpu_decode``).

Workers hash each file, read its facts (:func:`~indexer.exif.photo_info`) and, for a baseline RGB
or grey JPEG, keep its bytes and EXIF orientation; any other file (progressive, CMYK and
truncated JPEGs too, :func:`~indexer.gpu_decode.device_decodable`) is decoded there with Pillow, as in
:class:`indexer.decode.DecodeDataset`. The main process then decodes a batch's JPEGs in one
``decode_jpeg`` call on the encoder's device (:func:`indexer.gpu_decode.decode_on_device`),
resizes and normalises them there, and hands on the same :class:`DecodedBatch` the Pillow
stage gives: embedding, assembling and the catalog do not know which stage ran. Every file
reaches the model as its normalised float input, so a batch mixing device-decoded JPEGs and
Pillow-decoded PNGs stacks into one tensor.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from retrieval.imageio import open_image
from retrieval.models.encoder import Encoder

from .config import BuildConfig
from .decode import DecodeDataset, DecodedBatch, DecodedItem
from .exif import photo_info
from .gpu_decode import (
    EncodedFile,
    PixelSpec,
    Transform,
    decode_on_device,
    device_decodable,
    is_jpeg,
    jpeg_decodes_on,
    jpeg_file,
    pack_jpegs,
    unpack_jpegs,
)
from .scan import ScannedFile


def wants_device_decode(choice: bool | None, device: torch.device) -> bool:
    """``BuildConfig.gpu_decode``: None means on when ``device`` is CUDA and nvJPEG works there."""
    if choice is not None:
        return choice
    return device.type == "cuda" and jpeg_decodes_on(device)


def _items(items: list[DecodedItem]) -> DecodedBatch:
    """Nothing stacked yet (the device stage decodes and stacks); the JPEG bytes travel as one tensor."""
    return DecodedBatch(items=items, jpegs=pack_jpegs([it.encoded for it in items if it.encoded is not None]))


class DeviceDecodeDataset(DecodeDataset):
    """Workers leave JPEGs encoded (``DecodedItem.encoded``); ``transform`` must give the model's float input."""

    collate = staticmethod(_items)

    def _read(self, item: DecodedItem, data: bytes | None) -> None:
        if data is None or not is_jpeg(data):  # not a JPEG (or too big to keep): Pillow, here in the worker
            return super()._read(item, data)
        image = open_image(item.file.path, data=data)  # refuses what Pillow refuses
        if not device_decodable(image, data):  # progressive, CMYK, truncated...: Pillow, here, in parallel
            return self._decode_opened(item, image, data)
        item.info = photo_info(image, item.file.path)
        item.encoded = jpeg_file(0, data, item.info.orientation)


@dataclass
class DeviceDecoder:
    """The main process's half: decode a batch's JPEGs on ``device`` and stack every decodable file."""

    spec: PixelSpec
    device: torch.device
    transform: Transform
    draft_size: int | None

    def __call__(self, batch: DecodedBatch) -> DecodedBatch:
        items = batch.items
        unpack_jpegs([it.encoded for it in items if it.encoded is not None], batch.jpegs)
        batch.jpegs = None
        pending = [k for k, it in enumerate(items) if it.encoded is not None or it.pixels is not None]
        files = [_encoded(j, items[k]) for j, k in enumerate(pending)]
        out = decode_on_device(
            files, [items[k].file.path for k in pending], self.spec, self.device, self.transform, self.draft_size
        )
        for j, reason, detail in out.failed:
            items[pending[j]].reason, items[pending[j]].detail = reason, detail
        for k in pending:
            items[k].encoded = items[k].pixels = None
        batch.pixel_items = [pending[j] for j in out.rows]
        batch.pixels = out.pixels if out.rows else None
        batch.on_device = out.counts["device"]
        return batch


def _encoded(index: int, item: DecodedItem) -> EncodedFile:
    if item.encoded is None:
        return EncodedFile(index=index, pixels=item.pixels)
    item.encoded.index = index
    return item.encoded


def decode_stage(
    files: Sequence[ScannedFile], encoder: Encoder, config: BuildConfig, known_sha256: frozenset[str]
) -> tuple[DecodeDataset, DeviceDecoder | None]:
    """The workers' dataset, and the device half when ``config.gpu_decode`` picks the device path."""
    draft_size = int(encoder.image_size * config.draft_factor)
    spec = PixelSpec.from_preprocess(encoder.preprocess)
    if not wants_device_decode(config.gpu_decode, encoder.device):
        # torchvision's decode of a JPEG already at the model's scale saves about a third of that
        # file's decode; importing torchvision for it costs about 2 s, which a CPU build with the
        # exported image tower (no torchvision) would not otherwise pay: use it where it is loaded.
        direct = spec if "torchvision" in sys.modules else None
        return DecodeDataset(files, encoder.pixel_transform, draft_size, known_sha256, direct=direct), None
    return (
        DeviceDecodeDataset(files, encoder.transform, draft_size, known_sha256),
        DeviceDecoder(spec, encoder.device, encoder.transform, draft_size),
    )
