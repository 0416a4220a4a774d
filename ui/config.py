"""Typed settings for the app, parsed once at the boundary.

The launcher (``python -m ui``) passes the index folders to the Streamlit script as
script arguments; ``$RETRIEVAL_UI_INDEXES`` (``os.pathsep``-separated) and
``$RETRIEVAL_INDEX`` are the fallbacks, which is also how tests point the app at an index.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .safety import DEFAULT_MAX_UPLOAD_BYTES

INDEXES_ENV = "RETRIEVAL_UI_INDEXES"
MODEL_ENV = "RETRIEVAL_UI_MODEL"
UPLOAD_ENV = "RETRIEVAL_UI_MAX_UPLOAD_MB"


@dataclass(frozen=True)
class AppConfig:
    """What the running app serves: one or more indexes (the first is the main one)."""

    index_dirs: tuple[Path, ...] = ()
    model: str | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES

    @property
    def main_index(self) -> Path | None:
        return self.index_dirs[0] if self.index_dirs else None


@dataclass(frozen=True)
class LaunchConfig:
    """How ``python -m ui`` starts Streamlit."""

    app: AppConfig = field(default_factory=AppConfig)
    address: str = "127.0.0.1"
    port: int | None = None  # None: Streamlit's own ($STREAMLIT_SERVER_PORT, .streamlit/config.toml, else 8501)
    allowed_hosts: tuple[str, ...] = ()  # Host names answered besides the loopback names and the address (ui.hosts)
    threads: int | None = None  # torch/OpenMP threads of the server; None: $OMP_NUM_THREADS, else 1
    extra_streamlit_args: tuple[str, ...] = ()


def add_app_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--index",
        action="append",
        default=[],
        metavar="DIR",
        help="index folder; repeat to compare indexes (the first is searched)",
    )
    parser.add_argument("--model", default=None, help="model spec for queries (default: the index's own model)")
    parser.add_argument(
        "--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_BYTES / 2**20, help="largest accepted upload in MiB"
    )


def app_config_from_args(args: argparse.Namespace, environ: Mapping[str, str]) -> AppConfig:
    dirs = [str(d) for d in args.index]
    if not dirs and environ.get(INDEXES_ENV):
        dirs = [d for d in environ[INDEXES_ENV].split(os.pathsep) if d]
    if not dirs:
        from retrieval.query.search import default_index_dir

        dirs = [environ.get("RETRIEVAL_INDEX") or str(default_index_dir())]
    model = args.model or environ.get(MODEL_ENV) or None
    max_mb = args.max_upload_mb
    if max_mb is None:
        max_mb = float(environ.get(UPLOAD_ENV, DEFAULT_MAX_UPLOAD_BYTES / 2**20))
    return AppConfig(
        index_dirs=tuple(Path(d).expanduser().resolve() for d in dirs),
        model=model,
        max_upload_bytes=int(max_mb * 2**20),
    )


def parse_app_args(argv: Sequence[str], environ: Mapping[str, str] | None = None) -> AppConfig:
    """Settings for the Streamlit script from its own arguments (after ``--``) and the environment."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog="ui/app.py", add_help=False, allow_abbrev=False)
    add_app_arguments(parser)
    parser.set_defaults(max_upload_mb=None)
    args, _unknown = parser.parse_known_args(list(argv))
    return app_config_from_args(args, environ)
