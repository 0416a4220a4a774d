"""Decode stage: a worker process that dies on one file costs only that file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from indexer.decode import DecodeDataset, DecodedItem, iter_decoded
from indexer.scan import scan

from .conftest import write_image


class _CrashingDataset(DecodeDataset):
    """Kills its own worker process (as a crash in a C decoder would) on files named ``crash*``."""

    def _decode(self, item: DecodedItem) -> None:
        if Path(item.file.path).name.startswith("crash"):
            os._exit(7)
        super()._decode(item)


@pytest.mark.slow
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

    from retrieval.imageio import load_image
    from retrieval.models.encoder import normalize_pixels
    from retrieval.models.factory import create_model

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


def test_jpegs_at_input_scale_decode_to_the_same_pixels_without_pillow(tmp_path: Path, tiny_encoder) -> None:
    """torchvision decodes a JPEG that needs no resize; every other file goes through Pillow; same pixels either way."""
    import torch
    from PIL import Image

    from indexer.exif import photo_info
    from indexer.gpu_decode import PixelSpec, jpeg_at_input_scale
    from retrieval.imageio import open_image

    side = tiny_encoder.image_size
    direct = {"wide.jpg": (side + 13, side), "tall.jpg": (side, side + 12), "square.jpg": (side, side)}
    for i, (name, size) in enumerate(direct.items()):
        write_image(tmp_path / name, size=size, color=(60 * i, 120, 200 - 50 * i))
    Image.open(tmp_path / "wide.jpg").save(tmp_path / "progressive.jpg", "JPEG", progressive=True, subsampling=0)
    write_image(tmp_path / "bigger.jpg", size=(2 * side + 5, 2 * side))
    Image.open(tmp_path / "square.jpg").convert("L").save(tmp_path / "grey.jpg", "JPEG")
    write_image(tmp_path / "square.png", size=(side, side))
    exif = Image.Exif()
    exif[0x0112] = 6
    write_image(tmp_path / "turned.jpg", size=(side + 13, side), exif=exif)
    files = scan([str(tmp_path)])
    spec = PixelSpec.from_preprocess(tiny_encoder.preprocess)

    taken = set()
    for f in files:
        data = Path(f.path).read_bytes()
        image = open_image(f.path, data=data)
        if jpeg_at_input_scale(image, data, photo_info(image, f.path).orientation, spec, 2 * side) is not None:
            taken.add(Path(f.path).name)
    assert taken == {*direct, "progressive.jpg"}

    def pixels(dataset: DecodeDataset) -> torch.Tensor:
        (batch,) = list(iter_decoded(dataset, batch_size=len(files), workers=0))
        assert batch.pixels is not None and len(batch.pixels) == len(files)
        return batch.pixels

    fast = DecodeDataset(files, tiny_encoder.pixel_transform, draft_size=2 * side, direct=spec)
    pillow = DecodeDataset(files, tiny_encoder.pixel_transform, draft_size=2 * side)
    assert torch.equal(pixels(fast), pixels(pillow))
    turned = [fast[i] for i, f in enumerate(files) if f.path.endswith("turned.jpg")][0]
    assert (
        turned.info is not None
        and turned.info.orientation == 6
        and (turned.info.width, turned.info.height) == (side, side + 13)
    )

    cut = tmp_path / "cut" / "truncated.jpg"  # torchvision refuses it, so Pillow reports it, as before
    cut.parent.mkdir()
    cut.write_bytes((tmp_path / "square.jpg").read_bytes()[:-40])
    (bad,) = [DecodeDataset(scan([str(cut.parent)]), tiny_encoder.pixel_transform, 2 * side, direct=spec)[0]]
    assert bad.reason == "truncated" and bad.pixels is None


def test_read_hashed_keeps_small_files_and_streams_big_ones(tmp_path: Path, monkeypatch) -> None:
    import hashlib

    from indexer import decode

    path = write_image(tmp_path / "a.png", size=(64, 64))
    raw = path.read_bytes()
    assert decode.read_hashed(str(path)) == (hashlib.sha256(raw).hexdigest(), raw)
    monkeypatch.setattr(decode, "KEEP_BYTES_UP_TO", len(raw) - 1)
    monkeypatch.setattr(decode, "_CHUNK", 7)
    assert decode.read_hashed(str(path)) == (hashlib.sha256(raw).hexdigest(), None)
    (item,) = [DecodeDataset(scan([str(tmp_path)]), lambda im: im.size, draft_size=None)[0]]
    assert item.reason is None and item.pixels == (64, 64) and item.sha256 == hashlib.sha256(raw).hexdigest()


def test_heic_photo_info_comes_from_the_bytes_already_read(tmp_path: Path) -> None:
    """A HEIC's size, type and EXIF come from the image opened from memory, not from a second open by path."""
    import pytest
    from PIL import Image

    from indexer.exif import photo_info, read_photo_info
    from retrieval.imageio import open_image

    pillow_heif = pytest.importorskip("pillow_heif")
    path = tmp_path / "phone.heic"
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Apple", "iPhone 15"  # camera make and model
    try:
        pillow_heif.from_pillow(Image.new("RGB", (64, 48), (10, 200, 30))).save(
            str(path), quality=90, exif=exif.tobytes()
        )
    except (RuntimeError, ValueError) as exc:  # a libheif without an HEVC encoder
        pytest.skip(f"pillow-heif cannot write HEIC here: {exc}")
    from_disk = read_photo_info(path)
    data = path.read_bytes()
    path.unlink()  # any read by path would now fail
    info = photo_info(open_image(path, data=data), path)
    assert info == from_disk
    assert (info.width, info.height, info.file_type, info.camera_make, info.camera_model) == (
        64,
        48,
        "heif",
        "Apple",
        "iPhone 15",
    )


def test_16_bit_and_float_grayscale_images_are_scaled_not_clipped_to_white(tmp_path: Path) -> None:
    """Pillow's own RGB conversion clips 16-bit values at 255: a scanner's 16-bit PNG became a
    white picture. Decoded, indexed and fingerprinted, it now matches its 8-bit version."""
    import numpy as np
    from PIL import Image
    from skimage import data

    from indexer import BuildConfig, build
    from retrieval.imageio import load_image
    from retrieval.index.reader import IndexReader

    photos = tmp_path / "photos"
    photos.mkdir()
    camera = data.camera()
    Image.fromarray(camera).save(photos / "eight.png")
    Image.fromarray(camera.astype(np.uint16) * 257).save(photos / "sixteen.png")
    Image.fromarray(camera.astype(np.int32) * 100, "I").save(photos / "thirty-two.tif")
    Image.fromarray((camera / 255.0).astype(np.float32), "F").save(photos / "float.tif")
    assert Image.open(photos / "sixteen.png").mode == "I;16"
    for name in ("sixteen.png", "thirty-two.tif", "float.tif"):
        pixels = np.asarray(load_image(photos / name), dtype=np.int16)
        assert np.abs(pixels - camera[..., None]).max() <= 1, name

    build([photos], tmp_path / "idx", BuildConfig(model="tiny-clip", workers=0))
    meta = IndexReader.open(tmp_path / "idx").metadata.to_pydict()
    prints = dict(zip((Path(p).name for p in meta["path"]), meta["fingerprint"]))
    assert len(set(prints.values())) == 1 and None not in prints.values(), prints


def test_transparent_pixels_are_laid_on_white_not_on_what_they_hold(tmp_path: Path) -> None:
    """A cut-out PNG stores black under its transparent pixels; viewers show them on white, and
    so does the model now (RGBA, gray with alpha, and a palette with a transparent colour)."""
    import numpy as np
    from PIL import Image

    from retrieval.imageio import load_image

    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[10:30, 10:30] = (200, 20, 20, 255)  # an opaque red square
    rgba[:, :5, 3] = 128  # a half-transparent black band
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cutout.png")
    Image.fromarray(rgba, "RGBA").convert("LA").save(tmp_path / "gray.png")
    palette = Image.fromarray(rgba[..., :3], "RGB").convert("P")
    palette.info["transparency"] = palette.getpixel((0, 39))  # the colour of the black background
    palette.save(tmp_path / "palette.png", transparency=palette.info["transparency"])
    Image.fromarray(rgba[..., :3], "RGB").save(tmp_path / "opaque.png")

    cutout = np.asarray(load_image(tmp_path / "cutout.png"))
    assert cutout[20, 20].tolist() == [200, 20, 20] and cutout[35, 35].tolist() == [255, 255, 255]
    assert abs(int(cutout[35, 2, 0]) - 127) <= 1  # half black, half white
    gray = np.asarray(load_image(tmp_path / "gray.png"))
    assert gray[35, 35].tolist() == [255, 255, 255] and gray[20, 20, 0] < 100
    pal = np.asarray(load_image(tmp_path / "palette.png"))
    assert pal[35, 35].tolist() == [255, 255, 255] and pal[20, 20, 0] > 150
    assert np.asarray(load_image(tmp_path / "opaque.png"))[35, 35].tolist() == [0, 0, 0]  # no alpha: as stored


def test_a_100_megapixel_camera_jpeg_is_not_a_decompression_bomb(tmp_path: Path) -> None:
    """Medium-format cameras write 100-150 MP JPEGs (a GFX100: 11648x8736); JPEGs decode at a
    reduced scale, so they may have twice Pillow's default pixel limit. A PNG header of that
    size, or a JPEG header beyond it, is still refused before any pixel is decoded."""
    import io

    import pytest
    from PIL import Image

    from retrieval.errors import ImageDecodeError
    from retrieval.imageio import open_image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 120, 40)).save(buffer, "JPEG")
    source = buffer.getvalue()
    sof = source.index(b"\xff\xc0") + 5  # marker, length, precision: then height and width

    def jpeg_claiming(width: int, height: int) -> Path:
        path = tmp_path / f"{width}x{height}.jpg"
        path.write_bytes(source[:sof] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + source[sof + 4 :])
        return path

    assert open_image(jpeg_claiming(11648, 8736)).size == (11648, 8736)
    with pytest.raises(ImageDecodeError) as bomb:
        open_image(jpeg_claiming(16000, 12000))  # 192 MP
    assert bomb.value.reason == "decompression_bomb" and "178956970" in bomb.value.detail.replace(
        ",", ""
    )  # Pillow says it first
    Image.new("L", (10000, 10000)).save(tmp_path / "big.png")  # 100 MP, compresses to almost nothing
    with pytest.raises(ImageDecodeError) as png:
        open_image(tmp_path / "big.png")
    assert png.value.reason == "decompression_bomb"
