"""``python -m retrieval``: thin command line over the library.

Each subcommand lives in ``retrieval/cli/<name>.py`` and exposes ``register(subparsers)``;
it parses its flags into a dataclass, calls the library, and prints. Typed library
errors become a one-line message and exit code 2 here.
"""

from __future__ import annotations

import argparse
import sys

from .cli import runner

SUBCOMMANDS = ("search", "duplicates", "models", "classify", "calibrate", "serve")


def build_parser() -> argparse.ArgumentParser:
    return runner.build_parser("python -m retrieval", __doc__.splitlines()[0], "retrieval", SUBCOMMANDS)


def main(argv: list[str] | None = None) -> int:
    return runner.run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
