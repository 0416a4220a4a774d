"""Per-file state of an index (SQLAlchemy 2 ORM): what was seen, embedded, bad or removed.

SQLite at ``DIR/catalog.db`` by default; any SQLAlchemy URL (PostgreSQL) works. The live
generation's metadata is the truth for embedded files: a build killed after publishing
but before committing here is repaired by :meth:`Catalog.reconcile` on the next run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
from sqlalchemy import Connection, Float, Integer, String, Text, create_engine, delete, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from retrieval.errors import CatalogDamagedError, IndexFormatError, IndexWriteError
from retrieval.index.layout import CATALOG, catalog_url
from retrieval.index.store import writes_refused_as_errors

CATALOG_VERSION = 1
OK, BAD, DELETED, REMOVED = "ok", "bad", "deleted", "removed"

Migration = Callable[[Connection], None]
MIGRATIONS: Mapping[int, Migration] = {}
"""``MIGRATIONS[v]`` upgrades a catalog from version ``v`` to ``v + 1``."""


class Base(DeclarativeBase):
    pass


class SchemaVersion(Base):
    __tablename__ = "schema_version"
    version: Mapped[int] = mapped_column(Integer, primary_key=True)


class StateRow(Base):
    __tablename__ = "state"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class FileRow(Base):
    __tablename__ = "files"
    path: Mapped[str] = mapped_column(Text, primary_key=True)
    size: Mapped[int] = mapped_column(Integer)
    mtime: Mapped[float] = mapped_column(Float)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    first_seen: Mapped[datetime] = mapped_column()
    last_seen: Mapped[datetime] = mapped_column()


@dataclass(frozen=True)
class FileState:
    path: str
    size: int
    mtime: float
    sha256: str | None
    status: str
    reason: str | None


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Catalog:
    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self.engine = create_engine(url)
            self._migrate()
        except SQLAlchemyError as exc:
            cause = getattr(exc, "orig", None) or exc  # the driver's own words, without SQLAlchemy's SQL and link
            raise CatalogDamagedError(f"cannot open the catalog at {url}: {str(cause).splitlines()[0]}") from exc

    def _migrate(self) -> None:
        Base.metadata.create_all(self.engine)
        with self.engine.begin() as conn:
            found = conn.execute(select(SchemaVersion.version)).scalars().all()
            version = max(found) if found else CATALOG_VERSION
            if version > CATALOG_VERSION:
                raise IndexFormatError(
                    f"catalog {self.url} has schema version {version}, newer than this program's {CATALOG_VERSION}"
                )
            if found == [CATALOG_VERSION]:  # current: write nothing, so a read-only index can be read
                return
            while version < CATALOG_VERSION:
                MIGRATIONS[version](conn)
                version += 1
            conn.execute(delete(SchemaVersion))
            conn.execute(SchemaVersion.__table__.insert().values(version=version))

    def close(self) -> None:
        self.engine.dispose()

    def _writing(self) -> contextlib.AbstractContextManager[None]:
        """A refused write (SQLite's "database or disk is full"...) as :class:`IndexWriteError`: the
        transaction rolled back, and the live index is the truth that the next run reconciles to."""
        database = self.engine.url.database if self.engine.url.get_backend_name() == "sqlite" else None
        where = Path(database).resolve().parent if database and database != ":memory:" else None
        return writes_refused_as_errors(
            f"the catalog at {self.url}",
            "nothing was recorded; the next build catches the catalog up with the live index",
            where,
            kind=IndexWriteError,
            catching=SQLAlchemyError,
        )

    def files(self, status: str | None = None) -> dict[str, FileState]:
        with Session(self.engine) as s:
            q = select(FileRow) if status is None else select(FileRow).where(FileRow.status == status)
            return {r.path: FileState(r.path, r.size, r.mtime, r.sha256, r.status, r.reason) for r in s.scalars(q)}

    def state(self, key: str) -> str | None:
        with Session(self.engine) as s:
            row = s.get(StateRow, key)
            return row.value if row else None

    def reconcile(self, generation: str | None, metadata: pa.Table | None) -> bool:
        """Make ``ok`` rows match the live generation if the last run did not finish recording it."""
        if generation is None or metadata is None or self.state("generation") == generation:
            return False
        live = {
            p: (int(sz), float(mt), sh)
            for p, sz, mt, sh in zip(*(metadata.column(c).to_pylist() for c in ("path", "size", "mtime", "sha256")))
        }
        self.record(
            ok=[(p, *v) for p, v in live.items()],
            generation=generation,
            deleted=[p for p in self.files(OK) if p not in live],
        )
        return True

    def record(
        self,
        generation: str | None,
        ok: Iterable[tuple[str, int, float, str]] = (),
        bad: Iterable[tuple[str, int, float, str | None, str]] = (),
        deleted: Iterable[str] = (),
        removed: Iterable[str] = (),
    ) -> None:
        """Upsert file states in one transaction and remember which generation they describe."""
        now = _now()
        with self._writing(), Session(self.engine) as s, s.begin():
            existing = {r.path: r for r in s.scalars(select(FileRow))}

            def put(path: str, size: int, mtime: float, sha: str | None, status: str, reason: str | None) -> None:
                row = existing.get(path)
                if row is None:
                    row = FileRow(path=path, first_seen=now)
                    s.add(row)
                    existing[path] = row
                row.size, row.mtime, row.sha256, row.status, row.reason, row.last_seen = (
                    size,
                    mtime,
                    sha,
                    status,
                    reason,
                    now,
                )

            for path, size, mtime, sha in ok:
                put(path, size, mtime, sha, OK, None)
            for path, size, mtime, sha, reason in bad:
                put(path, size, mtime, sha, BAD, reason)
            for status, paths in ((DELETED, deleted), (REMOVED, removed)):
                for path in paths:
                    row = existing.get(path)
                    if row is not None:
                        row.status, row.reason, row.last_seen = status, None, now
                    elif status == REMOVED:
                        put(path, 0, 0.0, None, REMOVED, None)
            s.execute(update(FileRow).where(FileRow.status == OK).values(last_seen=now))
            if generation is not None:
                s.merge(StateRow(key="generation", value=generation))

    def unremove(self, under: Callable[[str], bool]) -> None:
        """Forget explicit removals of paths the user adds back (``build`` naming them again)."""
        with self._writing(), Session(self.engine) as s, s.begin():
            for row in s.scalars(select(FileRow).where(FileRow.status == REMOVED)):
                if under(row.path):
                    s.delete(row)


def open_catalog(index_dir: Path, db_url: str | None = None, rebuild: bool = False) -> Catalog:
    """The index's catalog. A damaged SQLite file is an error that says how to recover; a
    rebuild sets it aside (``catalog.db.damaged``) and starts a new one, since it re-reads
    every file anyway (what was removed by hand, and why files were bad, is lost with it)."""
    url = db_url or catalog_url(index_dir)
    try:
        return Catalog(url)
    except CatalogDamagedError as exc:
        damaged = Path(index_dir) / CATALOG
        if db_url is not None or not damaged.is_file():
            raise
        if not rebuild:
            raise CatalogDamagedError(
                f"{exc}; rebuild the index with `python -m indexer build FOLDER --index "
                f"{index_dir} --rebuild` (it sets the damaged file aside)"
            ) from exc
        damaged.replace(damaged.with_name(CATALOG + ".damaged"))
        return Catalog(url)
