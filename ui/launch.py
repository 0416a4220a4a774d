"""Start the Streamlit server on ``ui/app.py`` with safe defaults (localhost, headless, no stats)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .config import LaunchConfig

APP_FILE = Path(__file__).resolve().parent / "app.py"


def streamlit_command(config: LaunchConfig, python: str = sys.executable) -> list[str]:
    """The full ``streamlit run`` command line; script arguments follow ``--``."""
    app = config.app
    upload_mb = max(1, -(-app.max_upload_bytes // 2**20))
    cmd = [
        python, "-m", "streamlit", "run", str(APP_FILE),
        "--server.address", config.address,
        "--server.port", str(config.port),
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
        "--server.runOnSave", "false",
        "--server.maxUploadSize", str(upload_mb),
        "--client.toolbarMode", "minimal",
        *config.extra_streamlit_args,
        "--",
    ]
    for index_dir in app.index_dirs:
        cmd += ["--index", str(index_dir)]
    if app.model:
        cmd += ["--model", app.model]
    cmd += ["--max-upload-mb", str(app.max_upload_bytes / 2**20)]
    return cmd


def launch_environment(base: "dict[str, str] | None" = None, threads: int | None = None) -> dict[str, str]:
    """The server's environment: the project root goes on ``PYTHONPATH`` so ``ui`` and ``retrieval`` import.

    Queries are batches of one, so the server runs torch with one thread unless told otherwise:
    on a busy CPU, OpenMP threads that wait for each other turned a 60 ms text encoding into 1.4 s.
    """
    env = dict(os.environ if base is None else base)
    if threads is not None or "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads or 1)
    root = str(APP_FILE.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.setdefault("STREAMLIT_BROWSER_GATHER_USAGE_STATS", "false")
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
    command, env = streamlit_command(config), launch_environment(threads=config.threads)
    if os.name == "posix":
        sys.stdout.flush()
        os.execve(command[0], command, env)
    process = subprocess.Popen(command, env=env)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        return process.wait()
