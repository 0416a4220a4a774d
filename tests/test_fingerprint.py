"""Pixel fingerprints: real photos and their edits, mirror images, the exact pair search, and
indexes written before the fingerprint column existed."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from retrieval.duplicates import fingerprint
from retrieval.duplicates.fingerprint import MIRROR_MASK, NONE, close_pairs, distance, pixel_fingerprints
from retrieval.models.encoder import normalize_pixels

PHOTOS = ("chelsea", "astronaut", "coffee", "rocket", "camera", "moon", "coins", "hubble_deep_field")


def _photo(name: str) -> Image.Image:
    from skimage import data

    return Image.fromarray(getattr(data, name)()).convert("RGB")


def _pixels(image: Image.Image, side: int = 224) -> torch.Tensor:
    """What the indexer hands the model: the shorter side resized to ``side``, centre-cropped, uint8."""
    scale = side / min(image.size)
    image = image.resize(
        (max(side, round(image.width * scale)), max(side, round(image.height * scale))), Image.Resampling.BILINEAR
    )
    left, top = (image.width - side) // 2, (image.height - side) // 2
    array = np.asarray(image.crop((left, top, left + side, top + side)).convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def _reencoded(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _codes(images: list[Image.Image]) -> np.ndarray:
    return pixel_fingerprints(torch.stack([_pixels(im) for im in images])).numpy()


def test_edited_copies_keep_their_fingerprint_and_different_photos_do_not_share_one() -> None:
    photos = [_photo(name) for name in PHOTOS]
    originals = _codes(photos)
    assert (originals != NONE).all() and len(set(originals.tolist())) == len(PHOTOS)
    apart = distance(originals[:, None], originals[None, :])[np.triu_indices(len(PHOTOS), 1)]
    assert apart.min() > 6, "different photos are far apart"

    edits = {
        "quality 30": [_reencoded(p, 30) for p in photos],
        "grayscale": [ImageOps.grayscale(p).convert("RGB") for p in photos],
        "mirror image": [ImageOps.mirror(p) for p in photos],
        "60% size": [p.resize((p.width * 6 // 10, p.height * 6 // 10), Image.Resampling.LANCZOS) for p in photos],
        "brighter": [ImageEnhance.Brightness(p).enhance(1.15) for p in photos],
    }
    for edit, copies in edits.items():
        near = distance(originals, _codes(copies))
        # the centre crop of a mirror image can sit a pixel off the original's (an odd margin)
        assert near.max() <= (4 if edit == "mirror image" else 2), f"{edit}: {near.tolist()}"

    # a mirror image flips exactly the bits of odd horizontal frequency
    batch = torch.stack([_pixels(p) for p in photos])
    assert (pixel_fingerprints(batch.flip(-1)).numpy() == originals ^ MIRROR_MASK).all()


def test_normalised_and_uint8_pixels_give_one_fingerprint_on_any_size_and_layout() -> None:
    batch = torch.stack([_pixels(_photo(name), side=256) for name in PHOTOS[:4]])
    mean, std = [0.48, 0.46, 0.41], [0.27, 0.26, 0.28]
    normalised = normalize_pixels(batch, mean, std)
    assert (pixel_fingerprints(normalised, mean, std) == pixel_fingerprints(batch)).all()
    channels_last = batch.contiguous(memory_format=torch.channels_last)
    assert (pixel_fingerprints(channels_last) == pixel_fingerprints(batch)).all()
    odd = torch.stack([_pixels(_photo(name), side=230) for name in PHOTOS[:4]])  # 230 rows: no even bands
    assert (distance(pixel_fingerprints(odd).numpy(), pixel_fingerprints(batch).numpy()) <= 4).all()


def test_images_without_structure_have_no_fingerprint_and_never_match() -> None:
    flat = torch.full((2, 3, 64, 64), 128, dtype=torch.uint8)
    flat[1, :, :, :32] = 129  # one grey level of difference: still nothing to go by
    assert pixel_fingerprints(flat).tolist() == [NONE, NONE]
    assert distance(np.array([NONE]), np.array([NONE])).tolist() == [fingerprint.BITS + 1]
    assert close_pairs(np.array([NONE, NONE, 5]), np.array([0, 1, 2]))[0].size == 0


@pytest.mark.parametrize("radius", [0, 2, 4])
def test_close_pairs_finds_exactly_the_pairs_within_the_radius_mirror_images_included(radius: int) -> None:
    rng = np.random.default_rng(radius)
    n = 3000
    codes = rng.integers(0, 2**63, n, dtype=np.int64)
    for i in range(0, 600, 2):  # planted pairs 0-5 bits apart, half of them mirror images
        flips = rng.choice(63, size=rng.integers(0, 6), replace=False)
        codes[i + 1] = codes[i] ^ int(sum(1 << int(b) for b in flips)) ^ (MIRROR_MASK if i % 4 else 0)
    codes[700] = NONE
    rows = np.arange(n) * 10 + 7  # row numbers are carried through
    first, second, bits = close_pairs(codes, rows, radius)
    apart = distance(codes[:, None], codes[None, :])
    i, j = np.nonzero(np.triu(apart <= radius, 1))
    assert len(i) > 0
    assert sorted(zip(first.tolist(), second.tolist())) == sorted(zip(rows[i].tolist(), rows[j].tolist()))
    assert bits.tolist() == apart[(first - 7) // 10, (second - 7) // 10].tolist()


def test_an_index_written_before_fingerprints_reads_them_as_missing(tmp_path: Path) -> None:
    """A generation whose metadata has no fingerprint column opens, searches and pairs images
    by their vectors alone; the next build adds fingerprints for the files it embeds."""
    import retrieval
    from indexer import BuildConfig, build
    from retrieval.duplicates.groups import FINGERPRINT_BITS, similar_pairs
    from retrieval.index.layout import live_generation
    from retrieval.index.store import IndexReader

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in PHOTOS[:3]:
        _photo(name).save(photos / f"{name}.jpg", quality=95)
    build([photos], tmp_path / "idx", BuildConfig(model="tiny-clip", workers=0))
    generation = live_generation(tmp_path / "idx")
    table = pq.read_table(generation / "metadata.parquet")
    assert table.column("fingerprint").null_count == 0
    pq.write_table(table.drop_columns(["fingerprint"]), generation / "metadata.parquet")  # as older versions wrote it
    manifest = json.loads((generation / "manifest.json").read_text())
    del manifest["checksums"]  # older versions wrote no checksums either
    (generation / "manifest.json").write_text(json.dumps(manifest))

    reader = IndexReader.open(tmp_path / "idx")
    assert reader.metadata.column("fingerprint").null_count == 3
    assert len(retrieval.open_index(tmp_path / "idx").search("a cat", k=3)) == 3
    pairs = similar_pairs(reader, threshold=0.5)  # tiny-clip's random vectors are all alike
    assert len(pairs) == 3 and (pairs.bits > FINGERPRINT_BITS).all()
    ImageOps.grayscale(_photo("astronaut")).save(photos / "astronaut_gray.jpg", quality=95)
    build([photos], tmp_path / "idx", BuildConfig(model="tiny-clip", workers=0))
    meta = IndexReader.open(tmp_path / "idx").metadata.to_pydict()
    by_name = dict(zip((Path(p).name for p in meta["path"]), meta["fingerprint"]))
    assert by_name["astronaut.jpg"] is None and by_name["astronaut_gray.jpg"] is not None
