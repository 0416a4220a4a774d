"""The app's Host allow-list (:mod:`retrieval.service.hosts`): the names the user adds reach the
Streamlit server through ``$RETRIEVAL_UI_ALLOWED_HOSTS``, which the launcher sets."""

from __future__ import annotations

from collections.abc import Mapping

from retrieval.service.hosts import LOOPBACK, HostGuard, allowed_hosts, host_name

__all__ = ["ALLOWED_ENV", "LOOPBACK", "HostGuard", "allowed_hosts", "host_name", "hosts_from_env"]

ALLOWED_ENV = "RETRIEVAL_UI_ALLOWED_HOSTS"
"""Comma-separated extra names the user allows; the launcher passes the whole list to the server in it."""


def hosts_from_env(environ: Mapping[str, str]) -> list[str]:
    return allowed_hosts("", [environ.get(ALLOWED_ENV, "")])
