"""Models kept loaded by spec within a budget, and runs taking turns at the worker: two runs on
different base models, their checkpoints interleaved, load each model once."""

import json
import shutil

import pytest
import torch
from sqlalchemy import select

from common.model_spec import ModelSpec
from common.wire.protocol import encode_checkpoint, encode_hello
from scorer_svc.config import Settings
from scorer_svc.intake.server import Intake
from scorer_svc.scoring.model_cache import ModelCache, model_bytes
from scorer_svc.scoring.registry import Registry
from scorer_svc.scoring.worker import Worker
from scorer_svc.storage import checkpoints as checkpoint_store
from scorer_svc.storage import runs as run_store
from scorer_svc.storage.db import make_engine, make_sessionmaker
from scorer_svc.storage.failures import UnrecordedFailures
from scorer_svc.storage.tables import SCORED, CheckpointRow, Run
from tests.support.data import write_samples
from tests.support.scorer import intake_upload, lora_checkpoints, make_hello, until_registered
from tests.support.worker_parts import worker_parts


class Held:
    """What the cache keeps of a model: here a linear layer of a given size."""

    def __init__(self, n: int) -> None:
        self.model = torch.nn.Linear(n, 1, bias=False)  # n float32 values: 4n bytes


def spec(name: str) -> ModelSpec:
    return ModelSpec(name, "full")


def cache_of(budget: int, sizes: dict[str, int]) -> ModelCache:
    return ModelCache(
        budget, lambda s: Held(sizes[s.base_model]), lambda s: 4 * sizes[s.base_model]
    )


def test_models_within_the_budget_stay_loaded():
    cache = cache_of(1000, {"a": 100, "b": 100})
    a, b = cache.get(spec("a")), cache.get(spec("b"))
    assert cache.get(spec("a")) is a and cache.get(spec("b")) is b
    assert (cache.loads, len(cache), cache.held_bytes) == (2, 2, 800)


def test_the_least_recently_used_goes_first_when_the_next_does_not_fit():
    cache = cache_of(1000, {"a": 100, "b": 100, "c": 100})
    cache.get(spec("a")), cache.get(spec("b")), cache.get(spec("a"))
    cache.get(spec("c"))  # 1200 bytes would not fit: b, used least recently, goes
    assert cache.loads == 3 and len(cache) == 2
    cache.get(spec("a"))
    assert cache.loads == 3  # a stayed
    cache.get(spec("b"))
    assert cache.loads == 4


def test_a_model_larger_than_the_budget_is_loaded_alone():
    cache = cache_of(1000, {"small": 10, "huge": 1000})
    cache.get(spec("small"))
    cache.get(spec("huge"))
    assert len(cache) == 1 and cache.held_bytes == 4000
    assert model_bytes(torch.nn.Linear(10, 1, bias=False)) == 40


@pytest.fixture
def two_bases(tiny_model, tmp_path):
    """One scorer, two registered runs, each on its own copy of the tiny base model."""
    other = tmp_path / "other-base"
    shutil.copytree(tiny_model, other)
    dataset = write_samples(tmp_path / "train.json", 6)

    def build(**settings):
        config = Settings(data_dir=tmp_path / "data", device="cpu", **settings)
        sessions = make_sessionmaker(make_engine(config.resolved_database_url))
        registry = Registry(config)
        intake = Intake(config, sessions, registry, on_queued=lambda: None, instance="here")
        worker = Worker(
            sessions, registry, failures=UnrecordedFailures(), keep_checkpoints=False,
            instance="here", **worker_parts(),
        )  # fmt: skip
        return intake, worker, sessions

    return build, {"run-a": tiny_model, "run-b": other}, dataset


def _queue(intake, run_id, base, dataset, steps) -> None:
    hello = make_hello(base, dataset, run_id=run_id)
    reply = until_registered(lambda: json.loads(intake.handle(encode_hello(hello))[0]))
    assert reply["status"] in ("registered", "already_registered")
    tensors = lora_checkpoints(base, max(steps))
    for k in steps:
        frames = encode_checkpoint(
            run_id=run_id, step=10 * k, update_index=k, kind="lora", tensors=tensors[k - 1]
        )
        assert intake_upload(intake, frames)["status"] == "queued"


def _score_all(worker, sessions) -> list[tuple[str, int]]:
    """Runs the worker until nothing is queued: (run, update) in the order it scored them."""
    order = []
    score = worker._score

    def recording(session, checkpoint):
        run = session.get(Run, checkpoint.run_pk)
        order.append((run.run_id, checkpoint.update_index))
        score(session, checkpoint)

    worker._score = recording
    while worker.run_once():
        pass
    with sessions() as session:
        statuses = session.scalars(select(CheckpointRow.status)).all()
    assert statuses and all(status == SCORED for status in statuses), statuses
    return order


@pytest.mark.parametrize("budget, loads", [(None, 2), (1, 4)], ids=["cached", "no room"])
def test_two_runs_on_different_bases_take_turns_and_load_once(two_bases, budget, loads):
    build, bases, dataset = two_bases
    intake, worker, sessions = build(model_cache_bytes=budget)
    _queue(intake, "run-a", bases["run-a"], dataset, [1, 2])  # run-a queues first, and more
    _queue(intake, "run-b", bases["run-b"], dataset, [1, 2])
    order = _score_all(worker, sessions)
    assert order == [("run-a", 1), ("run-b", 1), ("run-a", 2), ("run-b", 2)]
    assert worker.registry.models.cache.loads == loads  # a reload at every turn without the room
    with sessions() as session:
        runs = {r.run_id: r for r in run_store.list_runs(session)}
        for run_id in bases:
            assert checkpoint_store.scored_steps(session, run=runs[run_id]) == [10, 20]
