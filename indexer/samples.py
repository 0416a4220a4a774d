"""Sample photos for the quickstart: the real photographs bundled with scikit-image."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from PIL import Image

from retrieval.errors import FileWriteError

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
    """Write the bundled sample photos into ``out_dir``; returns the files written.

    FileWriteError when the disk refuses (read-only, full); a half-written photo is removed."""
    out = Path(out_dir)
    written = []
    target = out
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, filename in SAMPLE_PHOTOS.items():
            image = _load(name)
            target = out / filename
            if target.suffix == ".jpg":
                image.convert("RGB").save(target, quality=92)
            else:
                image.save(target)
            written.append(target)
    except OSError as exc:
        if target != out:
            with contextlib.suppress(OSError):
                target.unlink(missing_ok=True)
        raise FileWriteError(f"could not write the sample photos into {out}: {exc.strerror or exc} "
                             f"({len(written)} of {len(SAMPLE_PHOTOS)} written)") from exc
    return written
