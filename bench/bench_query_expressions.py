"""Do query expressions do what they say? Flickr8k test (1,000 photos), captions as ground truth.

For each pair "SUBJECT" vs "SUBJECT + CONCEPT" (or "- CONCEPT"), reports over the top 20: the
share of photos whose captions mention CONCEPT, and the share that still show SUBJECT. Added
concepts are ones rare in the plain query's top 20, subtracted ones are common there.

    python bench/bench_query_expressions.py --data ../shared/data/flickr8k --work /tmp/qexpr

builds the index with the built-in model on first use (`python -m indexer build` over the
test split, linked into WORK/photos), then prints a Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrieval import open_index  # noqa: E402

TOP = 20
WORDS = {
    "children": r"child|children|kids?|boys?|girls?|toddlers?|bab(y|ies)",
    "a man": r"man|men|guy|gentleman",
    "a dog": r"dogs?|pupp(y|ies)",
    "a girl": r"girls?",
    "people": r"people|persons?|crowd|group|men|women|man|woman|boys?|girls?|children|kids?",
    "snow": r"snow\w*|ski\w*",
    "bicycle": r"bicycl\w*|bikes?|bik(er|ers|ing)|cycl\w+",
    "water": r"water|pool|lake|river|ocean|sea|surf\w*|swim\w*|splash\w*|wave\w*",
    "grass": r"grass\w*|lawn|field|meadow",
    "ball": r"balls?",
    "beach": r"beach|sand\w*|shore",
    "street": r"street|road|sidewalk|city",
    "rock": r"rocks?|rocky|cliff|boulder",
    "a boy": r"boys?",
    "a woman": r"wom[ae]n|lady|ladies",
    "a black dog": r"dogs?|pupp(y|ies)",
    "hat": r"hats?|cap|helmet",
    "shirt": r"shirts?|t-shirts?",
    "girl": r"girls?",
}
PAIRS = [  # (subject, sign, concept): added concepts are rare in the plain top 20, subtracted ones common
    ("children", "+", "snow"),
    ("a man", "+", "bicycle"),
    ("a dog", "+", "beach"),
    ("a dog", "+", "ball"),
    ("people", "+", "snow"),
    ("a woman", "+", "water"),
    ("a dog", "-", "grass"),
    ("a black dog", "-", "water"),
    ("a boy", "-", "shirt"),
    ("a man", "-", "hat"),
    ("people", "-", "street"),
    ("children", "-", "girl"),
]
WEIGHTED = [  # (subject, expression, concept): a weight trades the concept against the subject
    ("children", "2:children + snow", "snow"),
    ("a dog", "2:a dog + beach", "beach"),
    ("a boy", "a boy - 0.5:shirt", "shirt"),
]


def test_split(data: Path) -> dict[str, list[str]]:
    captions: dict[str, list[str]] = defaultdict(list)
    with open(data / "pairs.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["split"] == "test":
                captions[row["image"]].append(row["caption"].lower())
    return captions


def ensure_index(data: Path, work: Path, names: list[str]) -> Path:
    index = work / "index"
    if (index / "CURRENT").exists():
        return index
    photos = work / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    for name in names:
        link = photos / name
        if not link.exists():
            link.symlink_to((data / "images" / name).resolve())
    subprocess.run(
        [sys.executable, "-m", "indexer", "build", str(photos), "--index", str(index), "--model", "builtin"], check=True
    )
    return index


def mentions(captions: list[str], pattern: str) -> bool:
    return any(re.search(rf"\b(?:{pattern})\b", c) for c in captions)


def share(paths: list[str], captions: dict[str, list[str]], pattern: str) -> float:
    return sum(mentions(captions[Path(p).name], pattern) for p in paths) / max(len(paths), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/flickr8k"))
    ap.add_argument("--work", type=Path, required=True, help="folder for the linked photos and the index")
    ap.add_argument("--index", type=Path, help="an index of the test split built already (skips the build)")
    a = ap.parse_args()
    captions = test_split(a.data)
    idx = open_index(a.index or ensure_index(a.data, a.work, sorted(captions)))
    print(f"index: {len(idx)} photos, model {idx.manifest.model_spec}; top {TOP}; shares from the captions\n")
    print(
        "| plain query | expression | concept in top 20: plain -> expression | subject in top 20: plain -> expression |"
    )
    print("|---|---|---|---|")
    rows = [(subject, f"{subject} {sign} {concept}", concept) for subject, sign, concept in PAIRS] + WEIGHTED
    for subject, expression, concept in rows:
        plain = [r.path for r in idx.search(subject, k=TOP)]
        mixed = [r.path for r in idx.search(expression, k=TOP)]
        c0, c1 = share(plain, captions, WORDS[concept]), share(mixed, captions, WORDS[concept])
        s0, s1 = share(plain, captions, WORDS[subject]), share(mixed, captions, WORDS[subject])
        print(f"| {subject} | {expression} | {c0:.0%} -> {c1:.0%} | {s0:.0%} -> {s1:.0%} |")


if __name__ == "__main__":
    main()
