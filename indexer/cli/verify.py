"""``python -m indexer verify``: check every file of an index against its checksums."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from ..verify import verify


def run(index: str, as_json: bool) -> int:
    result = verify(index, progress=not as_json)
    if as_json:
        print(json.dumps(asdict(result)))
    elif result.outcome == "ok":
        print(f"ok: {result.files} files, {result.bytes:,} bytes of {result.generation} match their checksums")
    else:
        print(f"{result.outcome}: {result.detail}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("verify", help="check every file of the index against its checksums")
    p.add_argument("--index", required=True, help="index directory")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=lambda a: run(a.index, a.json))
