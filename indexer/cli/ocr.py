"""``python -m indexer ocr``: read the text in the photos of an index that have none yet."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from retrieval.cli.runner import count

from ..text import DEFAULT_CHECKPOINT, OcrConfig, ocr_index


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("ocr", help="read the text in the indexed photos that have none yet (search it with --contains)")
    p.add_argument("--index", required=True, help="index directory")
    p.add_argument(
        "--checkpoint",
        type=count(1),
        default=DEFAULT_CHECKPOINT,
        help=f"publish what has been read every this many photos (default {DEFAULT_CHECKPOINT})",
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON line")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(a: argparse.Namespace) -> int:
    report = ocr_index(OcrConfig(index_dir=Path(a.index), checkpoint=a.checkpoint), progress=not a.no_progress)
    if a.json:
        data = asdict(report)
        data.pop("manifest", None)
        data["photos_per_second"] = report.reading.photos_per_second
        print(json.dumps(data, default=str))
    else:
        print(report.summary())
        print("photos that later builds and updates add have their text read too")
    return 0
