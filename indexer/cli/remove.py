"""``python -m indexer remove``: take files or folders out of the index."""

from __future__ import annotations

import argparse

from ..api import remove
from ..config import BuildConfig
from .build import print_report


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("remove", help="take files or whole folders out of the index")
    p.add_argument("paths", nargs="+", help="files or folders")
    p.add_argument("--index", required=True, help="index directory")
    p.add_argument("--db-url", default=None, help="SQLAlchemy URL of the catalog")
    p.add_argument("--json", action="store_true", help="print the report as one JSON line")
    p.set_defaults(run=lambda a: print_report(remove(a.paths, a.index, BuildConfig(db_url=a.db_url)), a.json))
