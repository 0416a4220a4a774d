"""The plan stage shared by one-process and distributed builds.

With the writer lock held: load the model, check it matches the live index, reconcile the
catalog, scan the roots and decide what to keep, embed, reuse and drop. Both
``indexer.api`` and ``indexer.coordinator`` start from :func:`prepare`, so a sharded build
plans exactly what a one-process build would.
"""

from __future__ import annotations

import bisect
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from retrieval.errors import IndexFormatError, ModelMismatchError
from retrieval.index.manifest import Manifest
from retrieval.index.store import MANIFEST, IndexReader, WriterLock, live_generation, remove_stale_generations
from retrieval.models.encoder import Encoder
from retrieval.models.factory import create_model, expected_fingerprint
from retrieval.models.onnxexport import fast_image_encoder
from retrieval.models.registry import DEFAULT_MODEL

from .catalog import BAD, Catalog
from .config import BuildConfig, BuildReport
from .pipeline import Plan, is_excluded, plan_changes
from .scan import EMPTY_ROOT, ScanNotes, is_under, scan


@dataclass
class Prepared:
    """Everything the embed and write stages need to know about this run."""

    encoder: Encoder | None  # None only when there is nothing to do: no model was loaded
    report: BuildReport
    live: IndexReader | None
    base: IndexReader | None  # the live index unless --rebuild
    roots: list[str]
    plan: Plan
    sha_rows: dict[str, int] = field(default_factory=dict)
    bad_gone: list[str] = field(default_factory=list)
    roots_changed: bool = False

    @property
    def nothing_to_do(self) -> bool:
        return self.live is not None and self.base is not None and not self.plan.has_changes and not self.roots_changed


def mismatch_error(index_dir: Path, built: Manifest, spec: str, fingerprint: str) -> ModelMismatchError:
    if spec == built.model_spec:  # the same spec, other weights: the file behind it was replaced
        return ModelMismatchError(
            f"the index at {index_dir} was built with model {built.model_spec!r} (weights {built.model_fingerprint}), "
            f"and the weights behind that spec have changed since (now {fingerprint}); re-embed everything with the "
            f"new weights with --rebuild, put the old weights back, or choose a new --index DIR."
        )
    return ModelMismatchError(
        f"the index at {index_dir} was built with model {built.model_spec!r} (weights {built.model_fingerprint}), "
        f"but this run uses {spec!r} (weights {fingerprint}); update it with --model {built.model_spec}, "
        f"re-embed everything with --rebuild, or choose a new --index DIR."
    )


def _open_live(index_dir: Path, rebuild: bool) -> tuple[IndexReader | None, Manifest | None, bool]:
    """The live generation, its manifest, and whether it is damaged. A damaged one is an error,
    except for a rebuild, which re-embeds everything and needs only its manifest (model and
    folders), when that can still be read."""
    try:
        if live_generation(index_dir) is None:
            return None, None, False
    except IndexFormatError:  # CURRENT itself is damaged: a rebuild, told the folders, starts afresh
        if not rebuild:
            raise
        return None, None, True
    try:
        live = IndexReader.open(index_dir, mmap=True)
        return live, live.manifest, False
    except IndexFormatError:
        if not rebuild:
            raise
    try:
        return None, Manifest.from_json((live_generation(index_dir) / MANIFEST).read_bytes()), True
    except (OSError, IndexFormatError):
        return None, None, True


def prepare(
    index_dir: Path,
    new_roots: list[str],
    config: BuildConfig,
    lock: WriterLock,
    catalog: Catalog,
    encoder: Encoder | None,
    device: str | None,
) -> Prepared:
    """Lock-holder's planning: model, compatibility, catalog repair, scan and plan."""
    remove_stale_generations(index_dir, lock)
    live, manifest, damaged = _open_live(index_dir, config.rebuild)
    spec = encoder.spec if encoder else config.model or (manifest.model_spec if manifest else DEFAULT_MODEL)
    report = BuildReport(index_dir=str(index_dir), model_spec=spec)
    t = report.timings

    def load() -> Encoder:
        tick = time.perf_counter()
        loaded = create_model(spec, device=device, precision=config.precision, towers="image")
        t.load_model = time.perf_counter() - tick
        tick = time.perf_counter()
        loaded = fast_image_encoder(loaded)  # once per model and machine: later builds load the export
        t.export_image = time.perf_counter() - tick
        return loaded

    # An update of the index's own model checks the weights' fingerprint, and loads the model
    # (seconds) only once the plan has something to embed or write.
    fingerprint = expected_fingerprint(spec) if encoder is None and live is not None and not config.rebuild else None
    if encoder is None and fingerprint is None:
        encoder = load()
    fingerprint = encoder.fingerprint if encoder is not None else fingerprint
    if live is not None and live.manifest.model_fingerprint != fingerprint and not config.rebuild:
        raise mismatch_error(index_dir, live.manifest, spec, str(fingerprint))
    if live is not None:
        catalog.reconcile(live.generation_dir.name, live.metadata)
    old_roots = list(manifest.roots) if manifest else []
    adding = [r for r in new_roots if r not in old_roots]  # naming a folder the index has is an update
    if adding:  # naming a removed folder (or one around it) adds it back
        catalog.unremove(lambda p: any(is_under(p, r) for r in adding))
    roots = old_roots + [r for r in new_roots if r not in old_roots]
    if damaged and not roots:
        raise IndexFormatError(
            f"the index at {index_dir} is damaged and does not say which folders it held; "
            f"name them: python -m indexer build FOLDER --index {index_dir} --rebuild"
        )
    base = None if config.rebuild else live

    tick = time.perf_counter()
    notes = ScanNotes()
    follow = config.follow_links if config.follow_links is not None else bool(manifest and manifest.follow_links)
    files = scan(roots, skip_dirs=[str(index_dir)], notes=notes, follow_links=follow)
    report.ignored, report.bad_names = dict(notes.ignored.most_common()), notes.bad_names
    report.follow_links, report.outside_links, report.not_photos = follow, notes.outside_links, notes.not_photos
    t.scan = time.perf_counter() - tick
    tick = time.perf_counter()
    states = catalog.files()
    unreachable, report.broken_links, gone_roots = _offline(notes, roots, base)
    roots = [r for r in roots if r not in gone_roots]
    plan = plan_changes(files, base.metadata if base else None, states, unreachable, retry_bad=config.rebuild)
    report.unreachable, report.kept_unreachable = unreachable, plan.kept_unreachable
    report.left_out_removed = plan.left_out_removed
    sha_rows = {s: i for i, s in enumerate(base.metadata.column("sha256").to_pylist())} if base is not None else {}
    t.plan = time.perf_counter() - tick
    report.scanned, report.skipped_bad = len(files), len(plan.known_bad)
    report.unchanged = len(plan.keep_rows) - plan.kept_unreachable
    report.removed_paths, report.removed = list(plan.gone), len(plan.gone)
    scanned = {f.path for f in files}
    offline = set(unreachable)
    bad_gone = [
        p
        for p, st in states.items()
        if st.status == BAD and p not in scanned and not (offline and is_excluded(p, offline))
    ]
    prepared = Prepared(
        encoder=encoder,
        report=report,
        live=live,
        base=base,
        roots=roots,
        plan=plan,
        sha_rows=sha_rows,
        bad_gone=bad_gone,
        roots_changed=roots != old_roots or (manifest is not None and manifest.follow_links != follow),
    )
    if prepared.encoder is None and not prepared.nothing_to_do:
        prepared.encoder = load()
        if live is not None and prepared.encoder.fingerprint != fingerprint:  # weights replaced during the scan
            raise mismatch_error(index_dir, live.manifest, spec, prepared.encoder.fingerprint)
    return prepared


def count_touched(report: BuildReport, prep: Prepared, reused: Iterable[tuple[str, str | None]]) -> None:
    """Files whose time changed but not their content (touched, re-saved as they were) were
    counted as reused, which the summary calls moved or copied; they are unchanged."""
    if prep.base is None or not prep.plan.changed:
        return
    meta = prep.base.metadata.filter(
        pc.is_in(prep.base.metadata.column("path"), pa.array(prep.plan.changed, pa.string()))
    )
    old = dict(zip(meta.column("path").to_pylist(), meta.column("sha256").to_pylist()))
    touched = {path for path, sha in reused if sha is not None and old.get(path) == sha}
    report.touched = len(touched)
    report.reused -= len(touched)
    report.unchanged += len(touched)
    report.reused_paths = [p for p in report.reused_paths if p not in touched]


def _offline(
    notes: ScanNotes, roots: list[str], base: IndexReader | None
) -> tuple[dict[str, str], list[str], set[str]]:
    """What the scan could not see, sorted: folders whose indexed photos are kept as they are
    (folder -> why), links that lead nowhere and hold no indexed photo, and roots that are gone."""
    live: list[str] | None = None  # the indexed paths, sorted: only when the scan missed something

    def indexed_under(folder: str) -> bool:  # the index has a photo at or under it (sorted paths: two lookups)
        nonlocal live
        if live is None:
            live = sorted(base.metadata.column("path").to_pylist()) if base is not None else []
        inside = folder.rstrip(os.sep) + os.sep
        at, under = bisect.bisect_left(live, folder), bisect.bisect_left(live, inside)
        return (at < len(live) and live[at] == folder) or (under < len(live) and live[under].startswith(inside))

    readable = [r for r in roots if r not in notes.unreachable]
    offline: dict[str, str] = {}
    gone: set[str] = set()
    for folder, why in notes.unreachable.items():
        if why == EMPTY_ROOT and not indexed_under(folder):
            continue  # an empty folder is just empty unless the index holds photos there
        if not os.path.lexists(folder) and any(folder != r and is_under(folder, r) for r in readable):
            gone.add(folder)  # deleted from a folder that was read (it was added as a root of its own too)
            continue
        offline[folder] = why
    stray = []
    for link, target in notes.broken_links.items():
        if indexed_under(target):  # a link to a folder on a drive that is not mounted, say
            offline.setdefault(target, f"the link {link} leads to it, and it is not there")
        else:
            stray.append(link)
    return offline, stray, gone


def settle_retried(report: BuildReport, plan: Plan) -> None:
    """Files that were bad, tried again and still bad are known bad, not new ones."""
    still = [b for b in report.new_bad if b.path in plan.retried]
    if still:
        report.new_bad = [b for b in report.new_bad if b.path not in plan.retried]
        report.skipped_bad += len(still)


def finish_unchanged(prep: Prepared, catalog: Catalog, started: float) -> BuildReport:
    """Nothing changed: forget bad files that are gone, report the live index as it is."""
    assert prep.live is not None
    if prep.bad_gone:
        catalog.record(generation=prep.live.generation_dir.name, deleted=prep.bad_gone)
    r = prep.report
    r.count, r.index_type, r.generation = len(prep.live), prep.live.manifest.index_type, prep.live.generation_dir.name
    r.timings.total = time.perf_counter() - started
    return r
