"""Near-duplicate photos: groups of indexed images whose stored vectors are almost the same,
or whose pixel fingerprints match.

Copies, resized or re-compressed versions, light crops and edits of one photo embed to nearly
the same vector; different photos of one scene usually do not. Each image's nearest neighbours
come from the index's own search (exact for small indexes, IVF-PQ with exact re-ranking for
large ones), pairs at or above ``threshold`` cosine are joined, and the connected sets are the
groups, built most-similar-first so that every two members of a group are linked (a burst of
similar shots does not chain into one long group). Files with the same content hash are always
grouped.

Two images are also linked, at any threshold, when their pixel fingerprints
(:mod:`retrieval.duplicates.fingerprint`, stored by the indexer) are at most :data:`FINGERPRINT_BITS` bits
apart, either way round: that is how grayscale versions and mirror images are found, which the
model's vectors place far apart. Fingerprint pairs come from the nearest neighbours, and from
an exact search of all fingerprints within :data:`FINGERPRINT_SEARCH_BITS` bits. Images indexed
before fingerprints existed have none (``build --rebuild`` adds them). No model is needed: only
the stored vectors and metadata are read.

The default threshold, 0.92 (built-in model), comes from ``bench/eval_duplicates.py`` on
Flickr8k, one edit at a time: it groups every hard re-compression (JPEG quality 30), 60%
downsized copy, grayscale version and mirror image, 99.8% of brightness/contrast edits, and 55%
of 85% crops; 99.94% of grouped pairs are copies of one photo, and of 8,000 different photos it
puts 10 into 5 groups (bursts of one moment among them). Other models put near-duplicates at
other cosines.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.compute as pc

from ..errors import InvalidQueryError
from ..index.reader import IndexReader

DEFAULT_THRESHOLD = 0.92
DEFAULT_NEIGHBOURS = 8
FINGERPRINT_BITS = 6  # fingerprints this close (of 63 bits) link two images
FINGERPRINT_SEARCH_BITS = 2  # found among all images; up to FINGERPRINT_BITS among each one's neighbours
_BATCH = 512


@dataclass(frozen=True)
class DuplicateGroup:
    """Rows of one group, the one to keep first: a file still on disk, then most pixels, then the
    oldest (capture time, then file time), then the largest file, then path."""

    rows: list[int]
    paths: list[str]
    min_similarity: float  # the lowest cosine between any two members
    max_similarity: float  # the highest
    identical_files: int  # members whose content hash another member shares
    metadata: list[dict[str, Any]] = field(repr=False, default_factory=list)
    mirror_images: list[str] = field(default_factory=list)  # members that are mirror images of the one to keep
    # members no longer on disk (kept in the index under a folder that cannot be read, or renamed)
    missing: list[str] = field(default_factory=list)

    @property
    def keep(self) -> str:
        return self.paths[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "keep": self.keep,
            "paths": self.paths,
            "min_similarity": round(self.min_similarity, 4),
            "max_similarity": round(self.max_similarity, 4),
            "identical_files": self.identical_files,
            "mirror_images": self.mirror_images,
            "missing": self.missing,
            "images": [{k: m.get(k) for k in ("path", "width", "height", "size")} for m in self.metadata],
        }


def find_duplicates(
    reader: IndexReader,
    threshold: float = DEFAULT_THRESHOLD,
    neighbours: int = DEFAULT_NEIGHBOURS,
    mask: np.ndarray | None = None,
    progress: bool = False,
) -> list[DuplicateGroup]:
    """Groups of near-duplicate images in ``reader``, largest groups first.

    ``threshold`` is the cosine at or above which two images count as the same photo (images
    whose fingerprints match count at any threshold);
    ``neighbours`` how many nearest images each one is compared with (a photo with more copies
    than that still joins them through the copies' own neighbours). ``mask`` restricts the
    search to some rows (a folder, a date range). ``progress`` shows a progress bar.
    """
    return group_pairs(reader, similar_pairs(reader, threshold, neighbours, mask, progress), threshold)


@dataclass(frozen=True)
class SimilarPairs:
    """Every pair of rows that are near neighbours at or above ``threshold``, or whose fingerprints
    match: ``scores[i]`` is the cosine of rows ``first[i] < second[i]`` (2.0 for identical files),
    ``bits[i]`` how far apart their fingerprints are (more than :data:`FINGERPRINT_BITS`: not
    linked by them). Grouping at any higher threshold keeps a subset of them, so one search
    serves every threshold above (the app's slider)."""

    threshold: float
    scores: np.ndarray  # float32
    first: np.ndarray  # int64
    second: np.ndarray  # int64
    bits: np.ndarray  # int64

    def linked(self, threshold: float) -> np.ndarray:
        """Which pairs join at ``threshold``."""
        return (self.scores >= threshold - 1e-6) | (self.bits <= FINGERPRINT_BITS)

    def __len__(self) -> int:
        return len(self.scores)


def similar_pairs(
    reader: IndexReader,
    threshold: float = DEFAULT_THRESHOLD,
    neighbours: int = DEFAULT_NEIGHBOURS,
    mask: np.ndarray | None = None,
    progress: bool = False,
) -> SimilarPairs:
    """The search half of :func:`find_duplicates`: each row's ``neighbours`` nearest rows."""
    from tqdm import tqdm

    from . import fingerprint  # imports torch: loaded when duplicates are looked for, not on import

    _check_threshold(threshold)
    if neighbours < 1:
        raise InvalidQueryError(f"neighbours must be at least 1, not {neighbours!r}")
    rows = np.arange(len(reader)) if mask is None else np.flatnonzero(np.asarray(mask, dtype=bool))
    hashes = reader.metadata.column("sha256").to_pylist()
    codes = fingerprints(reader)
    first_of_hash: dict[str, int] = {}
    same = [(first_of_hash.setdefault(hashes[row], row), row) for row in rows.tolist()]
    same = [pair for pair in same if pair[0] != pair[1]]  # identical content, whatever the vectors' rounding
    parts = [
        (
            np.full(len(same), 2.0, np.float32),
            np.array([p[0] for p in same], np.int64),
            np.array([p[1] for p in same], np.int64),
        )
    ]
    close_a, close_b, _ = fingerprint.close_pairs(codes[rows], rows, FINGERPRINT_SEARCH_BITS)
    parts.append((_cosines(reader.vectors, close_a, close_b), close_a, close_b))
    bar = tqdm(total=len(rows), unit="img", disable=not progress, desc="duplicates")
    for start in range(0, len(rows), _BATCH):
        batch = rows[start : start + _BATCH]
        scores, ids = reader.search_vectors(
            np.asarray(reader.vectors[batch], dtype=np.float32), min(neighbours + 1, len(reader)), mask=mask
        )
        own = np.broadcast_to(batch[:, None], ids.shape)
        found = (ids >= 0) & (ids != own)
        near = fingerprint.distance(codes[own[found]], codes[ids[found]]) <= FINGERPRINT_BITS
        keep = found.copy()
        keep[found] = (scores[found] >= threshold - 1e-6) | near
        parts.append((scores[keep].astype(np.float32), np.minimum(own, ids)[keep], np.maximum(own, ids)[keep]))
        bar.update(len(batch))
    bar.close()
    scores, first, second = (np.concatenate(column) for column in zip(*parts))
    order = np.lexsort((-scores, second, first))  # by pair, the highest score first
    scores, first, second = scores[order], first[order], second[order]
    unique = np.ones(len(scores), bool)
    unique[1:] = (first[1:] != first[:-1]) | (second[1:] != second[:-1])  # each pair once (found from both ends)
    first, second = first[unique], second[unique]
    bits = fingerprint.distance(codes[first], codes[second])
    return SimilarPairs(threshold, scores[unique], first, second, bits)


def fingerprints(reader: IndexReader) -> np.ndarray:
    """Each row's pixel fingerprint, ``fingerprint.NONE`` where it has none."""
    from . import fingerprint  # imports torch: loaded when duplicates are looked for, not on import

    return pc.fill_null(reader.metadata.column("fingerprint"), fingerprint.NONE).to_numpy().astype(np.int64, copy=False)


def _cosines(vectors: np.ndarray, first: np.ndarray, second: np.ndarray, block: int = 4096) -> np.ndarray:
    out = np.zeros(len(first), np.float32)
    for start in range(0, len(first), block):
        a = np.asarray(vectors[first[start : start + block]], np.float32)
        b = np.asarray(vectors[second[start : start + block]], np.float32)
        out[start : start + block] = np.einsum("ij,ij->i", a, b)
    return out


def group_pairs(reader: IndexReader, found: SimilarPairs, threshold: float) -> list[DuplicateGroup]:
    """The groups at ``threshold`` (at least ``found.threshold``) from pairs already found."""
    _check_threshold(threshold)
    if threshold < found.threshold - 1e-9:
        raise InvalidQueryError(f"these pairs were searched at {found.threshold}; cannot group at a lower {threshold}")
    keep = found.linked(threshold)
    scores, first, second, bits = found.scores[keep], found.first[keep], found.second[keep], found.bits[keep]
    # identical files first, then fingerprint matches (closest first), then the rest most similar first, so a
    # grayscale copy or a mirror image joins its original before a different shot of the scene can
    kind = np.where(scores > 1.0, 0, np.where(bits <= FINGERPRINT_BITS, 1, 2))
    order = np.lexsort((second, first, -scores, np.where(kind == 1, bits, 0), kind))
    members = _complete_linkage(
        reader.vectors, fingerprints(reader), scores[order], first[order], second[order], kind[order] < 2, threshold
    )
    groups = [_describe(reader, group) for group in members]
    return sorted(groups, key=lambda g: (-len(g.rows), -g.min_similarity, g.paths[0]))


def _check_threshold(threshold: float) -> None:
    if not 0.0 < threshold <= 1.0:  # also refuses NaN
        raise InvalidQueryError(f"threshold is a cosine in (0, 1], not {threshold!r}")


def _complete_linkage(
    vectors: np.ndarray,
    codes: np.ndarray,
    scores: np.ndarray,
    first: np.ndarray,
    second: np.ndarray,
    strong: np.ndarray,
    threshold: float,
) -> list[list[int]]:
    """Join pairs in the order given: identical files and fingerprint matches first, then the
    rest most similar first (``strong`` marks the former); two groups merge only if every cross
    pair of *pictures* is linked.

    A picture is what the first pass makes: files with one content, and images whose
    fingerprints match (a photo, its grayscale version, its mirror image), each pair of them
    linked. A cross pair of pictures is linked when one of their images reaches ``threshold`` or
    has fingerprints within :data:`FINGERPRINT_BITS` of one in the other. So within a group
    every two pictures are near-duplicates: a burst of similar shots cannot chain A~B~C~...
    into one group whose ends look nothing alike (single linkage would), and a crop of a photo
    can join the photo's picture although its grayscale version looks nothing like the crop.
    Identical files (score 2.0) always merge.
    """
    from . import fingerprint  # imports torch: loaded when duplicates are looked for, not on import

    group_of: dict[int, list[int]] = {}
    picture_of: dict[int, int] | None = None  # row -> its picture, once the first pass is over
    for score, a, b, is_strong in zip(scores.tolist(), first.tolist(), second.tolist(), strong.tolist()):
        if not is_strong and picture_of is None:
            picture_of = {row: id(g) for row, g in group_of.items()}
        ga, gb = group_of.setdefault(a, [a]), group_of.setdefault(b, [b])
        if ga is gb:
            continue
        if score <= 1.0:
            cross = np.asarray(vectors[ga], np.float32) @ np.asarray(vectors[gb], np.float32).T
            linked = (cross >= threshold - 1e-6) | (
                fingerprint.distance(codes[ga][:, None], codes[gb][None, :]) <= FINGERPRINT_BITS
            )
            if picture_of is not None:
                linked = _by_picture(linked, [picture_of.get(r, r) for r in ga], [picture_of.get(r, r) for r in gb])
            if not linked.all():
                continue
        ga.extend(gb)
        for row in gb:
            group_of[row] = ga
    unique = {id(g): g for g in group_of.values()}
    return [sorted(g) for g in unique.values() if len(g) > 1]


def _by_picture(linked: np.ndarray, pictures_a: list[int], pictures_b: list[int]) -> np.ndarray:
    """``linked`` between rows, collapsed to pictures: a pair of pictures is linked if any pair of their rows is."""
    _, rows_a = np.unique(pictures_a, return_inverse=True)
    _, cols_b = np.unique(pictures_b, return_inverse=True)
    out = np.zeros((rows_a.max() + 1, cols_b.max() + 1), bool)
    np.logical_or.at(out, (rows_a[:, None], cols_b[None, :]), linked)
    return out


def _describe(reader: IndexReader, members: Sequence[int]) -> DuplicateGroup:
    from . import fingerprint  # imports torch: loaded when duplicates are looked for, not on import

    meta = reader.rows(list(members))
    gone = [not os.path.exists(m["path"]) for m in meta]  # never the one to keep: setting the rest aside lost the photo
    order = sorted(range(len(members)), key=lambda i: _keep_first(meta[i], gone[i]))
    rows = [int(members[i]) for i in order]
    meta = [meta[i] for i in order]
    low, high = _similarity_range(np.asarray(reader.vectors[rows], dtype=np.float32))
    counts = Counter(m["sha256"] for m in meta)
    codes = np.array([fingerprint.NONE if m["fingerprint"] is None else m["fingerprint"] for m in meta], np.int64)
    mirrored = fingerprint.is_mirror_image(codes[0], codes) & (
        fingerprint.distance(codes[0], codes) <= FINGERPRINT_BITS
    )
    return DuplicateGroup(
        rows=rows,
        paths=[str(m["path"]) for m in meta],
        min_similarity=low,
        max_similarity=high,
        identical_files=sum(n for n in counts.values() if n > 1),
        metadata=meta,
        mirror_images=[str(m["path"]) for m, flip in zip(meta, mirrored.tolist()) if flip],
        missing=[str(meta[j]["path"]) for j, i in enumerate(order) if gone[i]],
    )


def _keep_first(m: dict[str, Any], gone: bool) -> tuple:
    """The order of a group: on disk, most pixels, then the oldest (taken, then written), then the
    largest file. The oldest before the largest: a PNG re-save of a JPEG, or a grayscale copy, is
    larger than the original and was kept while the colour original was set aside."""
    taken = m.get("captured_at")
    return (
        gone,
        -(m["width"] or 0) * (m["height"] or 0),
        taken.timestamp() if taken is not None else math.inf,
        m["mtime"] if m.get("mtime") is not None else math.inf,
        -(m["size"] or 0),
        m["path"],
    )


def _similarity_range(vectors: np.ndarray, block: int = 1024) -> tuple[float, float]:
    """The lowest and highest cosine between two different members, a block of rows at a time."""
    low, high = np.inf, -np.inf
    for start in range(0, len(vectors) - 1, block):
        sims = vectors[start : start + block] @ vectors[start + 1 :].T  # row i against every later row
        upper = np.triu(np.ones(sims.shape, dtype=bool), k=0)  # column j is row start + 1 + j
        if upper.any():
            low, high = min(low, float(sims[upper].min())), max(high, float(sims[upper].max()))
    return low, high
