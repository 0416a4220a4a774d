"""The query routes: text, vector, uploaded image and indexed photo search; describe; classify.

Each handler calls what the command line calls (:meth:`Index.search`,
:meth:`Index.more_like_this`, :meth:`Index.describe`, :class:`ZeroShotClassifier`) and
returns a typed response. Handlers are plain functions: FastAPI runs them in its thread
pool, so a slow model call never blocks the event loop.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi import Path as PathParam

from ..errors import InvalidQueryError
from ..query.expression import QueryVectors, query_vectors
from ..query.filters import explain_no_match
from ..query.parse import Query as QueryExpr
from ..query.search import Result
from ..zeroshot.classify import ZeroShotClassifier, default_cache_dir, parse_labels
from ..zeroshot.prompts import list_template_sets
from .config import ServiceConfig
from .indexes import ID_LENGTH, ID_PATTERN, IndexPool, Served, indexed_file, photo_id
from .models import (
    MAX_K,
    ClassifyResponse,
    DescribeResponse,
    Filters,
    Hit,
    Label,
    SearchRequest,
    SearchResponse,
    SimilarQuery,
    TextScore,
)
from .uploads import decode_upload, read_capped

PhotoId = Annotated[str, PathParam(pattern=ID_PATTERN, description="a photo id from a search result")]
IndexName = Annotated[str | None, Query(description="which index (default: the first)")]


def hits(results: list[Result]) -> list[Hit]:
    out = []
    for r in results:
        row = r.to_dict()
        meta = {k: v for k, v in row.items() if k not in ("rank", "path", "score", "relevance", "taken_at")}
        out.append(
            Hit(
                id=photo_id(r.path),
                rank=r.rank,
                path=r.path,
                score=r.score,
                relevance=r.relevance,
                taken_at=row["taken_at"],
                metadata=meta,
            )
        )
    return out


def respond(served: Served, results: list[Result], filters: dict[str, Any]) -> SearchResponse:
    why = None if results else explain_no_match(served.reader.metadata, **filters)
    matched, matched_all = getattr(results, "matched", None), getattr(results, "matched_all", True)
    return SearchResponse(
        index=served.name,
        generation=served.generation,
        results=hits(results),
        no_match=why,
        matched=matched,
        matched_all=matched_all,
    )


def text_query_vectors(served: Served, text: str, lock: Any) -> QueryVectors:
    """A text query expression's vectors. Image terms must name indexed photos: the service reads
    no other file of its machine and fetches no URL for a request."""
    query = QueryExpr.parse(text)
    for term in query.terms:
        if term.image is not None and int(served.reader.rows_for_paths([term.image])[0]) < 0:
            raise InvalidQueryError(
                f"image term @{term.image}: the service takes only photos of the index "
                "as image terms (their path as a search returns it)"
            )
    with lock:
        return query_vectors(served.index, query)


def _filters_form(
    folder: str | None, date_from: str | None, date_to: str | None, types: list[str] | None, tag: str | None
) -> dict[str, Any]:
    return Filters(folder=folder, date_from=date_from, date_to=date_to, types=types or None, tag=tag).as_kwargs()


def _templates(text: str | None) -> str | list[str] | None:
    """A shipped set name or an inline template; never a file on the server."""
    if text is None or text in list_template_sets():
        return text
    if "{}" in text:
        return [text]
    raise InvalidQueryError(
        f"templates must be one of {', '.join(list_template_sets())} or a template with {{}} for the label"
    )


def router(pool: IndexPool, config: ServiceConfig) -> APIRouter:
    api = APIRouter(tags=["search"])

    def uploaded(file: UploadFile, served: Served, draft_scale: int) -> Any:
        data = read_capped(file, config.max_upload_bytes)
        size = served.index.encoder.image_size
        return decode_upload(data, file.filename, config.max_pixels, draft_size=draft_scale * size)

    @api.post("/search", response_model=SearchResponse, summary="search by text (or by a query vector)")
    def search(req: SearchRequest) -> SearchResponse:
        served = pool.get(req.index)
        if req.text is not None:
            vec, modality = text_query_vectors(served, req.text, pool.encode_lock), None
        else:
            vec, modality = np.asarray(req.vector, dtype=np.float32), req.modality
        results = served.index.search(
            vec,
            req.k,
            offset=req.offset,
            sort=req.sort,
            min_relevance=req.min_relevance,
            modality=modality,
            **req.as_kwargs(),
        )
        return respond(served, results, req.as_kwargs())

    @api.post("/search/image", response_model=SearchResponse, summary="search by an uploaded image")
    def search_image(
        file: Annotated[UploadFile, File(description="an image file")],
        k: Annotated[int, Form(ge=1, le=MAX_K)] = 10,
        folder: Annotated[str | None, Form()] = None,
        date_from: Annotated[str | None, Form()] = None,
        date_to: Annotated[str | None, Form()] = None,
        types: Annotated[list[str] | None, Form()] = None,
        tag: Annotated[str | None, Form()] = None,
        min_relevance: Annotated[float | None, Form()] = None,
        offset: Annotated[int, Form(ge=0)] = 0,
        index: Annotated[str | None, Form()] = None,
    ) -> SearchResponse:
        served = pool.get(index)
        filters = _filters_form(folder, date_from, date_to, types, tag)
        image = uploaded(file, served, 2)  # the draft size a local image search decodes at
        with pool.encode_lock:
            vec = served.index.query_vector(image)
        results = served.index.search(vec, k, offset=offset, min_relevance=min_relevance, modality="image", **filters)
        return respond(served, results, filters)

    @api.get("/photos/{photo_id}/similar", response_model=SearchResponse, summary="photos like an indexed photo")
    def similar(photo_id: PhotoId, q: Annotated[SimilarQuery, Query()]) -> SearchResponse:
        served = pool.get(q.index)
        results = served.index.more_like_this(served.path_of(photo_id), q.k, **q.as_kwargs())
        return respond(served, results, q.as_kwargs())

    @api.post("/describe", response_model=DescribeResponse, summary="rank texts for an image (upload or photo id)")
    def describe(
        texts: Annotated[list[str], Form(min_length=1, description="texts to rank (repeat the field)")],
        file: Annotated[UploadFile | None, File()] = None,
        photo_id: Annotated[str | None, Form()] = None,
        k: Annotated[int, Form(ge=1, le=MAX_K)] = 5,
        index: Annotated[str | None, Form()] = None,
    ) -> DescribeResponse:
        served = pool.get(index)
        image = _one_image(served, file, photo_id, lambda f: uploaded(f, served, 2))
        with pool.encode_lock:
            ranked = served.index.describe(image, texts, k=k)
        return DescribeResponse(index=served.name, results=[TextScore(**vars(r)) for r in ranked])

    @api.post(
        "/classify", response_model=ClassifyResponse, summary="zero-shot labels for an image (upload or photo id)"
    )
    def classify(
        labels: Annotated[str, Form(description="comma-separated labels, as `classify --labels`")],
        file: Annotated[UploadFile | None, File()] = None,
        photo_id: Annotated[str | None, Form()] = None,
        templates: Annotated[str | None, Form(description="a template set name, or one template with {}")] = None,
        k: Annotated[int, Form(ge=1, le=MAX_K)] = 3,
        reject: Annotated[bool, Form()] = True,
        index: Annotated[str | None, Form()] = None,
    ) -> ClassifyResponse:
        served = pool.get(index)
        wanted = parse_labels(labels)
        with pool.encode_lock:
            clf = ZeroShotClassifier(served.index.encoder, wanted, _templates(templates), cache_dir=default_cache_dir())
            if photo_id is not None and file is None:
                what: Any = served.vector_of(_checked_id(photo_id))[None, :]  # the stored vector: no decode
            else:
                what = [_one_image(served, file, photo_id, lambda f: uploaded(f, served, 1))]
            predictions = clf.predict(what, k=k, reject=reject)[0]
        return ClassifyResponse(index=served.name, predictions=[Label(**vars(p)) for p in predictions])

    return api


def _checked_id(pid: str) -> str:
    if not re.match(ID_PATTERN, pid):
        raise InvalidQueryError(f"photo_id must be {ID_LENGTH} hex digits from a search result, not {pid[:40]!r}")
    return pid


def _one_image(served: Served, file: UploadFile | None, pid: str | None, decode: Any) -> Any:
    """The uploaded image, or the indexed photo's file, from exactly one of the two."""
    if (file is None) == (pid is None):
        raise InvalidQueryError("give exactly one of file (an upload) or photo_id")
    if file is not None:
        return decode(file)
    return indexed_file(served, _checked_id(pid))
