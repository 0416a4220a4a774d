"""Start the Streamlit server on ``ui/app.py`` with safe defaults (localhost, headless, no stats)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .config import LaunchConfig
from .hosts import ALLOWED_ENV, allowed_hosts

APP_FILE = Path(__file__).resolve().parent / "app.py"
SERVE_FILE = APP_FILE.with_name("serve.py")  # APP_FILE behind the Host allow-list (ui.hosts)
PORT_ENV = "STREAMLIT_SERVER_PORT"


def served_file() -> Path:
    """``ui/serve.py`` (an ``st.App`` with the Host guard) where Streamlit has ``st.App``, else the bare script."""
    import streamlit

    return SERVE_FILE if hasattr(streamlit, "App") else APP_FILE


def configured_port(environ: dict[str, str] | None = None) -> int:
    """The port Streamlit listens on when the launcher names none: ``$STREAMLIT_SERVER_PORT``, else
    ``server.port`` from ``.streamlit/config.toml`` (this folder's, then the user's), else 8501.
    Raises ValueError when the variable is not a port number."""
    environ = os.environ if environ is None else environ
    if environ.get(PORT_ENV):
        text = environ[PORT_ENV]
        value = int(text) if text.strip().isdigit() else 0
        if not 1 <= value <= 65535:
            raise ValueError(f"{PORT_ENV}={text} is not a port number (1-65535)")
        return value
    from streamlit import config

    config.get_config_options(force_reparse=True)
    return int(config.get_option("server.port"))


def streamlit_command(config: LaunchConfig, python: str = sys.executable) -> list[str]:
    """The full ``streamlit run`` command line; script arguments follow ``--``."""
    app = config.app
    upload_mb = max(1, -(-app.max_upload_bytes // 2**20))
    cmd = [
        python,
        "-m",
        "streamlit",
        "run",
        str(served_file()),
        "--server.address",
        config.address,
        *(["--server.port", str(config.port)] if config.port is not None else []),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
        "--server.runOnSave",
        "false",
        "--server.maxUploadSize",
        str(upload_mb),
        "--client.toolbarMode",
        "minimal",
        *config.extra_streamlit_args,
        "--",
    ]
    for index_dir in app.index_dirs:
        cmd += ["--index", str(index_dir)]
    if app.model:
        cmd += ["--model", app.model]
    cmd += ["--max-upload-mb", str(app.max_upload_bytes / 2**20)]
    return cmd


def launch_environment(
    base: dict[str, str] | None = None, threads: int | None = None, hosts: list[str] | None = None
) -> dict[str, str]:
    """The server's environment: the project root goes on ``PYTHONPATH`` so ``ui`` and ``retrieval`` import,
    and ``hosts`` (the whole Host allow-list) goes to ``ui.serve`` in ``$RETRIEVAL_UI_ALLOWED_HOSTS``.

    Queries are batches of one, so the server runs torch with one thread unless told otherwise:
    on a busy CPU, OpenMP threads that wait for each other turned a 60 ms text encoding into 1.4 s.
    """
    env = dict(os.environ if base is None else base)
    if threads is not None or "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads or 1)
    root = str(APP_FILE.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.setdefault("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false")
    if hosts is not None:
        env[ALLOWED_ENV] = ",".join(hosts)
    return env


def port_in_use(address: str, port: int) -> str | None:
    """Why the server could not listen on ``address:port`` (in use, not an address here), or None."""
    import socket

    try:
        family = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no obstacle
            probe.bind((address, port))
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def run(config: LaunchConfig) -> int:
    """Become the Streamlit server (``exec``), so signals reach it directly; returns its exit code
    where ``exec`` is not available."""
    hosts = allowed_hosts(config.address, [*config.allowed_hosts, os.environ.get(ALLOWED_ENV, "")])
    command, env = streamlit_command(config), launch_environment(threads=config.threads, hosts=hosts)
    if os.name == "posix":
        sys.stdout.flush()
        os.execve(command[0], command, env)
    process = subprocess.Popen(command, env=env)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        return process.wait()
