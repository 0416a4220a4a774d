"""Turn a :class:`~retrieval.query.parse.Query` into the vectors an index searches with.

Each term becomes a unit embedding: text through the index's text tower, an indexed photo
through its stored vector (no image tower needed), a file or URL through the image tower. The
query vector is the weighted sum, renormalized: ``q = sum(w_i e_i) / |sum(w_i e_i)|``, so
ranking by ``q . x`` ranks by ``sum(w_i cos(e_i, x))``, the weighted sum of each term's cosine.

The calibrated relevance of an expression is read from its *text* terms alone: the same
blend over the text terms only, ``t = sum(w_i e_i) / |...|`` for text terms, scored against a
photo and put through the index's text->image calibration. For one text term this is exactly
the relevance of a plain query; image terms steer the ranking (relevance feedback) but do not
move the relevance scale, whose calibration was fitted on text-image pairs only.
"""

from __future__ import annotations

import io
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image

from ..errors import ImageDecodeError, InvalidQueryError
from ..imageio import load_image
from .parse import Query, Term

if TYPE_CHECKING:
    from ..index.store import IndexReader
    from ..models.encoder import Encoder


class Index(Protocol):
    """What embedding a query needs of :class:`retrieval.Index` (named here, so this module,
    which ``retrieval.query.search`` imports, does not import it back)."""

    reader: IndexReader

    @property
    def encoder(self) -> Encoder: ...

    def query_vector(self, query: Any) -> np.ndarray: ...


URL_TIMEOUT_S = 10.0
"""How long fetching an ``@https://...`` image term may take before it is refused."""
MAX_URL_BYTES = 50 << 20


@dataclass(frozen=True)
class QueryVectors:
    """The ranking vector and, when the query has text terms, the text-only vector for relevance."""

    ranking: np.ndarray
    text: np.ndarray | None


def blend(vectors: list[np.ndarray], weights: list[float], what: str = "the terms") -> np.ndarray:
    """``sum(w_i v_i)`` renormalized to unit length; refuses terms that cancel out."""
    total = np.zeros_like(np.asarray(vectors[0], dtype=np.float32))
    for v, w in zip(vectors, weights):
        total += np.float32(w) * np.asarray(v, dtype=np.float32)
    norm = float(np.linalg.norm(total))
    if not np.isfinite(norm) or norm < 1e-6:
        raise InvalidQueryError(f"{what} cancel out: their weighted sum is zero; change a weight or a term")
    return total / norm


def query_vectors(index: Index, query: Query) -> QueryVectors:
    """Embed every term of ``query`` with ``index``'s model and blend them (see the module docstring)."""
    embedded = [_embed(index, t) for t in query.terms]
    weights = [t.weight for t in query.terms]
    ranking = embedded[0] if query.is_plain_text else blend(embedded, weights)
    text_idx = [i for i, t in enumerate(query.terms) if not t.is_image]
    text = None
    if text_idx:
        text = (
            ranking
            if len(text_idx) == len(query.terms)
            else blend([embedded[i] for i in text_idx], [weights[i] for i in text_idx], "the text terms")
        )
    return QueryVectors(ranking, text)


def _embed(index: Index, term: Term) -> np.ndarray:
    if term.text is not None:
        return index.query_vector(term.text)
    return image_term_vector(index, term.image or "")


def image_term_vector(index: Index, ref: str) -> np.ndarray:
    """The unit vector of an image term: an indexed photo's stored vector, a file, or a URL."""
    if ref.lower().startswith(("http://", "https://")):
        return index.query_vector(fetch_image(ref))
    row = int(index.reader.rows_for_paths([os.path.expanduser(ref)])[0])
    if row >= 0:
        vec = np.asarray(index.reader.vectors[row], dtype=np.float32)
        return vec / max(float(np.linalg.norm(vec)), 1e-12)
    path = Path(ref).expanduser()
    if not path.exists():
        raise InvalidQueryError(f"image term @{ref}: no such file, and no indexed photo has that path")
    if path.is_dir():
        raise InvalidQueryError(f"image term @{ref} is a folder, not an image")
    try:
        image = load_image(path, draft_size=2 * index.encoder.image_size)
    except ImageDecodeError as exc:
        raise InvalidQueryError(f"image term @{ref} is not an image this can read ({exc.reason})") from exc
    return index.query_vector(image)


def fetch_image(url: str, timeout: float = URL_TIMEOUT_S) -> Image.Image:
    """Download the image at ``url`` (only ever for an ``@http(s)://`` term the user gave)."""
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers={"User-Agent": "retrieval"}), timeout=timeout
        ) as response:
            data = response.read(MAX_URL_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise InvalidQueryError(
            f"image term @{url}: could not fetch it ({reason}); offline? Save the photo and give its path instead"
        ) from exc
    if len(data) > MAX_URL_BYTES:
        raise InvalidQueryError(f"image term @{url} is larger than {MAX_URL_BYTES >> 20} MB")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidQueryError(f"image term @{url} did not return an image this can read") from exc
