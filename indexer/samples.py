"""Sample photos for the quickstart: the real photographs bundled with scikit-image."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image

# name in skimage.data -> file written (only photographs, no synthetic or microscopy images)
SAMPLE_PHOTOS = {
    "astronaut": "astronaut.jpg",
    "coffee": "coffee.jpg",
    "chelsea": "chelsea_the_cat.jpg",
    "rocket": "rocket.jpg",
    "camera": "cameraman.png",
    "coins": "coins.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "moon": "moon.png",
}


def _load(name: str) -> Image.Image:
    from skimage import data

    array = getattr(data, name)()
    return Image.fromarray(array)


def write_samples(out_dir: "str | os.PathLike[str]") -> list[Path]:
    """Write the bundled sample photos into ``out_dir``; returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, filename in SAMPLE_PHOTOS.items():
        image = _load(name)
        target = out / filename
        if target.suffix == ".jpg":
            image.convert("RGB").save(target, quality=92)
        else:
            image.save(target)
        written.append(target)
    return written
