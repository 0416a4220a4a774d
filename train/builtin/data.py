"""Read an image-caption pairs file (Flickr8k/Karpathy layout: ``image,caption,split``)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from retrieval.errors import PairsFileError


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
