"""Zero-shot classification quality: template sets, per-class accuracy, open-set "none of these".

    nice -n 10 python bench/eval_zeroshot.py --model builtin [--limit 1000] [--json-out out.json]

On a labelled folder (default ``../shared/data/cifar10_test``): top-1/top-5 for every template
set, per-class top-1 for the default set, and the open-set rule: ``--holdout`` classes are
left out of the label set, the no-match threshold is fitted for ``--target-precision`` on
one random half of the images and measured on the other half.

``--limit 1000`` keeps every 10th image (100 per class, the protocol of ``train.evaluate``).
``--offset 5`` picks a disjoint subset of the same size: the split on which the ``photo``
set was designed. The default set (``tuned``) was chosen by ``bench/select_templates.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from retrieval.errors import CalibrationError  # noqa: E402
from retrieval.models.encoder import embed_files  # noqa: E402
from retrieval.models.factory import create_model  # noqa: E402
from retrieval.zeroshot.calibrate import fit_no_match, no_match_inputs, open_set_metrics  # noqa: E402
from retrieval.zeroshot.classify import ZeroShotClassifier  # noqa: E402
from retrieval.zeroshot.datasets import read_labelled_folder  # noqa: E402
from retrieval.zeroshot.prompts import DEFAULT_TEMPLATES, list_template_sets  # noqa: E402

DATA = REPO.parent / "shared" / "data"


def topk(scores: np.ndarray, truth: np.ndarray, k: int) -> float:
    top = np.argsort(-scores, axis=1)[:, :k]
    return float((top == truth[:, None]).any(axis=1).mean())


def cached_embeddings(encoder, paths: list[Path], cache_dir: str | None) -> tuple[np.ndarray, np.ndarray]:
    """``embed_files`` with an optional on-disk cache keyed by the weights and the file list."""
    if not cache_dir:
        return embed_files(encoder, paths, progress=True)
    key = hashlib.sha256("\n".join([encoder.fingerprint, *map(str, paths)]).encode()).hexdigest()[:20]
    path = Path(cache_dir) / f"{key}.npz"
    if path.is_file():
        z = np.load(path)
        return z["emb"], z["ok"]
    emb, ok = embed_files(encoder, paths, progress=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, emb=emb, ok=ok)
    return emb, ok


def evaluate_sets(encoder, emb: np.ndarray, truth: list[str], classes: list[str], sets: list[str]) -> dict:
    t = np.array([classes.index(x) for x in truth])
    report = {}
    for name in sets:
        clf = ZeroShotClassifier(encoder, classes, name, no_match=None)
        s = clf.scores(emb)
        report[name] = {
            "top1": topk(s, t, 1),
            "top5": topk(s, t, min(5, len(classes))),
            "templates": len(clf.templates),
        }
        if name == DEFAULT_TEMPLATES:
            pred = s.argmax(axis=1)
            report[name]["per_class_top1"] = {c: float((pred[t == i] == i).mean()) for i, c in enumerate(classes)}
    return report


def open_set(encoder, emb, truth, classes, holdout, target, seed) -> dict:
    known = [c for c in classes if c not in holdout]
    clf = ZeroShotClassifier(encoder, known, DEFAULT_TEMPLATES, no_match=None)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(truth))
    cal, test = order[: len(order) // 2], order[len(order) // 2 :]
    truth_arr = np.asarray(truth)
    out = {
        "known_labels": known,
        "holdout": holdout,
        "target_precision": target,
        "calibration_images": len(cal),
        "test_images": len(test),
    }
    for statistic in ("score", "probability"):
        try:
            fit = fit_no_match(clf, emb[cal], list(truth_arr[cal]), target, statistic)  # type: ignore[arg-type]
        except CalibrationError as exc:
            out[statistic] = {"error": str(exc)}
            continue
        scores, probs, correct, is_known = no_match_inputs(clf, emb[test], list(truth_arr[test]))
        accepted = fit.calibration.accepts(scores, probs)
        m = open_set_metrics(accepted, correct, is_known)
        base = open_set_metrics(np.ones(len(test), bool), correct, is_known)
        out[statistic] = {
            "threshold": fit.calibration.threshold,
            "calibration_precision": fit.fit.precision,
            "test": m.__dict__,
            "test_precision_without_rule": base.precision,
        }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA / "cifar10_test"))
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--limit", type=int, default=1000, help="evenly spaced subset of this many images (0: all)")
    ap.add_argument("--offset", type=int, default=0, help="shift of the evenly spaced subset (5: tuning split)")
    ap.add_argument("--sets", default=",".join(list_template_sets()))
    ap.add_argument("--holdout", default="cat,truck", help="classes treated as unknown for the open-set test")
    ap.add_argument("--target-precision", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--embeddings-cache", help="directory to keep image embeddings between runs")
    ap.add_argument("--json-out")
    args = ap.parse_args()

    encoder = create_model(args.model)
    sets = [s for s in args.sets.split(",") if s]
    data = Path(args.data)
    if not data.is_dir():
        print(f"no data at {data}", file=sys.stderr)
        return 1
    items = read_labelled_folder(data, limit=args.limit or None, offset=args.offset)
    emb, ok = cached_embeddings(encoder, [it.path for it in items], args.embeddings_cache)
    truth = [it.label for it, good in zip(items, ok) if good]
    classes_file = data / "classes.txt"
    classes = classes_file.read_text().split() if classes_file.is_file() else sorted(set(truth))
    report = {
        "model": encoder.spec,
        "fingerprint": encoder.fingerprint,
        "images": len(truth),
        "default_templates": DEFAULT_TEMPLATES,
        "sets": evaluate_sets(encoder, emb, truth, classes, sets),
    }
    holdout = [c for c in args.holdout.split(",") if c]
    report["open_set"] = open_set(encoder, emb, truth, classes, holdout, args.target_precision, args.seed)
    print(json.dumps(report, indent=2))
    for name, r in report["sets"].items():
        print(f"{name:>8}: top1 {r['top1']:.1%}  top5 {r['top5']:.1%}  ({r['templates']} templates)", file=sys.stderr)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
