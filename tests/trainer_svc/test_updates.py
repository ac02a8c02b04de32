"""One update: what is sent, which weights are used, what is drawn and recorded."""

import pytest
import torch

from common.errors import CheckpointRejected, ScorerUnavailable
from tests.trainer_svc.conftest import FakePublisher, FakeWeights, fake_weights
from trainer_svc.records import JsonlRecord, read_jsonl
from trainer_svc.sampler import SelectionPlan
from trainer_svc.schedule import Schedule
from trainer_svc.updates import ScorerFailure, UpdateCoordinator

N = 16


class DownWeights:
    def wait_for(self, step):
        raise ScorerUnavailable("scorer down")

    latest = wait_for


def coordinator(tmp_path, weights=None, **kw):
    schedule = Schedule.build(warmup_step=1, update_step=2, update_times=3, batch=2, epochs=2)
    pub = FakePublisher()
    coord = UpdateCoordinator(
        run_id="r",
        kind="lora",
        plan=SelectionPlan(schedule, N),
        publisher=pub,
        weights=weights or FakeWeights(N, pub),
        record=JsonlRecord(tmp_path / "s.jsonl"),
        **kw,
    )
    return coord, pub, schedule


def run_all(coord, schedule):
    return [coord.run_update(u, lambda: {"x": torch.zeros(1)}) for u in schedule.updates()]


def test_sync_draws_follow_the_documented_seeds(tmp_path):
    coord, pub, schedule = coordinator(tmp_path)
    rows = run_all(coord, schedule)
    assert [(c["step"], c["update_index"]) for c in pub.checkpoints] == [
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
    g = torch.Generator().manual_seed(42 + 8)  # update 1 of a later epoch
    assert rows[3]["sampled_indices"] == torch.randperm(N, generator=g)[:4].tolist()
    assert [r["weights_step"] for r in rows] == [1, 3, 5, 8, 10, 12]
    assert read_jsonl(tmp_path / "s.jsonl") == rows


def test_async_uses_the_newest_weights_available(tmp_path):
    coord, _, schedule = coordinator(tmp_path, mode="async")
    rows = run_all(coord, schedule)
    # the fake has scored everything but the checkpoint just sent
    assert [r["weights_step"] for r in rows] == [None, 1, 3, 5, 8, 10]
    assert rows[1]["source"] == "scorer"
    g = torch.Generator().manual_seed(42 + 3)
    expected = torch.multinomial(fake_weights(1, N), 4, False, generator=g).tolist()
    assert rows[1]["sampled_indices"] == expected


def test_failure_stops_with_a_hint(tmp_path):
    coord, _, schedule = coordinator(tmp_path, weights=DownWeights())
    with pytest.raises(ScorerFailure, match="on_scorer_failure: uniform"):
        run_all(coord, schedule)


def test_failure_with_uniform_fallback_is_recorded(tmp_path):
    coord, _, schedule = coordinator(tmp_path, weights=DownWeights(), on_failure="uniform")
    rows = run_all(coord, schedule)
    assert {r["source"] for r in rows} == {"uniform_fallback"}
    assert all("scorer down" in r["failure"] for r in rows)
    uniform = torch.full((N,), 1.0 / N, dtype=torch.float64)
    g = torch.Generator().manual_seed(42 + 3)
    assert rows[1]["sampled_indices"] == torch.multinomial(uniform, 4, False, generator=g).tolist()


class RefusingPublisher(FakePublisher):
    def send_checkpoint(self, **kwargs):
        raise CheckpointRejected("checkpoint does not fit the lora model of this run")


def test_an_error_reply_stops_the_run_with_its_reason_or_falls_back(tmp_path):
    coord, _, schedule = coordinator(tmp_path)
    coord.publisher = RefusingPublisher()
    with pytest.raises(ScorerFailure, match="does not fit the lora model"):
        run_all(coord, schedule)
    coord, _, schedule = coordinator(tmp_path / "u", on_failure="uniform")
    coord.publisher = RefusingPublisher()
    rows = run_all(coord, schedule)
    assert {r["source"] for r in rows} == {"uniform_fallback"}
    assert "does not fit" in rows[0]["failure"]
