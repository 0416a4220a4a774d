"""Quantities written for people."""

from __future__ import annotations


def format_bytes(n: float | None) -> str:
    """A file size for people: ``812 B``, ``12.3 KB``, ``2.1 MB`` (powers of 1000)."""
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")
