"""Database engine and sessions: SQLite in WAL mode by default, any SQLAlchemy URL otherwise."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, make_url
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
