"""What a running service is: the indexes it serves, where it listens, and its limits.

Parsed once from the command line (or built in code) and checked before anything listens:
an address other than loopback needs an API key, since the API reads every indexed photo.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import ServiceConfigError
from .hosts import allowed_hosts

API_KEY_ENV = "RETRIEVAL_API_KEY"
API_KEY_HEADER = "X-API-Key"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) only listens on this machine."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_index_arg(text: str) -> tuple[str, Path]:
    """``NAME=DIR`` or ``DIR`` (named after its folder)."""
    name, sep, path = text.partition("=")
    if not sep:
        path = text
        name = Path(text).expanduser().resolve().name or "index"
    if not _NAME.match(name):
        raise ServiceConfigError(f"index name {name!r} must be letters, digits, '.', '_' or '-' (give NAME=DIR)")
    return name, Path(path).expanduser()


@dataclass(frozen=True)
class ServiceConfig:
    """``indexes``: name -> index folder, in order (the first is the default). ``api_key``: required
    of every request but ``/health`` and the docs when set; mandatory off loopback."""

    indexes: dict[str, Path]
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    api_key: str | None = None
    allow_hosts: tuple[str, ...] = ()
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    warm: bool = True
    device: str | None = None

    def __post_init__(self) -> None:
        if not self.indexes:
            raise ServiceConfigError("give at least one --index DIR")
        if self.api_key is not None and len(self.api_key) < 8:
            raise ServiceConfigError("the API key is too short: use at least 8 characters (16+ random ones is better)")
        if not is_loopback(self.host) and not self.api_key:
            raise ServiceConfigError(
                f"listening on {self.host} lets other machines read every indexed photo: give an API key with "
                f"--api-key KEY or ${API_KEY_ENV} (or listen on {DEFAULT_HOST})"
            )

    @property
    def default_index(self) -> str:
        return next(iter(self.indexes))

    def allowed_host_names(self) -> frozenset[str]:
        """Host header names (without port) that requests may carry: loopback names, the bound
        address and the names added with ``--allow-host``. Anything else is a DNS-rebinding risk."""
        return frozenset(allowed_hosts(self.host, self.allow_hosts))


def api_key_from(flag: str | None) -> str | None:
    """The key given on the command line, else ``$RETRIEVAL_API_KEY``, else None."""
    return flag if flag else (os.environ.get(API_KEY_ENV) or None)
