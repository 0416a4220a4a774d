"""Decode stage: a worker process that dies on one file costs only that file."""

from __future__ import annotations

import os
from pathlib import Path

from indexer.decode import DecodeDataset, DecodedItem, iter_decoded
from indexer.scan import scan

from .conftest import write_image


class _CrashingDataset(DecodeDataset):
    """Kills its own worker process (as a crash in a C decoder would) on files named ``crash*``."""

    def _decode(self, item: DecodedItem) -> None:
        if Path(item.file.path).name.startswith("crash"):
            os._exit(7)
        super()._decode(item)


def test_worker_crash_costs_one_file(tmp_path: Path, tiny_encoder) -> None:
    for i in range(10):
        write_image(tmp_path / f"{i:02d}.png", color=(20 * i, 10, 10))
    write_image(tmp_path / "03b_crash.png")
    os.rename(tmp_path / "03b_crash.png", tmp_path / "crash.png")
    files = scan([str(tmp_path)])
    dataset = _CrashingDataset(files, tiny_encoder.transform, draft_size=64)
    batches = list(iter_decoded(dataset, batch_size=3, workers=1))
    items = [it for b in batches for it in b.items]
    assert [it.file.path for it in items] == [f.path for f in files], "every file once, in order"
    crashed = [it for it in items if it.reason is not None]
    assert [Path(it.file.path).name for it in crashed] == ["crash.png"] and crashed[0].reason == "decoder_crashed"
    decoded = sum(0 if b.pixels is None else len(b.pixels) for b in batches)
    assert decoded == 10 and all(b.pixels is None or b.pixels.shape[1:] == (3, 32, 32) for b in batches)


def test_uint8_workers_embed_like_float_transform(tmp_path: Path, tiny_encoder) -> None:
    """Workers ship uint8 pixels; the vectors equal those of the float transform, also channels-last in micro-batches."""
    import dataclasses

    import numpy as np
    import torch

    from retrieval.encoder import normalize_pixels
    from retrieval.imageio import load_image
    from retrieval.models import create_model

    for i in range(5):
        write_image(tmp_path / f"{i}.jpg", size=(90 + 7 * i, 60), color=(40 * i, 200 - 30 * i, 90))
    files = scan([str(tmp_path)])
    dataset = DecodeDataset(files, tiny_encoder.pixel_transform, draft_size=None)
    (batch,) = list(iter_decoded(dataset, batch_size=8, workers=1))
    assert batch.pixels is not None and batch.pixels.dtype == torch.uint8
    assert batch.pixels.shape == (5, 3, tiny_encoder.image_size, tiny_encoder.image_size)
    assert batch.pixels.is_contiguous(memory_format=torch.channels_last)  # Pillow's bytes, copied once
    mean, std = tiny_encoder.preprocess["mean"], tiny_encoder.preprocess["std"]
    as_transform = torch.stack([tiny_encoder.transform(load_image(f.path)) for f in files])
    assert torch.equal(normalize_pixels(batch.pixels, mean, std), as_transform)  # the same arithmetic, bit for bit

    reference = tiny_encoder.encode_images([load_image(f.path) for f in files])
    np.testing.assert_allclose(tiny_encoder.encode_pixels(batch.pixels).numpy(), reference, atol=1e-5)
    fresh = create_model("tiny-clip", device="cpu")
    nhwc = dataclasses.replace(fresh, channels_last=True, cpu_micro_batch=2)
    np.testing.assert_allclose(nhwc.encode_pixels(batch.pixels).numpy(), reference, atol=1e-5)
