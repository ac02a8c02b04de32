"""Database engine and sessions: SQLite in WAL mode by default, or PostgreSQL; the schema kept
current by its migrations."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Dialect, Engine, create_engine, event, inspect, make_url, text
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from scorer_svc.storage.engines import QUERIES_KEY, SUPPORTED, EngineQueries


def make_engine(url: str, *, busy_timeout_seconds: float = 30.0) -> Engine:
    """An engine whose tables exist; SQLite waits busy_timeout_seconds for a lock, then fails.
    A database or driver the scorer has no queries for is refused (UnsupportedDatabase)."""
    engine_queries(make_url(url).get_dialect())
    if url.startswith("sqlite:///"):
        database = make_url(url).database or ""
        if database and not database.startswith("file:") and database != ":memory:":
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": busy_timeout_seconds}
        )
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True, connect_args=connect_args_of(url))
    upgrade(engine)
    return engine


# libpq's (psycopg's) connection settings: a try to connect gives up after CONNECT_TIMEOUT_S,
# and a connection whose server went silent (a host down, a network cut) is found dead
# within keepalives_idle + keepalives_interval * keepalives_count seconds (about a minute),
# so that no single try outlasts database_outage_seconds waiting on a dead peer.
CONNECT_TIMEOUT_S = 10
LIBPQ_CONNECT_ARGS: dict[str, int] = {
    "connect_timeout": CONNECT_TIMEOUT_S,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}
LIBPQ_DRIVERS = frozenset({"psycopg", "psycopg2"})


def connect_args_of(url: str) -> dict[str, int]:
    """The connect_args of a server database's engine: libpq's timeouts for PostgreSQL through
    psycopg (LIBPQ_CONNECT_ARGS), nothing for another driver."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in LIBPQ_DRIVERS:
        return dict(LIBPQ_CONNECT_ARGS)
    return {}


MIGRATIONS = Path(__file__).with_name("migrations")
FIRST_REVISION = "0001"  # the schema the releases before migrations made
MIGRATION_LOCK = 0x5C0_4E55  # PostgreSQL advisory lock key: one scorer migrates at a time


def upgrade(engine: Engine) -> None:
    """Bring the database to the current schema with its migrations (scorer_svc/storage/migrations).
    A database made by a release before migrations (its tables, no alembic_version) is taken
    as the first revision, then upgraded in place; a new one is made from nothing."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":  # two scorers starting on one database
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        config.attributes["connection"] = connection
        tables = set(inspect(connection).get_table_names())
        if "runs" in tables and "alembic_version" not in tables:
            command.stamp(config, FIRST_REVISION)
        command.upgrade(config, "head")


def _unicode_lower(text: object) -> object:
    return text.lower() if isinstance(text, str) else text


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    # SQLite's own lower() folds ASCII letters only: "Ärger" would not match "ärger" in a
    # search that PostgreSQL answers in any case
    dbapi_connection.create_function("lower", 1, _unicode_lower, deterministic=True)
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")  # an acknowledged checkpoint survives power loss
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions of the engine, each carrying its engine's queries (scorer_svc.storage.engines:
    queries_of)."""
    return sessionmaker(
        engine, expire_on_commit=False, info={QUERIES_KEY: engine_queries(engine.dialect)}
    )


class DatabaseDamaged(RuntimeError):
    """The database file fails SQLite's integrity check (the message says what to do)."""


class DatabaseDriverMissing(RuntimeError):
    """The database URL names a driver that is not installed (the message names the extra)."""


class UnsupportedDatabase(DatabaseDriverMissing):
    """The database URL names a database or driver the scorer has no queries for."""


def engine_queries(dialect: Dialect | type[Dialect]) -> EngineQueries:
    """The queries of an engine of this dialect (scorer_svc.storage.engines.SUPPORTED);
    UnsupportedDatabase for any other database or driver, or a driver's asyncio form."""
    queries = None if dialect.is_async else SUPPORTED.get((dialect.name, dialect.driver))
    if queries is None:
        form = " (asyncio)" if dialect.is_async else ""
        raise UnsupportedDatabase(
            f"the scorer does not support the database {dialect.name}+{dialect.driver}{form}: it "
            "supports SQLite through Python's sqlite3 (sqlite:///PATH) and PostgreSQL through "
            "psycopg 3 (postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE)"
        )
    return queries


def check_driver(url: str) -> None:
    """The URL's database driver imports; else one message naming what to install (the URL's
    password masked). An installed driver the scorer has no queries for: UnsupportedDatabase."""
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
    engine_queries(dialect)


class DatabaseUnavailable(RuntimeError):
    """The database server cannot be reached or refuses the scorer (password masked)."""


def masked(url: str) -> str:
    """The URL as logs and errors show it: any password as ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<a database URL SQLAlchemy cannot read>"


def without_secret(url: str, text_: str) -> str:
    """text_ with the URL's password, if any, replaced by ***."""
    try:
        password = make_url(url).password
    except ArgumentError:
        return text_
    # a short password would mask ordinary words; no driver message quotes one anyway
    return text_.replace(str(password), "***") if password and len(str(password)) >= 4 else text_


def check_reachable(url: str) -> None:
    """A server database answers a connection before the scorer starts: else one message
    naming the (masked) URL and the server's reason."""
    if url.startswith("sqlite"):
        return
    engine = create_engine(url, connect_args=connect_args_of(url))
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())
        raise DatabaseUnavailable(
            f"cannot use the database {masked(url)}: {without_secret(url, reason)}; "
            "check that the server runs, and the host, port, user, password and database name"
        ) from None
    finally:
        engine.dispose()


def check_database(url: str) -> None:
    """Everything about the database that can stop the scorer at start, in one line each: the
    driver, an existing SQLite file's integrity, a server's answer."""
    check_driver(url)
    check_integrity(url)
    check_reachable(url)


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
