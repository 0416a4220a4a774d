"""``python -m retrieval serve`` and ``search --server`` as a user runs them: real processes, a real
index, the real server on a free port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, write_image
from tests.service_server import build_index, running_service

KEY = "a-test-key-0123456789"


@pytest.fixture(scope="module")
def photos_and_index(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("service-cli")
    photos = root / "photos"
    for i, color in enumerate([(220, 20, 20), (20, 200, 20), (20, 20, 220), (230, 220, 20), (90, 90, 90)]):
        write_image(photos / ("a" if i % 2 else "b") / f"p{i}.{'png' if i % 2 else 'jpg'}", size=(56, 40), color=color)
    return photos, build_index(photos, root / "index")


def retrieval(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, RETRIEVAL_DEVICE="cpu", PYTHONPATH=str(REPO))
    full.pop("RETRIEVAL_API_KEY", None)
    full.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "retrieval", *args],
        cwd=REPO,
        env=full,
        capture_output=True,
        check=False,
        text=True,
        timeout=timeout,
    )


def in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``python -m retrieval ARGS`` through its ``main`` in this process (the command line's own code,
    without paying the interpreter's start-up for each of many runs)."""
    from retrieval.__main__ import main

    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_search_through_the_server_prints_what_a_local_search_prints(photos_and_index, capsys, monkeypatch) -> None:
    photos, index = photos_and_index
    queries = [
        ["a red photo", "-k", "3"],
        ["a photo", "--json", "--type", "png", "--folder", str(photos / "a")],
        ["--image", str(photos / "b" / "p2.jpg"), "-k", "4"],
        ["--image", str(photos / "a" / "p1.png"), "--json", "--date-from", "2000-01-01"],
        ["a photo", "--tag", "dog"],
        ["a photo", "--date-from", "not a date"],
        ["a photo", "--min-relevance", "0.5"],
    ]
    monkeypatch.setenv("RETRIEVAL_DEVICE", "cpu")
    monkeypatch.delenv("RETRIEVAL_API_KEY", raising=False)
    with running_service("--index", str(index)) as svc:
        for query in queries:
            local = in_process(capsys, "search", *query, "--index", str(index))
            remote = in_process(capsys, "search", *query, "--server", svc.url)
            assert remote == local, query
        assert local[0] == 2 and local[2].startswith("error:")  # the last query failed the same way
        as_a_command = retrieval("search", *queries[0], "--server", svc.url)
    assert (as_a_command.returncode, as_a_command.stdout) == in_process(
        capsys, "search", *queries[0], "--index", str(index)
    )[:2]


@pytest.mark.slow
def test_a_public_address_needs_an_api_key_and_checks_it(photos_and_index) -> None:
    _, index = photos_and_index
    refused = retrieval("serve", "--index", str(index), "--host", "0.0.0.0", "--port", "0", timeout=120)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [refused.stderr.strip()] and "API key" in refused.stderr
    with running_service("--index", str(index), "--host", "0.0.0.0", env={"RETRIEVAL_API_KEY": KEY}) as svc:
        with svc.client() as c:
            assert c.get("/health").status_code == 200  # says only that it is up
            for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": KEY[:-1]}, {"Authorization": "Bearer nope"}):
                response = c.post("/search", json={"text": "a photo"}, headers=headers)
                assert response.status_code == 401 and "API key" in response.json()["error"]
            assert c.post("/search", json={"text": "a photo"}, headers={"X-API-Key": KEY}).status_code == 200
            assert c.get("/stats", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        without = retrieval("search", "a photo", "--server", svc.url)
        with_key = retrieval("search", "a photo", "--server", svc.url, env={"RETRIEVAL_API_KEY": KEY})
    assert without.returncode == 2 and "API key" in without.stderr and "Traceback" not in without.stderr
    assert with_key.returncode == 0 and len(with_key.stdout.splitlines()) == 5


def test_start_up_mistakes_are_one_line(photos_and_index, capsys, monkeypatch) -> None:
    photos, index = photos_and_index
    monkeypatch.delenv("RETRIEVAL_API_KEY", raising=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        busy = in_process(capsys, "serve", "--index", str(index), "--port", str(taken.getsockname()[1]), "--no-warm")
    not_index = in_process(capsys, "serve", "--index", str(photos), "--port", "0")
    short_key = in_process(capsys, "serve", "--index", str(index), "--api-key", "short", "--port", "0")
    same_name = in_process(capsys, "serve", "--index", f"a={index}", "--index", f"a={index}", "--port", "0")
    unreachable = in_process(capsys, "search", "a photo", "--server", "http://127.0.0.1:9")
    for code, _, err in (busy, not_index, short_key, same_name, unreachable):
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert "cannot listen" in busy[2] and "folder of photos" in not_index[2]
    assert "cannot reach" in unreachable[2]


def test_serve_help_names_its_options(capsys) -> None:
    with pytest.raises(SystemExit):
        in_process(capsys, "serve", "--help")
    out = capsys.readouterr().out
    for flag in ("--index", "--host", "--port", "--api-key", "--allow-host", "--max-upload-mb"):
        assert flag in out
    assert httpx  # the client library the tests and --server use is installed
