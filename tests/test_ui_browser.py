"""End to end: start ``python -m ui`` on a free port and search it from headless Chromium."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def ensure_chromium() -> str:
    """Debian's Chromium; installed with apt when missing and we are root, else the test skips."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "chromium"], check=False, capture_output=True, timeout=600)
        if Path(CHROMIUM).exists():
            return CHROMIUM
    pytest.skip(f"{CHROMIUM} is missing and could not be installed (needs root and apt-get)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the app exited early with code {process.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the app did not answer at {url} within {timeout:.0f} s")


def run_cli(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, *args], cwd=ROOT, env=env, check=True, capture_output=True, timeout=600)


@pytest.fixture(scope="module")
def sample_index(tmp_path_factory) -> Path:
    """The quickstart sample photos (real photographs from scikit-image) indexed with tiny-clip."""
    pytest.importorskip("skimage")
    base = tmp_path_factory.mktemp("browser")
    run_cli("-m", "indexer", "samples", str(base / "photos"))
    run_cli(
        "-m",
        "indexer",
        "build",
        str(base / "photos"),
        "--index",
        str(base / "index"),
        "--model",
        "tiny-clip",
        "--workers",
        "0",
        "--no-progress",
    )
    return base / "index"


@pytest.fixture()
def server(sample_index):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "ui", "--index", str(sample_index), "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_search_in_a_real_browser(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = ensure_chromium()
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(server, wait_until="domcontentloaded")
            box = page.get_by_role("textbox", name="Search your photos")
            box.wait_for(timeout=60_000)
            box.fill("a cat")
            box.press("Enter")
            images = page.locator(".st-key-results-grid img")
            images.first.wait_for(timeout=60_000)
            page.wait_for_function(
                """() => {
                    const imgs = [...document.querySelectorAll('.st-key-results-grid img')];
                    return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);
                }""",
                timeout=30_000,
            )
            count = images.count()
            widths = images.evaluate_all("imgs => imgs.map(i => i.naturalWidth)")
            shot = tmp_path / "search.png"
            page.screenshot(path=str(shot), full_page=True)

            assert count == 8  # every sample photo, since k (24) exceeds the index size
            assert all(w > 0 for w in widths)
            assert shot.stat().st_size > 10_000

            grid = page.locator(".st-key-results-grid")
            grid.get_by_role("button", name="Open", exact=True).first.click()
            page.get_by_role("button", name="Similar photos").wait_for(timeout=30_000)
            page.get_by_role("button", name="Similar photos").click()
            page.get_by_text("Showing photos like").wait_for(timeout=30_000)
            page.wait_for_function(
                "() => document.querySelectorAll('.st-key-results-grid img').length === 7", timeout=30_000
            )

            page.get_by_text("Search by image").click()
            page.locator("[data-testid='stFileUploaderDropzoneInput']").set_input_files(
                files=[{"name": "holiday.jpg", "mimeType": "image/jpeg", "buffer": b"not a picture at all"}]
            )
            page.get_by_text("Could not use holiday.jpg").wait_for(timeout=30_000)
            page.screenshot(path=str(tmp_path / "bad-upload.png"), full_page=True)

            # Duplicates page: tiny-clip's random vectors put all 8 sample photos within 0.92 of each other
            page.get_by_text("Duplicates", exact=True).click()
            page.get_by_role("heading", name="Near-duplicates").wait_for(timeout=30_000)
            page.get_by_text("Group 1").wait_for(timeout=60_000)
            page.wait_for_function(
                "() => { const imgs = [...document.querySelectorAll('.st-key-dup-0 img')];"
                " return imgs.length === 8 && imgs.every(i => i.complete && i.naturalWidth > 0); }",
                timeout=60_000,
            )
            page.screenshot(path=str(tmp_path / "duplicates.png"), full_page=True)
        finally:
            browser.close()
