"""Zero-shot classification: score images against text labels with a prompt ensemble.

Each label becomes one class embedding: every template is filled in with the label,
encoded, and the normalised embeddings are averaged and renormalised (CLIP's prompt
ensembling). Class embeddings are built once per classifier and, optionally, cached on
disk keyed by the encoder fingerprint, the labels and the templates.

"None of these": when a :class:`~retrieval.zeroshot.relevance.NoMatchCalibration` applies (fitted
with ``python -m retrieval calibrate`` for this encoder), :meth:`ZeroShotClassifier.predict`
returns an *empty* prediction list for an image whose best label falls below the
calibrated threshold. ``reject=False`` always returns the top-k.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
from PIL import Image

from ..atomic import replacing
from ..cache import default_cache_dir
from ..errors import CalibrationError, InvalidQueryError, RetrievalWarning
from ..imageio import load_image
from .prompts import TemplateSource, build_prompts, get_templates, templates_hash
from .relevance import NoMatchCalibration, load_no_match

if TYPE_CHECKING:
    from ..models.encoder import Encoder

ImageInput = Union[str, "os.PathLike[str]", Image.Image]
AUTO = "auto"


@dataclass(frozen=True)
class Prediction:
    """One label for one image. ``probability`` is a softmax over the label set; ``score`` the raw cosine."""

    label: str
    probability: float
    score: float


def parse_labels(text: str) -> list[str]:
    """Labels from a comma-separated string or the text of a labels file (one per line, ``#`` comments)."""
    parts = text.splitlines() if "\n" in text.strip() else text.split(",")
    labels = [p.strip() for p in parts if p.strip() and not p.strip().startswith("#")]
    return validate_labels(labels)


def validate_labels(labels: Iterable[str]) -> list[str]:
    out = [str(label).strip() for label in labels]
    if not out or any(not label for label in out):
        raise InvalidQueryError("labels must be a non-empty list of non-empty strings")
    folded = [label.casefold() for label in out]  # the text towers' tokenizers ignore case
    dupes = sorted({label for label, key in zip(out, folded) if folded.count(key) > 1})
    if dupes:
        raise InvalidQueryError(f"duplicate labels (case does not count): {', '.join(dupes)}")
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def ensemble(prompt_embeddings: np.ndarray, axis: int) -> np.ndarray:
    """Class embeddings from unit prompt embeddings: the mean over the templates' ``axis``,
    renormalised to unit length (CLIP's prompt ensembling)."""
    mean = prompt_embeddings.mean(axis=axis)
    norms = np.linalg.norm(mean, axis=-1, keepdims=True)
    return (mean / np.maximum(norms, 1e-12)).astype(np.float32)


class ZeroShotClassifier:
    """Classify images (or their embeddings) into ``labels`` with an encoder.

    ``templates``: a set name, a file, or a list of templates (default set ``photo``).
    ``no_match``: ``"auto"`` finds the calibration shipped or fitted for this encoder,
    ``None`` disables "none of these", or pass a calibration object.
    ``cache_dir``: where to keep class embeddings between runs (``None``: memory only).
    """

    def __init__(
        self,
        encoder: Encoder,
        labels: Sequence[str],
        templates: TemplateSource = None,
        *,
        no_match: NoMatchCalibration | str | None = AUTO,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.encoder = encoder
        self.labels = validate_labels(labels)
        self.templates = get_templates(templates)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.no_match = self._resolve_no_match(no_match)
        if len(self.labels) < 2 and self.no_match is None:
            raise InvalidQueryError(
                f"one label ({self.labels[0]!r}) would score 100% on any image: the scores are "
                "shared out among the labels; give at least two, e.g. "
                f"'{self.labels[0]}, something else'"
            )
        self._class_embeddings: np.ndarray | None = None

    def _resolve_no_match(self, no_match: NoMatchCalibration | str | None) -> NoMatchCalibration | None:
        if no_match is None:
            return None
        if isinstance(no_match, NoMatchCalibration):
            if no_match.fingerprint != self.encoder.fingerprint:
                raise CalibrationError(
                    f"no-match calibration was fitted for {no_match.fingerprint}, not {self.encoder.fingerprint}"
                )
            return no_match
        if no_match == AUTO:
            return load_no_match(self.encoder)
        return NoMatchCalibration.load(no_match, expect_fingerprint=self.encoder.fingerprint)

    @property
    def cache_key(self) -> str:
        h = hashlib.sha256()
        for part in (self.encoder.fingerprint, templates_hash(self.templates), *self.labels):
            h.update(part.encode("utf-8") + b"\0")
        return h.hexdigest()[:24]

    @property
    def class_embeddings(self) -> np.ndarray:
        """``[C, D]`` unit-length class embeddings, built on first use."""
        if self._class_embeddings is None:
            self._class_embeddings = self._load_cached() if self.cache_dir else None
            if self._class_embeddings is None:
                self._class_embeddings = self._build()
                if self.cache_dir:
                    self._save_cached(self._class_embeddings)
        return self._class_embeddings

    def _build(self) -> np.ndarray:
        prompts = [p for label in self.labels for p in build_prompts(label, self.templates)]
        per_prompt = self.encoder.encode_texts(prompts)
        return ensemble(per_prompt.reshape(len(self.labels), len(self.templates), -1), axis=1)

    def _cache_path(self) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir / "class_embeddings" / f"{self.cache_key}.npy"

    def _load_cached(self) -> np.ndarray | None:
        path = self._cache_path()
        if not path.is_file():
            return None
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None  # a damaged cache entry is rebuilt and overwritten
        return arr if arr.shape[0] == len(self.labels) and arr.dtype == np.float32 else None

    def _save_cached(self, arr: np.ndarray) -> None:
        """Best effort: a cache that cannot be written (read-only, full) costs a recompute next time, no failure."""
        path = self._cache_path()
        try:
            with replacing(path) as tmp:
                np.save(tmp, arr)
        except OSError as exc:
            warnings.warn(
                f"could not cache the label embeddings in {path.parent} ({exc}); they are recomputed "
                "next time. Set RETRIEVAL_CACHE_DIR to a writable folder to keep them.",
                RetrievalWarning,
                stacklevel=3,
            )

    def embed_images(self, images: Sequence[ImageInput] | np.ndarray) -> np.ndarray:
        """Image embeddings ``[N, D]``; arrays are taken as embeddings already."""
        if isinstance(images, np.ndarray):
            emb = np.atleast_2d(images).astype(np.float32, copy=False)
            if emb.shape[1] != self.class_embeddings.shape[1]:
                raise InvalidQueryError(
                    f"embeddings have dimension {emb.shape[1]}, the encoder {self.class_embeddings.shape[1]}"
                )
            return emb
        pil = [
            im if isinstance(im, Image.Image) else load_image(im, draft_size=self.encoder.image_size) for im in images
        ]
        return self.encoder.encode_images(pil)

    def scores(self, image_embeddings: np.ndarray) -> np.ndarray:
        """Cosine similarity ``[N, C]`` of each image embedding with each class."""
        return np.atleast_2d(image_embeddings).astype(np.float32, copy=False) @ self.class_embeddings.T

    def probabilities(self, image_embeddings: np.ndarray) -> np.ndarray:
        """Softmax over the labels of the logit-scaled cosines, ``[N, C]``."""
        return softmax(self.encoder.logit_scale * self.scores(image_embeddings))

    def predict(
        self, images_or_embeddings: Sequence[ImageInput] | np.ndarray, k: int = 5, *, reject: bool = True
    ) -> list[list[Prediction]]:
        """Top-``k`` predictions per image, best first.

        With ``reject`` and a no-match calibration, an image whose best label is below the
        threshold gets an empty list ("none of these").
        """
        if k < 1:
            raise InvalidQueryError("k must be at least 1")
        emb = self.embed_images(images_or_embeddings)
        scores = self.scores(emb)
        probs = softmax(self.encoder.logit_scale * scores)
        accepted = self.accepts(scores, probs) if reject else np.ones(len(scores), bool)
        top = np.argsort(-scores, axis=1, kind="stable")[:, : min(k, len(self.labels))]
        return [
            [Prediction(self.labels[j], float(probs[i, j]), float(scores[i, j])) for j in top[i]] if accepted[i] else []
            for i in range(len(scores))
        ]

    def accepts(self, scores: np.ndarray, probs: np.ndarray | None = None) -> np.ndarray:
        """Boolean ``[N]``: whether each image's best label clears the no-match threshold."""
        if self.no_match is None:
            return np.ones(len(scores), bool)
        if probs is None:
            probs = softmax(self.encoder.logit_scale * scores)
        return self.no_match.accepts(scores, probs)


def classify(
    images: Sequence[ImageInput],
    labels: Sequence[str],
    templates: TemplateSource = None,
    k: int = 5,
    *,
    model: str | Encoder | None = None,
    reject: bool = True,
) -> list[list[Prediction]]:
    """Top-``k`` labels for each image (paths or PIL images), best first.

    An empty list means "none of these" (below the calibrated no-match threshold for
    this model, when one exists). ``model`` is a spec or an encoder (default built-in).
    """
    from ..models.encoder import Encoder
    from ..models.factory import create_model

    encoder = model if isinstance(model, Encoder) else create_model(model)
    clf = ZeroShotClassifier(encoder, labels, templates, cache_dir=default_cache_dir())
    return clf.predict(list(images), k=k, reject=reject)


@dataclass(frozen=True)
class FileClassification:
    """The outcome for one file: predictions (empty = "none of these"), or why it was skipped."""

    path: str
    predictions: list[Prediction]
    error: str | None = None


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted)."""
    from ..imageio import is_image_path

    root = Path(folder)
    if not root.is_dir():
        raise InvalidQueryError(f"not a folder: {root}")
    return sorted(p for p in root.rglob("*") if p.is_file() and is_image_path(p))


def classify_files(
    classifier: ZeroShotClassifier,
    paths: Sequence[str | os.PathLike[str]],
    k: int = 5,
    *,
    batch_size: int = 64,
    reject: bool = True,
    progress: bool = False,
) -> Iterable[FileClassification]:
    """Classify files batch by batch; undecodable files come back with ``error`` set, not raised."""
    from tqdm import tqdm

    from ..errors import ImageDecodeError

    bar = tqdm(total=len(paths), unit="img", disable=not progress, desc="classify")
    try:
        for start in range(0, len(paths), batch_size):
            good: list[tuple[str, Image.Image]] = []
            for p in paths[start : start + batch_size]:
                try:
                    good.append((str(p), load_image(p, draft_size=classifier.encoder.image_size)))
                except ImageDecodeError as exc:
                    yield FileClassification(str(p), [], error=exc.reason)
            if good:
                preds = classifier.predict([im for _, im in good], k=k, reject=reject)
                for (p, _), pr in zip(good, preds):
                    yield FileClassification(p, pr)
            bar.update(len(paths[start : start + batch_size]))
    finally:
        bar.close()
