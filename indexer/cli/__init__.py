"""Subcommands of ``python -m indexer``, one module each with ``register(subparsers)``."""
