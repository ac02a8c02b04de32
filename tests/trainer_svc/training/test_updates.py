"""One update: what is sent, which weights are used, what is drawn and recorded."""

import pytest
import torch

from common.wire.errors import CheckpointRejected, ScorerUnavailable, UnknownRun
from delta_loss_devtools.fake_scorer import FakeScorer, fake_weights
from trainer_svc.scorer.outage import PROBE_SECONDS
from trainer_svc.scorer.retry import NotYet
from trainer_svc.training.records import JsonlRecord, read_jsonl
from trainer_svc.training.sampler import SelectionPlan
from trainer_svc.training.schedule import Schedule
from trainer_svc.training.updates import ScorerFailure, UpdateCoordinator, describe_update

N = 16


class DownScorer(FakeScorer):
    """Takes checkpoints; its weights never come."""

    def wait_for(self, step):
        raise ScorerUnavailable("scorer down")

    def latest(self):
        raise ScorerUnavailable("scorer down")


class RefusingScorer(FakeScorer):
    def send_checkpoint(self, checkpoint):
        raise CheckpointRejected("checkpoint does not fit the lora model of this run")


class UnreachableScorer(FakeScorer):
    """Down until `up` is set: a checkpoint sent waits the whole scorer wait on the clock (a
    real retry policy, none of its attempts answered), and a probe fails."""

    def __init__(self, n, clock, wait_seconds):
        super().__init__(n)
        self.retry = clock.policy(wait_seconds)
        self.up = False
        self.attempts = 0  # requests sent

    def send_checkpoint(self, checkpoint):
        if not self.up:
            self.retry.run(self._unanswered, waiting_for="a reply", advice="the scorer")
        return super().send_checkpoint(checkpoint)

    def _unanswered(self, number, seconds_left):
        self.attempts += 1
        raise NotYet("no reply within 2.0s")

    def ping(self, seconds):
        super().ping(seconds)
        if not self.up:
            raise ScorerUnavailable("no answer from http://scorer/healthz")


class ForgetfulScorer(FakeScorer):
    """Loses every run after its first checkpoint, as a scorer restarted on an empty
    database."""

    def send_checkpoint(self, checkpoint):
        if self.checkpoints:
            raise UnknownRun(f"no run '{checkpoint.run_id}' is registered with this scorer")
        return super().send_checkpoint(checkpoint)


def coordinator(tmp_path, scorer=None, **kw):
    schedule = Schedule.build(warmup_step=1, update_step=2, update_times=3, batch=2, epochs=2)
    scorer = scorer or FakeScorer(N)
    coord = UpdateCoordinator(
        run_id="r",
        kind="lora",
        plan=SelectionPlan(schedule, N),
        scorer=scorer,
        record=JsonlRecord(tmp_path / "s.jsonl"),
        **kw,
    )
    return coord, scorer, schedule


def run_all(coord, schedule):
    return [coord.run_update(u, lambda: {"x": torch.zeros(1)}) for u in schedule.updates()]


def test_sync_draws_follow_the_documented_seeds(tmp_path):
    coord, scorer, schedule = coordinator(tmp_path)
    rows = run_all(coord, schedule)
    assert [(c.step, c.update_index) for c in scorer.checkpoints] == [
        (1, 1),
        (3, 2),
        (5, 3),
        (8, 1),
        (10, 2),
        (12, 3),
    ]
    g = torch.Generator().manual_seed(42)
    assert rows[0]["sampled_indices"] == torch.randperm(N, generator=g)[:4].tolist()
    g = torch.Generator().manual_seed(42 + 3)
    expected = torch.multinomial(fake_weights(3, N), 4, False, generator=g).tolist()
    assert rows[1]["sampled_indices"] == expected
    # update 1 of a later epoch draws from its weights too: only the run's first is a randperm
    g = torch.Generator().manual_seed(42 + 8)
    expected = torch.multinomial(fake_weights(8, N), 4, False, generator=g).tolist()
    assert rows[3]["sampled_indices"] == expected
    assert [r["draw"] for r in rows] == ["randperm"] + ["multinomial"] * 5
    assert [r["weights_step"] for r in rows] == [1, 3, 5, 8, 10, 12]
    assert read_jsonl(tmp_path / "s.jsonl") == rows


def test_async_uses_the_newest_weights_available(tmp_path):
    coord, _, schedule = coordinator(tmp_path, mode="async")
    rows = run_all(coord, schedule)
    # the fake has scored everything but the checkpoint just sent
    assert [r["weights_step"] for r in rows] == [None, 1, 3, 5, 8, 10]
    # update_step 2: each drew from the previous update's weights (step 8 after 5: 1 apart
    # across the epoch's end, as the schedule counts)
    assert [r["staleness"] for r in rows] == [None, 1, 1, 1, 1, 1]
    assert rows[1]["source"] == "scorer"
    g = torch.Generator().manual_seed(42 + 3)
    expected = torch.multinomial(fake_weights(1, N), 4, False, generator=g).tolist()
    assert rows[1]["sampled_indices"] == expected


def test_failure_stops_with_a_hint(tmp_path):
    coord, _, schedule = coordinator(tmp_path, DownScorer(N))
    with pytest.raises(ScorerFailure) as info:
        run_all(coord, schedule)
    assert str(info.value) == (
        "update 1 at step 1 failed: scorer down "
        "(set on_scorer_failure: uniform to continue without the scorer)"
    )


def test_failure_with_uniform_fallback_is_recorded(tmp_path, caplog):
    coord, _, schedule = coordinator(tmp_path, DownScorer(N), on_failure="uniform")
    rows = run_all(coord, schedule)
    loud = [r.getMessage() for r in caplog.records if "!!! SCORER FAILURE" in r.getMessage()]
    assert len(loud) == len(rows) and "update 2 at step 3 failed: scorer down" in loud[1]
    assert {r["source"] for r in rows} == {"uniform_fallback"}
    assert all("scorer down" in r["failure"] for r in rows)
    uniform = torch.full((N,), 1.0 / N, dtype=torch.float64)
    g = torch.Generator().manual_seed(42 + 3)
    assert rows[1]["sampled_indices"] == torch.multinomial(uniform, 4, False, generator=g).tolist()


def test_an_error_reply_stops_the_run_with_its_reason_or_falls_back(tmp_path):
    coord, _, schedule = coordinator(tmp_path, RefusingScorer(N))
    with pytest.raises(ScorerFailure, match="does not fit the lora model"):
        run_all(coord, schedule)
    coord, scorer, schedule = coordinator(tmp_path / "u", RefusingScorer(N), on_failure="uniform")
    rows = run_all(coord, schedule)
    assert {r["source"] for r in rows} == {"uniform_fallback"}
    assert "does not fit" in rows[0]["failure"]
    assert {r["failure_code"] for r in rows} == {"rejected"}
    assert scorer.pings == []  # a scorer that answers is not down: never probed


def test_a_scorer_known_down_is_probed_briefly_until_it_answers(tmp_path, clock):
    wait = 30
    scorer = UnreachableScorer(N, clock, wait)
    coord, _, schedule = coordinator(tmp_path, scorer, on_failure="uniform")
    updates = schedule.updates()
    tensors = lambda: {"x": torch.zeros(1)}  # noqa: E731

    first = coord.run_update(updates[0], tensors)  # waits out scorer_wait_seconds
    assert (scorer.attempts, sum(clock.pauses), scorer.pings) == (8, wait, [])
    assert first["failure_code"] == "timeout" and "gave up waiting" in first["failure"]
    attempts, pauses = scorer.attempts, list(clock.pauses)

    down = [coord.run_update(u, tensors) for u in updates[1:3]]  # one probe each, no wait
    assert (scorer.attempts, clock.pauses) == (attempts, pauses)
    assert scorer.pings == [PROBE_SECONDS] * 2 and scorer.checkpoints == []
    for row in down:
        assert (row["source"], row["failure_code"]) == ("uniform_fallback", "scorer_down")
        assert row["failure"].startswith("the scorer is still down (no answer from http://")
        assert "update 1 at step 1 found it down" in row["failure"]

    scorer.up = True  # back: probed once, then asked as usual
    back = [coord.run_update(u, tensors) for u in updates[3:]]
    assert scorer.pings == [PROBE_SECONDS] * 3
    assert [c.step for c in scorer.checkpoints] == [u.start for u in updates[3:]]
    assert [(r["source"], r["failure_code"]) for r in back] == [("scorer", None)] * 3
    assert read_jsonl(tmp_path / "s.jsonl") == [first, *down, *back]


def test_a_scorer_that_forgot_a_registered_run_lost_its_database(tmp_path):
    coord, _, schedule = coordinator(tmp_path, ForgetfulScorer(N))
    with pytest.raises(ScorerFailure) as info:
        run_all(coord, schedule)
    message = str(info.value)
    assert message.startswith("update 2 at step 3 failed: the scorer no longer knows run r, ")
    assert "its database was lost or replaced" in message
    assert "To restart selection, resume from the last checkpoint" in message
    assert isinstance(info.value.__cause__, UnknownRun)

    coord, _, schedule = coordinator(tmp_path / "u", ForgetfulScorer(N), on_failure="uniform")
    rows = run_all(coord, schedule)[1:]
    assert {(r["source"], r["failure_code"]) for r in rows} == {("uniform_fallback", "unknown_run")}
    assert all("database was lost" in r["failure"] for r in rows)


def test_an_unknown_run_that_never_registered_is_not_a_lost_database(tmp_path):
    coord, _, schedule = coordinator(tmp_path, ForgetfulScorer(N), registered=False)
    with pytest.raises(ScorerFailure, match="no run 'r' is registered") as info:
        run_all(coord, schedule)
    assert "database" not in str(info.value)


class RefusesStep(FakeScorer):
    def __init__(self, n, step):
        super().__init__(n)
        self.step = step

    def send_checkpoint(self, checkpoint):
        if checkpoint.step == self.step:
            raise CheckpointRejected(f"step {self.step} does not fit")
        return super().send_checkpoint(checkpoint)


@pytest.mark.parametrize("on_failure", ["fail", "uniform"])
def test_the_last_checkpoint_sent_in_the_background_is_waited_for_at_the_end(
    tmp_path, on_failure, caplog
):
    coord, _, schedule = coordinator(
        tmp_path, RefusesStep(N, 12), mode="async", on_failure=on_failure
    )
    run_all(coord, schedule)  # the last update's send fails in the background
    if on_failure == "fail":
        with pytest.raises(ScorerFailure, match=r"sending the checkpoint step 12 \(update 3\)"):
            coord.finish()
    else:
        coord.finish()
        assert "!!! SCORER FAILURE: sending the checkpoint step 12 (update 3)" in caplog.text
    assert coord.unsent() is not None and coord.unsent().step == 12
    coord.close()


def test_an_async_update_records_its_wait_for_the_previous_send(tmp_path):
    coord, scorer, schedule = coordinator(tmp_path, mode="async")
    rows = run_all(coord, schedule)
    assert all(r["send_wait_seconds"] >= 0 and r["snapshot_seconds"] >= 0 for r in rows)
    assert all(r["unsent"] is None for r in rows)
    coord.finish()  # waits for the last send
    assert coord.unsent() is None  # every send acknowledged
    coord.close()


def test_one_line_says_where_the_window_sat_what_it_picked_and_the_wait():
    row = {
        "update_index": 3, "epoch": 1, "global_step": 12, "draw": "multinomial",
        "source": "scorer", "weights_step": 10, "staleness": 1, "seconds_waited": 2.25,
        "window": {"t": 2, "T": 2, "u": 0.99, "start": 70, "end": 88, "truncated_at": 88},
        "delta_mean_in_window": 0.01234, "delta_mean_outside": 0.5,
    }  # fmt: skip
    assert describe_update(row) == (
        "update 3 of epoch 1 at step 12: window [70, 88) cut at rank 88, mean delta 0.0123 in "
        "it, 0.5000 outside; multinomial draw from scorer (weights of step 10, 1 update(s) "
        "old), waited 2.2s"
    )
    empty = {**row, "window": {**row["window"], "truncated_at": 50, "end": 50}}
    assert describe_update(empty).startswith(
        "update 3 of epoch 1 at step 12: window empty at rank 70 (deltas negative from rank 50)"
    )
    first = {**row, "window": None, "weights_step": 4, "staleness": 0, "draw": "randperm"}
    assert describe_update(first) == (
        "update 3 of epoch 1 at step 12: randperm draw from scorer (weights of step 4), waited 2.2s"
    )


def test_staleness_counts_updates_across_the_warmup_of_an_epoch(tmp_path):
    """warmup 3 steps, updates every 2: async update 1 of epoch 1 (step 9) draws from update 2
    of epoch 0 (step 5): one update old, though 4 steps lie between them."""
    schedule = Schedule.build(warmup_step=3, update_step=2, update_times=2, batch=4, epochs=2)
    coord = UpdateCoordinator(
        run_id="r", kind="lora", plan=SelectionPlan(schedule, N), scorer=FakeScorer(N),
        record=JsonlRecord(tmp_path / "s.jsonl"), mode="async",
    )  # fmt: skip
    rows = run_all(coord, schedule)
    assert [(r["global_step"], r["weights_step"]) for r in rows] == [
        (3, None), (5, 3), (10, 5), (12, 10),
    ]  # fmt: skip
    assert [r["staleness"] for r in rows] == [None, 1, 1, 1]
