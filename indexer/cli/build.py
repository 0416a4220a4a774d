"""``python -m indexer build``: index folders, incrementally when the index exists."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from retrieval.cli.runner import count
from retrieval.models.encoder import PRECISION_HELP, PRECISIONS

from ..api import build
from ..config import BuildConfig, BuildReport

GPU_DECODE = {"auto": None, "on": True, "off": False}


def add_build_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--index", required=True, help="index directory")
    p.add_argument("--model", default=None, help="model spec (default: the index's model, else builtin)")
    p.add_argument("--index-type", default=None, help="FAISS factory string (default: chosen by size)")
    p.add_argument(
        "--workers",
        type=count(0),
        default=None,
        help="decode worker processes (default: by CPU count; 0, inline, on a CPU-only machine with 2 cores or fewer)",
    )
    p.add_argument("--batch-size", type=count(1), default=None, help="images per model batch (default 64 GPU / 32 CPU)")
    p.add_argument("--db-url", default=None, help="SQLAlchemy URL of the catalog (default: SQLite in the index)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available)")
    p.add_argument(
        "--gpu-decode",
        choices=list(GPU_DECODE),
        default="auto",
        help="decode JPEGs on the model's device (default auto: on CUDA when nvJPEG works there)",
    )
    p.add_argument("--precision", choices=list(PRECISIONS), default="auto", help=PRECISION_HELP)
    p.add_argument("--rebuild", action="store_true", help="re-embed everything (e.g. with a different model)")
    p.add_argument(
        "--follow-links",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="follow links that lead out of the indexed folders (default: as the index was built; "
        "a new index does not); kept for later updates",
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON line")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def config_from_args(a: argparse.Namespace) -> BuildConfig:
    return BuildConfig(
        model=a.model,
        index_type=a.index_type,
        workers=a.workers,
        batch_size=a.batch_size,
        db_url=a.db_url,
        rebuild=a.rebuild,
        device=a.device,
        gpu_decode=GPU_DECODE[a.gpu_decode],
        precision=a.precision,
        ocr=getattr(a, "ocr", False),
        follow_links=a.follow_links,
    )


def print_report(report: BuildReport, as_json: bool) -> int:
    if as_json:
        data = asdict(report)
        data["images_per_second"] = report.images_per_second
        print(json.dumps(data))
    else:
        print(report.summary())
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("build", help="index the images under folders (adds them to the index's roots)")
    p.add_argument("paths", nargs="+", help="folders or files to index")
    add_build_options(p)
    p.add_argument(
        "--ocr",
        action="store_true",
        help="also read the text in the photos (search it with --contains); updates keep doing it",
    )
    p.set_defaults(
        run=lambda a: print_report(build(a.paths, a.index, config_from_args(a), progress=not a.no_progress), a.json)
    )
