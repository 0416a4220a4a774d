"""Serve the photo search app on this machine: python -m ui --index DIR [--port N]."""

from __future__ import annotations

import argparse
import os
import sys

from retrieval.cli.runner import port
from retrieval.errors import IndexFormatError
from retrieval.index.layout import live_generation
from retrieval.index.reader import not_an_index

from .config import LaunchConfig, add_app_arguments, app_config_from_args
from .launch import configured_port, port_in_use, run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ui", description=__doc__.splitlines()[0])
    add_app_arguments(parser)
    parser.add_argument(
        "--port",
        type=port,
        default=None,
        help="port to listen on (default: Streamlit's own setting, $STREAMLIT_SERVER_PORT or "
        "server.port in .streamlit/config.toml, else 8501)",
    )
    parser.add_argument("--address", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests for this host name (repeat for more; also "
        "$RETRIEVAL_UI_ALLOWED_HOSTS, comma-separated); others get 403",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads for queries (default: $OMP_NUM_THREADS, else 1)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = LaunchConfig(
        app=app_config_from_args(args, os.environ),
        address=args.address,
        port=args.port,
        threads=args.threads,
        allowed_hosts=tuple(args.allow_host),
    )
    for index_dir in config.app.index_dirs:
        try:
            if not index_dir.is_dir() or live_generation(index_dir) is None:
                print(f"error: {not_an_index(index_dir)}", file=sys.stderr)
                return 2
        except IndexFormatError as exc:  # a damaged CURRENT: the message says how to rebuild
            print(f"error: {exc}", file=sys.stderr)
            return 2
    try:
        listen = config.port if config.port is not None else configured_port()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    busy = port_in_use(config.address, listen)
    if busy:
        print(
            f"error: cannot serve on {config.address}:{listen} ({busy}); choose another with --port N", file=sys.stderr
        )
        return 2
    print(f"serving on http://{config.address}:{listen}", flush=True)
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
