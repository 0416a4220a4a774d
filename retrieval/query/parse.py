"""Query expressions: several weighted text or image terms added and subtracted in one query.

``"dog + beach - people"`` is parsed here into a typed :class:`Query`; turning its terms into
one vector is :mod:`retrieval.query.expression`'s job. The syntax (docs/query-expressions.md):

* terms are joined by a ``+`` or ``-`` with white space on both sides; a dash inside a word
  (``t-shirt``, ``black-and-white``) or next to one (``-5 degrees``) never splits. Text with no
  spaced operator is one plain text term, exactly as before expressions existed;
* a term may start with a weight, ``2:sunset`` or ``0.5:city`` (in expressions only, so that
  ``10:30 meeting`` stays text);
* ``@path/to/photo.jpg`` is an image term: a file, an indexed photo, or an ``http(s)://`` URL.
  ``@"a path - with spaces.jpg"`` quotes a path;
* a term in double quotes is literal text: ``'"rock - paper"'`` searches for the words with
  the dash, ``'"@home"'`` for the word with the at sign.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from ..errors import InvalidQueryError, QuerySyntaxError

_WEIGHT = re.compile(r"(\d+(?:\.\d*)?|\.\d+):(?=\S)")


@dataclass(frozen=True)
class Term:
    """One term: exactly one of ``text`` or ``image`` (a path, an indexed photo's path or a URL),
    with a signed ``weight`` (negative: subtracted)."""

    weight: float = 1.0
    text: str | None = None
    image: str | None = None

    def __post_init__(self) -> None:
        if (self.text is None) == (self.image is None):
            raise InvalidQueryError("a query term holds exactly one of text or image")
        if not isinstance(self.weight, (int, float)) or not math.isfinite(self.weight) or self.weight == 0:
            raise InvalidQueryError(f"a term's weight is a non-zero number, not {self.weight!r}")
        if not (self.text if self.text is not None else self.image or "").strip():
            raise InvalidQueryError("a query term is empty")

    @property
    def is_image(self) -> bool:
        return self.image is not None

    def __str__(self) -> str:
        if self.image is not None:
            body = "@" + (f'"{self.image}"' if re.search(r'\s|"', self.image) else self.image)
        else:
            body = self.text or ""
            if _needs_quotes(body):
                body = f'"{body}"'
        size = abs(self.weight)
        return body if size == 1 else f"{size:g}:{body}"


def _needs_quotes(text: str) -> bool:
    return bool(_split(text)[1:]) or text.startswith("@") or bool(_WEIGHT.match(text))


@dataclass(frozen=True)
class Query:
    """A typed query: terms whose embeddings are weighted, summed and renormalized.

    Build one in code (``Query((Term(1, text="dog"), Term(-1, text="people")))``), from the
    syntax with :meth:`parse`, or extend one with :meth:`plus` / :meth:`minus`.
    """

    terms: tuple[Term, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "terms", tuple(self.terms))
        if not self.terms:
            raise InvalidQueryError("empty query")
        if not all(isinstance(t, Term) for t in self.terms):
            raise InvalidQueryError("a Query holds Term objects")

    @classmethod
    def parse(cls, text: str, add: Iterable[str] = (), subtract: Iterable[str] = ()) -> Query:
        """The query ``text`` says, plus each of ``add`` and minus each of ``subtract`` (taken as
        literal text, so they may hold ``+`` or ``-`` themselves; a weight or ``@`` still counts)."""
        terms = list(parse_terms(text)) if text.strip() else []
        terms += [_term(t, +1.0, t, 1, expression=True) for t in add]
        terms += [_term(t, -1.0, t, 1, expression=True) for t in subtract]
        if not terms:
            raise InvalidQueryError("empty text query")
        return cls(tuple(terms))

    @classmethod
    def text(cls, text: str) -> Query:
        """One plain text term, never parsed."""
        return cls((Term(1.0, text=text),))

    def plus(self, term: Term | str, weight: float = 1.0) -> Query:
        return Query(self.terms + (_coerce(term, abs(weight)),))

    def minus(self, term: Term | str, weight: float = 1.0) -> Query:
        return Query(self.terms + (_coerce(term, -abs(weight)),))

    @property
    def text_terms(self) -> tuple[Term, ...]:
        return tuple(t for t in self.terms if not t.is_image)

    @property
    def image_terms(self) -> tuple[Term, ...]:
        return tuple(t for t in self.terms if t.is_image)

    @property
    def is_plain_text(self) -> bool:
        """One positive text term of weight 1: what a query was before expressions."""
        return len(self.terms) == 1 and not self.terms[0].is_image and self.terms[0].weight == 1

    def __str__(self) -> str:
        out = ""
        for i, t in enumerate(self.terms):
            sign = "-" if t.weight < 0 else "+"
            out += (f"{sign} " if sign == "-" else "") + str(t) if i == 0 else f" {sign} {t}"
        return out


def _coerce(term: Term | str, weight: float) -> Term:
    if isinstance(term, Term):
        return Term(math.copysign(abs(term.weight), weight), text=term.text, image=term.image)
    return _term(term, weight, term, 1, expression=True)


def _split(text: str) -> list[tuple[str, int, str]]:
    """``(operator, column of the term, term text)`` pieces, split at spaced ``+``/``-`` outside quotes."""
    pieces: list[tuple[str, int, str]] = []
    op, start, i, quoted = "+", 0, 0, False
    closing = _closing_quotes(text)
    while i < len(text):
        ch = text[i]
        if ch == '"' and (quoted or i in closing):
            quoted = not quoted
        elif (
            not quoted
            and ch in "+-"
            and (i == 0 or text[i - 1].isspace())
            and (i + 1 == len(text) or text[i + 1].isspace())
        ):
            pieces.append((op, start, text[start:i]))
            op, start = ch, i + 1
        i += 1
    pieces.append((op, start, text[start:]))
    return pieces


def _closing_quotes(text: str) -> set[int]:
    """Positions of opening quotes that have a closing quote (an unmatched one is a plain character)."""
    idx = [i for i, ch in enumerate(text) if ch == '"']
    return set(idx[0 : len(idx) - len(idx) % 2 : 2])


def parse_terms(text: str) -> Iterator[Term]:
    """The terms of ``text`` (see the module docstring); raises :class:`QuerySyntaxError`."""
    stripped = text.strip()
    lead = len(text) - len(text.lstrip())
    pieces = _split(stripped)
    expression = len(pieces) > 1
    if not expression:
        yield _term(stripped, 1.0, text, lead + 1, expression=False)
        return
    for n, (op, start, body) in enumerate(pieces):
        column = lead + start + (len(body) - len(body.lstrip())) + 1
        if not body.strip():
            if n == 0:
                continue  # "- people": the leading operator has nothing before it
            raise QuerySyntaxError(f"expected a term after {op!r}", text, lead + start)
        yield _term(body.strip(), 1.0 if op == "+" else -1.0, text, column, expression=True)


def _term(body: str, sign: float, text: str, column: int, *, expression: bool) -> Term:
    body = body.strip()
    if not body:
        raise QuerySyntaxError("empty term", text, column)
    weight = 1.0
    match = _WEIGHT.match(body) if expression else None
    if match:
        weight = float(match.group(1))
        if weight == 0:
            raise QuerySyntaxError("a weight of 0 drops the term; give a positive weight", text, column)
        body, column = body[match.end() :], column + match.end()
    if body.startswith("@") and len(body) > 1 and not body[1].isspace():
        path = body[1:]
        if path.startswith('"'):
            if len(path) < 3 or not path.endswith('"'):
                raise QuerySyntaxError("unterminated quoted image path", text, column + 1)
            path = path[1:-1]
        return Term(sign * weight, image=path)
    if len(body) >= 2 and body[0] == body[-1] == '"':
        body = body[1:-1]
        if not body.strip():
            raise QuerySyntaxError("empty quoted term", text, column)
    return Term(sign * weight, text=body)
