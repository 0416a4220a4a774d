"""``python -m indexer samples DIR``: write the scikit-image sample photos for the quickstart."""

from __future__ import annotations

import argparse
import sys

from ..samples import write_samples


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("samples", help="write a few sample photos (scikit-image's bundled photographs)")
    p.add_argument("dir", help="folder to write them into")
    p.set_defaults(run=lambda a: _run(a.dir))


def _run(out_dir: str) -> int:
    kept: list = []
    for path in write_samples(out_dir, kept):
        print(path)
    for path in kept:
        print(f"note: {path} already holds something else; left as it was", file=sys.stderr)
    return 0
