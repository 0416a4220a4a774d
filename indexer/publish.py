"""The write stage's last step, the same for every build: publish a generation, record the catalog, report.

A one-process build writes the vectors it assembled (``retrieval.index.store.write_generation``);
rank 0 of a torchrun build merges the ranks' shards (``indexer.merge.publish_merged``). Both
reach the index through :func:`publish`, which times the write, records each file's state in
the catalog and fills the report's outcome, so the two builds cannot drift apart in what
they record or report.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from retrieval.index.manifest import Manifest
from retrieval.models.encoder import Encoder

from .catalog import Catalog
from .config import BadFile, BuildConfig, BuildReport
from .pipeline import EmbeddedBatch
from .planning import Prepared, count_touched, settle_retried

FileRow = tuple[str, int, float, str]  # path, size, mtime, sha256: a file the index now holds
BadRow = tuple[str, int, float, "str | None", str]  # path, size, mtime, sha256, reason


@dataclass
class Embedded:
    """What the embed stage did with each file, whichever process ran it."""

    new: list[FileRow] = field(default_factory=list)
    reused: list[FileRow] = field(default_factory=list)
    bad: list[BadFile] = field(default_factory=list)
    bad_rows: list[BadRow] = field(default_factory=list)

    @classmethod
    def of(cls, batches: Iterable[EmbeddedBatch]) -> Embedded:
        out = cls()
        for b in batches:
            out.new += [(it.file.path, it.file.size, it.file.mtime, it.sha256 or "") for it in b.new]
            out.reused += [(it.file.path, it.file.size, it.file.mtime, it.sha256 or "") for it in b.reused]
            for it in b.bad:
                out.bad.append(BadFile(it.file.path, it.reason or "", it.detail))
                out.bad_rows.append(
                    (
                        it.file.path,
                        it.file.size,
                        it.file.mtime,
                        it.sha256,
                        f"{it.reason}: {it.detail}" if it.detail else it.reason or "",
                    )
                )
        return out

    def __add__(self, other: Embedded) -> Embedded:
        return Embedded(
            self.new + other.new, self.reused + other.reused, self.bad + other.bad, self.bad_rows + other.bad_rows
        )


def next_manifest(prep: Prepared, encoder: Encoder, new_bad: int, ocr: dict[str, Any] | None = None) -> Manifest:
    """The manifest of the generation this build publishes (count, index type and time come with the write);
    ``ocr``: how the index reads text in photos (``indexer.text.ocr_for_build``), empty when it does not."""
    return Manifest(
        model_spec=prep.report.model_spec,
        model_fingerprint=encoder.fingerprint,
        embed_dim=encoder.embed_dim,
        roots=tuple(prep.roots),
        bad_count=len(prep.plan.known_bad) + new_bad,
        tagging=prep.live.manifest.tagging if prep.live else {},
        ocr=ocr or {},
        follow_links=prep.report.follow_links,
    )


def requested_factory(config: BuildConfig, prep: Prepared) -> str | None:
    """The FAISS factory the user asked for, on this run or on the build that made the live index."""
    return config.index_type or (prep.live.manifest.ann_params.get("requested_factory") if prep.live else None)


def publish(
    prep: Prepared, catalog: Catalog, embedded: Embedded, write: Callable[[], tuple[str, Manifest]]
) -> BuildReport:
    """Run ``write`` (which publishes a generation and returns its name and manifest), then
    record every file's state in the catalog and fill in what the build did."""
    report, t = prep.report, prep.report.timings
    tick = time.perf_counter()
    generation, written = write()
    t.write = time.perf_counter() - tick - t.ocr  # reading text in photos, when on, happens in the write: its own stage
    tick = time.perf_counter()
    catalog.record(
        generation=generation,
        ok=[*embedded.new, *embedded.reused],
        bad=embedded.bad_rows,
        deleted=prep.plan.gone + prep.bad_gone,
    )
    t.catalog = time.perf_counter() - tick
    report.embedded, report.reused = len(embedded.new), len(embedded.reused)
    report.embedded_paths = [row[0] for row in embedded.new]
    report.reused_paths = [row[0] for row in embedded.reused]
    count_touched(report, prep, ((row[0], row[3] or None) for row in embedded.reused))
    report.published, report.generation = True, generation
    report.count, report.index_type = written.count, written.index_type
    report.new_bad = list(embedded.bad)
    settle_retried(report, prep.plan)
    return report
