"""``python -m retrieval search``: text -> image or image -> image search from the shell.

TEXT is a query expression (``"dog + beach - people"``, docs/query-expressions.md); ``--add`` and
``--subtract`` add terms that hold ``+`` or ``-`` themselves; ``--sort`` and ``--offset`` page
through the matches in relevance or date order.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidQueryError
from ..query.filters import explain_no_match
from ..query.parse import Query
from ..query.ranking import SORTS
from ..query.results import Results
from ..query.search import default_index_dir, open_index
from ..zeroshot.relevance import DEFAULT_MIN_RELEVANCE


@dataclass(frozen=True)
class SearchArgs:
    text: str | None
    image: Path | None
    index: Path
    k: int
    as_json: bool
    min_relevance: float | None
    filters: dict[str, Any] = field(
        default_factory=dict
    )  # keyword arguments of Index.search: folder, dates, types, tag
    add: tuple[str, ...] = ()
    subtract: tuple[str, ...] = ()
    sort: str = "relevance"
    offset: int = 0
    server: str | None = None  # URL of a running `python -m retrieval serve` to ask instead of the local index
    api_key: str | None = None
    contains: str | None = None  # only photos whose text (OCR) holds these words


def add_filter_arguments(p: argparse.ArgumentParser) -> None:
    """The metadata filters, shared by the commands that read an index (``search``, ``duplicates``)."""
    p.add_argument("--folder", help="only images under this folder")
    p.add_argument("--date-from", help="only images taken on or after this ISO date")
    p.add_argument("--date-to", help="only images taken on or before this ISO date")
    p.add_argument("--type", dest="file_types", action="append", help="only this file type (repeatable): jpeg, png...")
    p.add_argument("--tag", help="only images auto-tagged with this label")


def filters_from(a: argparse.Namespace) -> dict[str, Any]:
    return {
        "folder": a.folder,
        "date_from": a.date_from,
        "date_to": a.date_to,
        "file_types": a.file_types,
        "tag": a.tag,
    }


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("search", help="search an index by text or by image")
    p.add_argument(
        "text",
        nargs="?",
        help="what to look for, e.g. 'a dog jumping into a lake', or an expression: "
        "'dog + beach - people', '2:sunset + 0.5:city', '@photo.jpg - snow'",
    )
    p.add_argument("--image", type=Path, help="search by this image instead of text")
    p.add_argument("--index", type=Path, default=None, help=f"index directory (default {default_index_dir()})")
    p.add_argument("-k", type=int, default=10, help="number of results")
    p.add_argument("--json", dest="as_json", action="store_true", help="print a JSON list")
    add_filter_arguments(p)
    p.add_argument(
        "--min-relevance",
        type=float,
        help="drop results below this calibrated relevance (0-1); for date order, what counts as a match (default 0.5)",
    )
    p.add_argument(
        "--add", action="append", default=[], metavar="TEXT", help="add this term (repeatable; taken literally)"
    )
    p.add_argument("--subtract", action="append", default=[], metavar="TEXT", help="subtract this term (repeatable)")
    p.add_argument("--sort", default="relevance", help=f"order of the matches: {', '.join(SORTS)} (date: oldest first)")
    p.add_argument("--offset", type=int, default=0, help="skip this many results (page with -k)")
    p.add_argument(
        "--contains",
        help="only photos whose text (read by OCR) holds these words, e.g. 'EXIT 12'; "
        "without TEXT, also what to rank them by",
    )
    p.add_argument(
        "--server",
        metavar="URL",
        help="ask a running search service (python -m retrieval serve) "
        "instead of opening the index here, e.g. http://127.0.0.1:8000",
    )
    p.add_argument("--api-key", help="the service's API key (default $RETRIEVAL_API_KEY)")
    p.set_defaults(run=lambda a: run(_parse(p, a)))


def _parse(parser: argparse.ArgumentParser, a: argparse.Namespace) -> SearchArgs:
    if a.text is None and not a.add and a.image is None and a.contains is not None:
        a.text = '"' + a.contains.replace('"', "") + '"'  # --contains alone: its words are also the query, literally
    if (a.text is None and not a.add) == (a.image is None):
        parser.error("give either TEXT (or --add) or --image PATH (or --contains WORDS)")
    if a.server and a.contains is not None:
        parser.error("--contains reads the index's text here; give --index, not --server")
    if a.image is not None and (a.add or a.subtract):
        parser.error("--add and --subtract go with TEXT; for an image term write TEXT as '@PATH - snow'")
    if a.sort not in SORTS:
        raise InvalidQueryError(f"unknown --sort {a.sort!r}; sort by one of: {', '.join(SORTS)}")
    if a.offset < 0:
        raise InvalidQueryError(f"--offset must be 0 or more, not {a.offset}")
    if a.server and a.index is not None:
        parser.error("give --index or --server, not both (the service chooses its index; see its /indexes)")
    if a.image is None:
        Query.parse(a.text or "", a.add, a.subtract)  # a parse error says where before the model loads
    api_key = a.api_key or os.environ.get("RETRIEVAL_API_KEY") or None
    return SearchArgs(
        a.text,
        a.image,
        a.index or default_index_dir(),
        a.k,
        a.as_json,
        a.min_relevance,
        filters_from(a),
        tuple(a.add),
        tuple(a.subtract),
        a.sort,
        a.offset,
        server=a.server,
        api_key=api_key,
        contains=a.contains,
    )


def run(args: SearchArgs) -> int:
    if args.server:
        from ..service.client import remote_search

        text = None if args.image is not None else str(Query.parse(args.text or "", args.add, args.subtract))
        results, why = remote_search(
            args.server,
            text=text,
            image=args.image,
            k=args.k,
            offset=args.offset,
            sort=args.sort,
            min_relevance=args.min_relevance,
            filters=args.filters,
            api_key=args.api_key,
        )
        return print_results(results, args, why)
    index = open_index(args.index)
    query = args.image if args.image is not None else Query.parse(args.text or "", args.add, args.subtract)
    results = index.search(
        query,
        args.k,
        offset=args.offset,
        sort=args.sort,
        min_relevance=args.min_relevance,
        contains=args.contains,
        **args.filters,
    )
    why = None if results or args.as_json else explain_no_match(index.reader.metadata, **args.filters)
    return print_results(results, args, why)


def print_results(results: Results, args: SearchArgs, why: str | None) -> int:
    """The search's output, the same for a local index and a service; ``why``: why no photo passed the filters."""
    if results.matched is not None:
        more = "" if results.matched_all else " or more"
        shown = f"; showing {args.offset + 1}-{args.offset + len(results)}" if results else ""
        print(
            f"{results.matched:,}{more} matched (relevance >= {_threshold(args):.2f}){shown}, "
            f"{'oldest' if args.sort == 'date' else 'newest'} first",
            file=sys.stderr if args.as_json else sys.stdout,
        )
    if args.as_json:
        print(json.dumps([r.to_dict() for r in results], indent=2, default=str))
        return 0
    if not results and args.offset:
        print(f"no results past the first {args.offset:,}")
    elif not results:
        print(
            f"no results: {why}"
            if why
            else "no results"
            + (
                " above the relevance threshold"
                if args.min_relevance is not None or results.matched is not None
                else ""
            )
        )
    else:
        dated = args.sort != "relevance"
        for r in results:
            rel = f"  relevance {r.relevance:.2f}" if r.relevance is not None else ""
            when = f"  {r.taken_at:%Y-%m-%d %H:%M}" if dated and r.taken_at is not None else ""
            print(f"{r.rank:3d}  {r.score:.4f}{rel}{when}  {r.path}")
            if r.text_score:  # the photo's text holds the words looked for
                print(f"     text: {' | '.join((r.metadata.get('ocr_text') or '').splitlines())[:100]}")
    return 0


def _threshold(args: SearchArgs) -> float:
    return DEFAULT_MIN_RELEVANCE if args.min_relevance is None else args.min_relevance
