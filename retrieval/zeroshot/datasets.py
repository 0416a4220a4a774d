"""Labelled data on disk, read one way by calibration, evaluation, benchmarks and the built-in recipe.

* A *caption file* ``pairs.csv`` has the columns ``image,caption[,split]`` (the Flickr8k /
  Karpathy layout): one row per caption, image paths relative to the folder's ``images/``
  (or to the folder itself).
* A *labelled folder* holds ``labels.csv`` (columns ``image,label``) in the same layout, and
  for zero-shot evaluation ``classes.txt`` (one class a line).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from ..errors import CalibrationError, PairsFileError

T = TypeVar("T")


@dataclass(frozen=True)
class Pairs:
    """Unique images of a split and their captions; ``caption_image[j]`` indexes ``images``."""

    images: list[str]
    captions: list[str]
    caption_image: list[int]

    def image_paths(self, root: Path) -> list[Path]:
        return [root / name for name in self.images]


def read_pairs(path: Path, split: str | None = None, limit: int | None = None) -> Pairs:
    """Rows of ``split`` (all rows when None), keeping the first ``limit`` images in file order."""
    path = Path(path)
    if not path.is_file():
        raise PairsFileError(f"pairs file not found: {path}")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"image", "caption"} - set(reader.fieldnames or [])
        if missing:
            raise PairsFileError(f"{path} lacks column(s) {sorted(missing)}")
        if split is not None and "split" not in (reader.fieldnames or []):
            raise PairsFileError(f"{path} has no 'split' column, cannot select split {split!r}")
        rows = [r for r in reader if split is None or r["split"] == split]
    index: dict[str, int] = {}
    captions: list[str] = []
    owner: list[int] = []
    for row in rows:
        name = row["image"]
        if name not in index:
            if limit is not None and len(index) >= limit:
                continue
            index[name] = len(index)
        captions.append(row["caption"].strip())
        owner.append(index[name])
    if not captions:
        raise PairsFileError(f"{path}: no rows for split {split!r}")
    return Pairs(images=list(index), captions=captions, caption_image=owner)


@dataclass(frozen=True)
class CaptionPair:
    image: Path
    caption: str


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    label: str


def image_root(folder: Path) -> Path:
    """Where a folder's image paths are relative to: its ``images/`` when there is one."""
    return folder / "images" if (folder / "images").is_dir() else folder


def evenly_spaced(items: Sequence[T], limit: int | None, offset: int = 0) -> list[T]:
    """At most ``limit`` items at an even stride (so every class of a sorted list stays in);
    ``offset`` (0 <= offset < stride) picks a disjoint subset, e.g. for tuning."""
    if limit is None or limit >= len(items):
        return list(items)
    stride = -(-len(items) // limit)
    return list(items[offset % stride :: stride][:limit])


def read_caption_pairs(
    folder: str | os.PathLike[str], split: str | None = None, limit_images: int | None = None
) -> list[CaptionPair]:
    """Caption/image pairs of a caption folder, optionally one split and the first ``limit_images`` images
    (in sorted order). Raises :class:`CalibrationError`, as the calibration it feeds does."""
    folder = Path(folder)
    try:
        pairs = read_pairs(folder / "pairs.csv", split)
    except PairsFileError as exc:
        raise CalibrationError(f"no caption pairs in {folder}: {exc}") from exc
    keep = set(sorted(pairs.images)[:limit_images]) if limit_images is not None else set(pairs.images)
    root = image_root(folder)
    return [
        CaptionPair(root / pairs.images[i], caption)
        for caption, i in zip(pairs.captions, pairs.caption_image)
        if pairs.images[i] in keep
    ]


def read_labelled_folder(
    folder: str | os.PathLike[str], limit: int | None = None, offset: int = 0
) -> list[LabelledImage]:
    """The images of a labelled folder (``labels.csv``); ``limit`` and ``offset`` as :func:`evenly_spaced`."""
    folder = Path(folder)
    path = folder / "labels.csv"
    if not path.is_file():
        raise CalibrationError(f"{path} not found")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"image", "label"} <= set(rows[0]):
        raise CalibrationError(f"{path} must have the columns image, label and at least one row")
    root = image_root(folder)
    return evenly_spaced([LabelledImage(root / r["image"], r["label"].strip()) for r in rows], limit, offset)
