"""Choose a prompt ensemble by greedy forward selection on one half of a labelled folder, judge it on the other.

    nice -n 10 python bench/select_templates.py --model builtin --embeddings-cache /tmp/zs-emb [--write tuned]

Protocol (CIFAR-10 test by default, all 10,000 images):

* the images at even positions of ``labels.csv`` are the *tuning* half, those at odd
  positions the *held-out* half; nothing about the held-out half is looked at while choosing;
* the ensemble starts from the single template ``"a photo of a {}."`` and adds, one at a
  time, the candidate that most raises top-1 on the tuning half, while it still raises it
  (at most ``--max-size`` templates);
* candidates: the shipped ``clip80`` and ``photo`` sets plus ``bench/template_candidates.txt``;
* reported: top-1 of the single template and of the chosen ensemble on the held-out half,
  with McNemar's exact test on the images where exactly one of the two is right, and on all
  images (which include the tuning half, so that figure is optimistic).

``--write NAME`` stores the chosen ensemble as ``retrieval/zeroshot/templates/NAME.txt``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from datetime import date
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from eval_zeroshot import DATA, cached_embeddings  # noqa: E402

from retrieval.models.factory import create_model  # noqa: E402
from retrieval.zeroshot.classify import ensemble  # noqa: E402
from retrieval.zeroshot.datasets import read_labelled_folder  # noqa: E402
from retrieval.zeroshot.prompts import TEMPLATES_DIR, get_templates, parse_templates  # noqa: E402

SINGLE = "a photo of a {}."
CANDIDATES = REPO / "bench" / "template_candidates.txt"


def class_scores(per_template: np.ndarray, chosen: list[int], emb: np.ndarray) -> np.ndarray:
    """Image x class cosines for the ensemble ``chosen`` (``per_template`` is ``[T, C, D]``), with the
    class embeddings ``retrieval.zeroshot.classify.ZeroShotClassifier`` builds."""
    return emb @ ensemble(per_template[chosen], axis=0).T


def greedy(
    per_template: np.ndarray, emb: np.ndarray, truth: np.ndarray, start: int, max_size: int
) -> list[tuple[int, float]]:
    """Forward selection from ``[start]``; stops when no candidate raises top-1 on these images."""

    def top1(chosen: list[int]) -> float:
        return float((class_scores(per_template, chosen, emb).argmax(axis=1) == truth).mean())

    chosen, best = [start], top1([start])
    steps = [(start, best)]
    while len(chosen) < max_size:
        acc, j = max((top1(chosen + [j]), -j) for j in range(len(per_template)) if j not in chosen)
        if acc <= best:
            break
        chosen.append(-j)
        best = acc
        steps.append((-j, acc))
    return steps


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: a binomial(n, 1/2) test on the discordant pairs."""
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2 * tail)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA / "cifar10_test"))
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--candidates", default=str(CANDIDATES), help="extra candidate templates (one per line)")
    ap.add_argument("--max-size", type=int, default=8)
    ap.add_argument("--embeddings-cache", help="directory to keep image embeddings between runs")
    ap.add_argument(
        "--write", metavar="NAME", help="store the chosen ensemble as retrieval/zeroshot/templates/NAME.txt"
    )
    ap.add_argument("--json-out")
    args = ap.parse_args(argv)

    data = Path(args.data)
    if not data.is_dir():
        print(f"no data at {data}", file=sys.stderr)
        return 1
    candidates = Path(args.candidates)
    if not candidates.is_file():
        print(f"no candidate templates at {candidates}", file=sys.stderr)
        return 1
    encoder = create_model(args.model)
    items = read_labelled_folder(data)
    emb, ok = cached_embeddings(encoder, [it.path for it in items], args.embeddings_cache)
    labels = [it.label for it, good in zip(items, ok) if good]
    position = np.flatnonzero(ok)
    classes_file = data / "classes.txt"
    classes = classes_file.read_text().split() if classes_file.is_file() else sorted(set(labels))
    truth = np.array([classes.index(x) for x in labels])
    tune = position % 2 == 0

    pool = list(
        dict.fromkeys(
            [
                SINGLE,
                *get_templates("clip80"),
                *get_templates("photo"),
                *parse_templates(candidates.read_text(), str(candidates)),
            ]
        )
    )
    per = encoder.encode_texts([t.replace("{}", c) for t in pool for c in classes]).reshape(len(pool), len(classes), -1)
    steps = greedy(per, emb[tune], truth[tune], pool.index(SINGLE), args.max_size)
    chosen = [j for j, _ in steps]

    def right(idx: list[int], mask: np.ndarray) -> np.ndarray:
        return class_scores(per, idx, emb[mask]).argmax(axis=1) == truth[mask]

    held = ~tune
    single_ok, ens_ok = right(chosen[:1], held), right(chosen, held)
    only_ens, only_single = int((ens_ok & ~single_ok).sum()), int((single_ok & ~ens_ok).sum())
    everything = np.ones(len(truth), bool)
    report = {
        "model": encoder.spec,
        "fingerprint": encoder.fingerprint,
        "images": len(truth),
        "tuning_images": int(tune.sum()),
        "held_out_images": int(held.sum()),
        "candidates": len(pool),
        "steps": [
            {"added": pool[j], "tuning_top1": acc, "held_out_top1": float(right(chosen[: i + 1], held).mean())}
            for i, (j, acc) in enumerate(steps)
        ],
        "chosen": [pool[j] for j in chosen],
        "held_out": {
            "single_top1": float(single_ok.mean()),
            "ensemble_top1": float(ens_ok.mean()),
            "only_ensemble_right": only_ens,
            "only_single_right": only_single,
            "mcnemar_p": mcnemar_exact(only_ens, only_single),
        },
        "all_images": {
            "single_top1": float(right(chosen[:1], everything).mean()),
            "ensemble_top1": float(right(chosen, everything).mean()),
        },
    }
    print(json.dumps(report, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2) + "\n")
    if args.write:
        h = report["held_out"]
        header = [
            f"# Chosen by bench/select_templates.py ({date.today():%B %Y}) for {encoder.fingerprint}:",
            f'# greedy forward selection from "{SINGLE}" over {len(pool)} candidates, on the even-numbered',
            f"# half of {data.name}; on the odd half (held out) top-1 {h['ensemble_top1']:.2%} against",
            f"# {h['single_top1']:.2%} for the single template (McNemar p = {h['mcnemar_p']:.3g}).",
        ]
        (TEMPLATES_DIR / f"{args.write}.txt").write_text("\n".join(header + report["chosen"]) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
