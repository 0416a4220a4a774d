"""Cache the frozen bottoms of both towers once, so training only runs the tops.

Images: the EfficientNet trunk output before ``conv_head`` (fp16 ``[N, 320, 7, 7]``), for
the centre view of every image and for augmented views (flip, crop) of training images.
Captions: MiniLM hidden states before the last ``n_top`` layers (fp16, padded to the
longest caption) with their attention masks.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from retrieval.atomic import replacing
from retrieval.imageio import load_image
from retrieval.models.encoder import Encoder
from retrieval.workers import SharedMemoryLoader
from retrieval.zeroshot.datasets import read_pairs

from .towers import image_bottom, text_bottom

CACHE_VERSION = 1
AUG_VIEWS = ("flip", "crop")


@dataclass(frozen=True)
class CacheSpec:
    pairs: str
    image_root: str
    n_top: int
    views: tuple[str, ...]
    context_length: int
    fingerprint: str

    def key(self) -> str:
        """Identity of the cache folder; views are files in it, added when first asked for."""
        ident = {k: v for k, v in asdict(self).items() if k != "views"}
        blob = json.dumps({"v": CACHE_VERSION, **ident}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class FeatureCache:
    """Memory-mapped cached features plus the corpus layout they belong to."""

    root: Path
    images: list[str]
    image_split: list[str]
    captions: list[str]
    caption_image: np.ndarray
    view_rows: dict[str, np.ndarray]
    n_top: int

    def view(self, name: str) -> np.ndarray:
        return np.load(self.root / f"img_{name}.npy", mmap_mode="r")

    def text(self) -> tuple[np.ndarray, np.ndarray]:
        return np.load(self.root / "txt_hidden.npy", mmap_mode="r"), np.load(self.root / "txt_mask.npy")


class _ViewDataset(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path], view: str, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.paths, self.view, self.transform = paths, view, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        image = load_image(self.paths[i])
        if self.view == "flip":
            image = ImageOps.mirror(image)
        elif self.view == "crop":
            rng = random.Random(i)
            w, h = image.size
            s = rng.uniform(0.55, 0.85)
            cw, ch = int(w * s), int(h * s)
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            image = image.crop((x, y, x + cw, y + ch))
            if rng.random() < 0.5:
                image = ImageOps.mirror(image)
        return self.transform(image)


@torch.inference_mode()
def _cache_view(encoder: Encoder, paths: list[Path], view: str, out: Path, batch_size: int) -> None:
    loader = SharedMemoryLoader(_ViewDataset(paths, view, encoder.transform), batch_size=batch_size, num_workers=1)
    with replacing(out) as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(paths), 320, 7, 7))
        row = 0
        for pixels in tqdm(loader, desc=f"image trunk ({view})", unit="batch"):
            feats = image_bottom(encoder.model, pixels.contiguous(memory_format=torch.channels_last))
            arr[row : row + len(feats)] = feats.float().numpy().astype(np.float16)
            row += len(feats)
        arr.flush()
        del arr


@torch.inference_mode()
def _cache_text(encoder: Encoder, captions: list[str], n_top: int, context_length: int, root: Path) -> None:
    tok = encoder.tokenizer.tokenizer
    enc = tok(captions, truncation=True, max_length=context_length)
    ids = enc["input_ids"]
    lmax = max(len(x) for x in ids)
    mask = np.zeros((len(ids), lmax), np.uint8)
    order = sorted(range(len(ids)), key=lambda j: len(ids[j]))
    with replacing(
        root / "txt_hidden.npy"
    ) as tmp:  # the mask goes in before the rename: txt_hidden.npy means both are there
        hidden = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(ids), lmax, 384))
        for start in tqdm(range(0, len(order), 256), desc="text bottom", unit="batch"):
            rows = order[start : start + 256]
            width = max(len(ids[j]) for j in rows)
            batch = torch.zeros((len(rows), width), dtype=torch.long)
            m = torch.zeros((len(rows), width), dtype=torch.long)
            for r, j in enumerate(rows):
                batch[r, : len(ids[j])] = torch.tensor(ids[j])
                m[r, : len(ids[j])] = 1
            h = text_bottom(encoder.model, batch, m, n_top).float().numpy().astype(np.float16)
            for r, j in enumerate(rows):
                hidden[j, :width] = h[r]
                mask[j, :width] = m[r].numpy()
        hidden.flush()
        del hidden
        np.save(root / "txt_mask.npy", mask)


def build_cache(encoder: Encoder, spec: CacheSpec, cache_dir: Path, batch_size: int = 64) -> FeatureCache:
    """Compute (or reuse) the feature cache for ``spec`` under ``cache_dir/<key>``."""
    root = Path(cache_dir) / spec.key()
    meta_path = root / "meta.json"
    if meta_path.is_file() and all((root / f"img_{v}.npy").is_file() for v in spec.views):
        return _open(root)
    root.mkdir(parents=True, exist_ok=True)
    pairs = read_pairs(Path(spec.pairs))
    split_of = _image_splits(Path(spec.pairs))
    images = pairs.images
    paths = pairs.image_paths(Path(spec.image_root))
    train_rows = [i for i, name in enumerate(images) if split_of[name] == "train"]
    view_rows = {"center": list(range(len(images)))}
    for v in spec.views:
        view_rows[v] = train_rows
    if not (root / "txt_hidden.npy").is_file():
        _cache_text(encoder, pairs.captions, spec.n_top, spec.context_length, root)
    for view, rows in view_rows.items():
        if not (root / f"img_{view}.npy").is_file():
            _cache_view(encoder, [paths[i] for i in rows], view, root / f"img_{view}.npy", batch_size)
    for name in _existing_views(root):
        view_rows.setdefault(name, train_rows)
    meta = {
        "spec": asdict(spec),
        "images": images,
        "image_split": [split_of[n] for n in images],
        "captions": pairs.captions,
        "caption_image": pairs.caption_image,
        "view_rows": view_rows,
        "n_top": spec.n_top,
    }
    with replacing(meta_path) as tmp:
        tmp.write_text(json.dumps(meta))
    return _open(root)


def _existing_views(root: Path) -> list[str]:
    return [p.name[len("img_") : -len(".npy")] for p in root.glob("img_*.npy")]


def _image_splits(pairs_csv: Path) -> dict[str, str]:
    import csv

    with pairs_csv.open(newline="", encoding="utf-8") as f:
        return {r["image"]: r.get("split", "train") for r in csv.DictReader(f)}


def _open(root: Path) -> FeatureCache:
    meta = json.loads((root / "meta.json").read_text())
    return FeatureCache(
        root=root,
        images=meta["images"],
        image_split=meta["image_split"],
        captions=meta["captions"],
        caption_image=np.asarray(meta["caption_image"], dtype=np.int64),
        view_rows={k: np.asarray(v, dtype=np.int64) for k, v in meta["view_rows"].items()},
        n_top=int(meta["n_top"]),
    )
