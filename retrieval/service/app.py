"""The ASGI application: routes, error handlers and the request checks, put together once.

Order of the checks, outermost first: any unexpected error -> 500 JSON (:class:`CatchAll`);
Host header on the allow-list, else 403 (:class:`HostAllowList`); body within the cap, else
413 (:class:`BodyLimit`); API key, else 401 (every route but ``/health`` and the
docs); then the request model, else 422.
"""

from __future__ import annotations

from fastapi import Depends, FastAPI

from . import errors, photos, queries
from .config import ServiceConfig
from .indexes import IndexPool
from .models import ErrorBody
from .security import BODY_OVERHEAD, BodyLimit, CatchAll, HostAllowList, api_key_check

ERRORS = {status: {"model": ErrorBody} for status in (400, 401, 403, 404, 413, 422, 503)}


def create_app(config: ServiceConfig, pool: IndexPool | None = None) -> FastAPI:
    """The service for ``config``; ``pool`` (the opened indexes) is made from it when not given."""
    pool = pool or IndexPool(config.indexes, device=config.device)
    app = FastAPI(
        title="retrieval search service",
        summary="Search photos by text or image, describe and classify them, over HTTP.",
        description="Photo ids are stable: the first 16 hex digits of SHA-256 of the photo's indexed path. "
        'Every error is JSON: {"error": "one line", "status": N}.',
        version="1",
        responses=ERRORS,
    )
    errors.install(app)
    key = [Depends(api_key_check(config.api_key))]
    app.include_router(photos.health_router(pool))
    app.include_router(queries.router(pool, config), dependencies=key)
    app.include_router(photos.router(pool), dependencies=key)
    app.add_middleware(BodyLimit, max_bytes=config.max_upload_bytes + BODY_OVERHEAD)
    app.add_middleware(HostAllowList, allowed=config.allowed_host_names())
    app.add_middleware(CatchAll)
    app.state.pool = pool
    return app
