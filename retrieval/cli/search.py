"""``python -m retrieval search``: text -> image or image -> image search from the shell."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..filters import explain_no_match
from ..search import default_index_dir, open_index


@dataclass(frozen=True)
class SearchArgs:
    text: str | None
    image: Path | None
    index: Path
    k: int
    as_json: bool
    min_relevance: float | None
    filters: dict[str, Any] = field(default_factory=dict)  # keyword arguments of Index.search: folder, dates, types, tag
    contains: str | None = None  # only photos whose text (OCR) holds these words


def add_filter_arguments(p: argparse.ArgumentParser) -> None:
    """The metadata filters, shared by the commands that read an index (``search``, ``duplicates``)."""
    p.add_argument("--folder", help="only images under this folder")
    p.add_argument("--date-from", help="only images taken on or after this ISO date")
    p.add_argument("--date-to", help="only images taken on or before this ISO date")
    p.add_argument("--type", dest="file_types", action="append", help="only this file type (repeatable): jpeg, png...")
    p.add_argument("--tag", help="only images auto-tagged with this label")


def filters_from(a: argparse.Namespace) -> dict[str, Any]:
    return {"folder": a.folder, "date_from": a.date_from, "date_to": a.date_to, "file_types": a.file_types, "tag": a.tag}


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    p = sub.add_parser("search", help="search an index by text or by image")
    p.add_argument("text", nargs="?", help="what to look for, e.g. 'a dog jumping into a lake'")
    p.add_argument("--image", type=Path, help="search by this image instead of text")
    p.add_argument("--index", type=Path, default=None, help=f"index directory (default {default_index_dir()})")
    p.add_argument("-k", type=int, default=10, help="number of results")
    p.add_argument("--json", dest="as_json", action="store_true", help="print a JSON list")
    add_filter_arguments(p)
    p.add_argument("--min-relevance", type=float, help="drop results below this calibrated relevance (0-1)")
    p.add_argument("--contains", help="only photos whose text (read by OCR) holds these words, e.g. 'EXIT 12'; "
                                      "without TEXT, also what to rank them by")
    p.set_defaults(run=lambda a: run(_parse(p, a)))


def _parse(parser: argparse.ArgumentParser, a: argparse.Namespace) -> SearchArgs:
    if a.text is not None and a.image is not None or a.text is None and a.image is None and a.contains is None:
        parser.error("give either TEXT or --image PATH (or --contains WORDS)")
    text = a.contains if a.text is None and a.image is None else a.text
    return SearchArgs(text, a.image, a.index or default_index_dir(), a.k, a.as_json, a.min_relevance, filters_from(a),
                      a.contains)


def run(args: SearchArgs) -> int:
    index = open_index(args.index)
    query = args.text if args.text is not None else args.image
    results = index.search(query, args.k, min_relevance=args.min_relevance, contains=args.contains, **args.filters)
    if args.as_json:
        print(json.dumps([r.to_dict() for r in results], indent=2, default=str))
    elif not results:
        why = explain_no_match(index.reader.metadata, **args.filters)
        print(f"no results: {why}" if why else "no results" + (
            " above the relevance threshold" if args.min_relevance is not None else ""))
    else:
        for rank, r in enumerate(results, 1):
            rel = f"  relevance {r.relevance:.2f}" if r.relevance is not None else ""
            print(f"{rank:3d}  {r.score:.4f}{rel}  {r.path}")
            if r.text_score:  # the photo's text holds the words looked for
                print(f"     text: {' | '.join((r.metadata.get('ocr_text') or '').splitlines())[:100]}")
    return 0
