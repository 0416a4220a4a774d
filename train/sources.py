"""Where micro-batches come from: a pairs file (CSV/Parquet) or WebDataset ``.tar`` shards.

A source says how many micro-batches one epoch holds (per process) and yields them for an
epoch starting at any micro-batch, which is how resuming picks up the data position.
"""

from __future__ import annotations

import io
import itertools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from retrieval.errors import TrainingError
from retrieval.imageio import to_rgb
from retrieval.models.encoder import Encoder
from retrieval.workers import SharedMemoryLoader

from .config import TrainConfig
from .data import (
    Batch,
    EpochBatchSampler,
    PairDataset,
    collate,
    pair_loader,
    read_pairs,
    sample_seed,
    train_transform,
)
from .distributed import DistContext, barrier
from .features import FeatureCache

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
CAPTION_KEYS = ("txt", "caption")


class BatchSource(Protocol):
    micro_per_epoch: int

    def batches(self, epoch: int, start: int) -> Iterator[Batch]: ...


@dataclass
class PairSource:
    """Map-style pairs with a seeded sampler: exact resume for any number of workers."""

    dataset: PairDataset
    batch_size: int
    seed: int
    ctx: DistContext
    workers: int = 0

    @property
    def micro_per_epoch(self) -> int:
        return EpochBatchSampler.micro_batches_per_epoch(len(self.dataset), self.batch_size, self.ctx.world_size)

    def batches(self, epoch: int, start: int) -> Iterator[Batch]:
        sampler = EpochBatchSampler(
            len(self.dataset), self.batch_size, self.seed, epoch, self.ctx.rank, self.ctx.world_size, start
        )
        return iter(pair_loader(self.dataset, sampler, self.workers))


def _decode(data: bytes) -> Image.Image | None:
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
        return to_rgb(ImageOps.exif_transpose(img))
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError):
        return None


class _ShardStream(torch.utils.data.IterableDataset):
    """Endless micro-batches from this process's shards (split again across loader workers)."""

    def __init__(
        self, urls: list[str], tokenizer: Callable, transform: Callable, batch_size: int, seed: int, epoch: int
    ):
        self.urls, self.tokenizer, self.transform = urls, tokenizer, transform
        self.batch_size, self.seed, self.epoch = batch_size, seed, epoch

    def _samples(self, urls: list[str]) -> Iterator[dict[str, Any]]:
        import webdataset as wds

        for cycle in itertools.count():
            order = list(urls)
            random.Random(sample_seed(self.seed, self.epoch, cycle)).shuffle(order)
            for url in order:
                yield from wds.WebDataset(
                    [url], shardshuffle=False, nodesplitter=None, workersplitter=None, empty_check=False
                )

    def __iter__(self) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        mine = self.urls[worker::n_workers]
        if not mine:
            return
        buffer: list = []
        for n, sample in enumerate(self._samples(mine)):
            image_key = next((k for k in IMAGE_KEYS if k in sample), None)
            text_key = next((k for k in CAPTION_KEYS if k in sample), None)
            image = _decode(sample[image_key]) if image_key else None
            if image is None or text_key is None:
                buffer.append(None)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(sample_seed(self.seed, self.epoch, n * n_workers + worker))
                    pixels = self.transform(image)
                caption = (
                    sample[text_key].decode("utf-8") if isinstance(sample[text_key], bytes) else str(sample[text_key])
                )
                buffer.append((pixels, self.tokenizer([caption])[0], sample.get("__key__", "")))
            if len(buffer) == self.batch_size:
                yield collate(buffer)
                buffer = []


def shard_urls(spec: str) -> list[str]:
    """A folder of ``.tar`` files, one ``.tar``, or a brace pattern like ``s-{000..009}.tar``."""
    path = Path(spec)
    if path.is_dir():
        return [str(p) for p in sorted(path.glob("*.tar"))]
    import braceexpand

    return list(braceexpand.braceexpand(spec))


@dataclass
class ShardSource:
    """WebDataset shards. Each process reads its own shards; the epoch length is --train-num-samples.

    Resume replays the epoch's stream and drops the micro-batches already used.
    """

    urls: list[str]
    tokenizer: Callable
    transform: Callable
    batch_size: int
    seed: int
    ctx: DistContext
    micro_per_epoch: int
    workers: int = 0
    locked_encoder: Encoder | None = None

    def batches(self, epoch: int, start: int) -> Iterator[Batch]:
        order = list(self.urls)
        random.Random(sample_seed(self.seed, epoch, -1)).shuffle(order)
        stream = _ShardStream(
            order[self.ctx.rank :: self.ctx.world_size],
            self.tokenizer,
            self.transform,
            self.batch_size,
            self.seed,
            epoch,
        )
        loader = SharedMemoryLoader(stream, batch_size=None, num_workers=self.workers, generator=torch.Generator())
        it = iter(loader)
        for _ in range(start):
            next(it)
        for batch in it:
            if self.locked_encoder is not None and len(batch):
                batch.images = self.locked_encoder.encode_pixels(batch.images)
            yield batch


def build_source(cfg: TrainConfig, encoder: Encoder, ctx: DistContext) -> BatchSource:
    transform = train_transform(encoder.preprocess, cfg.augment and not cfg.lock_image)
    if cfg.is_webdataset:
        urls = shard_urls(cfg.train_data)
        if len(urls) < ctx.world_size:
            raise TrainingError(f"{len(urls)} shards cannot feed {ctx.world_size} processes; write more shards")
        per_epoch = (cfg.train_num_samples or 0) // (cfg.batch_size * ctx.world_size)
        if cfg.train_num_samples is None:
            per_epoch = (cfg.steps or 1) * cfg.accum_steps
        return ShardSource(
            urls,
            encoder.tokenizer,
            transform,
            cfg.batch_size,
            cfg.seed,
            ctx,
            per_epoch,
            cfg.workers,
            locked_encoder=encoder if cfg.lock_image else None,
        )
    pairs = read_pairs(
        cfg.train_data,
        cfg.img_key,
        cfg.caption_key,
        cfg.image_root,
        cfg.split_key,
        cfg.train_split,
        cfg.max_train_samples,
    )
    features = None
    if cfg.lock_image:
        root = cfg.feature_cache or str(cfg.output_dir / "feature_cache")
        if ctx.is_main:
            FeatureCache.open(root, encoder.fingerprint).fill(
                pairs.images, encoder, workers=cfg.workers, progress=cfg.progress
            )
        barrier(ctx)
        features = FeatureCache.open(root, encoder.fingerprint)
    dataset = PairDataset(pairs, encoder.tokenizer, transform, features=features, draft_size=encoder.image_size)
    return PairSource(dataset, cfg.batch_size, cfg.seed, ctx, cfg.workers)
