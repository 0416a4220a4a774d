"""Do text queries keep their recall against an image-trained IVF-PQ index? (exact re-ranking on/off)

Real embeddings: the 8,000 Flickr8k images (or the 1,000 test ones) and the 5,000 captions of its test split, from
``--model`` (the built-in model by default). The image vectors are padded with synthetic
vectors drawn from a Gaussian fitted to them (mean and full covariance, renormalised) up to
``--pad-to`` so that ``retrieval.index.ann.choose_factory`` picks IVF-PQ, whose codebooks are then
trained on image vectors only. Text queries sit in another region of the sphere (the
modality gap), which is where PQ distances are least accurate; re-ranking the candidates
exactly against the stored float16 vectors is meant to recover that.

Reported per re-rank depth: recall@10 of the ANN search against exact search, and caption
-> image R@1/R@10 (the caption's own photo among the results) for the ANN and exact search.

    nice -n 10 python bench/bench_text_rerank.py --out bench/results/text_rerank.jsonl
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from retrieval.imageio import load_image  # noqa: E402
from retrieval.index import ann  # noqa: E402
from retrieval.models.factory import create_model  # noqa: E402

FLICKR = REPO.parent / "shared" / "data" / "flickr8k"


def embeddings(model: str, cache: Path, batch: int, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image vectors, caption vectors [5000, d], caption -> image row) for the test captions.

    ``split`` "all" embeds the 8,000 images, "test" only the 1,000 the captions describe."""
    with open(FLICKR / "pairs.csv") as f:
        rows = list(csv.DictReader(f))
    images = sorted({r["image"] for r in rows if split == "all" or r["split"] == split})
    row_of = {name: i for i, name in enumerate(images)}
    tests = [r for r in rows if r["split"] == "test"]
    encoder = create_model(model)
    # keyed by the weights' fingerprint, not the spec: new weights under the same spec re-embed
    stem = cache / f"flickr_{split}_{encoder.fingerprint.replace(':', '_').replace('/', '_')}"
    if not Path(f"{stem}.npz").exists():
        cache.mkdir(parents=True, exist_ok=True)
        img = [
            encoder.encode_images(
                [load_image(FLICKR / "images" / n, draft_size=2 * encoder.image_size) for n in images[s : s + batch]]
            )
            for s in tqdm(range(0, len(images), batch), desc="images")
        ]
        txt = encoder.encode_texts([r["caption"] for r in tests])
        np.savez(f"{stem}.npz", images=np.concatenate(img), texts=txt)
    data = np.load(f"{stem}.npz")
    return data["images"], data["texts"], np.array([row_of[r["image"]] for r in tests])


def pad_like(vectors: np.ndarray, total: int, seed: int) -> np.ndarray:
    """``vectors`` followed by Gaussian draws fitted to them, all unit length."""
    rng = np.random.default_rng(seed)
    mean, cov = vectors.mean(0), np.cov(vectors, rowvar=False)
    # eigh, not cholesky: the covariance may be singular (the built-in model's anchor half spans
    # only the class-name embeddings' subspace)
    extra = rng.multivariate_normal(mean, cov, size=total - len(vectors), method="eigh").astype(np.float32)
    extra /= np.linalg.norm(extra, axis=1, keepdims=True)
    return np.concatenate([vectors, extra]).astype(np.float16)


def recall(ids: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(a, b)) / truth.shape[1] for a, b in zip(ids, truth)]))


def hit_at(ids: np.ndarray, target: np.ndarray, k: int) -> float:
    return float(np.mean((ids[:, :k] == target[:, None]).any(1)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin")
    p.add_argument("--pad-to", type=int, default=100_000)
    p.add_argument("--factory", default="", help="default: retrieval.index.ann.choose_factory(pad-to)")
    p.add_argument("--reranks", default="0,10,30")
    p.add_argument("--nprobes", default="", help="comma-separated nprobe values (default: retrieval.index.ann's)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--images", choices=["all", "test"], default="all", help="real images to embed (test: 1,000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default="/tmp/bench_text_rerank")
    p.add_argument("--out", default="")
    args = p.parse_args()
    if not (FLICKR / "pairs.csv").exists():
        sys.exit(f"Flickr8k not found at {FLICKR}")
    images, texts, target = embeddings(args.model, Path(args.cache), args.batch, args.images)
    vectors = pad_like(images.astype(np.float32), max(args.pad_to, len(images)), args.seed)
    factory = args.factory or ann.choose_factory(len(vectors), vectors.shape[1])
    tick = time.perf_counter()
    index = ann.build(vectors.astype(np.float32), factory, seed=args.seed)
    build_s = time.perf_counter() - tick
    exact_s, exact_i = ann.exact_search(vectors, texts, 10)
    base = {
        "model": args.model,
        "n": len(vectors),
        "real_images": len(images),
        "queries": len(texts),
        "factory": factory,
        "build_s": round(build_s, 1),
        "exact_caption_R@1": round(hit_at(exact_i, target, 1), 4),
        "exact_caption_R@10": round(hit_at(exact_i, target, 10), 4),
    }
    print(json.dumps(base))
    nprobes = [int(x) for x in args.nprobes.split(",")] if args.nprobes else [None]
    for nprobe, rerank in ((p_, int(r)) for p_ in nprobes for r in args.reranks.split(",")):
        searcher = ann.AnnSearcher(index, vectors, nprobe=nprobe, rerank=rerank, use_gpu=False)
        _, ids = searcher.search(texts, 10)
        row = {
            **base,
            "nprobe": searcher.nprobe,
            "rerank": rerank,
            "ann_recall@10_vs_exact": round(recall(ids, exact_i), 4),
            "ann_caption_R@1": round(hit_at(ids, target, 1), 4),
            "ann_caption_R@10": round(hit_at(ids, target, 10), 4),
        }
        print(json.dumps(row), flush=True)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
