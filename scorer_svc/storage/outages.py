"""The scorer's database while it runs: an outage that passes by itself (a lost connection, a
PostgreSQL restart) is waited through, a damaged file is reported, and either is logged as one
line at once and at most one a minute, never a traceback per request or try."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_delay,
    wait_exponential,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# PostgreSQL SQLSTATEs that pass by themselves: an administrator or crash shutdown of the
# server (57P01, 57P02), a server starting or stopping (57P03), a transaction given up to
# another (40001 serialization failure, 40P01 deadlock); and the whole class 08 (connection
# exceptions).
TRANSIENT_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "40001", "40P01"})

# PostgreSQL SQLSTATEs of a server that refuses the scorer for good: class 28 (invalid
# authorization: a wrong password, an unknown role) and 3D000 (no such database).
REFUSED_SQLSTATE_CLASSES = ("28",)
REFUSED_SQLSTATES = frozenset({"3D000"})

# psycopg raises every failed connection as OperationalError("connection failed: ...") with no
# SQLSTATE: the server's refusals are told from an outage by libpq's wording.
REFUSED_CONNECTION_WORDS = (
    "authentication failed",  # password, ident, peer, gss, sspi, ldap, radius, cert
    "no password supplied",
    "no pg_hba.conf entry",
    "pg_hba.conf rejects connection",
    "does not exist",  # role "x" does not exist, database "x" does not exist
    "is not permitted to log in",
    "permission denied for database",
)


def sqlstate_of(error: BaseException) -> str | None:
    """The SQLSTATE of a PostgreSQL driver's error (psycopg's sqlstate, or its diagnostic's),
    None when it has none or is no PostgreSQL driver's."""
    orig = error.orig if isinstance(error, DBAPIError) else error
    state = getattr(orig, "sqlstate", None)
    if state is None:
        state = getattr(getattr(orig, "diag", None), "sqlstate", None)
    return state if isinstance(state, str) else None


def _is_postgres_driver_error(error: BaseException) -> bool:
    orig = error.orig if isinstance(error, DBAPIError) else error
    return hasattr(orig, "sqlstate")  # psycopg's errors have it


def is_refused(error: BaseException) -> bool:
    """Whether the database server refuses the scorer for good: a wrong password or user, a
    database that does not exist, no pg_hba.conf entry for it; trying again changes nothing."""
    if not isinstance(error, DBAPIError) or not _is_postgres_driver_error(error):
        return False
    state = sqlstate_of(error)
    if state is not None:
        return state.startswith(REFUSED_SQLSTATE_CLASSES) or state in REFUSED_SQLSTATES
    text_ = str(error.orig).lower()
    return any(words in text_ for words in REFUSED_CONNECTION_WORDS)


def is_transient(error: BaseException) -> bool:
    """Whether a database error passes by itself, so that the same work may be tried again:
    a connection SQLAlchemy found lost (and invalidated), or a PostgreSQL driver error that is
    about the connection (no SQLSTATE: refused, reset, closed) or carries a transient SQLSTATE;
    not a server's refusal of the scorer (is_refused: a wrong password, user or database name).
    SQLite's errors (a lock held past the busy timeout, a read-only or damaged file) are not."""
    if is_refused(error):
        return False
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    if not isinstance(error, OperationalError | InterfaceError):
        return False
    if not _is_postgres_driver_error(error):
        return False
    state = sqlstate_of(error)
    return state is None or state.startswith("08") or state in TRANSIENT_SQLSTATES


@dataclass(frozen=True)
class Trouble:
    """What a database error means for whoever meets it: damaged (the file must be restored),
    disk, unavailable (it should pass), misconfigured (the server refuses the scorer's user or
    database), or error; and what to do."""

    kind: str
    advice: str


def trouble_of(error: BaseException) -> Trouble:
    if is_refused(error):
        return Trouble(
            "misconfigured",
            "the database server refuses the scorer (authentication, or no such database): "
            "check the database URL's user, password and database name (and the server's "
            "pg_hba.conf), then restart the scorer",
        )
    if is_transient(error):
        return Trouble(
            "unavailable",
            "the database server does not answer (it restarts or fails over, or the "
            "connection was lost): retry shortly; if it lasts, check that the server runs and "
            "can be reached",
        )
    orig = error.orig if isinstance(error, DBAPIError) else error
    if isinstance(orig, sqlite3.DatabaseError):
        name = getattr(orig, "sqlite_errorname", "") or ""
        text_ = str(orig)
        if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or any(
            words in text_ for words in ("malformed", "not a database")
        ):
            return Trouble(
                "damaged",
                "the database file is damaged: stop the scorer, restore the file from a "
                "backup (and check the disk it is on), then start the scorer again",
            )
        if name.startswith(("SQLITE_IOERR", "SQLITE_FULL")):
            return Trouble(
                "disk",
                "the disk under the database failed a read or write: check the disk (its "
                "space, its errors), then restart the scorer",
            )
    return Trouble("error", "see the scorer's log and check the database")


def first_line(error: BaseException) -> str:
    """The driver's message of a database error (no SQL, no parameters), on one line."""
    orig = error.orig if isinstance(error, DBAPIError) else error
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(orig).__name__


LOG_EVERY_SECONDS = 60.0  # a run of database errors is logged at most once this often
DAMAGE_HOLD_SECONDS = 60.0  # after a damaged read, the API refuses at once for this long


@dataclass(eq=False)
class DatabaseStatus:
    """What the scorer has lately seen of its database, shared by the API, the worker and the
    intake (status_of): a run of errors is one log line at once, then at most one a minute
    with a count, never a line per request or try; /healthz answers 503 while it lasts. The
    run ends when the database answers again (answered), and that is logged with its length;
    after a damaged read, the routes that read the database refuse for DAMAGE_HOLD_SECONDS
    without reading it (a damaged file answers wrongly or not at all)."""

    clock: Callable[[], float] = time.monotonic
    log_every: float = LOG_EVERY_SECONDS
    hold: float = DAMAGE_HOLD_SECONDS
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _since: float | None = None  # the run of errors's first
    _last_at: float = 0.0
    _last: Trouble | None = None
    _errors: int = 0  # in the run
    _logged_at: float = 0.0
    _unlogged: int = 0  # errors and refusals since the last line
    _damaged_at: float | None = None
    _damage: Trouble | None = None
    _traced: bool = False  # an error of kind `error` was logged with its traceback in the run

    def failed(self, error: BaseException, where: str, *, traceback: bool = False) -> Trouble:
        """A database error met while `where` (what was being done); what it means.
        traceback: an error of kind `error` (no outage, damage or refusal: a query or the
        scorer at fault) is logged with its traceback, the first of a run; those after it
        are rate-limited as any other."""
        trouble = trouble_of(error)
        with self._lock:
            now = self.clock()
            self._last, self._last_at = trouble, now
            self._errors += 1
            if trouble.kind == "damaged":
                self._damaged_at, self._damage = now, trouble
            traced = traceback and trouble.kind == "error" and not self._traced
            if traced:
                self._traced = True
            if self._since is None or traced:
                if self._since is None:
                    self._since, self._logged_at, self._unlogged = now, now, 0
                log.error(
                    "database %s while %s: %s: %s; %s",
                    trouble.kind, where, type(error).__name__, first_line(error), trouble.advice,
                    exc_info=error if traced else None,
                )  # fmt: skip
                return trouble
            self._unlogged += 1
            self._log_summary(now, f"last while {where}: {type(error).__name__}: "
                              f"{first_line(error)}")  # fmt: skip
        return trouble

    def refusing(self) -> Trouble | None:
        """The damage the API refuses for, while its hold lasts; a refusal is counted."""
        with self._lock:
            now = self.clock()
            if self._damaged_at is None or now - self._damaged_at >= self.hold:
                return None
            self._unlogged += 1
            self._log_summary(now, "requests refused without reading the database")
            return self._damage

    def answered(self) -> None:
        """The database answered: a run of errors ends, unless a damaged read is recent."""
        with self._lock:
            now = self.clock()
            if self._since is None:
                return
            if self._damaged_at is not None and now - self._damaged_at < self.hold:
                return
            log.warning(
                "the database answers again after %.1fs of errors (%d error(s))",
                now - self._since,
                self._errors,
            )
            self._since, self._last, self._errors, self._unlogged = None, None, 0, 0
            self._damaged_at = self._damage = None
            self._traced = False

    def trouble(self) -> Trouble | None:
        """The run of errors going on, if any: its last error's meaning."""
        with self._lock:
            return self._last if self._since is not None else None

    def _log_summary(self, now: float, last: str) -> None:
        if now - self._logged_at < self.log_every or self._since is None or self._last is None:
            return
        log.error(
            "database still %s (%.0fs): %d more error(s) or refusal(s) in the last %.0fs (%s); %s",
            self._last.kind, now - self._since, self._unlogged, now - self._logged_at, last,
            self._last.advice,
        )  # fmt: skip
        self._logged_at, self._unlogged = now, 0


_STATUSES: weakref.WeakKeyDictionary[Engine, DatabaseStatus] = weakref.WeakKeyDictionary()
_STATUSES_LOCK = threading.Lock()


def status_of(sessions: sessionmaker[Session]) -> DatabaseStatus:
    """The one DatabaseStatus of the engine the sessions are bound to: the API, the worker and
    the intake of a scorer share an engine, and so what they see of the database."""
    engine = sessions.kw.get("bind")
    if not isinstance(engine, Engine):
        return DatabaseStatus()
    with _STATUSES_LOCK:
        found = _STATUSES.get(engine)
        if found is None:
            found = _STATUSES[engine] = DatabaseStatus()
        return found


class DatabaseOutageTooLong(RuntimeError):
    """The database did not answer for longer than database_outage_seconds."""


FIRST_PAUSE = 0.1  # seconds before the second try; doubled per try
MAX_PAUSE = 2.0  # a server back is used within this


def through_outages(
    work: Callable[[], T],
    *,
    seconds: float,
    status: DatabaseStatus,
    what: str,
    before_retry: Callable[[], None] | None = None,
    retry_while: Callable[[], bool] | None = None,
) -> T:
    """work() until it returns; while it raises a transient database error (is_transient) it
    is tried again, the pause growing from FIRST_PAUSE to MAX_PAUSE, for up to `seconds` from
    the first try (database_outage_seconds), then DatabaseOutageTooLong, naming the setting,
    is raised from the last error. before_retry() runs before each new try (a session's
    rollback); retry_while(): whether a new try is still right (else the error is raised as
    it is). The outage is logged through status: a line when it starts, one a minute while it
    lasts, one with its length when the database answers again. Other errors are raised at
    once."""
    started = time.monotonic()
    failed_tries = 0

    def retry(error: BaseException) -> bool:
        return is_transient(error) and (retry_while is None or retry_while())

    def note(state: RetryCallState) -> None:
        assert state.outcome is not None
        error = state.outcome.exception()
        assert error is not None
        nonlocal failed_tries
        failed_tries += 1
        status.failed(error, f"{what} (tried again for up to {seconds:g}s, "
                             "database_outage_seconds)")  # fmt: skip
        if before_retry is not None:
            before_retry()

    def give_up(state: RetryCallState) -> T:
        assert state.outcome is not None
        error = state.outcome.exception()
        assert error is not None
        status.failed(error, what)
        raise DatabaseOutageTooLong(
            f"the database did not answer for {time.monotonic() - started:.1f}s while {what}, "
            f"longer than database_outage_seconds ({seconds:g}): {type(error).__name__}: "
            f"{first_line(error)}"
        ) from error

    retrying = Retrying(
        retry=retry_if_exception(retry),
        stop=stop_after_delay(seconds),
        wait=wait_exponential(multiplier=FIRST_PAUSE, max=MAX_PAUSE),
        before_sleep=note,
        retry_error_callback=give_up,
    )
    result = retrying(work)
    if failed_tries:
        status.answered()
    return result
