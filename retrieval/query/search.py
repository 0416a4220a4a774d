"""The query layer: open an index once, then search it by text, by image, or describe an image.

``open_index(DIR)`` loads the index (memory-mapped) and, on the first query that needs
it, the model that built the index. ``search("a dog")`` does the same through a small
per-process cache keyed by directory and generation. A text query, while no full model is
loaded, runs the model's text tower through ONNX Runtime when a build has exported it
(:mod:`retrieval.models.onnxtext`): no torch, a fraction of the time and memory, the same vectors.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ..duplicates.groups import DEFAULT_THRESHOLD, DuplicateGroup, find_duplicates
from ..errors import (
    CalibrationError,
    IndexFormatError,
    IndexNotFoundError,
    InvalidQueryError,
    ModelMismatchError,
    TextNotIndexedError,
)
from ..imageio import load_image
from ..index.layout import live_generation
from ..index.manifest import Manifest
from ..index.reader import IndexReader
from ..models import onnxtext
from ..zeroshot.relevance import DEFAULT_MIN_RELEVANCE, load_relevance
from . import ranking
from .expression import QueryVectors, query_vectors
from .filters import effective_times
from .parse import Query
from .results import Result, Results
from .textmatch import TEXT_WEIGHT, hybrid_rank, text_matches, texts_of
from .texts import TextIndex

if TYPE_CHECKING:  # torch and the model factory load with the first query that needs the full model
    from ..models.encoder import Encoder

INDEX_ENV = "RETRIEVAL_INDEX"

QueryLike = "str | Query | Image.Image | os.PathLike[str] | np.ndarray"


def default_index_dir() -> Path:
    """``$RETRIEVAL_INDEX`` if set, else ``~/.local/share/retrieval/index``."""
    env = os.environ.get(INDEX_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "retrieval" / "index"


@dataclass
class TextResult:
    text: str
    score: float
    relevance: float | None = None


class Index:
    """A searchable index: the stored vectors and metadata plus the model that built them."""

    def __init__(self, reader: IndexReader, encoder: Encoder | None = None, device: str | None = None) -> None:
        self.reader = reader
        self._device = device
        self._encoder: Encoder | None = None
        self._fast_text: onnxtext.OnnxTextEncoder | None | bool = None  # False: looked, none there
        self._relevance: Any = None
        self._texts: tuple[str, np.ndarray, list[str]] | None = None  # generation, rows with text, their text
        if encoder is not None:
            self._set_encoder(encoder)

    @classmethod
    def open(
        cls, path: str | os.PathLike[str] | None = None, model: str | Encoder | None = None, device: str | None = None
    ) -> Index:
        reader = IndexReader.open(Path(path) if path is not None else default_index_dir())
        if isinstance(model, str):
            from ..models.factory import create_model

            encoder = create_model(model, device=device)
        else:
            encoder = model
        return cls(reader, encoder=encoder, device=device)

    @property
    def path(self) -> Path:
        return self.reader.path

    @property
    def manifest(self) -> Manifest:
        return self.reader.manifest

    @property
    def roots(self) -> list[str]:
        return list(self.manifest.roots)

    def __len__(self) -> int:
        return len(self.reader)

    def _set_encoder(self, encoder: Encoder) -> None:
        if encoder.fingerprint != self.manifest.model_fingerprint:
            raise ModelMismatchError(
                f"the index at {self.path} was built with {self.manifest.model_spec} "
                f"({self.manifest.model_fingerprint}); queries from {encoder.spec} ({encoder.fingerprint}) "
                "would not be comparable. Query with the index's own model, or rebuild the index."
            )
        self._encoder = encoder
        self._relevance = load_relevance(encoder)

    @property
    def encoder(self) -> Encoder:
        """The index's model, loaded on first use: its image tower (on a CPU the one a build
        exported, where there is one), with its text tower built when text is first asked of it."""
        if self._encoder is None:
            from ..models.factory import create_model

            self._set_encoder(create_model(self.manifest.model_spec, device=self._device, towers="image"))
        assert self._encoder is not None
        return self._encoder

    def _text_encoder(self) -> Encoder | onnxtext.OnnxTextEncoder:
        """What embeds a text query: a model whose text tower is loaded, else the exported text
        tower (:mod:`retrieval.models.onnxtext`) when there is one for the index's weights, else
        the full model."""
        text_loaded = self._encoder is not None and self._encoder.text_loader is None
        if not text_loaded and self._fast_text is None:
            fast = onnxtext.for_model(self.manifest.model_spec, self.manifest.model_fingerprint)
            self._fast_text = fast or False
            if fast is not None and self._encoder is None:
                self._relevance = load_relevance(fast)  # type: ignore[arg-type]  (it reads spec and fingerprint)
        if not text_loaded and self._fast_text:
            return self._fast_text  # type: ignore[return-value]
        if self._encoder is None:  # text before any image, and no exported text tower: both towers at once
            from ..models.factory import create_model

            self._set_encoder(create_model(self.manifest.model_spec, device=self._device))
        return self.encoder

    @property
    def has_relevance(self) -> bool:
        """Whether results carry a calibrated relevance (loads the text tower, and so its calibration)."""
        self._text_encoder()
        return self._relevance is not None

    def reload(self) -> None:
        """Switch to the newest published generation (after an update), keeping the model unless
        the index was rebuilt with another one."""
        self.reader = IndexReader.open(self.path)
        if self._fast_text and self._fast_text.fingerprint != self.manifest.model_fingerprint:
            self._fast_text = None
            if self._encoder is None:
                self._relevance = None
        if self._encoder is not None and self._encoder.fingerprint != self.manifest.model_fingerprint:
            self._encoder, self._relevance = None, None  # the index's new model loads on first use

    def refresh(self) -> bool:
        """:meth:`reload` if a newer generation was published since this one was read (an update
        from another process); a long-running server calls it before each query. Returns whether
        it did; a generation that cannot be read yet keeps the one in hand."""
        try:
            live = live_generation(self.path)
            if live is None or live.name == self.reader.generation_dir.name:
                return False
            self.reload()
        except (IndexFormatError, IndexNotFoundError, OSError):
            return False
        return True

    def refreshed(self) -> Index:
        """This index on the newest published generation as a new object that shares this one's
        model, or ``self`` when nothing newer is published (or it cannot be read yet). Unlike
        :meth:`refresh`, which swaps the reader in place, this suits a server whose requests run
        concurrently: each request keeps the object it started with, never a half-switched one."""
        try:
            live = live_generation(self.path)
            if live is None or live.name == self.reader.generation_dir.name:
                return self
            reader = IndexReader.open(self.path)
        except (IndexFormatError, IndexNotFoundError, OSError):
            return self
        same_model = self._encoder is not None and self._encoder.fingerprint == reader.manifest.model_fingerprint
        return Index(reader, encoder=self._encoder if same_model else None, device=self._device)

    def query_vector(self, query: QueryLike) -> np.ndarray:
        """Turn a text, image, image path or vector into one unit query vector ``[D]``."""
        if isinstance(query, np.ndarray):
            vec = np.asarray(query, dtype=np.float32).reshape(-1)
            if vec.shape[0] != self.manifest.embed_dim:
                raise InvalidQueryError(
                    f"query vector has {vec.shape[0]} dims, the index has {self.manifest.embed_dim}"
                )
            norm = float(np.linalg.norm(vec))
            if not np.isfinite(norm) or norm == 0:
                raise InvalidQueryError("query vector is zero or not finite")
            return vec / norm
        if isinstance(query, str):
            if not query.strip():
                raise InvalidQueryError("empty text query")
            if "\x00" in query:
                raise InvalidQueryError("the text query holds a NUL byte (\\x00); remove it and search again")
            return self._text_encoder().encode_texts([query])[0]
        if isinstance(query, os.PathLike):
            query = load_image(query, draft_size=2 * self.encoder.image_size)
        if isinstance(query, Image.Image):
            return self.encoder.encode_images([query])[0]
        raise InvalidQueryError(f"cannot search by a {type(query).__name__}; use text, an image, a path or a vector")

    def search(
        self,
        query: QueryLike,
        k: int = 10,
        *,
        offset: int = 0,
        sort: str = "relevance",
        min_relevance: float | None = None,
        modality: str | None = None,
        exclude: Sequence[int] = (),
        contains: str | None = None,
        **filters: Any,
    ) -> Results:
        """Rank indexed images for ``query``; ``filters``: folder, date_from, date_to, file_types, tag.

        Text is parsed as a query expression (``"dog + beach - people"``, see :mod:`retrieval.query.parse`);
        a :class:`Query` is taken as built. ``offset`` and ``k`` give a page of one fixed ranking
        (:mod:`retrieval.query.ranking`), so pages never overlap or skip. ``sort``: ``relevance``,
        ``date`` (oldest first) or ``-date`` (newest first); date order sorts *the matches*, the
        photos whose relevance is at least ``min_relevance`` (default ``DEFAULT_MIN_RELEVANCE``),
        and ``Results.matched`` says how many there are.

        ``contains`` keeps the photos whose text (read by OCR, ``python -m indexer ocr``) holds its
        words, tolerant of OCR's errors (:mod:`retrieval.query.textmatch`), best text match first; an
        index without text raises TextNotIndexedError. On an index with text, a text query also
        ranks the photos whose text holds its words higher: ``score`` is the cosine plus
        ``TEXT_WEIGHT`` times the text score (``text_score``), and ``relevance`` is the cosine's.

        Calibrated ``relevance`` (and so ``min_relevance`` and date order) needs a text term: the
        calibration is fitted on text-image pairs, and image-image cosines live on another scale.
        For an expression it is read from its text terms (:mod:`retrieval.query.expression`).
        ``modality`` says what a precomputed query vector came from (``"text"`` or ``"image"``).
        """
        for name, value, least in (("k", k, 1), ("offset", offset, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise InvalidQueryError(f"{name} must be a whole number, not {value!r}")
            if value < least:
                raise InvalidQueryError(f"{name} must be at least {least}, not {value}")
        if sort not in ranking.SORTS:
            raise InvalidQueryError(f"unknown sort {sort!r}; sort by one of: {', '.join(ranking.SORTS)}")
        if modality not in (None, "text", "image"):
            raise InvalidQueryError(f"modality must be 'text' or 'image', not {modality!r}")
        if isinstance(query, str):
            query = Query.parse(query)
        if isinstance(query, (Query, QueryVectors)):
            vectors = query if isinstance(query, QueryVectors) else query_vectors(self, query)
            vec, text_vec = vectors.ranking, vectors.text
        else:
            vec = self.query_vector(query)
            text_vec = vec if modality == "text" else None
        dated = sort != "relevance"
        if min_relevance is not None and text_vec is None:
            raise InvalidQueryError("min_relevance applies to queries with a text term only")
        if dated and text_vec is None:
            raise InvalidQueryError(
                "date order sorts the photos that match a text query (by calibrated relevance); "
                "an image-only query has no relevance: add a text term"
            )
        if min_relevance is not None and not 0.0 <= min_relevance <= 1.0:  # also refuses NaN
            raise InvalidQueryError(
                f"min_relevance is a probability between 0 and 1, not {min_relevance!r} (for 80% give 0.8)"
            )
        threshold = DEFAULT_MIN_RELEVANCE if dated and min_relevance is None else min_relevance
        if threshold is not None and not self.has_relevance:
            raise CalibrationError(
                f"{'date order' if min_relevance is None else 'min_relevance'} needs a relevance calibration "
                f"for {self.manifest.model_spec}, and none is installed"
            )
        mask = self.reader.filter_mask(**filters)
        if exclude:
            mask = np.ones(len(self.reader), bool) if mask is None else mask.copy()
            mask[np.asarray(exclude, dtype=np.int64)] = False
        text_rows, text_scores = self._text_rows(query, contains, mask)

        def search_at(depth: int) -> tuple[np.ndarray, np.ndarray]:
            if contains is not None:  # every photo whose text matches, best text match first
                cosines, ids, boost = hybrid_rank(
                    self.reader.vectors,
                    vec,
                    np.zeros(0, np.int64),
                    text_rows,
                    text_scores,
                    len(text_rows),
                    text_first=True,
                )
                return cosines + TEXT_WEIGHT * boost, ids
            scores, ids = self.reader.search_vectors(vec[None, :], depth, mask=mask)
            if text_rows is None:
                return scores[0], ids[0]
            ids = ids[0][ids[0] >= 0]
            cosines, ids, boost = hybrid_rank(self.reader.vectors, vec, ids, text_rows, text_scores, depth)
            return cosines + TEXT_WEIGHT * boost, ids

        def relevance_of(scores: np.ndarray, ids: np.ndarray) -> np.ndarray | None:
            if text_vec is None or self._relevance is None:
                return None
            if text_vec is not vec or text_rows is not None:  # image terms or a text boost: read the text's cosine
                scores = np.asarray(self.reader.vectors[ids], np.float32) @ text_vec
            return np.asarray(self._relevance.probability(scores), dtype=np.float64)

        keep = None if threshold is None else (lambda s, i: relevance_of(s, i) >= threshold)
        if not dated:
            got = ranking.ranked(search_at, offset + k, keep, stop_without_match=keep is not None)
            ids, scores, matched = got.ids[offset:], got.scores[offset:], None
        else:
            got = ranking.ranked(
                search_at, ranking.MAX_MATCHES, keep, stop_without_match=True, limit=ranking.MAX_MATCHES
            )
            order = ranking.date_order(got.ids, effective_times(self.reader.metadata), newest_first=sort == "-date")
            page = order[offset : offset + k]
            ids, scores, matched = got.ids[page], got.scores[page], len(got.ids)
        relevance = relevance_of(scores, ids) if len(ids) else None
        by_row = {} if text_rows is None else dict(zip(text_rows.tolist(), text_scores.tolist()))
        results = Results(
            Result.from_row(
                meta,
                float(s),
                None if relevance is None else float(relevance[j]),
                offset + j + 1,
                text_score=None if text_rows is None else float(by_row.get(int(row), 0.0)),
            )
            for j, (s, row, meta) in enumerate(zip(scores, ids, self.reader.rows(ids.tolist())))
        )
        results.matched, results.matched_all = matched, got.complete
        return results

    def _text_rows(
        self, query: Any, contains: str | None, mask: np.ndarray | None
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The rows whose OCR text holds ``contains`` (all its words), or, on an index with text and
        for a query with text terms, the rows whose text holds some of the query's words; with their
        text scores, inside ``mask``. ``(None, None)`` when the text plays no part."""
        if contains is not None:
            rows, scores = self._text_query(contains, every_word=True)
        elif isinstance(query, Query) and self.manifest.ocr and any(t.weight > 0 and t.text for t in query.terms):
            words = " ".join(t.text for t in query.terms if t.weight > 0 and t.text)
            rows, scores = self._text_query(words, every_word=False)
        else:
            return None, None
        if mask is not None:
            inside = mask[rows]
            rows, scores = rows[inside], scores[inside]
        return rows, scores

    def _text_query(self, text: str, every_word: bool) -> tuple[np.ndarray, np.ndarray]:
        """Rows whose OCR text holds the words of ``text`` and their text scores (:func:`text_matches`)."""
        if not self.manifest.ocr:
            raise TextNotIndexedError(
                f"the index at {self.path} holds no text read from its photos; read it with "
                f"`python -m indexer ocr --index {self.path}` (or build with --ocr)"
            )
        generation = self.reader.generation_dir.name
        if self._texts is None or self._texts[0] != generation:
            self._texts = (generation, *texts_of(self.reader.metadata))
        return text_matches(self._texts[1], self._texts[2], text, every_word)

    def duplicates(
        self, threshold: float = DEFAULT_THRESHOLD, progress: bool = False, **filters: Any
    ) -> list[DuplicateGroup]:
        """Groups of near-duplicate images (copies, re-compressed, resized or lightly edited versions
        of one photo), largest first, the one to keep first in each; ``filters`` as for :meth:`search`.
        Reads only the stored vectors (no model). See :mod:`retrieval.duplicates.groups`."""
        return find_duplicates(self.reader, threshold, mask=self.reader.filter_mask(**filters), progress=progress)

    def more_like_this(self, path: str, k: int = 10, **filters: Any) -> list[Result]:
        """Images most similar to an indexed image, using its stored vector; the image itself is left out."""
        rows = self.reader.rows_for_paths([path])
        if len(rows) == 0 or rows[0] < 0:
            raise InvalidQueryError(f"{path} is not in the index")
        row = int(rows[0])
        vec = np.asarray(self.reader.vectors[row], dtype=np.float32)
        return self.search(vec, k, modality="image", exclude=[row], **filters)

    def describe(
        self, image: Image.Image | os.PathLike[str] | str, texts: Sequence[str] | TextIndex, k: int = 5
    ) -> list[TextResult]:
        """Image -> text: rank ``texts`` (a list, or a prebuilt :class:`TextIndex`) for ``image``."""
        if isinstance(image, str):
            image = Path(image)
        vec = self.query_vector(image)
        gallery = texts if isinstance(texts, TextIndex) else TextIndex.build(self.encoder, texts)
        scores, order = gallery.rank(vec, k)
        rel = self._relevance.probability(scores) if self._relevance is not None else [None] * len(scores)
        return [
            TextResult(gallery.texts[i], float(s), None if r is None else float(r))
            for i, s, r in zip(order, scores, rel)
        ]


def open_index(
    path: str | os.PathLike[str] | None = None, model: str | Encoder | None = None, device: str | None = None
) -> Index:
    """Open an index directory (default: :func:`default_index_dir`) for repeated fast queries."""
    return Index.open(path, model=model, device=device)


@lru_cache(maxsize=4)
def _cached_index(path: str) -> Index:
    return Index.open(path)


def search(
    query: QueryLike, k: int = 10, index: str | os.PathLike[str] | Index | None = None, **filters: Any
) -> list[Result]:
    """One-call search. Opens ``index`` (default location if None) once per process and generation."""
    if isinstance(index, Index):
        return index.search(query, k, **filters)
    path = Path(index) if index is not None else default_index_dir()
    if live_generation(path) is None:
        raise IndexNotFoundError(f"no index at {path}; build one with `python -m indexer build PHOTOS --index {path}`")
    cached = _cached_index(str(path.resolve()))
    cached.refresh()  # a newer generation, and the same model: no second load of it
    return cached.search(query, k, **filters)
