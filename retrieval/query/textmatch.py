"""Matching a query's words against the text read in photos (OCR), tolerant of OCR's errors.

OCR gets most words right and still differs from what a person types: spaces come and go
("EXIT 12" reads as "EXIT12"), case and punctuation vary, a letter is misread ("HARB0UR").
Both sides are normalised the same way (Unicode NFKC, case folded, every run of characters
that are not letters or digits made one space, letters and digits split apart), and then:

- the whole query, spaces removed, found in the photo's text with spaces removed is a match
  ("EXIT 12" in "EXIT12", "exit12" in "EXIT 12"), when it has several words and
  :data:`FUZZY_MIN_LENGTH`+ characters;
- otherwise every word of the query must be found: a word of fewer than
  :data:`FUZZY_MIN_LENGTH` characters as a whole word of the text (so "12" does not match
  "2012"), a longer one anywhere in the text with spaces removed, with at most one edit
  (insertion, deletion or substitution), two from :data:`TWO_EDITS_LENGTH` characters on
  (``regex``'s approximate matching).

A word found as a whole word scores 1; found inside a longer word, 0.9 (:data:`PART_OF_WORD`);
with edits, ``0.9 * (1 - edits / length)``. A text's score is the mean over the words (0 when
the filter needs every word and one is missing). The ``contains`` filter ranks its matches by
that score first, so "hale" finds a photo that says HALE before one that says WHALE. ``bench/bench_ocr.py`` measures the
recall this gives and the false matches on photos without text.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import regex

from ..errors import InvalidQueryError

FUZZY_MIN_LENGTH = 4  # words this long may differ from the text by one edit
TWO_EDITS_LENGTH = 8  # and words this long by two
# Hybrid ranking: score = cosine + TEXT_WEIGHT * text score. A photo whose text holds every word of
# a plain query gains 0.5, more than the spread of the built-in model's cosines over a library (a
# one-word query's best cosines lie near 0.1-0.3), so it comes first; one that holds one word of
# four gains 0.125, a nudge among photos that look alike (docs/ocr.md; bench/bench_ocr.py).
TEXT_WEIGHT = 0.5
PART_OF_WORD = 0.9  # a word found inside another, or with edits, scores below the word itself
MIN_QUERY_WORD = 3  # in plain queries, shorter words ("a", "in") do not count as text to look for
STOPWORDS = frozenset("the and with for are from that this into onto over under near its his her their".split())

_NOT_WORD = regex.compile(r"[^\p{L}\p{N}]+")
_LETTER_DIGIT = regex.compile(r"(?<=\p{L})(?=\p{N})|(?<=\p{N})(?=\p{L})")


def normalize(text: str) -> str:
    """Lower case, NFKC, letters and digits only, one space between words ("EXIT12!" -> "exit 12")."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_LETTER_DIGIT.sub(" ", _NOT_WORD.sub(" ", folded)).split())


def _edits(word: str) -> int:
    if len(word) >= TWO_EDITS_LENGTH:
        return 2
    return 1 if len(word) >= FUZZY_MIN_LENGTH else 0


@dataclass(frozen=True)
class TextQuery:
    """The words to look for in the photos' text, compiled once for many texts."""

    words: tuple[str, ...]
    squashed: str
    patterns: tuple[regex.Pattern[str] | None, ...]

    @classmethod
    def parse(cls, text: str, min_word: int = 1, stopwords: frozenset[str] = frozenset()) -> TextQuery:
        """The words of ``text`` (those of at least ``min_word`` characters, not in ``stopwords``)."""
        if not isinstance(text, str) or not normalize(text):
            raise InvalidQueryError("the text to look for has no letters or digits")
        words = tuple(dict.fromkeys(w for w in normalize(text).split() if len(w) >= min_word and w not in stopwords))
        patterns = tuple(
            regex.compile(f"(?:{regex.escape(w)}){{e<={_edits(w)}}}", regex.BESTMATCH) if _edits(w) else None
            for w in words
        )
        return cls(words, "".join(normalize(text).split()), patterns)

    def score(self, text: str | None, every_word: bool = True) -> float:
        """How well ``text`` (as read in a photo) holds the words, 0 to 1. With ``every_word``,
        0 unless it holds all of them; else the mean over those it holds."""
        if not text or not self.words:
            return 0.0
        norm = normalize(text)
        squashed = norm.replace(" ", "")
        if len(self.words) > 1 and len(self.squashed) >= FUZZY_MIN_LENGTH and self.squashed in squashed:
            return 1.0
        tokens = set(norm.split())
        total = 0.0
        for word, pattern in zip(self.words, self.patterns):
            found = self._word_score(word, pattern, tokens, squashed)
            if found == 0.0 and every_word:
                return 0.0
            total += found
        return total / len(self.words)

    @staticmethod
    def _word_score(word: str, pattern: regex.Pattern[str] | None, tokens: set[str], squashed: str) -> float:
        if word in tokens:
            return 1.0
        if pattern is None:
            return 0.0
        if word in squashed:  # inside a longer word, or split by a space ("hale" in "whale", "bak ery")
            return PART_OF_WORD
        match = pattern.search(squashed)
        if match is None:
            return 0.0
        return PART_OF_WORD * (1.0 - sum(match.fuzzy_counts) / len(word))

    def scores(self, texts: Iterable[str | None], every_word: bool = True) -> np.ndarray:
        return np.array([self.score(t, every_word) for t in texts], np.float32)


def texts_of(metadata: pa.Table) -> tuple[np.ndarray, list[str]]:
    """The rows of an index's metadata whose OCR text is not empty, and those texts."""
    column = metadata.column("ocr_text")
    rows = np.flatnonzero(pc.fill_null(pc.greater(pc.utf8_length(column), 0), False).to_numpy(zero_copy_only=False))
    return rows, column.take(pa.array(rows)).to_pylist()


def text_matches(rows: np.ndarray, texts: list[str], text: str, every_word: bool) -> tuple[np.ndarray, np.ndarray]:
    """Of ``rows`` (with their ``texts``), those that hold the words of ``text`` and their scores:
    all the words (``every_word``, the ``contains`` filter; a text with no word is refused), or
    some of its words of :data:`MIN_QUERY_WORD`+ characters that are not :data:`STOPWORDS` (a plain
    query's text score)."""
    try:
        query = (
            TextQuery.parse(text, 1, frozenset()) if every_word else TextQuery.parse(text, MIN_QUERY_WORD, STOPWORDS)
        )
    except InvalidQueryError:
        if every_word:
            raise
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    if not query.words:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    scores = query.scores(texts, every_word)
    hit = scores > 0
    return rows[hit], scores[hit]


def hybrid_rank(
    vectors: np.ndarray,
    vec: np.ndarray,
    ids: np.ndarray,
    text_rows: np.ndarray,
    text_scores: np.ndarray,
    k: int,
    text_first: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``ids`` (the ANN's results) and ``text_rows`` (photos whose text matched) ranked by
    cosine + :data:`TEXT_WEIGHT` x text score (with ``text_first``, by text score, then that),
    the cosines computed from the stored vectors; the top ``k`` as (cosines, ids, text scores)."""
    ids = np.union1d(np.asarray(ids, np.int64), np.asarray(text_rows, np.int64))
    if not len(ids):
        return np.zeros(0, np.float32), ids, np.zeros(0, np.float32)
    stored = np.asarray(vectors[ids], np.float32)
    stored /= np.maximum(np.linalg.norm(stored, axis=1, keepdims=True), 1e-12)  # stored as float16
    cosines = stored @ np.asarray(vec, np.float32)
    boost = np.zeros(len(ids), np.float32)
    if len(text_rows):
        boost[np.searchsorted(ids, text_rows)] = text_scores
    hybrid = cosines + TEXT_WEIGHT * boost
    order = np.lexsort((-hybrid, -np.round(boost, 4)))[:k] if text_first else np.argsort(-hybrid, kind="stable")[:k]
    return cosines[order], ids[order], boost[order]
