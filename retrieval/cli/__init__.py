"""Subcommands of ``python -m retrieval``; each module exposes ``register(subparsers)``."""
