"""Talking to a live scorer as a trainer would: hellos, LoRA checkpoints, weights, history."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
import zmq
from transformers import AutoTokenizer

from common.data.datasets import DatasetSpec, load_samples
from common.data.tokenization import TokenizationSettings, encode_dataset
from common.model_spec import LoraSettings, ModelSpec, checkpoint_tensors
from common.wire.hello import build_hello
from common.wire.protocol import Hello, encode_checkpoint, encode_hello
from delta_loss_devtools.scorer_process import ScorerProcess
from delta_loss_devtools.waiting import wait_until

LORA = LoraSettings(r=4, alpha=8, dropout=0.0, target_modules="all-linear")
SETTINGS = TokenizationSettings(template="auto", cutoff_len=256)


def make_hello(tiny_model: Path, dataset_file: Path, run_id: str = "run-a", **over: Any) -> Hello:
    """A LoRA run's hello as the trainer builds it, with the fields in over replaced."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    hello = build_hello(
        run_id=run_id,
        spec=ModelSpec(str(tiny_model), "lora", LORA),
        dataset=DatasetSpec(str(dataset_file)),
        tokenization=SETTINGS,
        encoded=encode_dataset(tokenizer, load_samples(DatasetSpec(str(dataset_file))), SETTINGS),
        window_size=0.25,
        update_times=3,
        vocab_size=len(tokenizer),
    )
    return Hello.model_validate({**hello.model_dump(), **over})


def lora_checkpoints(tiny_model: Path, n: int) -> list[dict[str, torch.Tensor]]:
    """Trainable tensors of a peft model after n rounds of random drift (stand-in training)."""
    model = ModelSpec(str(tiny_model), "lora", LORA).build()
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        with torch.no_grad():
            for p in checkpoint_tensors(model, "lora").values():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
        out.append({k: t.clone() for k, t in checkpoint_tensors(model, "lora").items()})
    return out


def zmq_request(url: str, frames: list, timeout_ms: int = 60_000) -> dict:
    """Send one request (a hello, or any one message) over a fresh DEALER; return the
    decoded reply's JSON."""
    return zmq_upload(url, [frames], timeout_ms)


def zmq_upload(url: str, messages: list[list], timeout_ms: int = 60_000) -> dict:
    """Send an upload's messages over a fresh DEALER, as the trainer does (stopping at an
    early reply); return the one reply's JSON."""
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(url)
    try:
        for frames in messages:
            if sock.poll(0):
                break
            sock.send_multipart(frames, copy=False)
        if not sock.poll(timeout_ms):
            raise TimeoutError(f"no reply from {url} in {timeout_ms} ms")
        reply = sock.recv_multipart()
    finally:
        sock.close(0)
    assert len(reply) == 1, f"a reply is one frame, got {len(reply)}"
    return json.loads(reply[0])


def intake_upload(intake, messages) -> dict:
    """An upload handed to an Intake message by message, as its socket loop does; the one
    reply's JSON (a chunk gets none)."""
    replies = [intake.handle([bytes(f) for f in m]) for m in messages]
    sent = [json.loads(r[0]) for r in replies if r is not None]
    assert len(sent) == 1, f"one reply per upload, got {sent}"
    return sent[0]


def until_registered(ask: Callable[[], dict], timeout: float = 300) -> dict:
    """The reply to a hello, asked again while the scorer prepares the run (`registering`)."""

    def settled() -> dict | None:
        reply = ask()
        return None if reply.get("status") == "registering" else reply

    return wait_until(settled, "the scorer to finish registering the run", timeout=timeout)


def register(url: str, hello: Hello) -> dict:
    """Sends the hello over ZeroMQ until the run is registered (or refused)."""
    return until_registered(lambda: zmq_request(url, encode_hello(hello)))


def send_checkpoint(url: str, run_id: str, step: int, update_index: int, tensors) -> dict:
    messages = encode_checkpoint(
        run_id=run_id, step=step, update_index=update_index, kind="lora", tensors=tensors
    )
    return zmq_upload(url, messages)


def settled_weights(scorer: ScorerProcess, run_id: str, step: int, timeout=300) -> httpx.Response:
    """The first /weights answer for step that is not 202 (scored, failed or unknown)."""

    def settled() -> httpx.Response | None:
        r = httpx.get(f"{scorer.base_url}/v1/runs/{run_id}/weights", params={"step": step})
        if r.status_code == 202:
            assert "Retry-After" in r.headers
            return None
        return r

    return wait_until(settled, f"step {step} of {run_id} scored", scorer, timeout=timeout)


def wait_weights(scorer: ScorerProcess, run_id: str, step: int, timeout=300) -> dict:
    r = settled_weights(scorer, run_id, step, timeout)
    assert r.status_code == 200, r.text
    return r.json()


def all_losses(base_url: str, run_id: str, step: int) -> list[float]:
    r = httpx.get(
        f"{base_url}/v1/runs/{run_id}/losses", params={"step": step, "max_results": 100000}
    )
    assert r.status_code == 200, r.text
    return [np.nan if v is None else v for v in r.json()["losses"]]


def checkpoints(scorer: ScorerProcess, run_id: str) -> list[dict]:
    with scorer.http() as client:
        r = client.get(f"/v1/runs/{run_id}/checkpoints", params={"max_results": 1000})
    assert r.status_code == 200, r.text
    return r.json()["checkpoints"]


def settled_checkpoints(scorer: ScorerProcess, run_id: str, expected: int, *watched, timeout=300):
    """The run's checkpoints once at least `expected` exist and none is pending (each scored,
    failed, or superseded by a newer one of its async run)."""

    def settled() -> list[dict] | None:
        rows = checkpoints(scorer, run_id)
        ended = ("scored", "failed", "superseded")
        done = len(rows) >= expected and all(r["status"] in ended for r in rows)
        return rows if done else None

    return wait_until(
        settled, f"{expected} checkpoints of {run_id}", scorer, *watched, timeout=timeout
    )


def db_status(scorer: ScorerProcess, step: int) -> tuple[str | None, int]:
    """(status, number of stored losses) of the checkpoint at step, read from the SQLite file."""
    db = scorer.data_dir / "scorer.db"
    if not db.exists():
        return None, 0
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            row = conn.execute("SELECT status FROM checkpoints WHERE step = ?", (step,)).fetchone()
            (n,) = conn.execute("SELECT count(*) FROM losses WHERE step = ?", (step,)).fetchone()
    except sqlite3.OperationalError:  # the tables are not there yet
        return None, 0
    return (row[0] if row else None), n


def wait_status(scorer: ScorerProcess, step: int, wanted: str, *watched, timeout=60) -> None:
    wait_until(
        lambda: db_status(scorer, step)[0] == wanted,
        f"step {step} {wanted}",
        scorer,
        *watched,
        timeout=timeout,
    )


def stored_losses(scorer: ScorerProcess, run_id: str, steps=(2, 4, 6)) -> dict[int, list]:
    """Every loss the scorer stored at each of steps."""
    result = {}
    for step in steps:
        r = httpx.get(
            f"{scorer.base_url}/v1/runs/{run_id}/losses",
            params={"step": step, "max_results": 100000},
        )
        assert r.status_code == 200, r.text
        result[step] = r.json()["losses"]
    return result


class WritesFile:
    """A pickle gadget: unpickling it creates the file at path (tests check none appears)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def stored_run_config(run_id: str, n_samples: int, **over) -> dict:
    """The fields of a hello that runs.create_run stores."""
    config = {
        "run_id": run_id, "base_model": "none", "finetuning_type": "lora",
        "fingerprint": "0" * 64, "n_samples": n_samples, "window_size": 0.25, "update_times": 3,
    }  # fmt: skip
    return {**config, **over}
