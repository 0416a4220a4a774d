"""Calibrated relevance in search: are absent concepts suppressed while real queries keep recall?

    nice -n 10 python bench/eval_relevance.py --model builtin [--fit] [--write] [--json-out out.json]

Fits (``--fit``, on Flickr8k *val*: each caption with its own image = relevant; random other
images, and the top 10 images of queries about ImageNet concepts no val caption mentions, =
not relevant) or loads the calibration shipped for the model, then on
Flickr8k *test* (1,000 images, 5,000 captions) reports, for several ``min_relevance`` values:

* caption queries: R@1/R@5/R@10 without the threshold and with it (a hit only counts if the
  right image also clears the threshold), and how many of the top-10 results survive;
* queries about concepts absent from Flickr8k: how many of their top-10 results survive, and
  for how many queries every result is suppressed.

``--write`` saves the fitted calibration next to the model's weights (what search loads).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.eval_zeroshot import cached_embeddings  # noqa: E402
from retrieval.models.factory import create_model  # noqa: E402
from retrieval.zeroshot.calibrate import fit_relevance  # noqa: E402
from retrieval.zeroshot.datasets import CaptionPair, read_caption_pairs  # noqa: E402
from retrieval.zeroshot.relevance import (  # noqa: E402
    DEFAULT_MIN_RELEVANCE,
    RELEVANCE,
    RelevanceCalibration,
    default_calibration_path,
    load_relevance,
)

DATA = REPO.parent / "shared" / "data" / "flickr8k"
ABSENT_QUERIES = [
    "a screenshot of a spreadsheet",
    "an aircraft carrier at sea",
    "a plate of sushi",
    "a bowl of ramen noodles",
    "a laptop keyboard close-up",
    "a printed circuit board",
    "the surface of the moon",
    "a bar chart of sales figures",
    "a giraffe eating leaves",
    "a zebra on the savanna",
    "an elephant in the jungle",
    "a penguin on an ice floe",
    "a microscope image of cells",
    "an x-ray of a broken arm",
    "a slice of pepperoni pizza",
    "a cup of espresso",
    "a violin lying on a table",
    "a chessboard with pieces",
    "a stack of pancakes with syrup",
    "a rocket launching into space",
    "a lighthouse at night",
    "a wind turbine farm",
    "a dentist examining teeth",
    "a page of handwritten math equations",
    "a shelf of library books",
    "a traffic jam on a highway at night",
    "a cathedral interior with stained glass",
    "a close-up of a honeybee on a flower",
    "a pile of gold coins",
    "a smartphone lock screen",
]
THRESHOLDS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def embed_pairs(encoder, pairs: list[CaptionPair], cache: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image embeddings, caption embeddings and each caption's image row."""
    images = sorted({p.image for p in pairs})
    img_emb, ok = cached_embeddings(encoder, images, cache)
    if not ok.all():
        raise SystemExit(f"{(~ok).sum()} Flickr8k images failed to decode")
    row = {img: i for i, img in enumerate(images)}
    txt = encoder.encode_texts([p.caption for p in pairs])
    return img_emb, txt, np.array([row[p.image] for p in pairs])


def fit(encoder, cache: str | None, negatives: int, limit: int | None, absent: bool) -> RelevanceCalibration:
    """The product's fit (``retrieval.zeroshot.calibrate.fit_relevance``) on Flickr8k val.

    Its hard negatives come from ImageNet concepts no val caption mentions; concepts sharing a
    word with ``ABSENT_QUERIES`` (the evaluation set) are left out of the fit.
    """
    pairs = read_caption_pairs(DATA, split="val", limit_images=limit)
    images = sorted({p.image for p in pairs})
    img, ok = cached_embeddings(encoder, images, cache)
    if not ok.all():
        raise SystemExit(f"{(~ok).sum()} Flickr8k images failed to decode")
    eval_words = [w for q in ABSENT_QUERIES for w in q.lower().split()]
    command = "bench/eval_relevance.py --fit" + ("" if absent else " --no-absent")
    return fit_relevance(
        encoder,
        pairs,
        negatives=negatives,
        absent=absent,
        exclude_words=eval_words,
        image_emb=img,
        fitted_on={"data": "flickr8k", "split": "val", "command": command},
    )


def recall(sims: np.ndarray, own: np.ndarray, ks=(1, 5, 10), keep: np.ndarray | None = None) -> dict[str, float]:
    rank = (sims > sims[np.arange(len(own)), own][:, None]).sum(axis=1)
    ok = np.ones(len(own), bool) if keep is None else keep
    return {f"R@{k}": float(((rank < k) & ok).mean()) for k in ks}


def evaluate(encoder, cal: RelevanceCalibration, cache: str | None, limit: int | None) -> dict:
    pairs = read_caption_pairs(DATA, split="test", limit_images=limit)
    img, txt, own = embed_pairs(encoder, pairs, cache)
    sims = txt @ img.T
    own_rel = cal.probability(sims[np.arange(len(own)), own])
    top10 = np.sort(sims, axis=1)[:, ::-1][:, :10]
    absent = encoder.encode_texts(ABSENT_QUERIES) @ img.T
    absent_top10 = np.sort(absent, axis=1)[:, ::-1][:, :10]
    rows = []
    for t in THRESHOLDS:
        keep_c = cal.probability(top10) >= t
        keep_a = cal.probability(absent_top10) >= t
        rows.append(
            {
                "min_relevance": t,
                "captions": {
                    **recall(sims, own, keep=own_rel >= t),
                    "top10_kept": float(keep_c.mean()),
                    "queries_with_results": float(keep_c.any(axis=1).mean()),
                },
                "absent": {
                    "top10_kept": float(keep_a.mean()),
                    "queries_fully_suppressed": float((~keep_a.any(axis=1)).mean()),
                },
            }
        )
    return {
        "test_captions": len(pairs),
        "test_images": len(img),
        "absent_queries": len(ABSENT_QUERIES),
        "no_threshold": recall(sims, own),
        "score_stats": {
            "own_image_mean": float(sims[np.arange(len(own)), own].mean()),
            "caption_top1_mean": float(top10[:, 0].mean()),
            "absent_top1_mean": float(absent_top10[:, 0].mean()),
            "all_pairs_mean": float(sims.mean()),
        },
        "by_threshold": rows,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--fit", action="store_true", help="fit on Flickr8k val instead of loading the shipped file")
    ap.add_argument("--write", action="store_true", help="save the fitted calibration next to the model's weights")
    ap.add_argument("--negatives", type=int, default=20)
    ap.add_argument(
        "--no-absent", action="store_true", help="fit on random negatives only (no absent-concept hard negatives)"
    )
    ap.add_argument("--limit", type=int, default=None, help="images per split (quick runs)")
    ap.add_argument("--embeddings-cache", help="directory to keep image embeddings between runs")
    ap.add_argument("--json-out")
    args = ap.parse_args()
    if not (DATA / "pairs.csv").is_file():
        print(f"no Flickr8k data at {DATA}", file=sys.stderr)
        return 1
    encoder = create_model(args.model)
    cal = (
        fit(encoder, args.embeddings_cache, args.negatives, args.limit, not args.no_absent)
        if args.fit
        else load_relevance(encoder)
    )
    if cal is None:
        print(f"no relevance calibration for {encoder.fingerprint}; run with --fit", file=sys.stderr)
        return 1
    if args.write:
        print(f"wrote {cal.save(default_calibration_path(encoder, RELEVANCE))}", file=sys.stderr)
    report = {
        "model": encoder.spec,
        "fingerprint": encoder.fingerprint,
        "calibration": cal.__dict__,
        "default_min_relevance": DEFAULT_MIN_RELEVANCE,
        "score_at_default": cal.score_for(DEFAULT_MIN_RELEVANCE),
        **evaluate(encoder, cal, args.embeddings_cache, args.limit),
    }
    print(json.dumps(report, indent=2))
    base = report["no_threshold"]
    print(f"no threshold: R@1 {base['R@1']:.1%} R@5 {base['R@5']:.1%} R@10 {base['R@10']:.1%}", file=sys.stderr)
    for r in report["by_threshold"]:
        c, a = r["captions"], r["absent"]
        print(
            f"min_relevance {r['min_relevance']:.1f}: captions R@1 {c['R@1']:.1%} R@10 {c['R@10']:.1%} "
            f"top10 kept {c['top10_kept']:.1%} | absent top10 kept {a['top10_kept']:.1%}, "
            f"fully suppressed {a['queries_fully_suppressed']:.0%}",
            file=sys.stderr,
        )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
