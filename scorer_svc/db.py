"""Database engine and sessions: SQLite in WAL mode by default, any SQLAlchemy URL otherwise."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

from scorer_svc.models import Base


def make_engine(url: str, *, busy_timeout_seconds: float = 30.0) -> Engine:
    """An engine whose tables exist; SQLite waits busy_timeout_seconds for a lock, then fails."""
    if url.startswith("sqlite:///"):
        database = make_url(url).database or ""
        if database and not database.startswith("file:") and database != ":memory:":
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": busy_timeout_seconds}
        )
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    Base.metadata.create_all(engine)
    return engine


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")  # an acknowledged checkpoint survives power loss
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


class DatabaseDamaged(RuntimeError):
    """The database file fails SQLite's integrity check (the message says what to do)."""


class DatabaseDriverMissing(RuntimeError):
    """The database URL names a driver that is not installed (the message names the extra)."""


def check_driver(url: str) -> None:
    """The URL's database driver imports; else one message naming what to install (the URL's
    password masked)."""
    try:
        parsed = make_url(url)
        dialect = parsed.get_dialect()
        dialect.import_dbapi()
    except (ArgumentError, NoSuchModuleError) as exc:
        raise DatabaseDriverMissing(
            f"database_url is not a URL SQLAlchemy can use ({exc}): use sqlite:///PATH or "
            "postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE"
        ) from None
    except ImportError as exc:
        shown = parsed.render_as_string(hide_password=True)
        hint = (
            "install the postgres extra: pip install 'delta-loss-selector[postgres]' "
            "(psycopg 3; a postgresql:// URL uses it)"
            if parsed.get_backend_name() == "postgresql"
            else f"install the Python driver of {parsed.drivername}"
        )
        raise DatabaseDriverMissing(
            f"the database driver for {shown} is not installed ({exc}): {hint}"
        ) from None


def check_integrity(url: str) -> None:
    """An existing SQLite database must pass `PRAGMA quick_check` before the scorer serves it."""
    if not url.startswith("sqlite:///"):
        return
    database = make_url(url).database or ""
    path = Path(database).expanduser()
    if not database or database == ":memory:" or database.startswith("file:") or not path.exists():
        return
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            rows = [row[0] for row in conn.execute("PRAGMA quick_check")]
    except sqlite3.DatabaseError as exc:
        rows = [str(exc)]
    if rows != ["ok"]:
        raise DatabaseDamaged(
            f"the database {path} is damaged ({'; '.join(rows[:3])}): restore it from a "
            "backup, or move it away to start a new history"
        )
