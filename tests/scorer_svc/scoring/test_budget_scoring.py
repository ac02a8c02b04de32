"""A scoring budget and newest-first scoring, through the real intake, worker and database:
what a budgeted checkpoint measures and stores, and which checkpoints of an async run wait."""

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from common.budget import Estimates, choose
from common.selection import weights_from_window, window_over
from common.wire.protocol import encode_checkpoint, encode_hello
from scorer_svc.api.state import ApiState
from scorer_svc.config import Settings
from scorer_svc.intake.server import Intake
from scorer_svc.main import create_app
from scorer_svc.scoring.registry import Registry
from scorer_svc.scoring.weights import WeightsCache, build_weights
from scorer_svc.scoring.worker import Worker
from scorer_svc.storage import checkpoints as checkpoint_store
from scorer_svc.storage import losses as loss_store
from scorer_svc.storage import runs as run_store
from scorer_svc.storage import windows as window_store
from scorer_svc.storage.db import make_engine, make_sessionmaker
from scorer_svc.storage.failures import UnrecordedFailures
from scorer_svc.storage.tables import RECEIVED, SCORED, SCORING, SUPERSEDED
from tests.support.data import make_samples
from tests.support.scorer import intake_upload, lora_checkpoints, make_hello, until_registered
from tests.support.worker_parts import worker_parts

N = 20
# (step, update index, drift rounds): the initial checkpoint, then updates 2 and 3, then
# update 1 of the second epoch
STEPS = ((3, 1, 1), (5, 2, 2), (7, 3, 3), (9, 1, 4))


class Scorer:
    """A scorer's intake and worker on one SQLite file, the worker run by hand."""

    def __init__(self, tmp_path: Path, tiny_model: Path, database_url: str | None = None) -> None:
        self.tiny_model = tiny_model
        self.dataset = tmp_path / "train.json"
        self.dataset.write_text(json.dumps(make_samples(N)))
        self.settings = Settings(
            data_dir=tmp_path / "data", device="cpu", database_url=database_url
        )
        self.sessions = make_sessionmaker(make_engine(self.settings.resolved_database_url))
        self.registry = Registry(self.settings)
        self.intake = Intake(
            self.settings, self.sessions, self.registry, on_queued=lambda: None, instance="here"
        )
        self.weights = WeightsCache()
        self.worker = Worker(
            self.sessions, self.registry, failures=UnrecordedFailures(), keep_checkpoints=False,
            instance="here", **worker_parts(weights=self.weights),
        )  # fmt: skip
        self.tensors = lora_checkpoints(tiny_model, len(STEPS))

    def register(self, run_id: str, **hello) -> None:
        message = make_hello(self.tiny_model, self.dataset, run_id=run_id, **hello)
        reply = until_registered(lambda: json.loads(self.intake.handle(encode_hello(message))[0]))
        assert reply["status"] in ("registered", "already_registered")

    def send(self, run_id: str, step: int, update_index: int, drift: int) -> None:
        frames = encode_checkpoint(
            run_id=run_id, step=step, update_index=update_index, kind="lora",
            tensors=self.tensors[drift - 1],
        )  # fmt: skip
        assert intake_upload(self.intake, frames)["status"] == "queued"

    def score_all(self) -> int:
        scored = 0
        while self.worker.run_once():
            scored += 1
        return scored

    def api(self) -> TestClient:
        """The REST API over the same database, no threads."""
        state = ApiState(self.settings, self.sessions, UnrecordedFailures())
        return TestClient(create_app(self.settings, state))

    def statuses(self, run_id: str) -> dict[int, str]:
        with self.sessions() as session:
            run = run_store.get_run(session, run_id=run_id)
            return {c.step: c.status for c in checkpoint_store.list_checkpoints(session, run=run)}


@pytest.fixture
def scorer(tmp_path, tiny_model):
    return Scorer(tmp_path, tiny_model)


@pytest.fixture
def scorer_on_each_database(tmp_path, tiny_model, database_url):
    """The same on SQLite and on PostgreSQL."""
    return Scorer(tmp_path, tiny_model, database_url)


def test_a_budgeted_checkpoint_measures_what_the_rule_chooses_and_ranks_on_estimates(scorer):
    """Budget 0.25 of 20 samples: the initial checkpoint and the first with a window are
    measured in full; each later one measures the 5 samples common.budget.choose names from
    the estimates before it, stores their losses alone, and ranks every sample on the
    estimates it stores; the weights served are those the stored estimates and window give."""
    scorer.register("budgeted", score_budget=0.25)
    scorer.register("full")
    for step, update, drift in STEPS:
        scorer.send("budgeted", step, update, drift)
        scorer.send("full", step, update, drift)
    assert scorer.score_all() == 2 * len(STEPS)
    with scorer.sessions() as session:
        run = run_store.get_run(session, run_id="budgeted")
        full = run_store.get_run(session, run_id="full")
        init = loss_store.losses_at(session, run=run, step=3)
        rows = {c.step: c for c in checkpoint_store.list_checkpoints(session, run=run)}
        assert {s: c.status for s, c in rows.items()} == dict.fromkeys((3, 5, 7, 9), SCORED)
        for step in (3, 5):  # in full: every loss, no estimates
            assert rows[step].n_measured is None and rows[step].mean_age is None
            assert window_store.get_estimates(session, run=run, step=step) is None
            assert np.isfinite(loss_store.losses_at(session, run=run, step=step)).sum() == N
        previous = Estimates.measured_all(init - loss_store.losses_at(session, run=run, step=5))
        for step in (7, 9):
            checkpoint = rows[step]
            expected = choose(
                previous, 5, update_index=checkpoint.update_index,
                update_times=run.update_times, window_size=run.window_size,
            )  # fmt: skip
            losses = loss_store.losses_at(session, run=run, step=step)
            measured = np.flatnonzero(np.isfinite(losses))
            assert measured.tolist() == expected.tolist()
            # the same losses a full pass over the same checkpoint gives those samples
            reference = loss_store.losses_at(session, run=full, step=step)
            np.testing.assert_allclose(losses[measured], reference[measured], rtol=1e-5)
            estimates = window_store.get_estimates(session, run=run, step=step)
            assert estimates is not None
            np.testing.assert_array_equal(estimates.delta[measured], (init - losses)[measured])
            assert set(np.flatnonzero(estimates.age == 0).tolist()) == set(measured.tolist())
            assert checkpoint.n_measured == 5
            assert checkpoint.mean_age == pytest.approx(estimates.mean_age())
            window, ranking = window_over(
                estimates.delta, checkpoint.update_index, run.update_times, run.window_size
            )
            served = build_weights(session, run, checkpoint)
            assert served.window == window and served.n_measured == 5
            assert served.values.tobytes() == weights_from_window(window, ranking, N).tobytes()
            cached = scorer.weights.get(None, run, checkpoint)  # put by the worker
            assert cached.values.tobytes() == served.values.tobytes()
            assert cached.mean_age == served.mean_age
            previous = estimates
        # the published method, unchanged: no estimates, every loss at every checkpoint
        for checkpoint in checkpoint_store.list_checkpoints(session, run=full):
            assert checkpoint.n_measured is None
            assert window_store.get_estimates(session, run=full, step=checkpoint.step) is None


def test_the_api_says_how_much_of_a_ranking_was_measured(scorer):
    scorer.register("budgeted", score_budget=5)  # a count: 5 samples per checkpoint
    for step, update, drift in STEPS[:3]:
        scorer.send("budgeted", step, update, drift)
    scorer.score_all()
    with scorer.api() as api:
        weights = api.get("/v1/runs/budgeted/weights", params={"step": 7}).json()
        assert weights["n_measured"] == 5 and weights["mean_age"] == pytest.approx(1.0)
        first = api.get("/v1/runs/budgeted/weights", params={"step": 5}).json()
        assert first["n_measured"] is None and first["mean_age"] is None
        page = api.get("/v1/runs/budgeted/deltas", params={"step": 7, "max_results": N}).json()
        assert page["n_measured"] == 5
        items = page["items"]
        assert sum(item["age"] == 0 for item in items) == 5
        assert all((item["loss"] is None) == (item["age"] > 0) for item in items)
        losses = api.get("/v1/runs/budgeted/losses", params={"step": 7}).json()
        assert sum(v is not None for v in losses["losses"]) == 5 and len(losses["losses"]) == N
        rows = api.get("/v1/runs/budgeted/checkpoints").json()["checkpoints"]
        assert [r["n_measured"] for r in rows] == [None, None, 5]


def test_an_async_run_keeps_only_its_initial_and_newest_waiting_checkpoints(
    scorer_on_each_database,
):
    """Newest first: a waiting checkpoint of an async run that a newer one supersedes is
    marked superseded and its tensors go; the initial one is never superseded, and one being
    scored is left to finish. A sync run keeps every checkpoint."""
    scorer = scorer_on_each_database
    scorer.register("async", selection_mode="async")
    scorer.register("sync")
    for step, update, drift in STEPS:
        scorer.send("async", step, update, drift)
        scorer.send("sync", step, update, drift)
    assert scorer.statuses("async") == {3: RECEIVED, 5: SUPERSEDED, 7: SUPERSEDED, 9: RECEIVED}
    assert set(scorer.statuses("sync").values()) == {RECEIVED}
    files = sorted(p.name for p in (scorer.settings.data_dir).rglob("*.safetensors"))
    assert len(files) == 2 + len(STEPS)  # the async run's two waiting, the sync run's four
    with scorer.sessions() as session:
        counts = checkpoint_store.count_checkpoints(session, instance="here")
    assert counts[SUPERSEDED] == 2
    assert scorer.score_all() == 2 + len(STEPS)
    assert scorer.statuses("async") == {3: SCORED, 5: SUPERSEDED, 7: SUPERSEDED, 9: SCORED}
    with scorer.api() as api:
        gone = api.get("/v1/runs/async/weights", params={"step": 5})
        assert gone.status_code == 410 and "superseded" in gone.json()["detail"]
        assert api.get("/v1/runs/async/weights").json()["step"] == 9


def test_a_checkpoint_being_scored_is_not_superseded(scorer_on_each_database):
    scorer = scorer_on_each_database
    scorer.register("async", selection_mode="async")
    scorer.send("async", 3, 1, 1)
    scorer.score_all()
    scorer.send("async", 5, 2, 2)
    with scorer.sessions() as session:  # the worker has claimed step 5
        run = run_store.get_run(session, run_id="async")
        step_5 = checkpoint_store.get_checkpoint(session, run=run, step=5).id
        assert checkpoint_store.claim(session, checkpoint_id=step_5, instance="here") is not None
    scorer.send("async", 7, 3, 3)
    scorer.send("async", 9, 1, 4)
    assert scorer.statuses("async") == {3: SCORED, 5: SCORING, 7: SUPERSEDED, 9: RECEIVED}


def test_a_restarted_worker_supersedes_what_a_cut_off_scoring_left_waiting(scorer):
    """A scorer stopped while scoring leaves that checkpoint scoring and a newer one waiting:
    on restart the cut-off one waits again, and the newer one supersedes it."""
    scorer.register("async", selection_mode="async")
    scorer.send("async", 3, 1, 1)
    scorer.score_all()
    scorer.send("async", 5, 2, 2)
    with scorer.sessions() as session:
        run = run_store.get_run(session, run_id="async")
        step_5 = checkpoint_store.get_checkpoint(session, run=run, step=5).id
        checkpoint_store.claim(session, checkpoint_id=step_5, instance="here")
    scorer.send("async", 7, 3, 3)
    assert scorer.statuses("async")[5] == SCORING
    scorer.worker = Worker(
        scorer.sessions, scorer.registry, failures=UnrecordedFailures(), keep_checkpoints=False,
        instance="here", **worker_parts(),
    )  # fmt: skip
    assert scorer.score_all() == 1
    assert scorer.statuses("async") == {3: SCORED, 5: SUPERSEDED, 7: SCORED}


def test_a_resume_may_change_how_a_run_draws_and_its_budget(scorer):
    scorer.register("run", selection_mode="async")
    scorer.register("run", selection_mode="sync", score_budget=0.5)
    with scorer.sessions() as session:
        run = run_store.get_run(session, run_id="run")
        assert (run.is_async, run.score_budget) == (False, 0.5)
