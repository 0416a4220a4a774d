"""Shared fixtures: real image files written with PIL, the tiny model, the shared data folder.

Other test modules may append fixtures here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FORMATS = {".jpg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP", ".gif": "GIF", ".tif": "TIFF"}


def write_image(
    path: Path,
    size: tuple[int, int] = (40, 30),
    color: tuple[int, int, int] = (200, 30, 30),
    exif: Image.Exif | None = None,
) -> Path:
    """A small real image file; the format follows the suffix (``.heic`` through pillow-heif)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, color)
    for x in range(0, size[0], 4):  # some structure so formats cannot all collapse to one colour
        for y in range(size[1]):
            image.putpixel((x, y), (color[2], color[0], color[1]))
    if path.suffix.lower() in {".heic", ".heif"}:
        import pillow_heif

        pillow_heif.from_pillow(image).save(str(path), quality=90)
        return path
    kwargs = {"exif": exif} if exif is not None else {}
    image.save(path, FORMATS[path.suffix.lower()], **kwargs)
    return path


@pytest.fixture
def make_image() -> Callable[..., Path]:
    return write_image


@pytest.fixture
def photo_dir(tmp_path: Path) -> Path:
    """One tiny image per supported format (plus HEIC when pillow-heif can write it), in two folders."""
    root = tmp_path / "photos"
    colors = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (200, 30, 200)]
    for (suffix, _), color in zip(FORMATS.items(), colors):
        write_image(
            root / ("sub" if suffix in {".gif", ".tif"} else "") / f"img{suffix.replace('.', '_')}{suffix}", color=color
        )
    try:
        write_image(root / "img_heic.heic", color=(120, 60, 10))
    except (ImportError, OSError, RuntimeError, ValueError):
        pass
    return root


@pytest.fixture(autouse=True)
def _keep_main_module():
    """Streamlit's AppTest runs the app as ``__main__`` and leaves it in ``sys.modules``; a later
    test that starts processes with multiprocessing's spawn would then run the app in each child.
    Each test gets back the ``__main__`` it started with."""
    main = sys.modules.get("__main__")
    yield
    if main is not None:
        sys.modules["__main__"] = main


@pytest.fixture(scope="session")
def tiny_encoder():
    from retrieval.models.factory import create_model

    return create_model("tiny-clip", device="cpu")


@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the class-embedding and calibration cache at a fresh folder for one test."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("RETRIEVAL_CACHE_DIR", str(cache))
    return cache


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


def run_module(module: str, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``python -m module args`` from the repo root, on the CPU."""
    env = dict(os.environ, RETRIEVAL_DEVICE="cpu", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"python -m {module} {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def sigint_as_at_a_terminal() -> None:
    """``preexec_fn`` for a child that a test stops with SIGINT: a test run started in the background
    (``cmd &``, some CI runners) ignores SIGINT and its children inherit that, so Python would never
    raise KeyboardInterrupt in them; a terminal's Ctrl-C reaches a process with the default action."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_main(module: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``python -m module args`` in this process: the same ``main`` the command runs, its output
    captured, on the CPU. Several times faster than :func:`run_module` (no interpreter start, no
    torch import); use :func:`run_module` where the separate process is the point (exit codes of a
    real start, signals, environment, a first import)."""
    import contextlib
    import importlib
    import io

    out, err = io.StringIO(), io.StringIO()
    saved_device = os.environ.get("RETRIEVAL_DEVICE")
    os.environ["RETRIEVAL_DEVICE"] = "cpu"
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                entry = importlib.import_module(module)
                if not hasattr(entry, "main"):  # a package: its __main__ is the command
                    entry = importlib.import_module(f"{module}.__main__")
                code = entry.main(list(args))
            except SystemExit as exc:  # argparse's usage errors
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        if saved_device is None:
            os.environ.pop("RETRIEVAL_DEVICE", None)
        else:
            os.environ["RETRIEVAL_DEVICE"] = saved_device
    proc = subprocess.CompletedProcess([module, *args], int(code or 0), out.getvalue(), err.getvalue())
    if check and proc.returncode != 0:
        raise AssertionError(f"python -m {module} {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc
