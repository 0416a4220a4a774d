"""``python -m indexer``: thin command line over the indexer library.

Each subcommand lives in ``indexer/cli/<name>.py`` and exposes ``register(subparsers)``;
it parses its flags into a dataclass, calls the library and prints. Another module can
add a subcommand by adding its name to ``SUBCOMMANDS`` and providing that file. Typed
library errors become a one-line message and exit code 2 here.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from retrieval.errors import RetrievalError

SUBCOMMANDS = ("build", "update", "remove", "stats", "samples", "tag")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m indexer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"indexer.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"indexer.cli.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except RetrievalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
