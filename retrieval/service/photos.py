"""The routes that read the index rather than query it: health, stats, a photo, its thumbnail.

A photo is reached only by its id, and only when that id is in the index's current
generation (:func:`retrieval.service.indexes.indexed_file`); no path from a request is
ever opened.
"""

from __future__ import annotations

import io
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, Response

from ..imageio import load_image
from .indexes import IndexPool, indexed_file
from .models import Health, Hit, IndexStats
from .queries import IndexName, PhotoId, hits

MEDIA_TYPES = {
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "bmp": "image/bmp",
    "gif": "image/gif",
    "tiff": "image/tiff",
    "heif": "image/heif",
    "avif": "image/avif",
}
THUMB_SIZES = (16, 1024)


def health_router(pool: IndexPool) -> APIRouter:
    api = APIRouter(tags=["service"])

    @api.get("/health", response_model=Health, summary="the service is up; each index's live generation")
    def health() -> Health:
        return Health(indexes={name: pool.get(name).generation for name in pool.names})

    return api


def router(pool: IndexPool) -> APIRouter:
    api = APIRouter(tags=["index"])

    @api.get("/indexes", response_model=list[IndexStats], summary="every index served, with its stats")
    def indexes() -> list[IndexStats]:
        return [IndexStats(**pool.stats(pool.get(name))) for name in pool.names]

    @api.get("/stats", response_model=IndexStats, summary="what an index holds")
    def stats(index: IndexName = None) -> IndexStats:
        return IndexStats(**pool.stats(pool.get(index)))

    @api.get(
        "/photos/{photo_id}",
        response_class=FileResponse,
        summary="the photo's file",
        responses={200: {"content": {"image/*": {}}}},
    )
    def photo(photo_id: PhotoId, index: IndexName = None) -> FileResponse:
        served = pool.get(index)
        path = indexed_file(served, photo_id)
        file_type = served.reader.metadata.column("file_type")[served.row_of(photo_id)].as_py()
        return FileResponse(path, media_type=MEDIA_TYPES.get(file_type, "application/octet-stream"))

    @api.get(
        "/photos/{photo_id}/thumbnail",
        response_class=Response,
        summary="a JPEG thumbnail of the photo",
        responses={200: {"content": {"image/jpeg": {}}}},
    )
    def thumbnail(
        photo_id: PhotoId,
        size: Annotated[int, Query(ge=THUMB_SIZES[0], le=THUMB_SIZES[1])] = 320,
        index: IndexName = None,
    ) -> Response:
        served = pool.get(index)
        image = load_image(indexed_file(served, photo_id), draft_size=size)
        image.thumbnail((size, size))
        out = io.BytesIO()
        image.save(out, "JPEG", quality=85)
        return Response(out.getvalue(), media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"})

    @api.get("/photos/{photo_id}/info", response_model=Hit, summary="the photo's indexed metadata")
    def info(photo_id: PhotoId, index: IndexName = None) -> Hit:
        served = pool.get(index)
        meta = served.reader.row(served.row_of(photo_id))
        from ..query.search import Result

        return hits([Result(path=str(meta["path"]), score=1.0, metadata=meta)])[0]

    return api
