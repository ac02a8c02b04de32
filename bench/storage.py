"""One checkpoint's N losses written to SQLite, then a real scorer process serving
/losses, /samples/{i}/losses and /weights (octet-stream) from that database; the same on
PostgreSQL when a server can be started here (delta_loss_devtools.postgres: a throwaway cluster)."""

from __future__ import annotations

import time
import traceback
from pathlib import Path

import httpx
import numpy as np

from bench.util import Scorer, median
from common.selection import delta_window
from delta_loss_devtools.postgres import PostgresCluster, postgres_bindir
from scorer_svc.storage import checkpoints as checkpoint_store
from scorer_svc.storage import losses as loss_store
from scorer_svc.storage import runs as run_store
from scorer_svc.storage.db import make_engine, make_sessionmaker

FAKE_HELLO = {
    "run_id": "bench",
    "base_model": "none",
    "finetuning_type": "lora",
    "fingerprint": "0" * 64,
    "window_size": 0.2,
    "update_times": 50,
}


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def measure(
    work: Path, n: int = 200_000, checkpoints: int = 50, requests: int = 100, *, toy: bool = False
) -> dict:
    """SQLite's figures, and under "postgresql" PostgreSQL's (or why it was not measured);
    toy: a thousand losses, 3 checkpoints, a few requests."""
    if toy:
        return measure(work, n=1000, checkpoints=3, requests=5)
    data_dir = work / "scorer-storage"
    out = measure_backend(data_dir, None, n=n, checkpoints=checkpoints, requests=requests)
    try:  # a failure there must not lose SQLite's figures
        out["postgresql"] = measure_postgresql(
            work / "scorer-storage-pg", n=n, checkpoints=checkpoints, requests=requests
        )
    except Exception:
        out["postgresql"] = {"error": traceback.format_exc()}
    return out


def measure_postgresql(data_dir: Path, **sizes: int) -> dict:
    """The same on a throwaway PostgreSQL server (fsync on, as SQLite's synchronous=FULL),
    or {"skipped": why} when none can be started here."""
    bindir = postgres_bindir()
    if bindir is None:
        return {"skipped": "PostgreSQL is not installed"}
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return {"skipped": "psycopg is not installed (the postgres extra)"}
    cluster = PostgresCluster(bindir, durable=True).start()
    try:
        return measure_backend(data_dir, cluster.url("bench"), **sizes)
    finally:
        cluster.stop()


def measure_backend(
    data_dir: Path, database_url: str | None, *, n: int, checkpoints: int, requests: int
) -> dict:
    """database_url: None for the scorer's own SQLite file in data_dir."""
    url = database_url or f"sqlite:///{data_dir / 'scorer.db'}"
    engine = make_engine(url)
    sessions = make_sessionmaker(engine)
    writes, reads = [], []
    rng = np.random.default_rng(0)
    with sessions() as session:
        run = run_store.create_run(session, config={**FAKE_HELLO, "n_samples": n}, n_no_labels=0)
        initial = rng.random(n) * 3
        for k in range(1, checkpoints + 1):
            received = checkpoint_store.Received(k, k, "lora", "0" * 64, "-", 0)
            checkpoint = checkpoint_store.add_checkpoint(session, run=run, received=received)
            losses = initial if k == 1 else initial - rng.random(n) * 0.1 * k
            window = None
            if k >= 2:
                window, _ = delta_window(initial, losses, k, checkpoints, 0.2)
            start = time.perf_counter()
            checkpoint_store.store_scores(
                session, checkpoint=checkpoint, losses=losses, window=window, seconds=1.0
            )
            writes.append(time.perf_counter() - start)
            start = time.perf_counter()
            got = loss_store.losses_at(session, run=run, step=k)
            reads.append(time.perf_counter() - start)
            assert np.array_equal(got, losses)
    if engine.dialect.name == "postgresql":
        # What autovacuum does within a minute or so of such a load, done now: measured while
        # it ran, the REST latencies were its work on the same cores, and the planner's
        # without statistics (a /losses page sorted its whole step: 20-45 ms, not 3 ms).
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("VACUUM ANALYZE")
    engine.dispose()
    version = ".".join(map(str, engine.dialect.server_version_info or ()))
    out: dict = {"n": n, "checkpoints": checkpoints, "write_s": median(writes),
                 "write_max_s": max(writes), "read_s": median(reads),
                 "server_version": version}  # fmt: skip
    flags = ("--database-url", database_url) if database_url else ()
    with (
        Scorer(data_dir, *flags) as scorer,
        httpx.Client(base_url=scorer.base_url, timeout=60) as client,
    ):
        base = "/v1/runs/bench"
        lat: dict[str, list[float]] = {"losses": [], "history": [], "weights_cold": [],
                                       "weights_warm": []}  # fmt: skip
        octet = {"Accept": "application/octet-stream"}
        for _ in range(requests):
            step = int(rng.integers(1, checkpoints + 1))
            index = int(rng.integers(0, n))
            queries: list[tuple[str, str, dict, dict]] = [
                ("losses", f"{base}/losses", {"step": step, "max_results": 1000}, {}),
                ("history", f"{base}/samples/{index}/losses", {}, {}),
            ]
            for key, url, params, headers in queries:
                start = time.perf_counter()
                r = client.get(url, params=params, headers=headers)
                lat[key].append(time.perf_counter() - start)
                assert r.status_code == 200, r.text
        for step in range(2, min(checkpoints, 12) + 1):  # first request of each step: built
            for key in ("weights_cold", "weights_warm"):
                start = time.perf_counter()
                r = client.get(f"{base}/weights", params={"step": step}, headers=octet)
                lat[key].append(time.perf_counter() - start)
                assert r.status_code == 200 and len(r.content) == 4 * n
        start = time.perf_counter()
        r = client.get(f"{base}/losses", params={"step": checkpoints, "max_results": 100_000})
        out["losses_page_100k_s"] = time.perf_counter() - start
        for key, values in lat.items():
            out[key] = {"p50": pct(values, 50), "p99": pct(values, 99), "count": len(values)}
    return out


if __name__ == "__main__":
    import json
    import sys
    import tempfile

    # python -m bench.storage N [CHECKPOINTS]: this section alone
    checkpoints = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps(measure(Path(tmp), n=int(sys.argv[1]), checkpoints=checkpoints), indent=1))
