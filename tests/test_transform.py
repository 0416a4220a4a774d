"""The image transform is torchvision's Resize (bicubic), CenterCrop, ToTensor and Normalize,
computed with Pillow and torch alone: the same pixels, to the bit, on real image files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from retrieval.models.encoder import build_transform
from tests.conftest import write_image

PREPROCESS = {"image_size": 224, "resize": 224, "mean": [0.48, 0.46, 0.41], "std": [0.27, 0.26, 0.28]}
SIZES = [(500, 375), (375, 500), (224, 224), (224, 301), (640, 224), (223, 225), (100, 50), (1000, 999)]


def _torchvision(preprocess: dict, normalize: bool):
    from torchvision import transforms as T

    steps = [
        T.Resize(preprocess["resize"], interpolation=T.InterpolationMode.BICUBIC, antialias=True),
        T.CenterCrop(preprocess["image_size"]),
    ]
    steps += [T.ToTensor(), T.Normalize(preprocess["mean"], preprocess["std"])] if normalize else [T.PILToTensor()]
    return T.Compose(steps)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("mode", ["RGB", "L", "P"])
def test_the_transform_gives_torchvisions_pixels(tmp_path: Path, normalize: bool, mode: str) -> None:
    rng = np.random.default_rng(0)
    ours, theirs = build_transform(PREPROCESS, normalize), _torchvision(PREPROCESS, normalize)
    for w, h in SIZES:
        path = tmp_path / f"{w}x{h}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode).save(path)
        with Image.open(path) as image:
            got, want = ours(image), theirs(image.convert("RGB"))
        assert got.shape == want.shape == (3, 224, 224) and got.dtype == want.dtype, (w, h)
        if normalize:
            torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
        else:
            assert torch.equal(got, want), (w, h)


def test_a_photo_smaller_than_the_crop_is_padded_as_torchvision_pads_it(tmp_path: Path) -> None:
    preprocess = {**PREPROCESS, "image_size": 96, "resize": 80}
    photo = write_image(tmp_path / "small.jpg", size=(120, 70), color=(10, 150, 240))
    with Image.open(photo) as image:
        got, want = build_transform(preprocess, False)(image), _torchvision(preprocess, False)(image)
    assert got.shape == (3, 96, 96) and torch.equal(got, want)


def test_the_transform_pickles_for_decode_workers() -> None:
    import pickle

    transform = pickle.loads(pickle.dumps(build_transform(PREPROCESS, False)))
    assert transform(Image.new("RGB", (300, 200), (1, 2, 3))).shape == (3, 224, 224)
