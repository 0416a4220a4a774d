"""Near-duplicate finding (``python -m retrieval duplicates``): which threshold finds edited copies
without grouping different photos?

    nice -n 10 python bench/eval_duplicates.py --model builtin [--workdir /tmp/dups] [--out results.jsonl]

Builds a real index (``indexer.build``) of every Flickr8k image (8,000 distinct photos) plus
edited copies of the 1,000 test images: each gets six copies, one per edit (``EDITS``). The
shared images are only 224 px, the model's own input size, where re-compression and resizing
would hit the pixels the model sees far harder than they do a phone photo; so each test photo
is first upscaled 4x (896 px, quality 95, standing in for the camera original, and indexed as
the original) and the edits are made on that. The 7,000 other photos are indexed as they are.
Then ``retrieval.duplicates.groups.similar_pairs`` searches once at the lowest threshold and
``group_pairs`` groups at each threshold, and the script reports:

* recall per edit: the share of (original, copy) pairs that end up in one group;
* pair precision: of all pairs of images grouped together, the share that come from the same
  original (two different Flickr8k photos grouped together count as wrong, even where they
  are two shots of one moment);
* groups made only of different originals (no copy in them) and how many photos they hold.

Copies are written once under ``--workdir`` and the index is kept there, so a second run only
searches.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from indexer import BuildConfig, build  # noqa: E402
from retrieval.duplicates import groups as duplicates  # noqa: E402
from retrieval.duplicates.groups import group_pairs, similar_pairs  # noqa: E402
from retrieval.index.reader import IndexReader  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "flickr8k"
THRESHOLDS = [0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98]
UPSCALE = 4


def _jpeg(image: Image.Image, path: Path, quality: int) -> None:
    image.convert("RGB").save(path, "JPEG", quality=quality)


def _smaller(image: Image.Image, path: Path) -> None:  # shared through a messenger: 60% size, quality 75
    _jpeg(image.resize((round(image.width * 0.6), round(image.height * 0.6)), Image.Resampling.LANCZOS), path, 75)


def _crop(image: Image.Image, path: Path) -> None:  # cropped to the central 85%
    w, h = image.size
    dx, dy = round(w * 0.075), round(h * 0.075)
    _jpeg(image.crop((dx, dy, w - dx, h - dy)), path, 90)


EDITS = {
    "q30": lambda im, p: _jpeg(im, p, 30),  # re-compressed hard
    "smaller": _smaller,
    "crop85": _crop,
    "brighter": lambda im, p: _jpeg(
        ImageEnhance.Contrast(ImageEnhance.Brightness(im).enhance(1.2)).enhance(1.15), p, 90
    ),
    "grayscale": lambda im, p: _jpeg(ImageOps.grayscale(im), p, 90),
    "mirrored": lambda im, p: _jpeg(ImageOps.mirror(im), p, 90),
}


def prepare(data: Path, workdir: Path) -> tuple[Path, dict[str, str]]:
    """The photo folder (links to every original, edited copies of the test images) and each file's original."""
    pairs = list(csv.DictReader((data / "pairs.csv").open()))
    images = sorted({r["image"] for r in pairs})
    test = sorted({r["image"] for r in pairs if r["split"] == "test"})
    photos = workdir / "photos"
    (photos / "originals").mkdir(parents=True, exist_ok=True)
    source: dict[str, str] = {}
    upscaled = set(test)
    for name in images:
        original = photos / "originals" / name
        if name not in upscaled:  # indexed as it is, through a link to the shared file
            if not original.exists():
                original.symlink_to((data / "images" / name).resolve())
        elif not original.exists() or original.is_symlink():  # a 4x upscaled stand-in for the camera file
            original.unlink(missing_ok=True)
            with Image.open(data / "images" / name) as im:
                _jpeg(
                    im.convert("RGB").resize((im.width * UPSCALE, im.height * UPSCALE), Image.Resampling.LANCZOS),
                    original,
                    95,
                )
        source[str(original.resolve())] = name
    for edit, apply in EDITS.items():
        folder = photos / edit
        folder.mkdir(exist_ok=True)
        for name in test:
            out = folder / name
            if not out.exists():
                with Image.open(photos / "originals" / name) as im:
                    apply(im.convert("RGB"), out)
            source[str(out.resolve())] = name
    return photos, source


def edit_of(path: str) -> str:
    parent = Path(path).parent.name
    return parent if parent in EDITS else "original"  # originals/ (test photos) or the shared images/ folder


def score(groups, source: dict[str, str], test: set[str], edits=tuple(EDITS)) -> dict:
    grouped_with: dict[str, set[str]] = {}
    right = wrong = 0
    only_originals, photos_in_them = 0, 0
    for g in groups:
        for a, b in combinations(g.paths, 2):
            if source[a] == source[b]:
                right += 1
            else:
                wrong += 1
            grouped_with.setdefault(a, set()).add(b)
            grouped_with.setdefault(b, set()).add(a)
        if all(edit_of(p) == "original" for p in g.paths):
            only_originals += 1
            photos_in_them += len(g.paths)
    original_path = {name: p for p, name in source.items() if edit_of(p) == "original"}
    recall = {}
    for edit in edits:
        hits = sum(
            1 for p, name in source.items() if edit_of(p) == edit and original_path[name] in grouped_with.get(p, ())
        )
        recall[edit] = round(hits / len(test), 4)
    return {
        "groups": len(groups),
        "pairs": right + wrong,
        "pair_precision": round(right / max(1, right + wrong), 4),
        "recall": recall,
        "groups_of_different_originals": only_originals,
        "photos_in_them": photos_in_them,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--model", default="builtin")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/eval_duplicates"))
    p.add_argument("--thresholds", default=",".join(map(str, THRESHOLDS)))
    p.add_argument("--neighbours", type=int, default=8)
    p.add_argument("--out", type=Path, default=None, help="append JSON lines here")
    p.add_argument(
        "--no-fingerprints",
        action="store_true",
        help="group by the vectors alone (as before pixel fingerprints), for comparison",
    )
    a = p.parse_args()
    if a.no_fingerprints:
        duplicates.FINGERPRINT_BITS = -1  # no fingerprint pair is ever linked
    if not (a.data / "pairs.csv").exists():
        print(f"no Flickr8k at {a.data}", file=sys.stderr)
        return 2
    photos, source = prepare(a.data, a.workdir)
    test = {name for path, name in source.items() if edit_of(path) != "original"}
    index_dir = a.workdir / f"index-{a.model.replace('/', '_').replace(':', '_')}"
    report = build([photos], index_dir, BuildConfig(model=a.model), progress=True)
    print(f"index: {report.count} images ({report.embedded} embedded now, {len(report.new_bad)} bad)", file=sys.stderr)
    reader = IndexReader.open(index_dir)
    thresholds = sorted(float(t) for t in a.thresholds.split(",") if t)
    start = time.perf_counter()
    pairs = similar_pairs(reader, thresholds[0], a.neighbours)  # one search serves every threshold
    search_s = round(time.perf_counter() - start, 2)
    rows = []
    for threshold in thresholds:
        start = time.perf_counter()
        groups = group_pairs(reader, pairs, threshold)
        row = {
            "model": a.model,
            "fingerprint": reader.manifest.model_fingerprint,
            "images": len(reader),
            "pixel_fingerprints": not a.no_fingerprints,
            "threshold": threshold,
            "neighbours": a.neighbours,
            "search_seconds": search_s,
            "group_seconds": round(time.perf_counter() - start, 2),
            **score(groups, source, test),
        }
        rows.append(row)
        if a.out:
            with a.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
    alone = recall_one_edit_at_a_time(reader, source, test, thresholds, a.neighbours)
    for row in rows:
        row["recall_alone"] = {edit: alone[edit][row["threshold"]] for edit in EDITS}
        if a.out:
            with a.out.open("a") as f:
                f.write(json.dumps({"alone": True, **row}) + "\n")
    print(
        f"\n{len(reader)} images: {len(test)} Flickr8k test photos with one copy per edit, among all 8,000 originals; "
        f"neighbour search at {thresholds[0]}: {search_s} s\n"
    )
    print(
        "| threshold | "
        + " | ".join(f"recall {e}" for e in EDITS)
        + " | pair precision | groups of different photos (photos) | grouping s |"
    )
    print("|---" * (len(EDITS) + 4) + "|")
    for r in rows:
        print(
            f"| {r['threshold']} | "
            + " | ".join(f"{r['recall'][e]:.3f}" for e in EDITS)
            + f" | {r['pair_precision']:.4f} | {r['groups_of_different_originals']} ({r['photos_in_them']}) | {r['group_seconds']} |"
        )
    print("\nOne edit at a time (the 8,000 originals and the copies of that edit only):\n")
    print("| threshold | " + " | ".join(f"recall {e}" for e in EDITS) + " |")
    print("|---" * (len(EDITS) + 1) + "|")
    for r in rows:
        print(f"| {r['threshold']} | " + " | ".join(f"{r['recall_alone'][e]:.3f}" for e in EDITS) + " |")
    return 0


def recall_one_edit_at_a_time(
    reader: IndexReader, source: dict[str, str], test: set[str], thresholds: list[float], neighbours: int
) -> dict[str, dict[float, float]]:
    """Recall per edit with only that edit's copies in the search (a mask): a copy then cannot
    reach its original through the other copies of the same photo, as in a real collection
    that holds one edit of a photo, not six."""
    paths = [str(Path(p).resolve()) for p in reader.metadata.column("path").to_pylist()]
    out: dict[str, dict[float, float]] = {}
    for edit in EDITS:
        mask = np.array([edit_of(p) in ("original", edit) for p in paths])
        pairs = similar_pairs(reader, thresholds[0], neighbours, mask=mask)
        out[edit] = {
            t: score(
                group_pairs(reader, pairs, t),
                {p: n for p, n in source.items() if edit_of(p) in ("original", edit)},
                test,
                edits=[edit],
            )["recall"][edit]
            for t in thresholds
        }
    return out


if __name__ == "__main__":
    sys.exit(main())
