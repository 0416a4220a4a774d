"""Scan stage: walk folders for image files, following symlinks that stay inside them, without looping."""

from __future__ import annotations

import os
import stat
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from retrieval.errors import PathNotFoundError
from retrieval.imageio import is_image_path


@dataclass(frozen=True)
class ScannedFile:
    path: str
    size: int
    mtime: float


def resolve_roots(paths: Iterable[str | os.PathLike[str]], must_exist: bool = True) -> list[str]:
    out: list[str] = []
    for p in paths:
        real = os.path.realpath(os.path.expanduser(os.fspath(p)))
        if must_exist and not os.path.exists(real):
            raise PathNotFoundError(f"no such file or folder: {p}")
        if real not in out:
            out.append(real)
    return out


_KINDS = (
    (stat.S_ISFIFO, "a pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a device"),
    (stat.S_ISBLK, "a device"),
)


def _stat_file(path: str, notes: ScanNotes | None = None) -> ScannedFile | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):  # a pipe or a device named like an image: reading it could block for ever
        if notes is not None:
            notes.not_photos[path] = next((why for test, why in _KINDS if test(st.st_mode)), "not a regular file")
        return None
    return ScannedFile(path=os.path.realpath(path), size=st.st_size, mtime=st.st_mtime)


EMPTY_ROOT = "empty: a drive or share that is not mounted?"


@dataclass
class ScanNotes:
    """What a scan saw besides the images it returns."""

    ignored: Counter[str] = field(default_factory=Counter)  # visible files that are not supported images, by extension
    unreachable: dict[str, str] = field(default_factory=dict)  # folders that could not be read (or empty roots) -> why
    bad_names: list[str] = field(
        default_factory=list
    )  # images and folders whose names are not UTF-8 (shown with \x escapes)
    broken_links: dict[str, str] = field(default_factory=dict)  # links that lead nowhere -> where they point
    outside_links: dict[str, str] = field(
        default_factory=dict
    )  # links not followed: they lead out of the roots -> where
    not_photos: dict[str, str] = field(default_factory=dict)  # named like photos or looping, skipped or walked -> what


def utf8_name(path: str) -> bool:
    """Whether ``path`` can be stored as text: a name in another encoding (Latin-1 from an old camera
    or archive) reaches Python as lone surrogates, which Parquet and SQLite refuse."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown_name(path: str) -> str:
    """``path`` for messages: bytes that are not UTF-8 as ``\\xe9`` escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def file_kind(name: str) -> str:
    """How an ignored file is counted: its lower-case extension without the dot, or ``(none)``."""
    return os.path.splitext(name)[1].lower().lstrip(".") or "(none)"


LOOPED = "a folder link that leads to a folder already scanned (a loop, or a second link to it)"
PHOTO_NAMED_FOLDER = "a folder named like a photo (its photos are indexed)"


def _walk(
    root: str, visited: set[tuple[int, int]], notes: ScanNotes, inside: list[str] | None
) -> Iterator[ScannedFile]:
    """Folders under ``root``, depth first; ``inside`` (the roots) set: links leading out of them are not followed."""
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in visited:  # a folder linked in twice, or a link loop
                if folder != root and os.path.islink(folder):
                    notes.not_photos[folder] = LOOPED
                continue
            visited.add((st.st_dev, st.st_ino))
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            notes.unreachable[os.path.realpath(folder)] = exc.strerror or type(exc).__name__
            continue
        if folder == root and not entries:  # a mount point whose drive or share is not mounted looks like this
            notes.unreachable[os.path.realpath(folder)] = EMPTY_ROOT
        subdirs = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=True)
            except OSError:  # a link loop
                is_dir = False
            if entry.is_symlink():
                if not os.path.exists(entry.path):  # its target is missing, or a loop
                    notes.broken_links[entry.path] = os.path.realpath(entry.path)
                    continue
                target = os.path.realpath(entry.path)
                if inside is not None and not any(is_under(target, r) for r in inside):
                    notes.outside_links[entry.path] = target
                    continue
            if is_dir and not utf8_name(entry.name):  # reported once, not once per photo inside
                notes.bad_names.append(shown_name(entry.path))
            elif is_dir:
                if is_image_path(entry.name):
                    notes.not_photos[entry.path] = PHOTO_NAMED_FOLDER
                subdirs.append(entry.path)
            elif is_image_path(entry.name):
                found = _stat_file(entry.path, notes)
                if found is not None:
                    yield found
            else:
                notes.ignored[file_kind(entry.name)] += 1
        stack.extend(reversed(subdirs))


def scan(
    roots: Iterable[str], skip_dirs: Iterable[str] = (), notes: ScanNotes | None = None, follow_links: bool = False
) -> list[ScannedFile]:
    """Every image file under ``roots`` (files count as themselves), by resolved path, sorted.

    Hidden files and folders are skipped, and so are ``skip_dirs`` (the index's own folder).
    Into ``notes``: visible files that are not supported images (videos, RAW, sidecars...), by
    extension; roots and folders that cannot be read (a network share that is not mounted, no
    permission) and roots that are wholly empty (an unmounted mount point), with the reason (what
    the index holds under them is not known to be gone: :func:`indexer.pipeline.plan_changes`
    keeps it); links that lead nowhere (a folder on a drive that is not mounted, a link loop);
    and images and folders whose names are not UTF-8, which are left out. Links that lead out of
    ``roots`` are not followed unless ``follow_links`` (into ``notes.outside_links``); pipes,
    devices, folders named like photos and folder links that loop go into ``notes.not_photos``.
    """
    notes = ScanNotes() if notes is None else notes
    visited: set[tuple[int, int]] = set()
    for d in skip_dirs:
        try:
            st = os.stat(d)
            visited.add((st.st_dev, st.st_ino))
        except OSError:
            continue
    roots = list(roots)
    inside = None if follow_links else roots
    found: dict[str, ScannedFile] = {}
    bad_files: dict[str, None] = {}  # in scan order, each once (a file reached through two roots or links)
    for root in roots:
        items: Iterable[ScannedFile] = []
        if not utf8_name(root):
            notes.bad_names.append(shown_name(root))
        elif is_image_path(root) and not os.path.lexists(root) and os.path.isdir(os.path.dirname(root)):
            pass  # an image given by itself, deleted from a folder that is there: gone, not unreachable
        elif not os.path.isfile(root):
            items = _walk(root, visited, notes, inside)
        elif is_image_path(root):
            item = _stat_file(root, notes)
            items = [item] if item else []
        else:
            notes.ignored[file_kind(root)] += 1
        for item in items:
            if utf8_name(item.path):
                found.setdefault(item.path, item)
            else:
                bad_files.setdefault(shown_name(item.path))
    notes.bad_names += list(bad_files)
    return [found[p] for p in sorted(found)]


def is_under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)
