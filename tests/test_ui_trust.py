"""The app shows only indexed photos and answers only its own host names (DNS rebinding), on real servers."""

from __future__ import annotations

import base64
import http.client
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("streamlit.testing.v1")
from streamlit.testing.v1 import AppTest  # noqa: E402

from ui.hosts import allowed_hosts, host_name  # noqa: E402
from ui.launch import configured_port  # noqa: E402

from .test_ui_app import APP, build_index  # noqa: E402
from .test_ui_browser import free_port, wait_healthy  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_index(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("trust")
    photos = base / "photos"
    for name, color in (("kept.jpg", "red"), ("removed.jpg", "green"), (".hidden/never.jpg", "blue")):
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (48, 36), color).save(photos / name)
    index = build_index(photos, base / "index", "tiny-clip")
    return {"photos": photos, "index": index}


def _open(monkeypatch, index: Path, path: str) -> AppTest:
    monkeypatch.setenv("RETRIEVAL_UI_INDEXES", str(index))
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params["open"] = path
    at.run()
    assert not at.exception, at.exception
    return at


def test_open_shows_only_photos_in_the_current_generation(monkeypatch, small_index):
    import indexer

    photos, index = small_index["photos"], small_index["index"]
    at = _open(monkeypatch, index, str(photos / "removed.jpg"))
    assert not at.error and len(at.get("image")) == 1  # indexed: shown
    indexer.remove([photos / "removed.jpg"], index)
    for path in (photos / "removed.jpg", photos / ".hidden" / "never.jpg"):  # inside the folder, not in the index
        at = _open(monkeypatch, index, str(path))
        assert at.error and "not a photo in the index" in at.error[0].value, path
        assert not at.get("image")
    at = _open(monkeypatch, index, str(photos / "kept.jpg"))
    assert not at.error and len(at.get("image")) == 1


def test_host_names_and_headers():
    assert allowed_hosts("127.0.0.1") == ["localhost", "127.0.0.1", "::1"]
    assert allowed_hosts("0.0.0.0", ["Photos.LAN, nas.", ""]) == ["localhost", "127.0.0.1", "::1", "photos.lan", "nas"]
    assert allowed_hosts("192.168.1.5") == ["localhost", "127.0.0.1", "::1", "192.168.1.5"]
    assert host_name("localhost:8501") == "localhost" and host_name("[::1]:80") == "::1"
    assert host_name("Evil.Example.") == "evil.example"
    for bad in (None, "", "a:b:c", "user@localhost", "localhost:99999", "localhost/x"):
        assert host_name(bad) is None, bad


def test_the_port_follows_streamlits_own_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert configured_port({}) == 8501
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "config.toml").write_text("[server]\nport = 8765\n")
    assert configured_port({}) == 8765
    assert configured_port({"STREAMLIT_SERVER_PORT": "8766"}) == 8766
    with pytest.raises(ValueError, match="STREAMLIT_SERVER_PORT=eighty is not a port number"):
        configured_port({"STREAMLIT_SERVER_PORT": "eighty"})


def _serve(args: list[str], cwd: Path, env: dict[str, str], port: int):
    process = subprocess.Popen(
        [sys.executable, "-m", "ui", *args],
        cwd=cwd,
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        text=True,
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process)
    except AssertionError:
        _stop(process)
        raise
    return process


def _stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _get(port: int, host: str, path: str = "/") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers={"Host": host})
        return conn.getresponse().status
    finally:
        conn.close()


def _websocket(port: int, host: str, origin: str) -> str:
    """The status line the app answers a WebSocket handshake on its stream with."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /_stcore/stream HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: {origin}\r\n"
        f"Sec-WebSocket-Protocol: streamlit\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request.encode())
        return sock.recv(256).split(b"\r\n")[0].decode()


@pytest.mark.slow
def test_a_foreign_host_header_gets_403_on_every_route(small_index, tmp_path):
    """DNS rebinding: a page under another name that resolves to 127.0.0.1 sends that name as Host.
    The port comes from .streamlit/config.toml in the folder the app starts in."""
    port = free_port()
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "config.toml").write_text(f"[server]\nport = {port}\n")
    process = _serve(
        ["--index", str(small_index["index"]), "--allow-host", "photos.lan"],
        tmp_path,
        {"RETRIEVAL_UI_ALLOWED_HOSTS": "nas.home"},
        port,
    )
    try:
        for host in ("localhost", f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "photos.lan", "nas.home"):
            assert _get(port, host) == 200, host
        for host in ("evil.example", f"evil.example:{port}", "localhost.evil.example", "127.0.0.1.nip.io", ""):
            for path in ("/", "/_stcore/health", "/_stcore/host-config", "/media/x.jpg"):
                assert _get(port, host, path) == 403, (host, path)
        assert _websocket(port, f"localhost:{port}", f"http://localhost:{port}").endswith("101 Switching Protocols")
        assert _websocket(port, f"evil.example:{port}", f"http://evil.example:{port}").endswith("403 Forbidden")
        # Streamlit's own origin check stays on: the right Host with a foreign Origin is refused too
        assert _websocket(port, f"localhost:{port}", "http://evil.example").endswith("403 Forbidden")
    finally:
        _stop(process)
    assert f"serving on http://127.0.0.1:{port}" in (process.stdout.read() if process.stdout else "")


@pytest.mark.slow
def test_port_from_the_environment_and_port_flag_overrides_it(small_index, tmp_path):
    env_port, flag_port = free_port(), free_port()
    process = _serve(
        ["--index", str(small_index["index"]), "--port", str(flag_port)],
        tmp_path,
        {"STREAMLIT_SERVER_PORT": str(env_port)},
        flag_port,
    )
    _stop(process)
    process = _serve(
        ["--index", str(small_index["index"])], tmp_path, {"STREAMLIT_SERVER_PORT": str(env_port)}, env_port
    )
    try:
        assert _get(env_port, "localhost", "/_stcore/health") == 200
    finally:
        _stop(process)
