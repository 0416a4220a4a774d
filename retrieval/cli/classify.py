"""``python -m retrieval classify``: zero-shot labels for images or a whole folder."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidQueryError
from ..zeroshot.prompts import templates_help
from .runner import count


@dataclass(frozen=True)
class ClassifyArgs:
    images: list[str]
    folder: str | None
    labels: list[str]
    templates: str | None
    k: int
    model: str | None
    as_json: bool
    csv_path: str | None
    reject: bool
    batch_size: int


def labels_from(inline: str | None, path: str | None) -> list[str]:
    """Labels from ``--labels a,b,c`` or ``--labels-file FILE`` (exactly one of them)."""
    from ..zeroshot.classify import parse_labels

    if (inline is None) == (path is None):
        raise InvalidQueryError("give exactly one of --labels or --labels-file")
    if path is not None:
        try:  # utf-8-sig: a byte-order mark (Windows editors write one) is not part of the first label
            return parse_labels(Path(path).read_text(encoding="utf-8-sig") + "\n")
        except OSError as exc:
            raise InvalidQueryError(f"cannot read labels file {path}: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise InvalidQueryError(
                f"labels file {path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at "
                f"offset {exc.start}); save it as UTF-8"
            ) from exc
    return parse_labels(inline or "")


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--labels", help="comma-separated labels, e.g. 'cat,dog,car'")
    p.add_argument("--labels-file", help="file with one label per line")
    p.add_argument("--templates", help=templates_help())
    p.add_argument("--model", help="model spec (default: the built-in model)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("classify", help="zero-shot classify images into your labels")
    p.add_argument("images", nargs="*", help="image files")
    p.add_argument("--folder", help="classify every image under this folder")
    add_model_args(p)
    p.add_argument("-k", type=int, default=3, help="labels per image (default 3)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--csv", help="write path,rank,label,probability,score rows to this file")
    p.add_argument("--no-reject", action="store_true", help="always give the top labels, never 'none of these'")
    p.add_argument("--batch-size", type=count(1), default=64)
    p.set_defaults(
        run=lambda a: run(
            ClassifyArgs(
                images=a.images,
                folder=a.folder,
                labels=labels_from(a.labels, a.labels_file),
                templates=a.templates,
                k=a.k,
                model=a.model,
                as_json=a.json,
                csv_path=a.csv,
                reject=not a.no_reject,
                batch_size=a.batch_size,
            )
        )
    )


def run(args: ClassifyArgs) -> int:
    from ..cache import default_cache_dir
    from ..models.factory import create_model
    from ..zeroshot.classify import ZeroShotClassifier, classify_files, list_images

    paths: list[Path] = [Path(p) for p in args.images]
    if args.folder:
        paths += list_images(args.folder)
    if not paths:
        raise InvalidQueryError("nothing to classify: give image files or --folder DIR")
    clf = ZeroShotClassifier(create_model(args.model), args.labels, args.templates, cache_dir=default_cache_dir())
    outcomes = list(
        classify_files(clf, paths, k=args.k, batch_size=args.batch_size, reject=args.reject, progress=bool(args.folder))
    )
    if args.csv_path:
        with open(args.csv_path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["path", "rank", "label", "probability", "score", "error"])
            for o in outcomes:
                if not o.predictions:
                    w.writerow([o.path, "", "", "", "", o.error or "no_match"])
                for rank, pr in enumerate(o.predictions, 1):
                    w.writerow([o.path, rank, pr.label, f"{pr.probability:.6f}", f"{pr.score:.6f}", ""])
    if args.as_json:
        doc = [
            {
                "path": o.path,
                "predictions": [
                    {"label": p.label, "probability": p.probability, "score": p.score} for p in o.predictions
                ],
                "error": o.error,
                "no_match": o.error is None and not o.predictions,
            }
            for o in outcomes
        ]
        print(json.dumps(doc, indent=2))
    elif not args.csv_path:
        for o in outcomes:
            if o.error:
                print(f"{o.path}\tskipped ({o.error})")
            elif not o.predictions:
                print(f"{o.path}\tnone of these")
            else:
                print(o.path + "\t" + "  ".join(f"{p.label} {p.probability:.1%}" for p in o.predictions))
    bad = [o for o in outcomes if o.error]
    if bad:
        print(f"skipped {len(bad)} unreadable image(s)", file=sys.stderr)
        for o in bad[:20]:
            print(f"  {o.path}: {o.error}", file=sys.stderr)
    if args.csv_path:
        print(f"wrote {len(outcomes) - len(bad)} classified image(s) to {args.csv_path}", file=sys.stderr)
    if bad and len(bad) == len(outcomes):
        print("error: nothing could be classified: every image given was skipped", file=sys.stderr)
        return 2
    return 0
