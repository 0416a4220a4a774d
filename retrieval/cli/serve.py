"""``python -m retrieval serve``: the search service (a JSON HTTP API) over one or more indexes."""

from __future__ import annotations

import argparse
import socket
import sys
from dataclasses import dataclass

from ..errors import RetrievalError
from ..query.search import default_index_dir
from .runner import count


@dataclass(frozen=True)
class ServeArgs:
    indexes: list[str]
    host: str
    port: int
    api_key: str | None
    allow_hosts: list[str]
    max_upload_mb: int
    max_megapixels: int
    warm: bool
    device: str | None


def port_or_zero(text: str) -> int:
    """A TCP port, or 0 for any free one (the line printed at start says which)."""
    value = count(0, "a port number")(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (0-65535)")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from ..service.config import API_KEY_ENV, DEFAULT_HOST, DEFAULT_PORT

    p = sub.add_parser("serve", help="serve a JSON HTTP API for search, describe and classify (docs at /docs)")
    p.add_argument(
        "--index",
        action="append",
        dest="indexes",
        metavar="[NAME=]DIR",
        help=f"index to serve (repeatable; named after its folder unless NAME= is given; "
        f"default {default_index_dir()})",
    )
    p.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on (default {DEFAULT_HOST}; any other needs an API key)",
    )
    p.add_argument(
        "--port", type=port_or_zero, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free one)"
    )
    p.add_argument("--api-key", help=f"key every request must send in X-API-Key (default ${API_KEY_ENV})")
    p.add_argument(
        "--allow-host",
        action="append",
        dest="allow_hosts",
        default=[],
        metavar="NAME",
        help="also answer requests whose Host header is NAME (repeatable); localhost names and the "
        "listening address are always allowed",
    )
    p.add_argument("--max-upload-mb", type=count(1), default=20, help="largest upload accepted, in MB (default 20)")
    p.add_argument(
        "--max-megapixels", type=count(1), default=40, help="largest decoded upload, in megapixels (default 40)"
    )
    p.add_argument(
        "--no-warm", dest="warm", action="store_false", help="load the model on the first query, not at start"
    )
    p.add_argument("--device", default=None, help="device for the model (default: the best available)")
    p.set_defaults(
        run=lambda a: run(
            ServeArgs(
                indexes=a.indexes or [str(default_index_dir())],
                host=a.host,
                port=a.port,
                api_key=a.api_key,
                allow_hosts=a.allow_hosts,
                max_upload_mb=a.max_upload_mb,
                max_megapixels=a.max_megapixels,
                warm=a.warm,
                device=a.device,
            )
        )
    )


def _listen(host: str, port: int) -> socket.socket:
    from ..service.errors import ServiceConfigError

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise ServiceConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def run(args: ServeArgs) -> int:
    try:
        import uvicorn

        from ..service import ServiceConfig, create_app
        from ..service.config import api_key_from, parse_index_arg
        from ..service.errors import ServiceConfigError
        from ..service.indexes import IndexPool
    except ModuleNotFoundError as exc:
        raise RetrievalError(f"serve needs {exc.name}: pip install 'clip-retrieval-engine[serve]'") from exc

    named = [parse_index_arg(text) for text in args.indexes]
    dirs = dict(named)
    if len(dirs) < len(named):
        raise ServiceConfigError("two indexes have the same name; name them: --index NAME=DIR")
    config = ServiceConfig(
        indexes=dirs,
        host=args.host,
        port=args.port,
        api_key=api_key_from(args.api_key),
        allow_hosts=tuple(args.allow_hosts),
        max_upload_bytes=args.max_upload_mb * 1024 * 1024,
        max_pixels=args.max_megapixels * 1_000_000,
        warm=args.warm,
        device=args.device,
    )
    pool = IndexPool(config.indexes, device=config.device)
    if config.warm:
        for line in pool.warm():
            print(f"warning: {line}; vector queries and photos still work", file=sys.stderr)
    app = create_app(config, pool)
    sock = _listen(config.host, config.port)
    bound = sock.getsockname()[1]
    shown = f"[{config.host}]" if ":" in config.host else config.host
    names = ", ".join(
        f"{name} ({pool.get(name).generation}, {len(pool.get(name).reader)} photos)" for name in pool.names
    )
    print(f"serving {names} at http://{shown}:{bound} (API docs at /docs; Ctrl-C stops)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5))
    server.run(sockets=[sock])
    return 0
