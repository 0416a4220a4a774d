"""``python -m retrieval calibrate``: fit the "none of these" threshold or the search relevance curve.

No-match:  ``calibrate --folder DIR --labels a,b,c --target-precision 0.9`` (DIR has labels.csv).
Relevance: ``calibrate --relevance --folder DIR [--split val]`` (DIR has pairs.csv).
The result is written next to the model's weights (or the user cache dir), or to ``--output``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass

from .classify import add_model_args, labels_from


@dataclass(frozen=True)
class CalibrateArgs:
    folder: str
    relevance: bool
    labels: list[str] | None
    templates: str | None
    model: str | None
    target_precision: float
    statistic: str
    split: str | None
    negatives: int
    limit: int | None
    output: str | None
    absent: bool = True


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("calibrate", help="fit the no-match threshold or the search relevance calibration")
    p.add_argument("--folder", required=True, help="labelled folder (labels.csv) or caption folder (pairs.csv)")
    p.add_argument("--relevance", action="store_true", help="fit P(relevant | cosine) for search instead")
    add_model_args(p)
    p.add_argument("--target-precision", type=float, default=0.9)
    p.add_argument(
        "--statistic",
        choices=("score", "probability"),
        default="score",
        help="threshold the best cosine (default; works for any label set) or the best probability",
    )
    p.add_argument("--split", default="val", help="pairs.csv split for --relevance (default val; '' for all)")
    p.add_argument("--negatives", type=int, default=20, help="random non-matching images per caption")
    p.add_argument(
        "--no-absent",
        action="store_true",
        help="relevance: no hard negatives from queries about concepts no caption mentions",
    )
    p.add_argument("--limit", type=int, help="use at most this many images")
    p.add_argument("--output", help="write the calibration here instead of next to the model")
    p.set_defaults(
        run=lambda a: run(
            CalibrateArgs(
                folder=a.folder,
                relevance=a.relevance,
                labels=None if a.relevance else labels_from(a.labels, a.labels_file),
                templates=a.templates,
                model=a.model,
                target_precision=a.target_precision,
                statistic=a.statistic,
                split=a.split or None,
                negatives=a.negatives,
                absent=not a.no_absent,
                limit=a.limit,
                output=a.output,
            )
        )
    )


def run(args: CalibrateArgs) -> int:
    from ..models.factory import create_model
    from ..zeroshot.calibrate import fit_no_match_on_folder, fit_relevance
    from ..zeroshot.datasets import read_caption_pairs
    from ..zeroshot.relevance import NO_MATCH, RELEVANCE, default_calibration_path

    encoder = create_model(args.model)
    if args.relevance:
        pairs = read_caption_pairs(args.folder, split=args.split, limit_images=args.limit)
        cal = fit_relevance(
            encoder,
            pairs,
            negatives=args.negatives,
            progress=True,
            absent=args.absent,
            fitted_on={"folder": args.folder, "split": args.split},
        )
        path = cal.save(args.output or default_calibration_path(encoder, RELEVANCE))
        print(json.dumps({"written": str(path), **asdict(cal)}, indent=2))
        return 0
    assert args.labels is not None
    result = fit_no_match_on_folder(
        encoder,
        args.folder,
        args.labels,
        args.target_precision,
        args.templates,
        statistic=args.statistic,  # type: ignore[arg-type]
        limit=args.limit,
        progress=True,
    )
    path = result.calibration.save(args.output or default_calibration_path(encoder, NO_MATCH))
    if result.skipped:
        print(f"skipped {len(result.skipped)} unreadable image(s)", file=sys.stderr)
    print(
        json.dumps(
            {
                "written": str(path),
                "threshold": result.calibration.threshold,
                "statistic": result.calibration.statistic,
                **asdict(result.metrics),
            },
            indent=2,
        )
    )
    return 0
