"""Fitting calibrations from labelled data on disk (the work behind ``python -m retrieval calibrate``).

The folders are read by :mod:`retrieval.zeroshot.datasets`. In a labelled folder, images whose label
is outside the label set stand for "none of these".
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ..errors import CalibrationError
from ..models.encoder import embed_files
from .classify import ZeroShotClassifier, softmax
from .datasets import CaptionPair, read_labelled_folder
from .prompts import TemplateSource
from .relevance import NoMatchCalibration, RelevanceCalibration, Statistic, ThresholdFit, fit_logistic, fit_threshold

if TYPE_CHECKING:
    from ..models.encoder import Encoder


@dataclass(frozen=True)
class OpenSetMetrics:
    """How the no-match rule behaves on images with known and unknown true classes."""

    precision: float  # accepted images whose top label is right
    coverage: float  # accepted / all images
    known_coverage: float  # accepted / images of a known class
    unknown_rejected: float  # rejected / images of an unknown class
    top1_known: float  # top-1 accuracy on known-class images, without rejection
    n_known: int
    n_unknown: int


def open_set_metrics(accepted: np.ndarray, correct: np.ndarray, known: np.ndarray) -> OpenSetMetrics:
    accepted, correct, known = (np.asarray(a, bool) for a in (accepted, correct, known))
    n_acc = int(accepted.sum())
    return OpenSetMetrics(
        precision=float((accepted & correct).sum() / n_acc) if n_acc else float("nan"),
        coverage=float(accepted.mean()) if accepted.size else float("nan"),
        known_coverage=float(accepted[known].mean()) if known.any() else float("nan"),
        unknown_rejected=float((~accepted[~known]).mean()) if (~known).any() else float("nan"),
        top1_known=float(correct[known].mean()) if known.any() else float("nan"),
        n_known=int(known.sum()),
        n_unknown=int((~known).sum()),
    )


@dataclass(frozen=True)
class NoMatchFit:
    calibration: NoMatchCalibration
    fit: ThresholdFit
    metrics: OpenSetMetrics
    skipped: list[str] = field(default_factory=list)


def no_match_inputs(
    classifier: ZeroShotClassifier, embeddings: np.ndarray, true_labels: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(scores, probabilities, correct, known)`` for labelled image embeddings."""
    scores = classifier.scores(embeddings)
    probs = softmax(classifier.encoder.logit_scale * scores)
    top = np.asarray(classifier.labels)[scores.argmax(axis=1)] if len(scores) else np.zeros(0, str)
    truth = np.asarray(list(true_labels))
    known = np.isin(truth, classifier.labels)
    return scores, probs, (top == truth) & known, known


def fit_no_match(
    classifier: ZeroShotClassifier,
    embeddings: np.ndarray,
    true_labels: Sequence[str],
    target_precision: float,
    statistic: Statistic = "score",
    fitted_on: dict | None = None,
) -> NoMatchFit:
    """Fit the "none of these" threshold on labelled image embeddings."""
    scores, probs, correct, known = no_match_inputs(classifier, embeddings, true_labels)
    stat = (probs if statistic == "probability" else scores).max(axis=1)
    fit = fit_threshold(stat, correct, target_precision)
    cal = NoMatchCalibration(
        fingerprint=classifier.encoder.fingerprint,
        threshold=fit.threshold,
        statistic=statistic,
        target_precision=target_precision,
        fitted_on={
            **(fitted_on or {}),
            "labels": list(classifier.labels),
            "templates": len(classifier.templates),
            "precision": fit.precision,
            "coverage": fit.coverage,
            "images": fit.total,
        },
    )
    return NoMatchFit(cal, fit, open_set_metrics(stat >= fit.threshold, correct, known))


def fit_no_match_on_folder(
    encoder: Encoder,
    folder: str | os.PathLike[str],
    labels: Sequence[str],
    target_precision: float,
    templates: TemplateSource = None,
    statistic: Statistic = "score",
    limit: int | None = None,
    progress: bool = False,
) -> NoMatchFit:
    items = read_labelled_folder(folder, limit=limit)
    emb, ok = embed_files(encoder, [it.path for it in items], progress=progress)
    if not ok.any():
        raise CalibrationError(f"no decodable images in {folder}")
    clf = ZeroShotClassifier(encoder, labels, templates, no_match=None)
    truth = [it.label for it, good in zip(items, ok) if good]
    result = fit_no_match(clf, emb, truth, target_precision, statistic, fitted_on={"folder": str(folder)})
    skipped = [str(it.path) for it, good in zip(items, ok) if not good]
    return NoMatchFit(result.calibration, result.fit, result.metrics, skipped)


_WORD = re.compile(r"[a-z]+")
ABSENT_TEMPLATE = "a photo of a {}."
ABSENT_TOP = 10


def absent_concepts(
    captions: Sequence[str], exclude_words: Sequence[str] = (), candidates: Sequence[str] | None = None
) -> list[str]:
    """Concept names (default: the ImageNet-1k class names) none of whose words any caption uses.

    Their prompts are queries about things the captioned collection does not show: the top
    results such a query still gets are what "relevant" must not cover. ``exclude_words``
    keeps concepts that share a word with an evaluation set out of the fit.
    """
    if candidates is None:
        from ..models.towers import class_names

        candidates = class_names("imagenet")
    used = {w for c in captions for w in _WORD.findall(c.lower())} | {w.lower() for w in exclude_words}
    out = []
    for name in candidates:
        words = [w for w in _WORD.findall(name.lower()) if len(w) > 2]
        if words and not any(w in used or w.rstrip("s") in used or w + "s" in used for w in words):
            out.append(name)
    return out


def relevance_training_scores(
    text_emb: np.ndarray,
    image_emb: np.ndarray,
    image_of_text: np.ndarray,
    negatives: int = 20,
    seed: int = 0,
    absent_emb: np.ndarray | None = None,
    absent_top: int = ABSENT_TOP,
) -> tuple[np.ndarray, np.ndarray]:
    """Cosines and 0/1 labels: each caption with its own image (1) and with random other images (0).

    ``absent_emb`` (queries about concepts the images do not show) adds hard negatives: each
    such query with its ``absent_top`` best-scoring images (0). Order: positives, random
    negatives, hard negatives (:func:`relevance_weights` relies on it).
    """
    rng = np.random.default_rng(seed)
    n_img = len(image_emb)
    if n_img < 2:
        raise CalibrationError("relevance fit needs at least two images")
    pos = np.einsum("ij,ij->i", text_emb, image_emb[image_of_text])
    neg_idx = rng.integers(0, n_img - 1, size=(len(text_emb), negatives))
    neg_idx += neg_idx >= image_of_text[:, None]  # skip the caption's own image
    neg = np.einsum("id,ikd->ik", text_emb, image_emb[neg_idx]).ravel()
    if absent_emb is not None and len(absent_emb):
        sims = absent_emb @ image_emb.T
        top = min(absent_top, n_img)
        neg = np.r_[neg, np.sort(np.partition(sims, n_img - top, axis=1)[:, n_img - top :], axis=1).ravel()]
    return np.r_[pos, neg], np.r_[np.ones(len(pos)), np.zeros(len(neg))]


HARD_SHARE = 0.75
"""Share of the negatives' weight on the hard (absent-concept) ones; see docs/zero-shot.md."""


def relevance_weights(
    labels: np.ndarray, random_negatives: int, captions: int, hard_share: float = HARD_SHARE
) -> np.ndarray:
    """Equal total weight for the positives and the negatives. Within the negatives,
    ``hard_share`` goes to the hard (absent-concept) ones when there are any: a search result
    needs telling apart from the best images of a query nothing matches far more often than
    from a random image, which never ranks near the top anyway. ``labels`` are in the order
    :func:`relevance_training_scores` returns them."""
    if not 0.0 <= hard_share < 1.0:
        raise CalibrationError("hard_share must be in [0, 1)")
    y = np.asarray(labels)
    n_pos = int((y == 1).sum())
    n_rand = captions * random_negatives
    n_hard = len(y) - n_pos - n_rand
    w = np.where(y == 1, 1.0, 0.0)
    neg = np.flatnonzero(y == 0)
    if n_hard > 0:
        w[neg[:n_rand]] = (1 - hard_share) * n_pos / n_rand
        w[neg[n_rand:]] = hard_share * n_pos / n_hard
    else:
        w[neg] = n_pos / max(1, n_rand)
    return w


def fit_relevance(
    encoder: Encoder,
    pairs: Sequence[CaptionPair],
    negatives: int = 20,
    seed: int = 0,
    progress: bool = False,
    fitted_on: dict | None = None,
    absent: bool = True,
    exclude_words: Sequence[str] = (),
    image_emb: np.ndarray | None = None,
) -> RelevanceCalibration:
    """Logistic ``P(relevant | cosine)``, positives and negatives weighted equally.

    Negatives are random non-matching images and, with ``absent`` (the default), the top
    results of queries about concepts none of the captions mention (:func:`absent_concepts`):
    the scores a search reaches when nothing in the collection matches. ``image_emb`` skips
    embedding the images (rows in the order of the sorted distinct image paths).
    """
    images = sorted({p.image for p in pairs})
    if image_emb is None:
        image_emb, ok = embed_files(encoder, images, progress=progress)
    else:
        ok = np.ones(len(images), bool)
    row = {img: i for i, img in enumerate(img for img, good in zip(images, ok) if good)}
    kept = [p for p in pairs if p.image in row]
    text_emb = encoder.encode_texts([p.caption for p in kept])
    concepts = absent_concepts([p.caption for p in kept], exclude_words) if absent else []
    absent_emb = encoder.encode_texts([ABSENT_TEMPLATE.format(c) for c in concepts]) if concepts else None
    own = np.array([row[p.image] for p in kept])
    s, y = relevance_training_scores(text_emb, image_emb, own, negatives, seed, absent_emb)
    slope, intercept = fit_logistic(s, y, relevance_weights(y, negatives, len(kept)))
    info = {
        **(fitted_on or {}),
        "captions": len(kept),
        "images": len(row),
        "negatives_per_caption": negatives,
        "absent_concepts": len(concepts),
        "absent_top": ABSENT_TOP if concepts else 0,
        "hard_share": HARD_SHARE if concepts else 0.0,
    }
    info["balanced"] = True
    return RelevanceCalibration(encoder.fingerprint, slope, intercept, "text-image", info)
