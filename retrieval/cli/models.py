"""``python -m retrieval models``: list model architectures and pretrained tags."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ..models.registry import list_models, list_pretrained


@dataclass(frozen=True)
class ModelsArgs:
    pretrained: bool


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("models", help="list known model architectures")
    p.add_argument("--pretrained", action="store_true", help="list downloadable ARCH:TAG specs instead")
    p.set_defaults(run=lambda a: run(ModelsArgs(pretrained=a.pretrained)))


def run(args: ModelsArgs) -> int:
    for name in list_pretrained() if args.pretrained else list_models():
        print(name)
    return 0
