"""``python -m indexer stats``: what an index holds and which files could not be indexed."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass

from ..api import stats
from ..config import IndexStats


@dataclass(frozen=True)
class StatsArgs:
    index: str
    db_url: str | None
    as_json: bool


def format_stats(s: IndexStats) -> str:
    lines = [
        f"index:       {s.index_dir} ({s.generation})",
        f"images:      {s.count}"
        + (f"  ({', '.join(f'{k} {v}' for k, v in s.file_types.items())})" if s.file_types else ""),
        f"model:       {s.model_spec} (weights {s.model_fingerprint}, {s.embed_dim}-d)",
        f"index type:  {s.index_type}",
        f"built:       {s.build_time}",
        f"folders:     {', '.join(s.roots) or '-'}",
        f"tags:        {_tagging(s.tagging)}",
        "text (OCR):  "
        + (
            f"read in {s.text_read} of {s.count} photos; new photos are read on update"
            if s.ocr
            else "- (python -m indexer ocr --index DIR reads it)"
        ),
        f"verified:    {_verified(s)}",
        f"bad files:   {s.bad_count}",
    ]
    lines += [f"  {b.path}: {b.reason}" + (f" ({b.detail})" if b.detail else "") for b in s.bad_files]
    return "\n".join(lines)


def _verified(s: IndexStats) -> str:
    if not s.checksums:
        return "not verified (written without checksums; an update or rebuild adds them)"
    return s.verified or "never (python -m indexer verify --index DIR); files are checked as they are read"


def _tagging(tagging: dict) -> str:
    if not tagging:
        return "-"
    labels = tagging.get("labels", [])
    shown = ", ".join(labels[:8]) + (", ..." if len(labels) > 8 else "")
    return f"{len(labels)} labels ({shown}); new photos are tagged on update"


def run(args: StatsArgs) -> int:
    result = stats(args.index, db_url=args.db_url)
    print(json.dumps(asdict(result)) if args.as_json else format_stats(result))
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("stats", help="counts, model, index type, build time and bad files")
    p.add_argument("--index", required=True, help="index directory")
    p.add_argument("--db-url", default=None, help="SQLAlchemy URL of the catalog")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=lambda a: run(StatsArgs(index=a.index, db_url=a.db_url, as_json=a.json)))
