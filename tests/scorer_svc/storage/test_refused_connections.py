"""A PostgreSQL server that refuses the scorer (a wrong password, user or database name, no
pg_hba.conf entry) is no outage: trying it again for database_outage_seconds changes nothing,
so it is not (is_transient), and its trouble says to check the database URL. A server that
does not answer (connection refused) still is one. The errors are psycopg's own, from real
connections: it raises every failed connection as OperationalError with no SQLSTATE."""

import socket
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import OperationalError

from scorer_svc.storage.db import LIBPQ_CONNECT_ARGS, connect_args_of, make_engine
from scorer_svc.storage.outages import is_refused, is_transient, trouble_of
from tests.support.postgres import PostgresCluster


def connect_error(url: str) -> OperationalError:
    """The error of connecting to url (it must fail)."""
    engine = create_engine(url)
    try:
        with pytest.raises(OperationalError) as caught, engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    finally:
        engine.dispose()
    return caught.value


def with_login(url: str, **change: str | int) -> str:
    """url with its username, database or port changed."""
    return make_url(url).set(**change).render_as_string(hide_password=False)  # type: ignore[arg-type]


def assert_refused(error: OperationalError, words: str) -> None:
    assert words in str(error.orig)
    assert error.orig.sqlstate is None  # as psycopg raises a failed connection
    assert is_refused(error)
    assert not is_transient(error)
    trouble = trouble_of(error)
    assert trouble.kind == "misconfigured"
    assert "user, password and database name" in trouble.advice


def test_a_database_that_does_not_exist_is_no_outage(postgres_cluster):
    url = with_login(postgres_cluster.url(), database="no_such_database")
    assert_refused(connect_error(url), 'database "no_such_database" does not exist')


def test_a_user_that_does_not_exist_is_no_outage(postgres_cluster):
    url = with_login(postgres_cluster.url(), username="no_such_user")
    assert_refused(connect_error(url), 'role "no_such_user" does not exist')


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_server_that_does_not_answer_is_an_outage(postgres_cluster):
    """Nothing listens on the port (the server is stopped): tried again."""
    error = connect_error(with_login(postgres_cluster.url(), port=free_loopback_port()))
    assert "refused" in str(error.orig).lower()
    assert is_transient(error) and not is_refused(error)
    assert trouble_of(error).kind == "unavailable"


class FromServer(Exception):
    """A PostgreSQL driver's error whose SQLSTATE is in its diagnostic only."""

    sqlstate = None

    def __init__(self, message: str, sqlstate: str) -> None:
        super().__init__(message)
        self.diag = type("Diagnostic", (), {"sqlstate": sqlstate})()


@pytest.mark.parametrize(
    ("sqlstate", "transient"),
    [("28P01", False), ("28000", False), ("3D000", False), ("08006", True), ("57P01", True)],
)
def test_the_sqlstate_of_the_diagnostic_is_read(sqlstate, transient):
    error = OperationalError("SELECT 1", None, FromServer("connection failed", sqlstate))
    assert is_transient(error) is transient
    assert is_refused(error) is (sqlstate[:2] in ("28", "3D"))


def test_a_postgresql_engine_gives_up_connecting_and_finds_dead_connections(postgres_cluster):
    """A try cannot hang on a server that went silent past the outage budget: libpq's
    connect_timeout and TCP keepalives are set on every connection of the engine."""
    url = postgres_cluster.url()
    assert connect_args_of(url) == LIBPQ_CONNECT_ARGS
    assert connect_args_of("sqlite:///x.db") == {}
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            pgconn = connection.connection.driver_connection.pgconn
            options = {option.keyword: option.val for option in pgconn.info}
    finally:
        engine.dispose()
    for keyword, value in LIBPQ_CONNECT_ARGS.items():
        assert options[keyword.encode()] == str(value).encode(), keyword


ROLE, PASSWORD = "scorer_pw", "right-password"


@pytest.fixture(scope="module")
def password_postgres(request) -> Iterator[PostgresCluster]:
    """A PostgreSQL server of this module's own that asks ROLE for its password and has no
    pg_hba.conf entry for any other role but postgres; skipped (or failed in CI) where the
    shared one is (the postgres_cluster fixture)."""
    shared = request.getfixturevalue("postgres_cluster")
    cluster = PostgresCluster(shared.bindir).start()
    try:
        engine = create_engine(cluster.url("roles"))
        with engine.begin() as connection:
            connection.execute(text(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'"))
            connection.execute(text("CREATE ROLE stranger LOGIN"))
        engine.dispose()
        cluster.halt()
        (cluster.data / "pg_hba.conf").write_text(
            f"host all {ROLE} 127.0.0.1/32 scram-sha-256\n"
            "host all postgres 127.0.0.1/32 trust\n"
            "local all postgres trust\n"
        )
        cluster.resume()
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.slow  # a PostgreSQL server of its own
def test_a_wrong_password_is_no_outage(password_postgres):
    url = f"postgresql+psycopg://{ROLE}:{{}}@127.0.0.1:{password_postgres.port}/roles"
    engine = create_engine(url.format(PASSWORD))
    try:  # the right one is let in
        with engine.connect() as connection:
            assert connection.execute(text("SELECT current_user")).scalar() == ROLE
    finally:
        engine.dispose()
    assert_refused(connect_error(url.format("wrong-password")), "password authentication failed")


@pytest.mark.slow
def test_no_pg_hba_entry_is_no_outage(password_postgres):
    url = f"postgresql+psycopg://stranger@127.0.0.1:{password_postgres.port}/roles"
    assert_refused(connect_error(url), "no pg_hba.conf entry")
