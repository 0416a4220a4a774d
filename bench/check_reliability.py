"""Reliability check: bytes flipped in a real index, and a folder of hostile links.

1. Bit flips: copies a real index, inverts one byte at a random place of one of its files (a file
   picked at random, then an offset in it), and runs the same queries through ``open_index`` as
   on the undamaged index. Each flip is *found* (a typed error before any answer), *unchanged*
   (every result's path and score as before) or *silent wrong* (different answers, no error). The
   same flips are run on a twin whose manifest has no checksums, as an index written before them.
2. Links: a folder holding photos, links inside it, links out of it (a photo, a folder,
   /etc/passwd), a looping folder link, a broken link, a FIFO and a folder named x.jpg, indexed
   without and with ``--follow-links``.

    python bench/check_reliability.py --index INDEX_DIR          # a small real index (copied, not changed)
    python bench/check_reliability.py --photos ../shared/data/flickr8k/images --count 100
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from retrieval.errors import RetrievalError
from retrieval.index.layout import CURRENT, MANIFEST
from retrieval.query.search import open_index

QUERIES = [
    "a dog runs on the grass",
    "children playing in the water",
    "a man on a bicycle",
    "a red car",
    "people in a city street",
    "a snowy mountain",
]


def _answers(index_dir: Path, encoder, vectors: np.ndarray) -> list[list[tuple[str, float]]]:
    index = open_index(index_dir, model=encoder)
    return [[(r.path, round(r.score, 5)) for r in index.search(v, k=10, modality="text")] for v in vectors]


def _strip_checksums(index_dir: Path) -> None:
    gen = index_dir / (index_dir / CURRENT).read_text().strip()
    data = json.loads((gen / MANIFEST).read_text())
    data.pop("checksums", None)
    (gen / MANIFEST).write_text(json.dumps(data, indent=2, sort_keys=True))


def flip_sweep(index_dir: Path, flips: int, seed: int, work: Path) -> dict[str, Counter]:
    base = open_index(index_dir)
    encoder = base.encoder
    vectors = np.stack([base.query_vector(q) for q in QUERIES])
    pristine = {"checksums": work / "pristine", "no checksums": work / "pristine-old"}
    for kind, path in pristine.items():
        shutil.copytree(index_dir, path, ignore=shutil.ignore_patterns("catalog.db*", ".lock", "verified.json"))
        if kind == "no checksums":
            _strip_checksums(path)
    truth = _answers(pristine["checksums"], encoder, vectors)
    gen_name = (index_dir / CURRENT).read_text().strip()
    files = sorted([f"{gen_name}/{p.name}" for p in (index_dir / gen_name).iterdir() if p.is_file()] + [CURRENT])
    rng = random.Random(seed)
    out: dict[str, Counter] = {kind: Counter() for kind in pristine}
    per_file: dict[str, Counter] = {kind: Counter() for kind in pristine}
    for trial in range(flips):
        name = rng.choice(files)
        size = (pristine["checksums"] / name).stat().st_size
        at, mask = rng.randrange(size), rng.randrange(1, 256)
        for kind, source in pristine.items():
            if name.endswith(MANIFEST) and kind == "no checksums":
                size_old = (source / name).stat().st_size  # the manifest without checksums is shorter
                at_here = at % size_old
            else:
                at_here = at
            copy = work / f"trial-{trial}-{kind.replace(' ', '-')}"
            shutil.copytree(source, copy)
            target = copy / name
            data = bytearray(target.read_bytes())
            data[at_here] ^= mask
            target.write_bytes(bytes(data))
            try:
                outcome = "unchanged" if _answers(copy, encoder, vectors) == truth else "silent wrong"
            except RetrievalError:
                outcome = "found"
            except Exception as exc:  # noqa: BLE001 - a traceback is what this check looks for
                outcome = f"crash ({type(exc).__name__})"
            out[kind][outcome] += 1
            per_file[kind][(name.split("/")[-1], outcome)] += 1
            shutil.rmtree(copy)
    for kind in pristine:
        out[kind + " by file"] = per_file[kind]
    return out


def link_corpus(root: Path, model: str) -> dict[str, object]:
    import indexer

    photos, outside = root / "photos", root / "outside"
    for i, where in enumerate(
        [
            photos / "a.jpg",
            photos / "sub" / "b.jpg",
            outside / "o.jpg",
            outside / "trip" / "t.jpg",
            photos / "x.jpg" / "in-folder.jpg",
        ]
    ):
        where.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 48), (40 * i, 255 - 40 * i, 90)).save(where)
    (photos / "inside-link.jpg").symlink_to(photos / "sub" / "b.jpg")
    (photos / "inside-folder").symlink_to(photos / "sub")
    (photos / "outside-link.jpg").symlink_to(outside / "o.jpg")
    (photos / "outside-folder").symlink_to(outside / "trip")
    (photos / "passwd.jpg").symlink_to("/etc/passwd")
    (photos / "sub" / "loop").symlink_to(photos)
    (photos / "broken.jpg").symlink_to(root / "nowhere.jpg")
    os.mkfifo(photos / "fifo.jpg")
    result: dict[str, object] = {}
    for follow in (False, True):
        index = root / f"index-{'follow' if follow else 'default'}"
        report = indexer.build([photos], index, indexer.BuildConfig(model=model, workers=0, follow_links=follow))
        paths = indexer.stats(index).bad_files
        result["--follow-links" if follow else "default"] = {
            "indexed": report.count,
            "outside links not followed": len(report.outside_links),
            "not photos counted": len(report.not_photos),
            "broken links": len(report.broken_links),
            "bad files recorded": len(paths),
            "/etc/passwd opened": any(b.path == "/etc/passwd" for b in paths),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", default=None, help="a small real index to copy (default: build one from --photos)")
    parser.add_argument("--photos", default="../shared/data/flickr8k/images")
    parser.add_argument("--count", type=int, default=100, help="photos to index when building (default 100)")
    parser.add_argument("--model", default=None, help="model for a built index (default: builtin)")
    parser.add_argument("--link-model", default="tiny-clip", help="model for the link corpus (not what is measured)")
    parser.add_argument("--flips", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="reliability-") as tmp:
        work = Path(tmp)
        index_dir = Path(args.index).resolve() if args.index else None
        if index_dir is None:
            import indexer

            chosen = work / "photos"
            chosen.mkdir()
            for p in sorted(Path(args.photos).glob("*.jpg"))[: args.count]:
                os.symlink(p.resolve(), chosen / p.name)
            index_dir = work / "index"
            indexer.build([chosen], index_dir, indexer.BuildConfig(model=args.model, follow_links=True))
        sweep = flip_sweep(index_dir, args.flips, args.seed, work / "flips")
        print(f"bit flips: {args.flips} random single-byte flips across the files of {index_dir.name}")
        for kind in ("checksums", "no checksums"):
            counts = sweep[kind]
            print(f"  {kind:>13}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        print(
            "  by file (checksums): "
            + "; ".join(f"{f} {o} {n}" for (f, o), n in sorted(sweep["checksums by file"].items()))
        )
        print(
            "  by file (no checksums): "
            + "; ".join(f"{f} {o} {n}" for (f, o), n in sorted(sweep["no checksums by file"].items()))
        )
        links = link_corpus(work / "links", args.link_model)
        print(
            "links: photos a.jpg, sub/b.jpg, x.jpg/in-folder.jpg; links inside (file, folder), out (photo, folder, "
            "/etc/passwd), a loop, a broken link, a FIFO"
        )
        for mode, counts in links.items():
            print(f"  {mode:>14}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


if __name__ == "__main__":
    main()
