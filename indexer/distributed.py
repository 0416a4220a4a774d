"""Scale-out builds under ``torchrun``: every rank embeds its slice, rank 0 merges and publishes.

``torchrun --nproc_per_node=K -m indexer build PHOTOS --index DIR`` (or several nodes under
torchrun's rendezvous) reaches :func:`build_distributed` through ``indexer.api.build``. Only
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` and ``torch.distributed`` (gloo on CPU, nccl on
GPU) are used; the index folder must be on storage that every rank can read and write.

1. Rank 0 takes the writer lock, scans (sorted) and plans exactly like a one-process build,
   and writes the files to process into a staging folder ``DIR/.staging/<run>``.
2. Rank r embeds its contiguous slice of them and writes a shard: float16 vectors and
   Parquet metadata of its new rows, plus the files it reused or found bad.
3. Rank 0 trains the ANN index on a sample of all shards; every rank encodes its shards
   into it; rank 0 merges them (:mod:`indexer.merge`), publishes the generation, records
   the catalog and removes the staging folder.

Rows end up in the order a one-process build gives: kept, reused, then new in scan order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import faiss
import numpy as np
import pyarrow.parquet as pq
import torch

from retrieval.errors import RetrievalError
from retrieval.models.encoder import Encoder
from retrieval.models.factory import create_model
from retrieval.ranks import DistContext

from .config import BuildConfig, BuildReport, ProgressCallback
from .coordinator import Coordinator, Job, RankResult, staging_write
from .embedding import embed_all
from .merge import Shard, encode_shard
from .pipeline import EmbeddedBatch, assemble
from .publish import Embedded
from .scan import ScannedFile

T = TypeVar("T")


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous slice ``[lo, hi)`` of ``n`` items; sizes differ by at most one."""
    return n * rank // world, n * (rank + 1) // world


def shard_list(items: Sequence[T], ctx: DistContext) -> list[T]:
    lo, hi = shard_bounds(len(items), ctx.rank, ctx.world_size)
    return list(items[lo:hi])


def rank_device(ctx: DistContext, requested: str | None) -> str | None:
    """The LOCAL_RANK GPU when there are GPUs (and none was forced), else what was asked for."""
    if requested is None and torch.cuda.is_available():
        return f"cuda:{ctx.local_rank % torch.cuda.device_count()}"
    return requested


class Collective:
    """The few collectives a build needs; a no-op stand-in when the world has one process."""

    def __init__(self, ctx: DistContext, device: str | None, timeout_s: float = 3600) -> None:
        self.ctx = ctx
        self.owned = False
        if ctx.is_distributed and not torch.distributed.is_initialized():
            on_gpu = device is not None and device.startswith("cuda")
            if on_gpu:
                torch.cuda.set_device(torch.device(device))
            torch.distributed.init_process_group("nccl" if on_gpu else "gloo", timeout=timedelta(seconds=timeout_s))
            self.owned = True

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (pickled; keep it small)."""
        if not self.ctx.is_distributed:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def share(self, produce: Callable[[], Any] | None) -> Any:
        """Run ``produce`` on rank 0 and hand its value to every rank; a library error it raises
        is raised on every rank (rank 0 re-raises the original), so no rank waits forever."""
        value, error = None, None
        failure: RetrievalError | None = None
        if self.ctx.is_main and produce is not None:
            try:
                value = produce()
            except RetrievalError as exc:
                failure, error = exc, f"rank 0: {exc}"
        value, error = self.broadcast((value, error))
        if failure is not None:
            raise failure
        if error:
            raise RetrievalError(error)
        return value

    def agree(self, failure: RetrievalError | None) -> None:
        """Raise on every rank when any rank failed (its own error there, the failed ranks' messages
        elsewhere), so that no rank waits forever at the next collective; a barrier otherwise."""
        mine = f"rank {self.ctx.rank}: {failure}" if failure is not None else ""
        errors = [mine]
        if self.ctx.is_distributed:
            errors = [""] * self.ctx.world_size
            torch.distributed.all_gather_object(errors, mine)
        if failure is not None:
            raise failure
        if any(errors):
            raise RetrievalError("; ".join(e for e in errors if e))

    def close(self) -> None:
        if self.owned:
            torch.distributed.destroy_process_group()
            self.owned = False


def _embed_slice(
    files: list[ScannedFile],
    encoder: Encoder,
    config: BuildConfig,
    known: frozenset[str],
    staging: Path,
    rank: int,
    progress: bool | ProgressCallback | None,
) -> RankResult:
    report = BuildReport(index_dir=str(staging), model_spec=encoder.spec)
    batches: list[EmbeddedBatch] = embed_all(files, known, encoder, config, progress, report)
    vectors, metadata = assemble(encoder.embed_dim, None, None, [], batches, {})
    t = report.timings
    out = RankResult(
        shard=None,
        embed_s=t.embed,
        decode_wait_s=t.decode_wait,
        decode_cpu_s=t.decode_cpu,
        decode_device_s=t.decode_device,
        gpu_decode=report.gpu_decode,
        device_decoded=report.device_decoded,
        pillow_decoded=report.pillow_decoded,
        precision=report.precision,
    )
    if len(vectors):
        out.shard = Shard(staging / f"rank-{rank:05d}.npy", staging / f"rank-{rank:05d}.parquet")
        with staging_write(f"rank {rank}'s shard in {staging}", staging, 2 * vectors.size + metadata.nbytes):
            np.save(out.shard.vectors, vectors.astype(np.float16))
            pq.write_table(metadata, out.shard.metadata)
    out.files = Embedded.of(batches)
    return out


def _gather(ctx: DistContext, value: RankResult) -> list[RankResult]:
    if not ctx.is_distributed:
        return [value]
    out: list[Any] = [None] * ctx.world_size
    torch.distributed.all_gather_object(out, value)
    return out


def build_distributed(
    index_dir: Path,
    new_roots: list[str],
    config: BuildConfig,
    ctx: DistContext,
    progress: bool | ProgressCallback | None = None,
    encoder: Encoder | None = None,
    must_exist: bool = False,
) -> BuildReport:
    """One rank's part of a sharded build; every rank returns rank 0's report of the result.

    ``progress`` shows on rank 0 only. ``must_exist`` makes it an update (the index must exist).
    """
    device = rank_device(ctx, config.device)
    col = Collective(ctx, device)
    boss = Coordinator(index_dir, new_roots, config, encoder, device, must_exist) if ctx.is_main else None
    try:
        return _run(ctx, col, boss, config, progress if ctx.is_main else None, encoder, device)
    finally:
        if boss is not None:
            boss.close()
        col.close()


def _run(
    ctx: DistContext,
    col: Collective,
    boss: Coordinator | None,
    config: BuildConfig,
    progress: bool | ProgressCallback | None,
    encoder: Encoder | None,
    device: str | None,
) -> BuildReport:
    started = time.perf_counter()
    job: Job = col.share(boss.plan if boss else None)
    if job.skip:
        return col.share(lambda: boss.finish_unchanged(started) if boss else None)
    staging = Path(job.staging)
    encoder = (
        (boss.encoder if boss else None)
        or encoder
        or create_model(job.spec, device=device, precision=config.precision, towers="image")
    )
    todo = pq.read_table(staging / "todo.parquet")
    known = frozenset(pq.read_table(staging / "known.parquet").column("sha256").to_pylist())
    lo, hi = shard_bounds(todo.num_rows, ctx.rank, ctx.world_size)
    mine = [
        ScannedFile(p, s, m) for p, s, m in zip(*(todo.column(c).to_pylist()[lo:hi] for c in ("path", "size", "mtime")))
    ]
    failure: RetrievalError | None = None
    try:
        embedded = _embed_slice(mine, encoder, config, known, staging, ctx.rank, progress)
    except RetrievalError as exc:
        embedded, failure = RankResult(), exc
    col.agree(failure)
    results = _gather(ctx, embedded)
    plan: dict = col.share(lambda: boss.train(results) if boss else None)
    if plan["ivf"]:
        trained = faiss.read_index(plan["trained"])
        for j, (vec_path, first, out_path) in enumerate(plan["encode"]):
            if j % ctx.world_size == ctx.rank:
                try:
                    with staging_write(f"rank {ctx.rank}'s encoded shard {out_path}", staging):
                        faiss.write_index(encode_shard(trained, np.load(vec_path, mmap_mode="r"), first), out_path)
                except RetrievalError as exc:
                    failure = exc
    col.agree(failure)  # also the barrier before publishing
    return col.share(lambda: boss.publish(results, started) if boss else None)
