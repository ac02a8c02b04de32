"""The real trainer started before the scorer: it waits with logged, growing pauses and goes on
once the scorer is up; with no scorer at all it stops, past scorer_wait_seconds, with a message
naming the ZeroMQ address it tried."""

import re

import pytest

from delta_loss_devtools.scorer_process import ScorerProcess
from delta_loss_devtools.waiting import wait_until
from tests.support.data import write_samples
from tests.support.scorer import checkpoints
from tests.support.trainer import STEPS, TrainerProcess, sampled, scorer_keys, write_config

pytestmark = pytest.mark.slow

RETRY = re.compile(
    r"waiting for a reply from the scorer at (\S+) to the hello of run rel-run: "
    r"no reply within [\d.]+s \(attempt (\d+), \d+s of \d+s\); retrying in ([\d.]+)s"
)


def test_trainer_waits_for_a_scorer_started_later(tiny_model, tmp_path):
    data = write_samples(tmp_path / "data.json", 64, seed=3)
    scorer = ScorerProcess(tmp_path / "scorer")  # ports chosen, not started yet
    out = tmp_path / "out"
    config = write_config(
        tmp_path / "c.yaml", tiny_model, data, out, run_id="rel-run", scorer_wait_seconds=60
    )
    trainer = TrainerProcess(config, *scorer_keys(scorer), log=tmp_path / "trainer.log")
    try:
        # two retries logged (the first, then one 10 s or more later), with a growing pause,
        # before the scorer comes up
        wait_until(lambda: len(RETRY.findall(trainer.log())) >= 2, "two retries", trainer)
        scorer.start()
        assert trainer.wait() == 0, trainer.log()[-4000:]
        retries = RETRY.findall(trainer.log())
        assert {url for url, _, _ in retries} == {scorer.zmq_url}
        attempts = [int(a) for _, a, _ in retries]
        assert attempts[0] == 1 and attempts == sorted(set(attempts))
        pauses = [float(p) for _, _, p in retries]
        assert pauses[0] == 0.5 and pauses == sorted(pauses)
        assert f"scorer registered run rel-run ({scorer.zmq_url})" in trainer.log()
        assert [s for s, _ in sampled(out)] == STEPS
        assert [c["status"] for c in checkpoints(scorer, "rel-run")] == ["scored"] * 3
    finally:
        if trainer.proc.poll() is None:
            trainer.kill()
        if scorer.proc is not None:
            scorer.stop()


def test_trainer_without_a_scorer_stops_naming_the_address(tiny_model, tmp_path):
    data = write_samples(tmp_path / "data.json", 64, seed=3)
    scorer = ScorerProcess(tmp_path / "scorer")  # never started
    config = write_config(tmp_path / "c.yaml", tiny_model, data, tmp_path / "out", run_id="rel-run")
    trainer = TrainerProcess(
        config, *scorer_keys(scorer), "scorer_wait_seconds=4", log=tmp_path / "trainer.log"
    )
    assert trainer.wait(120) == 1
    log = trainer.log()
    assert RETRY.search(log)  # it did retry, and said so
    (stop,) = [line for line in log.splitlines() if "stopped:" in line]
    assert f"registering run rel-run with the scorer at {scorer.zmq_url} failed" in stop
    assert f"gave up waiting for a reply from the scorer at {scorer.zmq_url}" in stop
    assert "scorer_zmq_url" in stop and "raise scorer_wait_seconds" in stop
    assert "Traceback" not in log
