"""Auto-tagging: store each image's top zero-shot labels in the index metadata.

Uses the vectors already in the index (no image is decoded or re-encoded) and publishes a
new generation with the ``tags`` / ``tag_scores`` columns replaced, atomically and under
the index's writer lock. ``tag_scores`` hold the softmax probabilities of the labels.

The manifest keeps how the index was tagged (``Manifest.tagging``), and every later build or
update tags the photos it embeds the same way (``tag_rows``), so new photos are not left out.
``clear_tags`` drops the tags and stops that.

``python -m indexer tag --index DIR --labels-file tags.txt [--k 3] [--min-probability P]``
is the command line for it (``indexer/cli/tag.py``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from retrieval.cache import default_cache_dir
from retrieval.errors import CalibrationError, InvalidQueryError, ModelMismatchError
from retrieval.index.manifest import Manifest
from retrieval.index.store import IndexReader, WriterLock, update_metadata
from retrieval.zeroshot.classify import ZeroShotClassifier, softmax
from retrieval.zeroshot.prompts import TemplateSource

from .config import BuildReport

if TYPE_CHECKING:
    from retrieval.models.encoder import Encoder


DEFAULT_MIN_PROBABILITY = 0.1  # below it a label is a guess: with no floor, every photo got its top k labels


@dataclass(frozen=True)
class TagConfig:
    index_dir: Path
    labels: list[str]
    k: int = 3
    min_probability: float | None = DEFAULT_MIN_PROBABILITY
    templates: TemplateSource = None
    model: str | None = None  # default: the model that built the index
    reject: bool = True  # apply the model's "none of these" calibration when there is one
    batch_size: int = 8192


@dataclass(frozen=True)
class TagReport:
    total: int
    tagged: int
    label_counts: dict[str, int] = field(default_factory=dict)
    manifest: Manifest | None = None


@dataclass(frozen=True)
class ImageTags:
    tags: list[list[str]]
    scores: list[list[float]]


def tags_for_vectors(
    classifier: ZeroShotClassifier,
    vectors: np.ndarray,
    k: int,
    min_probability: float | None = None,
    reject: bool = True,
    batch_size: int = 8192,
) -> ImageTags:
    """Top-``k`` labels per vector (probability >= ``min_probability``; none when rejected)."""
    if k < 1:
        raise InvalidQueryError("k must be at least 1")
    tags: list[list[str]] = []
    scores: list[list[float]] = []
    labels = np.asarray(classifier.labels, dtype=object)
    k = min(k, len(labels))
    for start in range(0, len(vectors), batch_size):
        v = np.asarray(vectors[start : start + batch_size], dtype=np.float32)
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)  # stored as float16
        cos = classifier.scores(v)
        probs = softmax(classifier.encoder.logit_scale * cos)
        accepted = classifier.accepts(cos, probs) if reject else np.ones(len(v), bool)
        top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        for i in range(len(v)):
            keep = [j for j in top[i] if accepted[i] and (min_probability is None or probs[i, j] >= min_probability)]
            tags.append([str(labels[j]) for j in keep])
            scores.append([float(probs[i, j]) for j in keep])
    return ImageTags(tags, scores)


def _record(config: TagConfig, classifier: ZeroShotClassifier) -> dict[str, Any]:
    """What ``Manifest.tagging`` keeps: enough to tag new photos as these were tagged."""
    return {
        "labels": list(classifier.labels),
        "k": config.k,
        "min_probability": config.min_probability,
        "templates": list(classifier.templates),
        "reject": config.reject,
    }


def tag_rows(
    metadata: pa.Table, vectors: np.ndarray, first: int, tagging: dict[str, Any], encoder: Encoder
) -> tuple[pa.Table, int | None]:
    """Tag rows ``first:`` of ``metadata`` (whose vectors are ``vectors``, row for row) as
    ``tagging`` says; the rows before keep their tags. Returns the table and how many of the
    rows got a tag (None: nothing to tag)."""
    if not tagging or first >= metadata.num_rows:
        return metadata, None
    clf = ZeroShotClassifier(encoder, tagging["labels"], tagging.get("templates"), cache_dir=default_cache_dir())
    stored = np.asarray(vectors[first:], np.float16)  # as the index stores them: the tags `indexer tag` would give
    result = tags_for_vectors(
        clf, stored, int(tagging.get("k", 3)), tagging.get("min_probability"), bool(tagging.get("reject", True))
    )
    return _with_tags(metadata, result.tags, result.scores, first), sum(1 for row in result.tags if row)


def tag_new_photos(
    metadata: pa.Table, vectors: np.ndarray, first: int, tagging: dict[str, Any], encoder: Encoder, report: BuildReport
) -> pa.Table:
    """A build's ``tag_rows``: counts the tagged photos on ``report``; a failure to tag is a notice
    there (``tag_error``), not a lost build."""
    try:
        metadata, tagged = tag_rows(metadata, vectors, first, tagging, encoder)
    except (InvalidQueryError, CalibrationError) as exc:  # e.g. --rebuild with a model that lacks the calibration
        report.tag_error = str(exc)
        return metadata
    if tagged is not None:
        report.tagged = (report.tagged or 0) + tagged
    return metadata


def _with_tags(table: pa.Table, tags: list[list[str]], scores: list[list[float]], first: int = 0) -> pa.Table:
    """``table`` with the tags and tag scores of rows ``first:`` replaced (the rows before are kept as they are)."""
    for name, values in (("tags", tags), ("tag_scores", scores)):
        column = table.column(name)
        kept = column.slice(0, first).chunks if first else []
        table = table.set_column(
            table.schema.get_field_index(name),
            name,
            pa.chunked_array([*kept, pa.array(values, type=column.type)], type=column.type),
        )
    return table


def _encoder_for(reader: IndexReader, model: str | Encoder | None) -> Encoder:
    from retrieval.models.encoder import Encoder
    from retrieval.models.factory import create_model

    encoder = model if isinstance(model, Encoder) else create_model(model or reader.manifest.model_spec)
    if encoder.fingerprint != reader.manifest.model_fingerprint:
        raise ModelMismatchError(
            f"the index was built with {reader.manifest.model_spec} ({reader.manifest.model_fingerprint}); "
            f"{encoder.spec} ({encoder.fingerprint}) cannot tag its vectors"
        )
    return encoder


def tag_index(config: TagConfig, encoder: Encoder | None = None) -> TagReport:
    """Compute tags for every image of the index and publish them as a new generation."""
    index_dir = Path(config.index_dir)
    if config.min_probability is not None and not 0.0 <= config.min_probability <= 1.0:
        raise InvalidQueryError("min probability must be between 0 and 1")
    IndexReader.open(index_dir, mmap=True)  # no index: say so before the lock, which would make the folder
    with WriterLock(index_dir) as lock:
        reader = IndexReader.open(index_dir, mmap=True)
        enc = _encoder_for(reader, encoder or config.model)
        clf = ZeroShotClassifier(enc, config.labels, config.templates, cache_dir=default_cache_dir())
        result = tags_for_vectors(
            clf, reader.vectors, config.k, config.min_probability, config.reject, config.batch_size
        )
        table = _with_tags(reader.metadata, result.tags, result.scores)
        manifest = update_metadata(index_dir, table, lock=lock, tagging=_record(config, clf))
    counts = Counter(t for row in result.tags for t in row)
    return TagReport(
        total=len(result.tags),
        tagged=sum(1 for row in result.tags if row),
        label_counts=dict(counts.most_common()),
        manifest=manifest,
    )


def clear_tags(index_dir: str | Path) -> Manifest:
    """Drop every photo's tags and the record that makes builds tag new photos."""
    index_dir = Path(index_dir)
    IndexReader.open(index_dir, mmap=True)  # no index: say so before the lock, which would make the folder
    with WriterLock(index_dir) as lock:
        reader = IndexReader.open(index_dir, mmap=True)
        empty = [[] for _ in range(len(reader))]
        return update_metadata(index_dir, _with_tags(reader.metadata, empty, empty), lock=lock, tagging={})
