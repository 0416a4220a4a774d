"""Evaluate any model: caption retrieval (Karpathy protocol) and zero-shot classification.

``python -m train.evaluate --model builtin --pairs DATA/pairs.csv --split test``
``python -m train.evaluate --model builtin --zero-shot /path/cifar10_test``

Prints one JSON object (percentages); ``--json-out`` also writes it to a file.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.cli.runner import count
from retrieval.errors import CalibrationError, EvaluationImageError, ImageDecodeError, PairsFileError, RetrievalError
from retrieval.models.encoder import PRECISION_HELP, PRECISIONS, Encoder, embed_files
from retrieval.zeroshot import datasets
from retrieval.zeroshot.datasets import read_pairs
from retrieval.zeroshot.prompts import get_templates
from train.data import default_image_root
from train.metrics import RetrievalScores, per_class_accuracy, recall_at_k, topk_accuracy

DEFAULT_TEMPLATE_SETS = ("tuned", "single", "clip80", "photo")


def embed_image_files(
    encoder: Encoder, paths: Sequence[Path], batch_size: int = 64, workers: int = 1, desc: str = "images"
) -> np.ndarray:
    """Unit-length embeddings ``[N, D]`` of image files, decoded in a worker process (:func:`retrieval.models.encoder.embed_files`).

    Every file must be there and decode: a benchmark with images left out would not be the
    benchmark. Missing files raise :class:`ImageDecodeError` (naming the first) before anything is
    decoded; a file that does not decode raises :class:`EvaluationImageError`.
    """
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise ImageDecodeError(
            str(missing[0]),
            "not found",
            f"{len(missing)} of the {len(paths)} images are missing; is --image-root the folder that holds them?",
        )
    try:
        emb, _ = embed_files(
            encoder, paths, batch_size, strict=True, workers=workers, progress=True, desc=desc, leave=False
        )
    except ImageDecodeError as exc:
        raise EvaluationImageError(f"cannot evaluate on an image that does not decode: {exc}") from exc
    return emb


def evaluate_retrieval(
    encoder: Encoder,
    pairs_csv: Path,
    split: str | None,
    image_root: Path | None = None,
    limit: int | None = None,
    batch_size: int = 64,
) -> RetrievalScores:
    """Recall@K both ways; ``image_root`` defaults to the pairs file's folder, or its images/ subfolder."""
    pairs = read_pairs(pairs_csv, split, limit)
    root = image_root or default_image_root(Path(pairs_csv), pairs.images[0])
    images = embed_image_files(encoder, pairs.image_paths(root), batch_size)
    texts = encoder.encode_texts(pairs.captions, batch_size=max(batch_size, 256))
    return recall_at_k(images, texts, pairs.caption_image)


@dataclass(frozen=True)
class LabelledFolder:
    classes: list[str]
    paths: list[Path]
    labels: list[int]


def read_labelled_folder(root: Path, limit: int | None = None) -> LabelledFolder:
    """``classes.txt`` (one class a line) and ``labels.csv`` (image,label) under ``root``, images in ``images/``.

    ``limit`` keeps an evenly spaced subset, so every class stays represented.
    """
    classes_file, labels_file = root / "classes.txt", root / "labels.csv"
    for f in (classes_file, labels_file):
        if not f.is_file():
            raise PairsFileError(f"{f} not found (a zero-shot folder needs classes.txt and labels.csv)")
    classes = [c.strip() for c in classes_file.read_text(encoding="utf-8").splitlines() if c.strip()]
    index = {c: i for i, c in enumerate(classes)}
    try:
        items = datasets.read_labelled_folder(root)
    except CalibrationError as exc:
        raise PairsFileError(str(exc)) from exc
    unknown = sorted({it.label for it in items} - set(index))
    if unknown:
        raise PairsFileError(f"{labels_file}: labels not in classes.txt: {unknown[:5]}")
    items = datasets.evenly_spaced(items, limit)
    return LabelledFolder(classes, [it.path for it in items], [index[it.label] for it in items])


def zero_shot_logits(encoder: Encoder, classes: Sequence[str], image_emb: np.ndarray, templates: str) -> np.ndarray:
    """Cosine scores against prompt-ensemble class embeddings (mean over templates, renormalised)."""
    from retrieval.zeroshot.classify import ZeroShotClassifier

    clf = ZeroShotClassifier(encoder, list(classes), templates=templates, no_match=None)
    return clf.scores(image_emb)


def evaluate_zero_shot(
    encoder: Encoder,
    root: Path,
    template_sets: Sequence[str] = DEFAULT_TEMPLATE_SETS,
    limit: int | None = None,
    batch_size: int = 64,
) -> dict:
    """Top-1/top-5 for the first template set (plus per-class top-1) and for each other set."""
    folder = read_labelled_folder(root, limit)
    emb = embed_image_files(encoder, folder.paths, batch_size, desc="zero-shot images")
    by_set = {}
    for name in template_sets:
        logits = zero_shot_logits(encoder, folder.classes, emb, name)
        by_set[name] = {
            **topk_accuracy(logits, folder.labels),
            "per_class": dict(zip(folder.classes, per_class_accuracy(logits, folder.labels, len(folder.classes)))),
        }
    main = by_set[template_sets[0]]
    return {
        "templates": template_sets[0],
        "top1": main["top1"],
        "top5": main["top5"],
        "per_class": main["per_class"],
        "n_images": len(folder.paths),
        "by_templates": {k: {"top1": v["top1"], "top5": v["top5"]} for k, v in by_set.items()},
    }


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m train.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="builtin", help="model spec: builtin, tiny-clip, ARCH:TAG, ARCH:/path.pt")
    p.add_argument("--pairs", type=Path, help="pairs CSV (image,caption[,split]) for retrieval")
    p.add_argument("--split", default="test", help="split to evaluate ('' for all rows)")
    p.add_argument(
        "--image-root",
        type=Path,
        help="folder holding the pairs' images (default: the pairs file's folder, "
        "or its images/ subfolder when the images are there)",
    )
    p.add_argument("--zero-shot", type=Path, help="labelled folder (classes.txt, labels.csv, images/)")
    p.add_argument(
        "--templates", default=",".join(DEFAULT_TEMPLATE_SETS), help="template sets, the first is the headline score"
    )
    p.add_argument("--limit", type=int, default=None, help="evaluate on the first N images only (quick runs)")
    p.add_argument("--batch-size", type=count(1), default=64)
    p.add_argument("--device", default=None)
    p.add_argument("--precision", choices=list(PRECISIONS), default="auto", help=PRECISION_HELP)
    p.add_argument("--json-out", type=Path, default=None)
    a = p.parse_args(argv)
    if a.pairs is None and a.zero_shot is None:
        p.error("give --pairs and/or --zero-shot")
    if a.json_out is not None and not a.json_out.parent.is_dir():  # found out after the run, it lost the run
        p.error(f"--json-out: folder {a.json_out.parent} does not exist")
    return a


def main(argv: list[str] | None = None) -> int:
    a = _parse(argv)
    from retrieval.models.factory import create_model

    try:
        if a.zero_shot is not None:  # an unknown set, before minutes of embedding
            for name in (s for s in a.templates.split(",") if s):
                get_templates(name)
        encoder = create_model(a.model, device=a.device, precision=a.precision)
        result: dict = {
            "model": encoder.spec,
            "fingerprint": encoder.fingerprint,
            "precision": encoder.resolved_precision,
        }
        if a.pairs is not None:
            scores = evaluate_retrieval(encoder, a.pairs, a.split or None, a.image_root, a.limit, a.batch_size)
            result.update(scores.as_dict())
        if a.zero_shot is not None:
            sets = [s for s in a.templates.split(",") if s]
            result["zero_shot"] = evaluate_zero_shot(encoder, a.zero_shot, sets, a.limit, a.batch_size)
    except RetrievalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2)
    print(text)  # first: a write that fails keeps the figures
    if a.json_out is not None:
        try:
            a.json_out.write_text(text)
        except OSError as exc:
            print(f"error: could not write {a.json_out}: {exc.strerror or exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
