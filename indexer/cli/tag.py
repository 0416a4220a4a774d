"""``python -m indexer tag``: store each image's top zero-shot labels in the index."""

from __future__ import annotations

import argparse
from pathlib import Path

from retrieval.errors import InvalidQueryError
from retrieval.zeroshot.prompts import templates_help

from ..tag import DEFAULT_MIN_PROBABILITY, TagConfig, clear_tags, tag_index


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("tag", help="store each image's top zero-shot labels in the index")
    p.add_argument("--index", required=True, help="index directory")
    p.add_argument("--labels", help="comma-separated labels")
    p.add_argument("--labels-file", help="file with one label per line")
    p.add_argument("-k", "--k", type=int, default=3, help="labels per image (default 3)")
    p.add_argument(
        "--min-probability",
        type=float,
        default=DEFAULT_MIN_PROBABILITY,
        help=f"drop labels below this probability (default {DEFAULT_MIN_PROBABILITY}; 0 keeps the top --k "
        "labels of every photo, however unlikely)",
    )
    p.add_argument("--templates", help=templates_help())
    p.add_argument("--model", help="model spec (default: the model that built the index)")
    p.add_argument("--no-reject", action="store_true", help="ignore the model's 'none of these' calibration")
    p.add_argument(
        "--clear", action="store_true", help="drop every photo's tags; later updates stop tagging new photos"
    )
    p.set_defaults(run=lambda a: clear(a) if a.clear else run(config_from_args(a)))


def config_from_args(a: argparse.Namespace) -> TagConfig:
    from retrieval.cli.classify import labels_from

    return TagConfig(
        index_dir=Path(a.index),
        labels=labels_from(a.labels, a.labels_file),
        k=a.k,
        min_probability=a.min_probability,
        templates=a.templates,
        model=a.model,
        reject=not a.no_reject,
    )


def run(config: TagConfig) -> int:
    report = tag_index(config)
    print(f"tagged {report.tagged} of {report.total} image(s) in {config.index_dir}")
    for label, n in list(report.label_counts.items())[:20]:
        print(f"  {label}\t{n}")
    print("photos that later builds and updates add are tagged the same way (--clear stops it)")
    return 0


def clear(a: argparse.Namespace) -> int:
    if a.labels is not None or a.labels_file is not None:
        raise InvalidQueryError("--clear takes no labels: it drops the tags")
    clear_tags(Path(a.index))
    print(f"dropped the tags of {a.index}; later updates will not tag new photos")
    return 0
