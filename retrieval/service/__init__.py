"""The search service: a typed JSON HTTP API (FastAPI on uvicorn) over the query layer.

It owns nothing of its own but the HTTP boundary: request and response models
(:mod:`.models`), which indexes are served and how a new generation is picked up
(:mod:`.indexes`), what a request may reach (:mod:`.security`, :mod:`.uploads`) and how
the library's typed errors become JSON statuses (:mod:`.errors`). Handlers
(:mod:`.app`, :mod:`.routes`) call the same library functions as the command line.
``python -m retrieval serve`` runs it; :mod:`.client` is the other end, used by
``python -m retrieval search --server URL``. FastAPI, uvicorn and httpx come with the
``serve`` extra and are imported only here.
"""

from typing import TYPE_CHECKING

from .config import ServiceConfig
from .errors import PhotoNotFoundError, ServiceConfigError, UnknownIndexError

if TYPE_CHECKING:
    from fastapi import FastAPI

    from .indexes import IndexPool

__all__ = ["PhotoNotFoundError", "ServiceConfig", "ServiceConfigError", "UnknownIndexError", "create_app"]


def create_app(config: ServiceConfig, pool: "IndexPool | None" = None) -> "FastAPI":
    """The ASGI application for ``config`` (see :func:`retrieval.service.app.create_app`)."""
    from .app import create_app as create

    return create(config, pool)
