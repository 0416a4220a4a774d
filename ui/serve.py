"""The app as an ASGI application (``st.App``) with the Host allow-list in front of every route.

``python -m ui`` runs ``streamlit run ui/serve.py``; Streamlit finds ``app`` here, serves
``ui/app.py`` through it with its own checks (XSRF, WebSocket origin) on, and
:class:`ui.hosts.HostGuard` runs before all of them.
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st
from starlette.middleware import Middleware

from ui.hosts import HostGuard, hosts_from_env

app = st.App(
    str(Path(__file__).resolve().with_name("app.py")),
    middleware=[Middleware(HostGuard, allowed=hosts_from_env(os.environ))],
)
