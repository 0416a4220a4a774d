"""Text -> image recall of the fast paths (ONNX Runtime) against the full torch path.

On Flickr8k test (1,000 images, 5 captions each) it embeds the images twice with the built-in
model: with the torch image tower and with the exported one a CPU build runs
(``retrieval.models.onnximage``); and every caption twice: with the model's own text tower
(torch) and with the exported one (``retrieval.models.onnxtext``). Each is exported first if
the cache lacks it. It reports R@1/5/10 for the full path, the fast text path over torch's
image vectors, and both fast paths together (what a CPU build and a fresh-process query
give), their difference from the full path (the goal: within 0.2 points), the largest
differences between the vectors, and how many captions rank their top 10 images the same.

    python bench/eval_fast_text.py [--limit 1000] [--cache DIR]
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "flickr8k"

from retrieval.imageio import load_image  # noqa: E402
from retrieval.models.factory import create_model  # noqa: E402
from retrieval.models.onnxexport import ensure_text_onnx, fast_image_encoder  # noqa: E402
from retrieval.models.onnxtext import OnnxTextEncoder  # noqa: E402


def test_pairs(limit: int) -> tuple[list[str], list[str], np.ndarray]:
    """Test images, all their captions, and each caption's image row."""
    by_image: dict[str, list[str]] = defaultdict(list)
    with open(DATA / "pairs.csv") as f:
        for row in csv.DictReader(f):
            if row["split"] == "test":
                by_image[row["image"]].append(row["caption"])
    images = sorted(by_image)[:limit]
    captions = [c for im in images for c in by_image[im]]
    owner = np.array([i for i, im in enumerate(images) for _ in by_image[im]])
    return images, captions, owner


def recall(
    text: np.ndarray, images: np.ndarray, owner: np.ndarray, ks=(1, 5, 10)
) -> tuple[dict[int, float], np.ndarray]:
    scores = text @ images.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, : max(ks)]
    return {k: 100.0 * float((top[:, :k] == owner[:, None]).any(1).mean()) for k in ks}, top


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=1000, help="test images (each with its 5 captions)")
    ap.add_argument("--cache", type=Path, help="folder to keep the image and caption vectors in between runs")
    args = ap.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"Flickr8k not found at {DATA}")
    names, captions, owner = test_pairs(args.limit)
    encoder = create_model("builtin", device="cpu")
    folder = ensure_text_onnx(encoder)
    fast = OnnxTextEncoder.load(folder) if folder else None
    if fast is None:
        raise SystemExit("the text tower could not be exported")
    built = fast_image_encoder(create_model("builtin", device="cpu", towers="image"))
    if type(built.model.visual).__name__ != "OnnxVisual":
        raise SystemExit("the image tower could not be exported (or this CPU runs it in bf16)")

    def vectors(name: str, make) -> tuple[np.ndarray, float]:
        """``make()``, or its result kept from an earlier run in ``--cache`` (the seconds are then 0)."""
        kept = args.cache / f"{name}-{len(names)}.npy" if args.cache else None
        if kept is not None and kept.is_file():
            return np.load(kept), 0.0
        tick = time.perf_counter()
        out = make()
        seconds = time.perf_counter() - tick
        if kept is not None:
            kept.parent.mkdir(parents=True, exist_ok=True)
            np.save(kept, out)
        print(f"{name}: {len(out)} vectors in {seconds:.1f} s", flush=True)
        return out, seconds

    def embed(enc) -> np.ndarray:
        return np.concatenate(
            [
                enc.encode_images([load_image(DATA / "images" / n) for n in names[s : s + 64]])
                for s in range(0, len(names), 64)
            ]
        )

    image_vectors, t_images = vectors("images", lambda: embed(encoder))
    built_vectors, t_built = vectors("images-onnx", lambda: embed(built))
    full_text, t_full = vectors("captions-torch", lambda: encoder.encode_texts(captions))
    fast_text, t_fast = vectors("captions-onnx", lambda: fast.encode_texts(captions))

    r_full, top_full = recall(full_text, image_vectors, owner)
    r_fast, top_fast = recall(fast_text, image_vectors, owner)
    r_both, top_both = recall(fast_text, built_vectors, owner)
    print(
        f"Flickr8k test: {len(names)} images, {len(captions)} captions; images embedded by torch in "
        f"{t_images:.1f} s, by ONNX Runtime in {t_built:.1f} s; captions by torch in {t_full:.1f} s, by ONNX "
        f"Runtime in {t_fast:.1f} s (machine load varies)"
    )
    print("\n| text path, image path | R@1 | R@5 | R@10 | difference from full |\n|---|---:|---:|---:|---|")
    rows = (
        ("full (torch), torch", r_full),
        ("fast (ONNX Runtime), torch", r_fast),
        ("fast (ONNX Runtime), exported (a CPU build)", r_both),
    )
    for name, r in rows:
        diff = " / ".join(f"{r[k] - r_full[k]:+.2f}" for k in (1, 5, 10))
        print(f"| {name} | {r[1]:.2f} | {r[5]:.2f} | {r[10]:.2f} | {diff} |")
    print(
        f"\nlargest coordinate difference: text vectors {np.abs(fast_text - full_text).max():.2e}, image vectors "
        f"{np.abs(built_vectors - image_vectors).max():.2e}; captions with the same top 10 images in the same "
        f"order: fast text {float((top_full == top_fast).all(1).mean()) * 100:.1f} %, both fast paths "
        f"{float((top_full == top_both).all(1).mean()) * 100:.1f} %"
    )
    ok = all(abs(r[k] - r_full[k]) <= 0.2 for r in (r_fast, r_both) for k in (1, 5, 10))
    print("within 0.2 points at R@1/5/10:", ok)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
