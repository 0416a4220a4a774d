"""``python -m indexer update``: re-scan the index's folders and apply what changed."""

from __future__ import annotations

import argparse

from ..api import update
from .build import add_build_options, config_from_args, print_report


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("update", help="re-scan the folders stored in the index")
    add_build_options(p)
    p.set_defaults(run=lambda a: print_report(update(a.index, config_from_args(a), progress=not a.no_progress), a.json))
