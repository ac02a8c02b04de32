"""Two scorer processes on one PostgreSQL database, a trainer on each, at once: each scorer
scores only its own run, both runs select as a run alone does, and either scorer's REST answers
for both runs (another's read-only)."""

import httpx
import pytest

from delta_loss_devtools.demo_data import write_dataset
from delta_loss_devtools.scorer_process import ScorerProcess
from tests.support.scorer import settled_checkpoints
from tests.support.trainer import (
    RUN_SAMPLES,
    TrainerProcess,
    sampled,
    scorer_keys,
    write_config,
)

pytestmark = pytest.mark.slow


def test_two_scorers_share_one_database_without_harm(tiny_model, tmp_path, postgres_cluster):
    url = postgres_cluster.url()
    data = write_dataset(tmp_path / "data.json", n=RUN_SAMPLES, seed=2)
    scorers = {
        name: ScorerProcess(tmp_path / name, "--database-url", url, "--instance-id", name)
        for name in ("scorer-a", "scorer-b")
    }
    for scorer in scorers.values():
        scorer.start()
    try:
        trainers = {}
        for scorer, run_id in zip(scorers.values(), ("run-a", "run-b"), strict=True):
            out = tmp_path / f"out-{run_id}"
            config = write_config(tmp_path / f"{run_id}.yaml", tiny_model, data, out)
            trainers[run_id] = (
                TrainerProcess(
                    config, *scorer_keys(scorer), f"run_id={run_id}", log=tmp_path / f"{run_id}.log"
                ),
                out,
            )
        for trainer, _ in trainers.values():
            assert trainer.wait(400) == 0, trainer.log()[-4000:]

        a, b = scorers["scorer-a"], scorers["scorer-b"]
        for scorer, run_id in ((a, "run-a"), (b, "run-b")):  # each scored its own
            steps = [(c["step"], c["status"]) for c in settled_checkpoints(scorer, run_id, 3)]
            assert steps == [(2, "scored"), (4, "scored"), (6, "scored")]
        with httpx.Client(base_url=b.base_url) as client:
            runs = {r["run_id"]: r["instance"] for r in client.get("/v1/runs").json()["runs"]}
            assert runs == {"run-a": "scorer-a", "run-b": "scorer-b"}
            weights = client.get("/v1/runs/run-a/weights", params={"step": 6})
            assert weights.status_code == 200  # another scorer's run, read through this one
            refused = client.delete("/v1/runs/run-a")
            assert refused.status_code == 403 and "scorer-a" in refused.json()["detail"]
        assert sorted(p.name for p in (tmp_path / "scorer-a" / "checkpoints").iterdir()) == [
            "run-a"
        ]
        assert sorted(p.name for p in (tmp_path / "scorer-b" / "checkpoints").iterdir()) == [
            "run-b"
        ]

        # the same run alone, on a scorer of its own with its own SQLite database
        alone_out = tmp_path / "out-alone"
        config = write_config(tmp_path / "alone.yaml", tiny_model, data, alone_out)
        with ScorerProcess(tmp_path / "alone-scorer") as alone:
            trainer = TrainerProcess(
                config, *scorer_keys(alone), "run_id=alone", log=tmp_path / "alone.log"
            )
            assert trainer.wait(400) == 0, trainer.log()[-4000:]
        expected = sampled(alone_out)
        assert len(expected) == 3
        for run_id, (_, out) in trainers.items():
            assert sampled(out) == expected, run_id
    finally:
        for scorer in scorers.values():
            scorer.stop()
    for name in scorers:  # neither scorer failed anything or raced the other
        log = (tmp_path / name / "scorer.log").read_text()
        assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
