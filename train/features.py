"""On-disk cache of a locked image tower's outputs, so a LiT epoch only runs the text tower.

Entries are keyed by the encoder fingerprint (one folder per set of weights) and by image
path plus size and modification time, so an edited file is embedded again. Images that
cannot be decoded are remembered as bad and skipped by the dataset.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from retrieval.atomic import replacing
from retrieval.errors import ImageDecodeError
from retrieval.imageio import load_image
from retrieval.models.encoder import Encoder
from retrieval.workers import SharedMemoryLoader


def file_key(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return f"{path}|missing"
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"


class _Decode(torch.utils.data.Dataset):
    def __init__(self, paths: Sequence[str], transform: Callable) -> None:
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None]:
        try:
            return i, self.transform(load_image(self.paths[i]))
        except ImageDecodeError:
            return i, None


def _collate(items: list) -> tuple[list[int], list[int], torch.Tensor | None]:
    good = [(i, x) for i, x in items if x is not None]
    bad = [i for i, x in items if x is None]
    return [i for i, _ in good], bad, torch.stack([x for _, x in good]) if good else None


@dataclass
class FeatureCache:
    """Image features of one encoder, stored as ``features.npy`` plus a ``keys.json`` row index."""

    folder: Path
    rows: dict[str, int] = field(default_factory=dict)
    bad: set[str] = field(default_factory=set)
    matrix: np.ndarray | None = None

    @classmethod
    def open(cls, root: str | Path, fingerprint: str) -> FeatureCache:
        folder = Path(root) / hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
        cache = cls(folder=folder)
        index = folder / "keys.json"
        if index.is_file():
            data = json.loads(index.read_text())
            cache.rows = {k: int(v) for k, v in data["rows"].items()}
            cache.bad = set(data["bad"])
            cache.matrix = np.load(folder / "features.npy", mmap_mode="r")
        return cache

    def missing(self, paths: Sequence[str]) -> list[str]:
        keys = {p: file_key(p) for p in dict.fromkeys(paths)}
        return [p for p, k in keys.items() if k not in self.rows and k not in self.bad]

    def fill(
        self, paths: Sequence[str], encoder: Encoder, batch_size: int = 64, workers: int = 0, progress: bool = False
    ) -> int:
        """Embed the images not cached yet and save; returns how many were newly added (good or bad)."""
        todo = self.missing(paths)
        if not todo:
            return 0
        from tqdm import tqdm

        loader = SharedMemoryLoader(
            _Decode(todo, encoder.pixel_transform), batch_size=batch_size, num_workers=workers, collate_fn=_collate
        )
        new_rows: list[np.ndarray] = []
        new_keys: list[str] = []
        for good, bad, pixels in tqdm(loader, desc="caching image features", unit="batch", disable=not progress):
            self.bad.update(file_key(todo[i]) for i in bad)
            if pixels is not None:
                new_rows.append(encoder.encode_pixels(pixels).numpy())
                new_keys.extend(file_key(todo[i]) for i in good)
        old = np.asarray(self.matrix) if self.matrix is not None else None
        parts = ([old] if old is not None else []) + new_rows
        start = len(old) if old is not None else 0
        self.rows.update({k: start + j for j, k in enumerate(new_keys)})
        if parts:
            self._save(np.concatenate(parts).astype(np.float32))
        else:
            self._save(np.zeros((0, encoder.embed_dim), np.float32))
        return len(todo)

    def _save(self, matrix: np.ndarray) -> None:
        with replacing(self.folder / "features.npy") as tmp:
            np.save(tmp, matrix)
        with replacing(self.folder / "keys.json") as tmp:
            tmp.write_text(json.dumps({"rows": self.rows, "bad": sorted(self.bad)}))
        self.matrix = np.load(self.folder / "features.npy", mmap_mode="r")

    def __call__(self, path: str) -> torch.Tensor | None:
        """The cached feature of ``path``, or None when it is bad or unknown."""
        row = self.rows.get(file_key(path))
        if row is None or self.matrix is None:
            return None
        return torch.from_numpy(np.array(self.matrix[row], dtype=np.float32))
