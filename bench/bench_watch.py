"""How soon a photo written into a watched folder is searchable, and what the watcher costs idle.

    nice -n 10 python bench/bench_watch.py [--photos 100] [--model builtin] [--quiet 0.5]

Starts the real ``python -m indexer watch`` on a temporary folder holding ``--seed`` Flickr8k
photos, then measures, from this process:

- idle CPU: the watcher's CPU time (all its threads, from /proc) over ``--idle`` seconds with
  nothing changing, as a share of one core;
- one at a time: ``--photos`` photos copied in one by one, each after the one before is
  searchable; latency = from the start of the copy to the publication of a generation that
  holds it (what a service or the app then reads on their next query);
- a burst: ``--photos`` more copied in at once; latency of each from its own copy, and how many
  updates the burst took.

The reference in the same run is each update's own time as the watcher prints it: latency is
the quiet period, the settle checks, that update, and this process's 10 ms polling. At the end
a real search by image (the model the index was built with) finds each burst photo first.
Prints a Markdown table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from retrieval.index.layout import METADATA, live_generation  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "flickr8k" / "images"
TICK = 0.01


class Watcher:
    def __init__(self, photos: Path, index: Path, a: argparse.Namespace) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        cmd = [
            sys.executable,
            "-m",
            "indexer",
            "watch",
            str(photos),
            "--index",
            str(index),
            "--model",
            a.model,
            "--quiet",
            str(a.quiet),
            "--max-delay",
            str(a.max_delay),
            "--no-progress",
        ]
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, word: str, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while not any(f" {word} " in line for line in self.lines):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the watcher did not start:\n" + "\n".join(self.lines))
            time.sleep(0.05)

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime, all threads

    def updates(self, generations: set[str], timeout: float = 60) -> list[str]:
        """The watcher's lines for the updates that published ``generations`` (waits for them to be printed)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in list(self.lines) if " updated in " in line and line.split()[-1] in generations]
            if len(found) == len(generations) or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


def seconds(lines: list[str]) -> list[float]:
    return [float(re.search(r" updated in ([\d.]+) s", line).group(1)) for line in lines]


class Published:
    """Polls CURRENT; records when each path first appears in a published generation."""

    def __init__(self, index: Path) -> None:
        self.index, self.seen_at, self.seen_in, self._generation = index, {}, {}, None

    def poll(self) -> None:
        live = live_generation(self.index)
        if live is None or live.name == self._generation:
            return
        now = time.perf_counter()
        self._generation = live.name
        for path in pq.read_table(live / METADATA, columns=["path"]).column("path").to_pylist():
            if path not in self.seen_at:
                self.seen_at[path], self.seen_in[path] = now, live.name

    def wait(self, paths: list[str], timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while not all(p in self.seen_at for p in paths):
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"not searchable within {timeout} s: {[p for p in paths if p not in self.seen_at][:5]}"
                )
            time.sleep(TICK)
            self.poll()


def summary(latencies: list[float]) -> dict[str, float]:
    return {"p50": statistics.median(latencies), "max": max(latencies)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of photos (default: Flickr8k)")
    ap.add_argument("--model", default="builtin", help="model spec (builtin, or tiny-clip for plumbing)")
    ap.add_argument("--photos", type=int, default=100, help="photos one at a time, and again in the burst")
    ap.add_argument("--seed", type=int, default=20, help="photos in the folder before the watcher starts")
    ap.add_argument("--quiet", type=float, default=0.5, help="the watcher's --quiet")
    ap.add_argument("--max-delay", type=float, default=10.0, help="the watcher's --max-delay")
    ap.add_argument("--idle", type=float, default=20.0, help="seconds of idle CPU measurement")
    a = ap.parse_args()
    if not a.data.is_dir():
        raise SystemExit(f"no photos at {a.data} (give --data FOLDER)")
    pool = sorted(p for p in a.data.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    need = a.seed + 2 * a.photos
    if len(pool) < need:
        raise SystemExit(f"{a.data} holds {len(pool)} photos; this run needs {need}")
    seed, single, burst = pool[: a.seed], pool[a.seed : a.seed + a.photos], pool[a.seed + a.photos : need]

    with tempfile.TemporaryDirectory(prefix="bench_watch_") as tmp:
        photos, index = Path(tmp) / "photos", Path(tmp) / "index"
        photos.mkdir()
        for p in seed:
            shutil.copy(p, photos / p.name)
        started = time.perf_counter()
        w = Watcher(photos, index, a)
        w.wait_for("watching")
        ready = time.perf_counter() - started
        published = Published(index)
        published.poll()

        before = w.cpu_seconds()
        time.sleep(a.idle)  # the measurement itself: nothing happens here on purpose
        idle_cpu = (w.cpu_seconds() - before) / a.idle

        one_by_one = []
        for p in single:
            target = photos / p.name
            t0 = time.perf_counter()
            shutil.copy(p, target)
            published.wait([str(target)])
            one_by_one.append(published.seen_at[str(target)] - t0)
        single_updates = seconds(w.updates({published.seen_in[str(photos / p.name)] for p in single}))

        written = {}
        for p in burst:
            written[str(photos / p.name)] = time.perf_counter()
            shutil.copy(p, photos / p.name)
        published.wait(list(written))
        in_burst = [published.seen_at[path] - t for path, t in written.items()]
        burst_lines = w.updates({published.seen_in[path] for path in written})
        burst_updates = seconds(burst_lines)

        w.proc.send_signal(2)
        w.proc.wait(timeout=120)

        from retrieval.query.search import Index

        idx = Index.open(index)
        misses = sum(idx.search(Path(path), k=1)[0].path != path for path in written)

    result = {
        "model": a.model,
        "quiet_s": a.quiet,
        "max_delay_s": a.max_delay,
        "seed_photos": a.seed,
        "photos": a.photos,
        "start_to_watching_s": ready,
        "idle_cpu_share_of_a_core": idle_cpu,
        "idle_s": a.idle,
        "one_at_a_time_s": summary(one_by_one),
        "one_at_a_time_update_s": summary(single_updates),
        "burst_s": summary(in_burst),
        "burst_updates": len(burst_updates),
        "burst_update_s": burst_updates,
        "burst_search_misses": misses,
        "load_average": os.getloadavg(),
    }
    print(
        f"model {a.model}, --quiet {a.quiet:g} --max-delay {a.max_delay:g}, {a.seed} photos at start; "
        f"load average {result['load_average'][0]:.1f} on {os.cpu_count()} CPUs\n"
    )
    print("| measure | p50 | max |\n|---|---|---|")
    print(
        f"| written -> searchable, {a.photos} photos one at a time (s) | {result['one_at_a_time_s']['p50']:.2f} | "
        f"{result['one_at_a_time_s']['max']:.2f} |"
    )
    print(
        f"| of which the update itself (s) | {result['one_at_a_time_update_s']['p50']:.2f} | "
        f"{result['one_at_a_time_update_s']['max']:.2f} |"
    )
    print(
        f"| written -> searchable, {a.photos} photos in a burst (s) | {result['burst_s']['p50']:.2f} | "
        f"{result['burst_s']['max']:.2f} |"
    )
    print(
        f"\nthe burst took {len(burst_updates)} update(s) ({', '.join(f'{s:.2f} s' for s in burst_updates)}); "
        f"search by image found {a.photos - misses} of {a.photos} burst photos first"
    )
    print("\n".join(f"  {line}" for line in burst_lines))
    print(
        f"idle CPU: {idle_cpu * a.idle:.2f} s over {a.idle:g} s ({100 * idle_cpu:.2f} % of one core; /proc counts "
        f"{1000 / os.sysconf('SC_CLK_TCK'):g} ms ticks); start to watching: {ready:.1f} s"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
