"""Average built-in weight files (runs of the recipe with other seeds) and score the soup on Flickr8k.

    nice -n 10 python bench/eval_soup.py --data ../shared/data/flickr8k --out soup.safetensors \\
        retrieval/weights/builtin-v1.safetensors seed1.safetensors seed2.safetensors

Every run of ``python -m train.builtin`` starts from the same initialisation, so runs that
differ only in ``--seed`` can be averaged weight for weight (a model soup). The files are
averaged uniformly (the semantic bridge's class-name matrix is the same in all of them), the
soup is written to ``--out`` (loadable as ``builtin:PATH``), and val and test recall are
scored from the recipe's feature cache, as the recipe scores its own runs (the cache is built
if missing). Prints JSON: the recalls and the mean of the six per split.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from retrieval.errors import ModelUnavailableError  # noqa: E402
from retrieval.models.factory import create_model, load_state_dict_file  # noqa: E402
from train.builtin.batches import TrainData, evaluate_split  # noqa: E402
from train.builtin.features import build_cache  # noqa: E402
from train.builtin.fit import FitConfig, average_states  # noqa: E402
from train.builtin.recipe import BASE_SPEC, DEFAULT_CACHE, RecipeConfig, cache_spec, save_weights  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("weights", nargs="+", type=Path, help="safetensors files written by python -m train.builtin")
    p.add_argument("--data", type=Path, required=True, help="folder with pairs.csv and images/")
    p.add_argument("--out", type=Path, required=True, help="where to write the averaged weights")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    a = p.parse_args()
    try:
        states = [load_state_dict_file(w) for w in a.weights]
    except ModelUnavailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if any(s.keys() != states[0].keys() for s in states):
        print("error: the weight files do not hold the same tensors (different recipes?)", file=sys.stderr)
        return 2
    soup = average_states([{k: v.float() for k, v in s.items()} for s in states])
    save_weights(soup, a.out, {"soup_of": json.dumps([str(w) for w in a.weights])})

    encoder = create_model(BASE_SPEC, device="cpu", training=True)
    cache = build_cache(
        encoder, cache_spec(encoder, RecipeConfig(data=a.data, out=a.out, cache_dir=a.cache_dir)), a.cache_dir
    )
    cfg = FitConfig(views=("center",))  # scoring reads the centre view only; the cache key keeps the recipe's views
    data = TrainData(encoder.model, cache, cfg)
    encoder.model.load_state_dict(soup, strict=False)
    encoder.model.eval()
    report = {}
    for split in ("val", "test"):
        scores = evaluate_split(encoder.model, data, cfg, split)
        report[split] = {**scores.as_dict(), "mean_of_6": scores.mean_recall}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
