"""``python -m retrieval duplicates``: groups of near-duplicate photos in an index."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..duplicates.groups import DEFAULT_THRESHOLD
from ..query.search import default_index_dir, open_index
from ..units import format_bytes
from .search import add_filter_arguments, filters_from


@dataclass(frozen=True)
class DuplicatesArgs:
    index: Path
    threshold: float
    as_json: bool
    progress: bool
    filters: dict[str, Any] = field(default_factory=dict)  # as for search: folder, dates, types, tag


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "duplicates", help="find near-duplicate photos (copies, resized, re-compressed, edited, grayscale, mirrored)"
    )
    p.add_argument("--index", type=Path, default=None, help=f"index directory (default {default_index_dir()})")
    p.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"cosine at or above which two photos count as one (default {DEFAULT_THRESHOLD}; "
        "higher finds fewer, closer copies; photos whose pixel fingerprints match, such as "
        "grayscale versions and mirror images, count as one at any threshold)",
    )
    add_filter_arguments(p)
    p.add_argument("--json", dest="as_json", action="store_true", help="print a JSON list of groups")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(
        run=lambda a: run(
            DuplicatesArgs(
                a.index or default_index_dir(),
                a.threshold,
                a.as_json,
                not a.no_progress and sys.stderr.isatty(),
                filters_from(a),
            )
        )
    )


def run(args: DuplicatesArgs) -> int:
    groups = open_index(args.index).duplicates(args.threshold, progress=args.progress, **args.filters)
    if args.as_json:
        print(json.dumps([g.to_dict() for g in groups], indent=2))
        return 0
    if not groups:
        print(f"no near-duplicates at threshold {args.threshold}")
        return 0
    images = sum(len(g.rows) for g in groups)
    print(
        f"{len(groups)} group{'s' if len(groups) > 1 else ''}, {images} images; "
        f"keeping the first of each would set aside {images - len(groups)}"
    )
    missing = sum(len(g.missing) for g in groups)
    if missing:
        print(
            f"{missing} of them are no longer on disk (marked 'missing', never the one to keep); if their folder is "
            f"gone for good: python -m indexer remove FOLDER --index {args.index}"
        )
    for n, g in enumerate(groups, 1):
        same = f", {g.identical_files} identical files" if g.identical_files else ""
        print(f"\ngroup {n}: {len(g.rows)} images, cosine {g.min_similarity:.3f}-{g.max_similarity:.3f}{same}")
        mirrored = set(g.mirror_images)
        for i, m in enumerate(g.metadata):
            note = ("  (mirror image)" if m["path"] in mirrored else "") + (
                "  (missing)" if m["path"] in g.missing else ""
            )
            print(
                f"  {'keep' if i == 0 else '    '}  {m['path']}  {m['width']}x{m['height']}  {format_bytes(m['size'])}{note}"
            )
    return 0
