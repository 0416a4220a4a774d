"""``python -m indexer``: thin command line over the indexer library.

Each subcommand lives in ``indexer/cli/<name>.py`` and exposes ``register(subparsers)``;
it parses its flags into a dataclass, calls the library and prints. Another module can
add a subcommand by adding its name to ``SUBCOMMANDS`` and providing that file. Typed
library errors become a one-line message and exit code 2 here.
"""

from __future__ import annotations

import argparse
import sys

from retrieval.cli import runner

SUBCOMMANDS = ("build", "update", "remove", "stats", "samples", "tag", "ocr", "watch", "verify")


def build_parser() -> argparse.ArgumentParser:
    return runner.build_parser("python -m indexer", __doc__.splitlines()[0], "indexer", SUBCOMMANDS)


def main(argv: list[str] | None = None) -> int:
    return runner.run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
