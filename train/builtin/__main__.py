"""``python -m train.builtin --data ../shared/data/flickr8k --out retrieval/weights/builtin-v1.safetensors``"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from retrieval.errors import RetrievalError

from .fit import FitConfig
from .recipe import DEFAULT_CACHE, RecipeConfig, run


def _parse(argv: list[str] | None) -> tuple[RecipeConfig, Path | None]:
    p = argparse.ArgumentParser(prog="python -m train.builtin", description=__doc__)
    p.add_argument("--data", type=Path, required=True, help="folder with pairs.csv (image,caption,split) and images/")
    p.add_argument("--out", type=Path, required=True, help="where to write the .safetensors weights")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help=f"feature cache (default {DEFAULT_CACHE})")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--summary-json", type=Path, default=None, help="also write the run summary here")
    defaults = FitConfig()
    for f in fields(FitConfig):
        value = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            p.add_argument(flag, type=lambda s: s.lower() in {"1", "true", "yes"}, default=value, metavar="BOOL")
        elif isinstance(value, tuple):
            item = f.metadata.get("item", str)
            p.add_argument(
                flag, type=lambda s, item=item: tuple(item(x) for x in s.split(",") if x), default=value, metavar="A,B"
            )
        else:
            p.add_argument(flag, type=type(value), default=value)
    a = p.parse_args(argv)
    train = FitConfig(**{f.name: getattr(a, f.name) for f in fields(FitConfig)})
    cfg = RecipeConfig(data=a.data, out=a.out, cache_dir=a.cache_dir, train=train, threads=a.threads)
    return cfg, a.summary_json


def main(argv: list[str] | None = None) -> int:
    cfg, summary_path = _parse(argv)
    try:
        result = run(cfg, log=lambda s: print(s, file=sys.stderr, flush=True))
    except (RetrievalError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = json.dumps(result.summary(), indent=2)
    if summary_path is not None:
        summary_path.write_text(summary)
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
