"""A throwaway PostgreSQL cluster for the tests (delta_loss_devtools.postgres, shared with the
benchmarks): initdb into a temporary folder, a server on a free loopback port with
fsync=off, a fresh database per test, removed at the end.

Without PostgreSQL the tests that need it are skipped, unless the CI environment variable
is set: then a missing server is a failure (`.ci/run` installs it).
"""

from delta_loss_devtools.postgres import PostgresCluster, postgres_bindir

__all__ = ["PostgresCluster", "postgres_bindir"]
