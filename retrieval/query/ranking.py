"""One fixed ranking per query, so that pages (``offset``, ``k``) never overlap or leave gaps.

An approximate index does not rank consistently across depths: the top 20 of a query is not
always the top 10 followed by ten more, because asking for more fetches more candidates, and
a candidate found only at the greater depth can outrank one of the first ten. (An exact index
has the same problem with ties.) Paging by slicing ``search(k=offset+k)`` would then repeat
a photo on two pages or skip one.

So results are read in *tiers* of growing depth (16, 64, 256, ...): each tier searches at its
depth and keeps the tier before it as its prefix, appending only the photos it has not placed
yet, in score order. Every depth therefore sees the same ranking, at 1M photos as at 1,000,
and any page is a slice of it. The price: past each tier boundary the scores may step up a
little (a photo the shallower search missed), and a deep page costs the searches of every tier
above it (geometric, so about 4/3 of the deepest one). An IVF index reaches as deep as its
probed lists hold (about nprobe/nlist of the collection); the ranking ends there.

Date order sorts *the matches*: the ranking's photos whose calibrated relevance clears a
threshold, read tier by tier until a tier adds none (or :data:`MAX_MATCHES` are read).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

FIRST_TIER = 16
TIER_GROWTH = 4
MAX_MATCHES = 65_536
"""Date order reads at most this many ranked photos to find the matches it sorts."""
SORTS = ("relevance", "date", "-date")

SearchAt = Callable[[int], "tuple[np.ndarray, np.ndarray]"]
"""``depth -> (scores, ids)``: one query searched at ``depth``, best first, -1 ids for no result."""
Keep = Callable[["np.ndarray", "np.ndarray"], "np.ndarray"]
"""``(scores, ids) -> bool mask``: which ranked photos are matches."""


@dataclass(frozen=True)
class Ranked:
    """Row ids and scores in ranking order; ``complete`` when the index had nothing more to give
    (or, for matches, when the ranking's tail has no more matches)."""

    ids: np.ndarray
    scores: np.ndarray
    complete: bool


def _tiers() -> Iterator[int]:
    depth = FIRST_TIER
    while True:
        yield depth
        depth *= TIER_GROWTH


def ranked(
    search_at: SearchAt, need: int, keep: Keep | None = None, stop_without_match: bool = False, limit: int | None = None
) -> Ranked:
    """The first ``need`` photos of the fixed tiered ranking (only those ``keep`` accepts, if given).

    ``stop_without_match``: stop after a tier that adds no accepted photo (for a threshold on a
    score that falls along the ranking). ``limit``: read at most this many ranked photos.
    """
    ids: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    kept_ids: list[np.ndarray] = []
    kept_scores: list[np.ndarray] = []
    placed: set[int] = set()
    count = kept = 0
    for depth in _tiers():
        s, i = search_at(depth)
        s, i = np.asarray(s).reshape(-1), np.asarray(i).reshape(-1)
        valid = i >= 0
        s, i = s[valid], i[valid]
        fresh = np.fromiter((int(x) not in placed for x in i), bool, len(i))
        s, i = s[fresh][: depth - count], i[fresh][: depth - count]
        placed.update(int(x) for x in i)
        ids.append(i)
        scores.append(s)
        count += len(i)
        mask = keep(s, i) if keep is not None else np.ones(len(i), bool)
        kept_ids.append(i[mask])
        kept_scores.append(s[mask])
        kept += int(mask.sum())
        exhausted = int(valid.sum()) < depth
        if exhausted or (stop_without_match and not mask.any()):
            return _done(kept_ids, kept_scores, need, True)
        if kept >= need or (limit is not None and count >= limit):
            return _done(kept_ids, kept_scores, need, False)


def _done(ids: list[np.ndarray], scores: list[np.ndarray], need: int, complete: bool) -> Ranked:
    all_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    all_scores = np.concatenate(scores) if scores else np.zeros(0, np.float32)
    return Ranked(all_ids[:need].astype(np.int64), all_scores[:need].astype(np.float32), complete)


def date_order(ids: np.ndarray, when: np.ndarray, newest_first: bool) -> np.ndarray:
    """Positions of ``ids`` in capture-time order (ties by row id, so every page agrees)."""
    times = when[ids]
    keys = -times if newest_first else times
    return np.lexsort((ids, keys))
