"""Rank 0's side of a distributed build: plan, train the ANN index, merge, publish, record.

It plans with :func:`indexer.planning.prepare` and publishes with :func:`indexer.publish.publish`,
as the one-process build does, so both give the same generation and the same report; the
ranks' side is in :mod:`indexer.distributed`.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from retrieval.errors import IndexNotFoundError, IndexWriteError
from retrieval.index import ann
from retrieval.index.manifest import Manifest
from retrieval.index.store import IndexReader, WriterLock, live_generation, writes_refused_as_errors
from retrieval.models.encoder import Encoder

from .catalog import Catalog, open_catalog
from .config import BuildConfig, BuildReport
from .decode import DecodedItem
from .merge import Shard, ShardSet, publish_merged, train_empty
from .pipeline import EmbeddedBatch, Plan, assemble
from .planning import Prepared, finish_unchanged, prepare
from .publish import Embedded, next_manifest, publish, requested_factory
from .scan import ScannedFile
from .tag import tag_new_photos
from .text import ocr_for_build, read_unchanged_index

STAGING = ".staging"


@dataclass
class Job:
    """What rank 0 tells every rank after planning."""

    staging: str = ""
    spec: str = ""
    skip: bool = False


@dataclass
class RankResult:
    """One rank's shard on disk and what happened to its files."""

    shard: Shard | None = None
    files: Embedded = field(default_factory=Embedded)
    embed_s: float = 0.0
    decode_wait_s: float = 0.0
    decode_cpu_s: float = 0.0
    decode_device_s: float = 0.0
    gpu_decode: bool = False
    device_decoded: int = 0
    pillow_decoded: int = 0
    precision: str = ""


def staging_write(what: str, staging: Path, needs: int | None = None) -> contextlib.AbstractContextManager[None]:
    """A staging write the disk refuses (full, read-only...) as IndexWriteError (FAISS raises RuntimeError)."""
    return writes_refused_as_errors(what, "the index is unchanged", staging, needs, kind=IndexWriteError)


class Coordinator:
    """Holds the writer lock and the catalog from planning to publishing."""

    def __init__(
        self,
        index_dir: Path,
        new_roots: list[str],
        config: BuildConfig,
        encoder: Encoder | None,
        device: str | None,
        must_exist: bool,
    ) -> None:
        self.index_dir, self.new_roots, self.config = index_dir, new_roots, config
        self.encoder, self.device, self.must_exist = encoder, device, must_exist
        self.lock: WriterLock | None = None
        self.catalog: Catalog | None = None
        self.staging: Path | None = None
        self.report = BuildReport(index_dir=str(index_dir), model_spec="")
        self.live: IndexReader | None = None
        self.plan_: Plan = Plan()
        self.sha_rows: dict[str, int] = {}
        self.prep: Prepared | None = None

    def plan(self) -> Job:
        """Lock, scan, plan; write the files to process (and hashes to reuse) for the ranks."""
        index_dir = self.index_dir
        self.lock = WriterLock(index_dir).acquire()
        if self.must_exist and live_generation(index_dir) is None:
            raise IndexNotFoundError(f"no index at {index_dir} to update")
        shutil.rmtree(index_dir / STAGING, ignore_errors=True)  # left by a killed run; only the lock holder writes it
        self.catalog = open_catalog(index_dir, self.config.db_url, self.config.rebuild)
        prep = self.prep = prepare(
            index_dir, self.new_roots, self.config, self.lock, self.catalog, self.encoder, self.device
        )
        self.encoder, self.report, self.live, self.plan_ = prep.encoder, prep.report, prep.live, prep.plan
        self.sha_rows = prep.sha_rows
        spec = prep.report.model_spec
        if prep.nothing_to_do:
            return Job(spec=spec, skip=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        self.staging = index_dir / STAGING / f"run-{stamp}-{secrets.token_hex(4)}"
        self.staging.mkdir(parents=True)
        todo = self.plan_.todo
        with staging_write(f"the list of files for the ranks in {self.staging}", self.staging):
            pq.write_table(
                pa.table(
                    {
                        "path": [f.path for f in todo],
                        "size": [f.size for f in todo],
                        "mtime": pa.array([f.mtime for f in todo], pa.float64()),
                    }
                ),
                self.staging / "todo.parquet",
            )
            pq.write_table(
                pa.table({"sha256": pa.array(list(self.sha_rows), pa.string())}), self.staging / "known.parquet"
            )
        return Job(staging=str(self.staging), spec=spec)

    def finish_unchanged(self, started: float) -> BuildReport:
        assert self.catalog is not None and self.prep is not None
        return finish_unchanged(self.prep, self.catalog, started)

    def _base_shard(self, results: list[RankResult]) -> Shard:
        """Kept live rows, then files whose content the live index already holds (in rank order)."""
        assert self.staging is not None and self.encoder is not None
        base = None if self.config.rebuild else self.live
        reused = [
            DecodedItem(file=ScannedFile(p, s, m), sha256=h, known=True)
            for res in results
            for p, s, m, h in res.files.reused
        ]
        batch = EmbeddedBatch(new=[], vectors=np.zeros((0, self.encoder.embed_dim), np.float32), reused=reused, bad=[])
        vectors, metadata = assemble(
            self.encoder.embed_dim,
            base.vectors if base else None,
            base.metadata if base else None,
            self.plan_.keep_rows,
            [batch],
            self.sha_rows,
        )
        shard = Shard(self.staging / "base.npy", self.staging / "base.parquet")
        with staging_write(f"the kept vectors in {self.staging}", self.staging, 2 * vectors.size + metadata.nbytes):
            np.save(shard.vectors, vectors.astype(np.float16))
            pq.write_table(metadata, shard.metadata)
        return shard

    def train(self, results: list[RankResult]) -> dict:
        """Train the ANN index on all shards; say which shard each rank encodes into it."""
        assert self.staging is not None and self.encoder is not None
        self.shards = [self._base_shard(results)] + [res.shard for res in results if res.shard is not None]
        shard_set = ShardSet(self.shards, self.encoder.embed_dim)
        assert self.prep is not None
        self.requested = requested_factory(self.config, self.prep)
        self.factory = self.requested or ann.choose_factory(shard_set.total, self.encoder.embed_dim)
        tick = time.perf_counter()
        self.trained = train_empty(shard_set, self.factory)
        self.train_s = time.perf_counter() - tick
        is_ivf = faiss.try_extract_index_ivf(self.trained) is not None
        encode = []
        if is_ivf:
            with staging_write(f"the trained index in {self.staging}", self.staging):
                faiss.write_index(self.trained, str(self.staging / "trained.faiss"))
            encode = [
                (str(s.vectors), int(first), str(self.staging / f"encoded-{j:05d}.faiss"))
                for j, (s, first) in enumerate(zip(self.shards, shard_set.offsets))
            ]
        self.encoded = [Path(e[2]) for e in encode] if is_ivf else None
        return {"ivf": is_ivf, "trained": str(self.staging / "trained.faiss"), "encode": encode}

    def publish(self, results: list[RankResult], started: float) -> BuildReport:
        assert self.encoder is not None and self.catalog is not None and self.prep is not None
        embedded = sum((res.files for res in results), Embedded())
        ocr = ocr_for_build(self.config.ocr, self.live.manifest if self.live else None)
        manifest = next_manifest(self.prep, self.encoder, len(embedded.bad), ocr)

        def write() -> tuple[str, Manifest]:
            if manifest.tagging:
                self._tag_rank_shards(manifest.tagging)
            merged = publish_merged(
                self.index_dir,
                self.shards,
                manifest,
                self.trained,
                self.factory,
                self.encoded,
                requested_factory=self.requested,
                lock=self.lock,
            )
            generation = merged.generation.name
            if ocr:  # the new photos' text, read here on rank 0 and published as the next generation
                assert self.lock is not None
                read_unchanged_index(self.index_dir, self.lock, None, self.report)
                generation = self.report.generation or generation
            return generation, merged.manifest

        r = publish(self.prep, self.catalog, embedded, write)
        t = r.timings
        t.embed = max((res.embed_s for res in results), default=0.0)
        t.decode_wait = max((res.decode_wait_s for res in results), default=0.0)
        t.decode_cpu = sum(res.decode_cpu_s for res in results)
        t.decode_device = max((res.decode_device_s for res in results), default=0.0)
        r.gpu_decode = any(res.gpu_decode for res in results)
        r.device_decoded = sum(res.device_decoded for res in results)
        r.pillow_decoded = sum(res.pillow_decoded for res in results)
        r.precision = next((res.precision for res in results if res.precision), "")
        t.total = time.perf_counter() - started
        return r

    def _tag_rank_shards(self, tagging: dict) -> None:
        """Tag the photos the ranks embedded (their shards) as the index was tagged, as a one-process build does."""
        assert self.staging is not None and self.encoder is not None
        for shard in self.shards[1:]:
            if shard.metadata is None:
                continue
            table = tag_new_photos(pq.read_table(shard.metadata), shard.open(), 0, tagging, self.encoder, self.report)
            with staging_write(f"the new photos' tags in {self.staging}", self.staging):
                pq.write_table(table, shard.metadata)

    def close(self) -> None:
        """Drop the staging folder, close the catalog and release the lock (also after a failure)."""
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            try:
                self.staging.parent.rmdir()
            except OSError:
                pass  # another run's staging folder is still there
        if self.catalog is not None:
            self.catalog.close()
        if self.lock is not None:
            self.lock.release()
