"""A real ``python -m retrieval serve`` process on a free port, for the service tests.

The server picks its own free port (``--port 0``) and prints the address it listens on;
the tests read that line, then wait until ``/health`` answers. Nothing sleeps a fixed time.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.conftest import REPO

START_TIMEOUT = 240.0  # a loaded 2-core machine takes a while to import torch and load the model
LISTENING = re.compile(r"at http://(\S+):(\d+) ")


@dataclass
class Service:
    proc: subprocess.Popen[str]
    url: str
    port: int
    stderr: list[str] = field(default_factory=list)

    def client(self, **kw: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120.0, trust_env=False, **kw)  # type: ignore[arg-type]


def _pump(stream, sink: queue.Queue[str] | list[str]) -> None:
    for line in stream:
        sink.put(line) if isinstance(sink, queue.Queue) else sink.append(line)


def start_service(*args: str, env: dict[str, str] | None = None) -> Service:
    """Start the server with ``args`` and return once it answers ``/health`` (or raise with its stderr)."""
    full_env = dict(os.environ, RETRIEVAL_DEVICE="cpu", PYTHONPATH=str(REPO))
    full_env.pop("RETRIEVAL_API_KEY", None)
    full_env.update(env or {})
    proc = subprocess.Popen(
        [sys.executable, "-m", "retrieval", "serve", "--port", "0", *args],
        cwd=REPO,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    errors: list[str] = []
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    threading.Thread(target=_pump, args=(proc.stderr, errors), daemon=True).start()
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            stop(proc)
            raise AssertionError(
                f"the service printed no address in {START_TIMEOUT:.0f} s:\n{''.join(errors)}"
            ) from None
        found = LISTENING.search(line)
        if found:
            break
    port = int(found[2])
    service = Service(proc, f"http://127.0.0.1:{port}", port, errors)
    with service.client() as client:
        while True:  # the socket listens before uvicorn serves: wait for the first answer
            with contextlib.suppress(httpx.TransportError):
                if client.get("/health").status_code == 200:
                    return service
            if proc.poll() is not None or time.monotonic() > deadline:
                stop(proc)
                raise AssertionError(f"the service never answered /health:\n{''.join(errors)}")
            time.sleep(0.05)  # polling interval while waiting for the event, not a fixed wait


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


@contextlib.contextmanager
def running_service(*args: str, env: dict[str, str] | None = None) -> Iterator[Service]:
    service = start_service(*args, env=env)
    try:
        yield service
    finally:
        stop(service.proc)
        assert not any("Traceback" in line for line in service.stderr), "".join(service.stderr)


def build_index(photos: Path, index: Path) -> Path:
    from tests.conftest import run_module

    run_module("indexer", "build", str(photos), "--index", str(index), "--model", "tiny-clip")
    return index
