"""The checkpoint sent in the background (async mode): a failed send follows
on_scorer_failure as a synchronous one does, and a stop with a send in flight keeps it for the
resumed run, which sends it once."""

import json
import signal

import httpx
import pytest

from delta_loss_devtools.scorer_process import ScorerProcess
from delta_loss_devtools.waiting import wait_until
from tests.support.relay import StallingRelay
from tests.support.trainer import FailingAtStep, TrainerProcess, run_id_of, write_config
from tests.trainer_svc.training.test_recipe import config, train
from trainer_svc.scorer.retry import ScorerFailure
from trainer_svc.training.recipe import run
from trainer_svc.training.records import read_jsonl
from trainer_svc.training.snapshot import UNSENT_FILE, load_unsent

pytestmark = pytest.mark.slow

FAILED = (
    "sending the checkpoint step 4 (update 2) failed: gave up waiting for a reply from the "
    "scorer (set on_scorer_failure: uniform to continue without the scorer)"
)


def test_a_failed_background_send_stops_the_run_with_a_checkpoint_that_keeps_it(
    tiny_model, demo_file, tmp_path
):
    """on_scorer_failure: fail. The send of update 2 (step 4) fails while step 5 trains: the run
    stops at the end of the step that notices it (5, or 6 on a busy machine) with a
    checkpoint holding the unsent checkpoint; the resumed run sends it first."""
    out = tmp_path / "out"
    with pytest.raises(ScorerFailure) as info:
        run(config(tiny_model, demo_file, out, selection_mode="async"), scorer=FailingAtStep(32, 4))
    [saved] = out.glob("checkpoint-*")
    step = int(saved.name.split("-")[1])
    assert step in (5, 6)
    assert str(info.value).startswith(f"{FAILED}; the state at step {step} is saved in {saved}")
    unsent = load_unsent(saved)
    assert (unsent.step, unsent.update_index) == (4, 2)
    assert [r["global_step"] for r in read_jsonl(out / "selections.jsonl")] == [2, 4]

    _, scorer = train(tiny_model, demo_file, out, resume_from_checkpoint=str(saved),
                      selection_mode="async")  # fmt: skip
    assert [c.step for c in scorer.checkpoints] == [4, 6, 10]  # the unsent one first, once
    assert [r["global_step"] for r in read_jsonl(out / "selections.jsonl")] == [2, 4, 6, 10]
    assert [r["step"] for r in read_jsonl(out / "trained_samples.jsonl")] == list(range(12))


def test_a_failed_background_send_under_uniform_is_logged_and_recorded(
    tiny_model, demo_file, tmp_path, caplog
):
    out = tmp_path / "out"
    scorer = FailingAtStep(32, 4)
    conf = config(tiny_model, demo_file, out, selection_mode="async", on_scorer_failure="uniform")
    run(conf, scorer=scorer)
    assert [c.step for c in scorer.checkpoints] == [2, 6, 10]
    assert f"!!! SCORER FAILURE: {FAILED.split(' (set')[0]}" in caplog.text
    rows = read_jsonl(out / "selections.jsonl")
    assert [r["unsent"] and r["unsent"]["step"] for r in rows] == [None, None, 4, None]
    assert rows[2]["unsent"]["failure_code"] == "timeout"
    assert rows[2]["source"] == "scorer", rows[2]  # the draw had the scorer's weights
    assert len(read_jsonl(out / "trained_samples.jsonl")) == 12  # training went on


def _checkpoints(scorer, run_id):
    url = f"{scorer.base_url}/v1/runs/{run_id}/checkpoints"
    return httpx.get(url, params={"max_results": 1000}).json()["checkpoints"]


def test_sigterm_with_a_send_in_flight_keeps_it_and_the_resumed_run_sends_it_once(
    tiny_model, tmp_path
):
    """The network to the scorer stalls once update 1's upload starts: its bytes are held.
    Training goes on (async); SIGTERM saves a checkpoint that keeps the upload; the resumed
    run, on a working network, sends it first, and the scorer scores every update once."""
    from delta_loss_devtools.demo_data import write_dataset

    data = write_dataset(tmp_path / "data.json", n=64, seed=2)
    out = tmp_path / "out"
    conf = write_config(
        tmp_path / "c.yaml", tiny_model, data, out, selection_mode="async", save_steps=1000
    )
    with ScorerProcess(tmp_path / "scorer") as scorer:
        port = int(scorer.zmq_url.rsplit(":", 1)[1])
        with StallingRelay(port, b'"type":"checkpoint"') as relay:
            trainer = TrainerProcess(
                conf, f"scorer_zmq_url={relay.url}", f"scorer_http_url={scorer.base_url}",
                log=tmp_path / "first.log",
            )  # fmt: skip
            wait_until(
                lambda: relay.stalled.is_set() and (out / "selections.jsonl").exists()
                and read_jsonl(out / "selections.jsonl"),
                "update 1 drawn while its upload is held back", trainer, scorer,
            )  # fmt: skip
            assert trainer.kill(signal.SIGTERM) == 128 + signal.SIGTERM, trainer.log()[-4000:]
        [saved] = out.glob("checkpoint-*")
        run_id = run_id_of(out)
        assert (saved / UNSENT_FILE).exists(), trainer.log()[-4000:]
        assert (load_unsent(saved).step, load_unsent(saved).update_index) == (2, 1)
        assert "was not acknowledged by the scorer" in trainer.log()
        assert _checkpoints(scorer, run_id) == []  # nothing of it reached the scorer
        first = read_jsonl(out / "selections.jsonl")

        resumed = TrainerProcess(
            conf, f"scorer_zmq_url={scorer.zmq_url}", f"scorer_http_url={scorer.base_url}",
            f"resume_from_checkpoint={saved}", log=tmp_path / "resumed.log",
        )  # fmt: skip
        assert resumed.wait(300) == 0, resumed.log()[-4000:]
        assert "sending the checkpoint step 2 (update 1) again" in resumed.log()
        rows = read_jsonl(out / "selections.jsonl")
        assert rows[: len(first)] == [r for r in first if r["global_step"] < int(saved.name[11:])]
        listed = {c["step"]: c for c in _checkpoints(scorer, run_id)}
        assert sorted(listed) == [2, 4, 6]  # each update once, update 1 among them
        # An async run's waiting checkpoint is superseded by a newer one; the newest is scored.
        settled = wait_until(
            lambda: (rows := _checkpoints(scorer, run_id))
            and all(c["status"] in ("scored", "superseded") for c in rows)
            and rows,
            "every checkpoint scored or superseded", scorer, most_every=0.5,
        )  # fmt: skip
        assert {c["step"]: c["status"] for c in settled}[6] == "scored"
        assert json.loads((saved / "trainer_state.json").read_text())["global_step"] >= 2
