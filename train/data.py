"""Image-caption pairs from CSV/Parquet: reading, deterministic sharded sampling, batching.

Every sample's augmentation is seeded from ``(seed, epoch, position)``, and the sampler can
start part-way through an epoch, so a resumed run sees exactly the batches and crops an
uninterrupted run would have seen, whatever the number of loader workers.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from retrieval.errors import ImageDecodeError, TrainingError
from retrieval.imageio import load_image
from retrieval.workers import SharedMemoryLoader

Transform = Callable[[Image.Image], torch.Tensor]
Tokenizer = Callable[[list[str]], torch.Tensor]


@dataclass(frozen=True)
class PairTable:
    """Parallel lists: ``images[i]`` (an absolute path) is described by ``captions[i]``."""

    images: list[str]
    captions: list[str]

    def __len__(self) -> int:
        return len(self.captions)

    def unique_images(self) -> list[str]:
        return list(dict.fromkeys(self.images))


@dataclass
class Batch:
    """One micro-batch. ``images`` holds pixels, or cached image features when the tower is locked."""

    images: torch.Tensor
    texts: torch.Tensor
    paths: list[str]
    skipped: int = 0

    def __len__(self) -> int:
        return int(self.texts.shape[0])


def _read_table(path: Path) -> Any:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        if path.suffix.lower() in {".parquet", ".pq"}:
            return pq.read_table(path)
        return pacsv.read_csv(path)
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise TrainingError(f"cannot read pairs file {path}: {exc}") from exc


def read_pairs(
    path: str | Path,
    img_key: str = "image",
    caption_key: str = "caption",
    image_root: str | Path | None = None,
    split_key: str = "split",
    split: str | None = None,
    max_samples: int | None = None,
) -> PairTable:
    """Read a pairs file. Relative image paths resolve against ``image_root`` (default: the file's folder)."""
    path = Path(path)
    table = _read_table(path)
    for key in (img_key, caption_key) + ((split_key,) if split else ()):
        if key not in table.column_names:
            raise TrainingError(f"{path} has no column {key!r} (columns: {', '.join(table.column_names)})")
    images = [str(x) for x in table.column(img_key).to_pylist()]
    captions = [str(x) for x in table.column(caption_key).to_pylist()]
    if split is not None:
        keep = [str(s) == split for s in table.column(split_key).to_pylist()]
        images = [x for x, k in zip(images, keep) if k]
        captions = [x for x, k in zip(captions, keep) if k]
    root = Path(image_root) if image_root else default_image_root(path, images[0] if images else "")
    if image_root and not root.is_dir():
        raise TrainingError(f"image root {root} is not a folder")
    images = [str(p if Path(p).is_absolute() else root / p) for p in images]
    if max_samples is not None:
        images, captions = images[:max_samples], captions[:max_samples]
    if not captions:
        raise TrainingError(f"{path} holds no pairs" + (f" in split {split!r}" if split else ""))
    unique = list(dict.fromkeys(images))
    if not any(os.path.isfile(p) for p in unique):
        where = (
            "--image-root"
            if image_root
            else "the data file's folder or its images/ subfolder; pass --image-root FOLDER"
        )
        raise TrainingError(
            f"none of the {len(unique)} images named in {path} exists (the first: {unique[0]}); "
            f"relative paths resolve against {where}"
        )
    return PairTable(images=images, captions=captions)


def default_image_root(pairs_file: Path, first_image: str) -> Path:
    """Where relative image paths in ``pairs_file`` resolve when no root is given: the file's own
    folder, or its ``images/`` subfolder when that is where the first image is."""
    folder = pairs_file.parent
    if (
        first_image
        and not Path(first_image).is_absolute()
        and not (folder / first_image).exists()
        and (folder / "images" / first_image).exists()
    ):
        return folder / "images"
    return folder


def train_transform(preprocess: dict[str, Any], augment: bool) -> Transform:
    """Random resized crop for a trainable image tower; the eval transform otherwise."""
    from torchvision import transforms as T

    from retrieval.models.encoder import build_transform

    if not augment:
        return build_transform(preprocess)
    size = int(preprocess["image_size"])
    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=(0.9, 1.0), interpolation=T.InterpolationMode.BICUBIC, antialias=True),
            T.ToTensor(),
            T.Normalize(preprocess["mean"], preprocess["std"]),
        ]
    )


def sample_seed(seed: int, epoch: int, position: int) -> int:
    digest = hashlib.blake2b(f"{seed}/{epoch}/{position}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class PairDataset(torch.utils.data.Dataset):
    """Map-style pairs. Keys are ``(index, sample_seed)``; unreadable images come back as None.

    With ``features`` (path -> cached image feature, for a locked tower) no image is decoded.
    """

    def __init__(
        self,
        pairs: PairTable,
        tokenizer: Tokenizer,
        transform: Transform | None,
        features: Callable[[str], torch.Tensor | None] | None = None,
        draft_size: int | None = None,
    ) -> None:
        self.pairs = pairs
        self.tokenizer = tokenizer
        self.transform = transform
        self.features = features
        self.draft_size = draft_size

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, str] | None:
        index, seed = key
        path = self.pairs.images[index]
        if self.features is not None:
            image = self.features(path)
            if image is None:
                return None
        else:
            try:
                pil = load_image(path, draft_size=self.draft_size)
            except ImageDecodeError:
                return None
            assert self.transform is not None
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                image = self.transform(pil)
        text = self.tokenizer([self.pairs.captions[index]])[0]
        return image, text, path


def collate(items: Sequence[tuple[torch.Tensor, torch.Tensor, str] | None]) -> Batch:
    """Stack the decodable samples; count the others."""
    good = [x for x in items if x is not None]
    skipped = len(items) - len(good)
    if not good:
        return Batch(images=torch.zeros(0), texts=torch.zeros(0, dtype=torch.long), paths=[], skipped=skipped)
    return Batch(
        images=torch.stack([x[0] for x in good]),
        texts=torch.stack([x[1] for x in good]),
        paths=[x[2] for x in good],
        skipped=skipped,
    )


class EpochBatchSampler(torch.utils.data.Sampler):
    """This process's share of each global micro-batch of one epoch, from micro-batch ``start`` on.

    The epoch's order is a permutation seeded by ``(seed, epoch)``; global micro-batch ``m``
    is positions ``[m*B*W, (m+1)*B*W)`` of it, and rank ``r`` takes its ``r``-th slice of ``B``.
    The last incomplete global micro-batch is dropped.
    """

    def __init__(
        self, n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1, start: int = 0
    ):
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, epoch
        self.rank, self.world_size, self.start = rank, world_size, start

    @staticmethod
    def micro_batches_per_epoch(n: int, batch_size: int, world_size: int) -> int:
        return n // (batch_size * world_size)

    def __len__(self) -> int:
        return max(0, self.micro_batches_per_epoch(self.n, self.batch_size, self.world_size) - self.start)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        g = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch, -1))
        order = torch.randperm(self.n, generator=g).tolist()
        global_batch = self.batch_size * self.world_size
        total = self.micro_batches_per_epoch(self.n, self.batch_size, self.world_size)
        for m in range(self.start, total):
            lo = m * global_batch + self.rank * self.batch_size
            yield [(order[p], sample_seed(self.seed, self.epoch, p)) for p in range(lo, lo + self.batch_size)]


def pair_loader(dataset: PairDataset, sampler: EpochBatchSampler, workers: int) -> SharedMemoryLoader:
    return SharedMemoryLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        generator=torch.Generator(),  # the loader's own seed draw must not advance the global RNG
    )
