"""Request and response models: they validate input at the boundary and make the OpenAPI schema.

Field names follow the command line's flags (``folder``, ``date_from``, ``types``, ``tag``,
``min_relevance``, ``k``); a result is the library's :class:`~retrieval.Result` with the
photo's id beside it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_K = 1000


class Filters(BaseModel):
    """The metadata filters of ``python -m retrieval search``."""

    model_config = ConfigDict(extra="forbid")

    folder: str | None = Field(None, description="only photos in or under this folder")
    date_from: str | None = Field(None, description="only photos taken on or after this ISO date or time")
    date_to: str | None = Field(None, description="only photos taken on or before this ISO date or time")
    types: list[str] | None = Field(None, description="only these file types: jpeg, png, ...")
    tag: str | None = Field(None, description="only photos auto-tagged with this label")

    def as_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :meth:`retrieval.Index.search`."""
        return {
            "folder": self.folder,
            "date_from": self.date_from,
            "date_to": self.date_to,
            "file_types": self.types,
            "tag": self.tag,
        }


class SimilarQuery(Filters):
    """Query parameters of ``GET /photos/{id}/similar``."""

    k: int = Field(10, ge=1, le=MAX_K)
    index: str | None = Field(None, description="which index (default: the first the service serves)")


class SearchRequest(Filters):
    """Text search (or a precomputed query vector from the index's model), with the CLI's filters."""

    text: str | None = Field(None, description="what to look for", examples=["a dog jumping into a lake"])
    vector: list[float] | None = Field(None, description="a query embedding instead of text (the index's dimension)")
    modality: str = Field("text", pattern="^(text|image)$", description="what `vector` came from")
    k: int = Field(10, ge=1, le=MAX_K)
    offset: int = Field(0, ge=0, description="skip this many results (page with k)")
    sort: str = Field(
        "relevance",
        pattern="^(relevance|date|-date)$",
        description="relevance, date (oldest first) or -date (newest first): date order sorts the "
        "matches above min_relevance (default 0.5)",
    )
    min_relevance: float | None = Field(None, description="drop results below this calibrated relevance (0-1)")
    index: str | None = Field(None, description="which index (default: the first the service serves)")

    @model_validator(mode="after")
    def _one_query(self) -> SearchRequest:
        if (self.text is None) == (self.vector is None):
            raise ValueError("give exactly one of text or vector")
        return self


class Hit(BaseModel):
    id: str = Field(description="stable photo id: GET /photos/{id}, /photos/{id}/thumbnail, /photos/{id}/similar")
    rank: int = Field(description="1-based, across pages")
    path: str
    score: float
    relevance: float | None
    taken_at: str | None = Field(None, description="capture time (EXIF, else file time), ISO 8601")
    metadata: dict[str, Any] = Field(description="the index's metadata columns (dates as ISO strings)")


class SearchResponse(BaseModel):
    index: str
    generation: str
    results: list[Hit]
    no_match: str | None = Field(None, description="when the filters leave no photo to search, why")
    matched: int | None = Field(None, description="date order: how many photos matched in all")
    matched_all: bool = Field(True, description="false when the count of matches stopped at its cap")


class TextScore(BaseModel):
    text: str
    score: float
    relevance: float | None


class DescribeResponse(BaseModel):
    index: str
    results: list[TextScore]


class Label(BaseModel):
    label: str
    probability: float
    score: float


class ClassifyResponse(BaseModel):
    index: str
    predictions: list[Label] = Field(description="best first; empty means 'none of these'")


class IndexStats(BaseModel):
    name: str
    path: str
    generation: str
    count: int
    model_spec: str
    model_fingerprint: str
    embed_dim: int
    index_type: str
    build_time: str
    roots: list[str]
    bad_count: int
    file_types: dict[str, int]
    tags: list[str]


class Health(BaseModel):
    status: str = "ok"
    indexes: dict[str, str] = Field(description="index name -> live generation")


class ErrorBody(BaseModel):
    error: str = Field(description="one line for the person or program that sent the request")
    status: int
