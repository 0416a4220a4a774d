"""The device decode path, run on CPU: same pixels as the Pillow path, orientation, fallbacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from indexer.exif import photo_info
from indexer.gpu_decode import (
    EncodedFile,
    PixelSpec,
    decode_on_device,
    jpeg_file,
    orient,
    pack_jpegs,
    resize_crop_normalize_many,
    unpack_jpegs,
)
from retrieval.duplicates.fingerprint import distance, pixel_fingerprints
from retrieval.errors import ImageDecodeError
from retrieval.imageio import load_image, open_image

PREPROCESS = {"image_size": 64, "resize": 72, "mean": [0.48, 0.45, 0.40], "std": [0.26, 0.26, 0.27]}


def _photo(path: Path, size: tuple[int, int], seed: int, exif: Image.Exif | None = None) -> Path:
    """A smooth random colour field with some edges: compresses and resizes like a photo."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)
    image = Image.fromarray(small).resize(size, Image.BICUBIC)
    arr = np.asarray(image).copy()
    arr[size[1] // 3 : size[1] // 2, size[0] // 4 : size[0] // 2] = (250, 240, 20)
    image = Image.fromarray(arr)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        image.save(path)
    else:
        image.save(path, "JPEG", quality=95, **({"exif": exif} if exif is not None else {}))
    return path


@pytest.fixture
def transform():
    from retrieval.models.encoder import build_transform

    return build_transform(PREPROCESS)


def _orientation(path: Path) -> int:
    """As the indexer's workers read it; a header nothing can parse leaves the decoders to report the file."""
    try:
        return photo_info(open_image(path), str(path)).orientation
    except ImageDecodeError:
        return 1


def _decode(paths: list[Path], transform):
    items = [
        jpeg_file(i, p.read_bytes(), _orientation(p)) or EncodedFile(index=i, pixels=transform(load_image(p)))
        for i, p in enumerate(paths)
    ]
    return decode_on_device(items, [str(p) for p in paths], PixelSpec.from_preprocess(PREPROCESS), "cpu", transform)


def test_device_pixels_match_pillow(tmp_path: Path, transform) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    paths = [
        _photo(tmp_path / "wide.jpg", (200, 150), 1),
        _photo(tmp_path / "tall.jpg", (90, 160), 2),
        _photo(tmp_path / "rotated.jpg", (160, 100), 3, exif=exif),
        _photo(tmp_path / "tiny.jpg", (40, 30), 4),
    ]
    batch = _decode(paths, transform)
    assert batch.rows == [0, 1, 2, 3] and not batch.failed and batch.counts["device"] == 4
    assert batch.pixels.shape == (4, 3, 64, 64) and batch.pixels.dtype == torch.float32
    reference = torch.stack([transform(load_image(p)) for p in paths])
    diff = (batch.pixels - reference).abs()
    # different JPEG decoders and resize kernels: close, not identical (units: normalised pixels, range ~8)
    assert diff.mean() < 0.03 and diff.amax() < 1.0, (diff.mean(), diff.amax())
    wrong_way = (batch.pixels[2] - transform(Image.open(paths[2]).convert("RGB"))).abs().mean()
    assert wrong_way > 10 * diff[2].mean()  # orientation was applied
    # so the device path's fingerprints (duplicates) are the Pillow path's, within a bit or two
    mean, std = PREPROCESS["mean"], PREPROCESS["std"]
    apart = distance(
        pixel_fingerprints(batch.pixels, mean, std).numpy(), pixel_fingerprints(reference, mean, std).numpy()
    )
    assert (apart <= 2).all(), apart


def test_fallbacks_png_and_corrupt(tmp_path: Path, transform) -> None:
    png = _photo(tmp_path / "a.png", (120, 80), 5)
    good = _photo(tmp_path / "b.jpg", (120, 80), 6)
    corrupt = tmp_path / "c.jpg"
    corrupt.write_bytes(good.read_bytes()[:200] + b"\x00" * 50)
    junk = tmp_path / "d.jpg"
    junk.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    batch = _decode([png, corrupt, good, junk], transform)
    assert batch.rows == [0, 2] and [i for i, _, _ in batch.failed] == [1, 3]
    assert all(reason and detail for _, reason, detail in batch.failed)  # Pillow's own account of each file
    assert batch.counts["pillow"] == 1 and batch.counts["device"] == 1 and batch.counts["failed"] == 2
    assert batch.counts["device_decode_failed"] == 2
    assert torch.allclose(batch.pixels[0], transform(load_image(png)), atol=1e-6)  # PNG went through Pillow


def test_orient_matches_pillow() -> None:
    from PIL import ImageOps

    base = Image.fromarray(np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10)
    for value in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = value
        image = base.copy()
        image.info["exif"] = exif.tobytes()
        image.getexif()[0x0112] = value
        expected = np.asarray(ImageOps.exif_transpose(image)).transpose(2, 0, 1)
        got = orient(torch.from_numpy(np.asarray(base).transpose(2, 0, 1).copy()), value).numpy()
        assert np.array_equal(got, expected), value


def test_resize_keeps_aspect_and_dtype() -> None:
    spec = PixelSpec(size=32, resize=40, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    (out,) = resize_crop_normalize_many([torch.full((3, 50, 200), 255, dtype=torch.uint8)], spec, torch.float16)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float16 and torch.allclose(out.float(), torch.ones(1))


def test_images_of_one_shape_are_resized_together_with_the_same_pixels() -> None:
    spec = PixelSpec(size=32, resize=40, mean=(0.48, 0.45, 0.40), std=(0.26, 0.26, 0.27))
    rng = np.random.default_rng(0)
    shapes = [(60, 80), (80, 60), (60, 80), (30, 20), (60, 80), (80, 60), (41, 40)]
    images = [torch.from_numpy(rng.integers(0, 256, (3, h, w), dtype=np.uint8)) for h, w in shapes]
    alone = torch.cat([resize_crop_normalize_many([image], spec) for image in images])
    for chunk_elements in (1 << 26, 3 * 60 * 80 * 2, 1):  # whole groups, pairs, one image per call
        together = resize_crop_normalize_many(images, spec, max_elements=chunk_elements)
        assert together.shape == (7, 3, 32, 32) and torch.allclose(together, alone, atol=1e-5), chunk_elements
    assert not torch.allclose(alone[0], alone[2])  # different images stayed in their places
    assert resize_crop_normalize_many(images[:2], spec, torch.float16).dtype == torch.float16


def test_packed_jpegs_come_back_as_views_in_order(tmp_path: Path) -> None:
    blobs = [_photo(tmp_path / f"{i}.jpg", (40 + 9 * i, 30), i).read_bytes() for i in range(3)]
    files = [
        jpeg_file(0, blobs[0], 1),
        EncodedFile(index=1, pixels=torch.zeros(3)),
        jpeg_file(2, blobs[1], 1),
        jpeg_file(3, blobs[2], 1),
    ]
    packed = pack_jpegs(files)
    assert packed is not None and packed.numel() == sum(map(len, blobs))
    assert all(f.data is None for f in files) and [f.packed_size for f in files] == [
        len(blobs[0]),
        0,
        *map(len, blobs[1:]),
    ]
    unpack_jpegs(files, packed)
    assert files[1].data is None and [bytes(f.data.numpy()) for f in (files[0], files[2], files[3])] == blobs
    assert files[3].data.untyped_storage().data_ptr() == packed.untyped_storage().data_ptr()  # views, not copies
    assert pack_jpegs([EncodedFile(index=0, pixels=torch.zeros(3))]) is None
