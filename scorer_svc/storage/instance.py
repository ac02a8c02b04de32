"""Which scorer this is, among those that share one database, and proof that no other
process is serving under the same name.

A run belongs to the instance that registered it: its checkpoints are on that instance's disk.
The name is settings.instance_id, or one made at first start and kept in the data_dir, so a
scorer restarted on the same data_dir is the same instance and takes its runs back.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import socket
import uuid
from typing import IO

from sqlalchemy import Connection, Engine, create_engine, text

from scorer_svc.config import Settings

log = logging.getLogger(__name__)

NAME_FILE = "instance_id"
LOCK_FILE = "instance.lock"


class InstanceError(RuntimeError):
    """This scorer cannot take its name or its data_dir (the message says why and what to do)."""


class InstanceInUse(InstanceError):
    """Another live scorer holds this data_dir or serves under this name."""


NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # as settings.instance_id


def _name_for(settings: Settings) -> str:
    """The name to serve under, kept in the data_dir: settings.instance_id when given (a change
    of name is logged: the runs of the old one wait for a scorer serving under it), else the
    kept one, else a new one (the host name and a random suffix). Called under the lock."""
    path = settings.data_dir / NAME_FILE
    kept = path.read_text(encoding="utf-8").strip() if path.is_file() else ""
    if kept and not NAME.match(kept) and settings.instance_id is None:
        raise InstanceError(
            f"{path} holds {kept[:80]!r}, not an instance name (letters, digits, '.', '_', "
            "'-', at most 64): correct it, or remove it to have a new name made"
        )
    if settings.instance_id is not None:
        if kept and kept != settings.instance_id:
            log.warning(
                "data_dir %s served as instance %s, now as %s: the runs of %s are scored "
                "only by a scorer serving under that name",
                settings.data_dir, kept, settings.instance_id, kept,
            )  # fmt: skip
        name = settings.instance_id
    elif kept:
        return kept
    else:
        host = "".join(c if c.isalnum() or c in "._-" else "-" for c in socket.gethostname())
        name = f"{host.lstrip('._-')[:48] or 'scorer'}-{uuid.uuid4().hex[:8]}"
    if name != kept:
        temporary = path.with_suffix(".tmp")
        temporary.write_text(name + "\n", encoding="utf-8")
        os.replace(temporary, path)
    return name


class InstanceLock:
    """Held while the scorer runs: a lock on the data_dir (two scorers on one data_dir would
    take each other's files) and, on PostgreSQL, a session advisory lock on the instance name
    (two scorers under one name, on different hosts, would score each other's checkpoints).
    Both go with the process, so a scorer that died leaves nothing to clean up. On SQLite
    nothing stops two scorers with different data_dirs from sharing one database file under
    one instance_id: give each its own."""

    def __init__(self, settings: Settings) -> None:
        """Takes the data_dir's lock, then the name kept there (name); raises InstanceInUse
        when another scorer holds the data_dir."""
        data_dir = settings.data_dir
        self._connection: Connection | None = None
        data_dir.mkdir(parents=True, exist_ok=True)
        handle = open(data_dir / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115 (held)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise InstanceInUse(
                f"another scorer is running on the data_dir {data_dir}: stop it, or give this "
                "one its own data_dir"
            ) from None
        self._file: IO[str] | None = handle
        try:
            self.name = _name_for(settings)
        except BaseException:
            self.release()
            raise

    def hold_name(self, engine: Engine) -> None:
        """On PostgreSQL, take the instance name for as long as the scorer runs; raises
        InstanceInUse (and releases everything) when another scorer serves under it."""
        if engine.dialect.name != "postgresql":
            return
        connection = engine.connect()
        try:
            taken = connection.execute(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": advisory_key(self.name)}
            ).scalar()
            connection.commit()
        except BaseException:
            connection.invalidate()
            connection.close()
            self.release()
            raise
        if not taken:
            connection.close()
            self.release()
            raise InstanceInUse(
                f"another scorer is serving as instance {self.name!r} on this database: stop "
                "it, or give this scorer its own instance_id (each scorer sharing a database "
                "needs its own)"
            )
        self._connection = connection

    def release(self) -> None:
        if self._connection is not None:
            # closed for good, not returned to the pool: the session lock goes with it
            self._connection.invalidate()
            self._connection.close()
            self._connection = None
        if self._file is not None:
            self._file.close()
            self._file = None


def check_instance_free(settings: Settings) -> None:
    """Raises InstanceInUse at start, before anything is served, when another scorer holds this
    data_dir or this instance name (the locks are then taken for good by the service)."""
    lock = InstanceLock(settings)
    try:
        if not settings.resolved_database_url.startswith("sqlite"):
            engine = create_engine(settings.resolved_database_url)
            try:
                lock.hold_name(engine)
            finally:
                lock.release()
                engine.dispose()
    finally:
        lock.release()


def serving(engine: Engine, name: str) -> bool:
    """Whether a live scorer serves as `name` on this PostgreSQL database (False elsewhere,
    where it cannot be told)."""
    if engine.dialect.name != "postgresql":
        return False
    with engine.connect() as connection:
        key = {"key": advisory_key(name)}
        free = connection.execute(text("SELECT pg_try_advisory_lock(:key)"), key).scalar()
        if free:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), key)
        connection.commit()
    return not free


def advisory_key(name: str) -> int:
    """A signed 64-bit key for pg_try_advisory_lock, from the instance name."""
    digest = hashlib.blake2b(f"delta-loss-scorer:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)
