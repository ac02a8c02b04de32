"""A real run over ZeroMQ CURVE; a client whose key the scorer does not know, or without CURVE,
is refused in the handshake and told why."""

import shutil

import httpx
import pytest

from common.wire.curve import create_keys, load_client_keys
from common.wire.errors import Unauthorized
from common.wire.protocol import PROTOCOL_VERSION, Hello
from delta_loss_devtools.scorer_process import ScorerProcess
from tests.support.scorer import settled_checkpoints
from tests.support.trainer import run_trainer
from trainer_svc.scorer.publisher import CheckpointPublisher

pytestmark = pytest.mark.slow


def test_run_over_curve_and_unknown_key_refused(tiny_model, tmp_path):
    keys = tmp_path / "keys"
    _, server_secret = create_keys(keys, "scorer")
    trainer_public, trainer_secret = create_keys(keys, "trainer")
    _, stranger_secret = create_keys(keys, "stranger")
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    shutil.copy(trainer_public, authorized)
    scorer = ScorerProcess(
        tmp_path / "scorer",
        "--curve-secret-key-file", str(server_secret),
        "--curve-authorized-keys-dir", str(authorized),
    ).start()  # fmt: skip
    try:
        out, run_id = run_trainer(
            tiny_model, scorer, tmp_path, "sync",
            scorer_curve_secret_key_file=str(trainer_secret),
            scorer_curve_server_key_file=str(keys / "scorer.key"),
        )  # fmt: skip
        rows = settled_checkpoints(scorer, run_id, 3)
        assert [r["status"] for r in rows] == ["scored"] * 3
        assert "CURVE on: 1 authorized client key(s)" in scorer.log()

        hello = Hello(
            protocol=PROTOCOL_VERSION, run_id="intruder", base_model=str(tiny_model),
            finetuning_type="full", dataset="x.json", window_size=0.2,
            tokenization={"template": "auto", "cutoff_len": 64},
            update_times=2, n_samples=1, fingerprint="0" * 64,
        )  # fmt: skip
        strangers = {
            "unknown key": (load_client_keys(stranger_secret, keys / "scorer.key"), "authorized"),
            "no CURVE": (None, "does not match this trainer's"),
        }
        for what, (curve, advice) in strangers.items():
            # Refused in the handshake: known at once, not after the wait runs out.
            publisher = CheckpointPublisher(
                scorer.zmq_url, wait_seconds=600, reply_timeout=600, curve=curve
            )
            with pytest.raises(Unauthorized, match=advice):
                publisher.hello(hello)
            publisher.close()
            runs = [r["run_id"] for r in httpx.get(f"{scorer.base_url}/v1/runs").json()["runs"]]
            assert runs == [run_id], what
        stranger = load_client_keys(stranger_secret, keys / "scorer.key").public
        logged = f"CURVE key {stranger.decode()[:8]}... is not among the authorized keys"
        assert f"refused a ZeroMQ peer in the handshake: {logged}" in scorer.log()
    finally:
        scorer.stop()
