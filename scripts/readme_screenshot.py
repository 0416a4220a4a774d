"""Regenerate ``docs/screenshot-search.png``: the app searching the quickstart sample photos.

    python scripts/readme_screenshot.py                      # built-in model, query "a cat"
    python scripts/readme_screenshot.py --model builtin --query "a cat" --out docs/screenshot-search.png

Writes the scikit-image sample photos (never Flickr8k) to a temporary folder, indexes them
with ``python -m indexer``, starts ``python -m ui`` on a free localhost port, searches in
headless Debian Chromium (Playwright) and saves the viewport.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
GRID_LOADED = (
    "() => { const imgs = [...document.querySelectorAll('.st-key-results-grid img')];"
    " return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); }"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_healthy(url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"the app did not come up at {url}")


def shoot(url: str, query: str, out: Path, width: int, height: int) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(url)
            box = page.get_by_role("textbox", name="Search your photos")
            box.wait_for(timeout=180_000)
            box.fill(query)
            box.press("Enter")
            page.wait_for_function(GRID_LOADED, timeout=180_000)
            page.wait_for_timeout(1500)  # let the last cards settle
            page.screenshot(path=str(out))
        finally:
            browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--query", default="a cat")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot-search.png")
    parser.add_argument("--size", default="1440x1000", help="viewport WIDTHxHEIGHT")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory(prefix="readme-shot-") as tmp:
        photos, index = Path(tmp) / "photos", Path(tmp) / "index"
        subprocess.run([sys.executable, "-m", "indexer", "samples", str(photos)], cwd=ROOT, env=env, check=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "indexer",
                "build",
                str(photos),
                "--index",
                str(index),
                "--model",
                args.model,
                "--workers",
                "0",
                "--no-progress",
            ],
            cwd=ROOT,
            env=env,
            check=True,
        )
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "ui", "--index", str(index), "--port", str(port)],
            cwd=ROOT,
            env=env,
            start_new_session=True,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url)
            shoot(url, args.query, args.out, width, height)
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
