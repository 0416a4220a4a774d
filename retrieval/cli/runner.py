"""The shared shape of every ``python -m PACKAGE`` command line.

Subcommands live in ``PACKAGE/cli/<name>.py`` and expose ``register(subparsers)``, which
parses flags into a dataclass and sets ``run``. Typed library errors become a one-line
message and exit code 2, and the project's own warnings (``RetrievalWarning``) a
``warning: ...`` line; nothing else in the project prints errors or exits.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from ..errors import RetrievalError, RetrievalWarning


def count(low: int, what: str = "a whole number") -> Any:
    """An argparse ``type``: an int of at least ``low`` (a one-line usage error otherwise)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is too small: {what} of at least {low}")
        return value

    return parse


def port(text: str) -> int:
    """An argparse ``type`` for a TCP port (1-65535)."""
    value = count(1, "a port number")(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (1-65535)")
    return value


def build_parser(prog: str, description: str, package: str, subcommands: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in subcommands:
        try:
            module = importlib.import_module(f"{package}.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{package}.cli.{name}":
                raise
            continue
        module.register(sub)
    return parser


DASH_VALUED = ("--sort",)
"""Options whose values may start with a dash (``--sort -date``), which argparse reads as an option."""


def _dash_values_joined(argv: list[str]) -> list[str]:
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in DASH_VALUED and arg.startswith("-") and not arg.startswith("--"):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def run(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse ``argv``, run the chosen subcommand, and map failures to exit codes."""
    args = parser.parse_args(_dash_values_joined(sys.argv[1:] if argv is None else argv))
    _show_our_warnings_as_lines()
    try:
        return int(args.run(args) or 0)
    except RetrievalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head`
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _show_our_warnings_as_lines() -> None:
    """This project's warnings print as ``warning: ...``; everyone else's keep Python's format.
    Installed once per process (``main`` may run several times in one, as in the tests)."""
    default = warnings.showwarning
    if getattr(default, "retrieval_lines", False):
        return

    def show(message: Any, category: type[Warning], *rest: Any, **kw: Any) -> None:
        if issubclass(category, RetrievalWarning):
            print(f"warning: {message}", file=sys.stderr)
        else:
            default(message, category, *rest, **kw)

    show.retrieval_lines = True  # type: ignore[attr-defined]
    warnings.showwarning = show
