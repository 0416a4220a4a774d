"""A disk that refuses writes (full, over quota, read-only) gives a clear error and loses nothing.

The refusal is the operating system's own: the build runs in a child process whose
RLIMIT_FSIZE is just above the files already in the index, with SIGXFSZ ignored, so its
first larger write fails with EFBIG, as a write to a full disk fails with ENOSPC.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer import BuildConfig, build
from indexer.catalog import Catalog
from retrieval import open_index
from retrieval.errors import IndexWriteError
from retrieval.index.store import IndexReader, catalog_url, refused_write

from .conftest import REPO, sigint_as_at_a_terminal, write_image

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE is POSIX")

CFG = BuildConfig(model="tiny-clip", workers=0, batch_size=64)


def _run_limited(limit: int, code: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a child that may not write past byte ``limit`` of any file."""
    prelude = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.RLIM_INFINITY))
    """)
    env = dict(os.environ, RETRIEVAL_DEVICE="cpu", PYTHONPATH=str(REPO), PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _noise_photos(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(folder / f"n{i:04d}.png")


@pytest.mark.slow
def test_a_build_the_disk_refuses_keeps_the_live_index(tmp_path: Path, tiny_encoder) -> None:
    photos, index_dir = tmp_path / "photos", tmp_path / "index"
    for i, color in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        write_image(photos / f"p{i}.jpg", color=color)
    first = build([photos], index_dir, CFG, encoder=tiny_encoder)
    live_before = (index_dir / "CURRENT").read_text()
    _noise_photos(photos / "more", 1500)  # index.faiss alone: 1,503 x 16 x 4 bytes = 96 KB
    limit = max(p.stat().st_size for p in index_dir.rglob("*") if p.is_file()) + 8192

    proc = _run_limited(
        limit,
        f"""
        from indexer.__main__ import main
        sys.exit(main(["build", {str(photos)!r}, "--index", {str(index_dir)!r}, "--model", "tiny-clip",
                       "--workers", "0", "--no-progress"]))
    """,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith(f"error: could not write a new index generation in {index_dir}: File too large")
    assert "needed" in message and "free there" in message and f"{live_before.strip()} is still live" in message

    # Nothing half-written is left, and the index reads and searches exactly as before.
    assert (index_dir / "CURRENT").read_text() == live_before
    assert sorted(p.name for p in index_dir.glob("gen-*")) == [live_before.strip()]
    assert not [p for p in index_dir.rglob("*") if ".tmp" in p.name]
    idx = open_index(index_dir)
    assert len(idx) == first.count == 3
    assert len(idx.search("a photo", k=10)) == 3

    # With room again the same build completes: the refused one lost nothing.
    again = build([photos], index_dir, CFG, encoder=tiny_encoder)
    assert again.embedded == 1500 and again.count == 1503


def test_a_catalog_write_the_disk_refuses_is_a_typed_error(tmp_path: Path) -> None:
    index_dir = tmp_path / "index"
    index_dir.mkdir()
    url = catalog_url(index_dir)
    Catalog(url).record(generation="gen-a", ok=[("/photos/kept.jpg", 10, 1.0, "a" * 64)])
    limit = (index_dir / "catalog.db").stat().st_size + 4096

    proc = _run_limited(
        limit,
        f"""
        from indexer.catalog import Catalog
        from retrieval.errors import IndexWriteError
        catalog = Catalog({url!r})
        try:
            catalog.record(generation="gen-b", ok=[(f"/photos/{{i:05d}}.jpg", 10, 1.0, "b" * 64) for i in range(5000)])
        except IndexWriteError as exc:
            print(exc)
            sys.exit(3)
    """,
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"could not write the catalog at {url}: ")
    assert "free there" in proc.stdout and "nothing was recorded" in proc.stdout

    catalog = Catalog(url)  # the transaction rolled back: the catalog is as it was
    assert list(catalog.files()) == ["/photos/kept.jpg"] and catalog.state("generation") == "gen-a"


def test_a_read_only_catalog_reads_and_refuses_writes_cleanly(tmp_path: Path, tiny_encoder) -> None:
    """An index on a read-only share: opening the catalog writes nothing, and a write is a typed error."""
    photos = tmp_path / "photos"
    write_image(photos / "a.jpg")
    build([photos], tmp_path / "index", CFG, encoder=tiny_encoder)
    read_only = f"sqlite:///file:{tmp_path / 'index' / 'catalog.db'}?mode=ro&uri=true"
    catalog = Catalog(read_only)  # it used to rewrite its schema version on every open
    assert [Path(p).name for p in catalog.files()] == ["a.jpg"]
    with pytest.raises(IndexWriteError, match="attempt to write a readonly database; nothing was recorded"):
        catalog.record(generation="gen-x", deleted=[str(photos / "a.jpg")])
    assert catalog.files()[str((photos / "a.jpg").resolve())].status == "ok"


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (OSError(28, "No space left on device"), "No space left on device"),
        (
            RuntimeError("Error: 'ret == (size * 4)' failed: write error in x.tmp: 3 != 5 (No space left on device)"),
            "No space left on device",
        ),
        (PermissionError(13, "Permission denied"), "Permission denied"),
        (OSError("38400 requested and 23936 written"), "the disk took only 23,936 of 38,400 bytes"),  # np.save
        (OSError(2, "No such file or directory"), None),
        (ValueError("bad value"), None),
    ],
)
def test_refused_write_tells_the_disk_from_other_failures(exc: BaseException, reason: str | None) -> None:
    assert refused_write(exc) == reason


@pytest.mark.slow
def test_workers_without_room_in_shared_memory_hand_decoding_to_the_main_process(tmp_path: Path) -> None:
    """A /dev/shm too small for the workers' batches (64 MB in a Docker container by default).

    Shared memory is a file too, so RLIMIT_FSIZE stands in for it: each batch of 8 JPEGs below
    is about 700 KB. Before, the worker's feeder thread printed a traceback, the batch was lost
    and the build waited for it forever; now the rest is decoded inline and the report says why.
    """
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(1)
    for i in range(24):
        Image.fromarray(rng.integers(0, 255, (320, 320, 3), dtype=np.uint8)).save(photos / f"n{i:02d}.jpg", quality=90)
    assert 8 * min(p.stat().st_size for p in photos.iterdir()) > 256 * 1024
    code = f"""
        from indexer import BuildConfig, build
        report = build([{str(photos)!r}], {str(tmp_path / "index")!r},
                       BuildConfig(model="tiny-clip", workers=1, batch_size=8, gpu_decode=True))
        print(report.embedded, report.device_decoded, report.count)
        print(report.summary())
    """
    out = _run_limited(256 * 1024, code)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines()[0] == "24 24 24"
    assert "warning: decode workers could not pass batches through shared memory (/dev/shm" in out.stdout
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    paths = IndexReader.open(tmp_path / "index").metadata.column("path").to_pylist()
    assert sorted(paths) == sorted(str(p) for p in photos.iterdir())


@pytest.mark.slow
def test_training_workers_without_room_in_shared_memory_stop_with_a_clear_error(tmp_path: Path) -> None:
    """Training has no inline fallback (its batches are the run's whole input): it stops with
    one line that says what to change, where it used to wait forever for the lost batch."""
    from .test_train_run import make_pairs

    data = make_pairs(tmp_path / "data", n=32, corrupt=0)  # batches of 16 images of 3x32x32 floats: 196 KB
    code = f"""
        from train.__main__ import main
        sys.exit(main(["--model", "tiny-clip", "--train-data", {str(data)!r}, "--output", {str(tmp_path / "run")!r},
                       "--batch-size", "16", "--steps", "2", "--workers", "1", "--device", "cpu", "--no-progress",
                       "--threads", "1"]))
    """
    out = _run_limited(64 * 1024, code)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.stderr.startswith("error: worker processes could not pass a batch through shared memory (/dev/shm")
    assert "--workers 0" in out.stderr and len(out.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_checkpoint_the_disk_refuses_is_one_line_naming_the_reason(tmp_path: Path) -> None:
    """torch reports a refused write to a path as "unexpected pos", without errno: a quota or a
    file size limit on a disk with room used to end the run with that traceback."""
    from .test_train_run import make_pairs

    data, run = make_pairs(tmp_path / "data", n=16, corrupt=0), tmp_path / "run"
    code = f"""
        from train.__main__ import main
        sys.exit(main(["--model", "tiny-clip", "--train-data", {str(data)!r}, "--output", {str(run)!r},
                       "--batch-size", "4", "--steps", "3", "--save-every", "2", "--device", "cpu", "--no-progress",
                       "--threads", "1"]))
    """
    out = _run_limited(1 << 20, code)  # a tiny-clip checkpoint (weights and AdamW moments) is about 19 MB
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.stderr.startswith(f"error: could not write the training run in {run}")
    assert "File too large" in out.stderr and "--resume latest" in out.stderr
    assert not [p for p in run.rglob("*") if ".tmp" in p.name]
    assert json.loads((run / "config.json").read_text())["batch_size"] == 4  # what was written before stays


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_ctrl_c_in_the_middle_of_a_checkpoint_write_is_an_interrupt_and_leaves_no_partial_file(tmp_path: Path) -> None:
    """torch's zip writer, interrupted inside a record, fails again on close ("unexpected pos");
    the KeyboardInterrupt must stay what is raised, so that Ctrl-C prints no traceback.

    The test waits for events it can see, never for a time: the child's "saving" line, then a
    temporary file of the checkpoint that is being written. However slow a loaded machine is,
    the interrupt then lands while a save is under way (the child saves in a loop)."""
    import signal
    import time

    script = textwrap.dedent(f"""
        import sys, torch
        from pathlib import Path
        from train.checkpoint import _atomic_save
        big = {{"w": torch.ones(64_000_000, dtype=torch.uint8)}}  # long enough a write to interrupt
        print("saving", flush=True)
        for i in range(100_000):
            try:
                _atomic_save(big, Path({str(tmp_path)!r}) / "ck.pt")
            except KeyboardInterrupt:
                print("interrupted", flush=True)
                sys.exit(0)
    """)
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=sigint_as_at_a_terminal,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "saving", proc.stderr.read()[-3000:] if proc.stderr else ""

    def writing() -> bool:
        for p in tmp_path.iterdir():
            try:
                if p.name.startswith(".ck.") and p.stat().st_size > 1_000_000:
                    return True
            except FileNotFoundError:  # renamed into place between the listing and the stat
                pass
        return False

    deadline = time.monotonic() + 600
    while not writing():
        assert proc.poll() is None and time.monotonic() < deadline, "the child never started writing a checkpoint"
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    # Python raises the interrupt once the write call under way returns; on a disk that other jobs keep
    # busy that can take minutes, so the wait is generous (the test's own limit still ends a hang)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0 and out.strip() == "interrupted", err[-3000:]
    assert [p.name for p in tmp_path.iterdir() if p.name != "ck.pt"] == [], "no temporary file is left"
