"""One hostile client against a real scorer on loopback, with no token (the default), and a
legitimate trainer beside it:

1. two hostile hellos (from 127.0.0.2 and 127.0.0.3, 2 s apart), each naming
   alpaca_en_demo.json under as many spellings as a hello holds: the scorer's RSS, and how
   long a trainer's hello (from 127.0.0.1) waits for its run to be registered;
2. a hostile client (127.0.0.2) holding 60 partial uploads: the `busy` replies a trainer's
   checkpoint upload gets before it goes through.

`python -m bench.hostile_clients [--source CHECKOUT]`: CHECKOUT runs the scorer from another
checkout (an older commit, for the figures before); the clients are this checkout's.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import zmq

from bench.util import ALPACA, ScorerProcess, rss_bytes
from common.data.datasets import DatasetSpec, load_samples
from common.data.tokenization import TokenizationSettings, encode_dataset
from common.model_spec import LoraSettings, ModelSpec
from common.wire.hello import build_hello
from common.wire.protocol import Hello, encode_checkpoint, encode_hello
from delta_loss_devtools.demo_data import write_dataset
from delta_loss_devtools.tiny_model import build_tiny_model

SETTINGS = TokenizationSettings(template="auto", cutoff_len=256)
LORA = LoraSettings(r=4, alpha=8, dropout=0.0, target_modules="all-linear")
WAIT = 600.0  # the longest any one figure is waited for
STAGGER = 2.0  # seconds between the hostile hellos, and before the trainer's


def request(url: str, messages: list[list], timeout_ms: int = 60_000) -> dict | None:
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(url)
    try:
        for frames in messages:
            if sock.poll(0):
                break
            sock.send_multipart(frames)
        return json.loads(sock.recv_multipart()[0]) if sock.poll(timeout_ms) else None
    finally:
        sock.close(0)


def from_host(url: str, host: str) -> str:
    return url.replace("tcp://", f"tcp://{host}:0;", 1)


def hello_for(model: Path, dataset: Path, run_id: str) -> Hello:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    spec = DatasetSpec(str(dataset))
    return build_hello(
        run_id=run_id, spec=ModelSpec(str(model), "lora", LORA), dataset=spec,
        tokenization=SETTINGS, encoded=encode_dataset(tokenizer, load_samples(spec), SETTINGS),
        window_size=0.25, update_times=3, vocab_size=len(tokenizer),
    )  # fmt: skip


def spellings(path: Path, limit: int = 4096) -> str:
    """The one file under as many spellings as a hello's dataset field holds."""
    names: list[str] = []
    i = 0
    while True:
        name = (
            f"{path.parent}{'/' * (i + 1)}{path.name}"
            if i % 2
            else (f"{path.parent}/{'./' * i}{path.name}")
        )
        if len(",".join([*names, name])) > limit:
            return ",".join(names)
        names.append(name)
        i += 1


def register_wait(url: str, hello: Hello) -> tuple[float, str]:
    """Seconds until the hello is answered other than `registering`/`busy`, as a trainer
    asks (again every 0.05 s, doubled up to 2 s); the final status."""
    started, pause = time.perf_counter(), 0.05
    while time.perf_counter() - started < WAIT:
        reply = request(url, [encode_hello(hello)]) or {}
        if reply.get("status") != "registering" and reply.get("code") != "busy":
            return time.perf_counter() - started, reply.get("status") or reply.get("code", "?")
        time.sleep(pause)
        pause = min(pause * 2, 2.0)
    return WAIT, "not registered"


def registrations(scorer: ScorerProcess, model: Path, legit_data: Path) -> dict:
    assert scorer.proc is not None
    pid = scorer.proc.pid
    before = rss_bytes(pid)
    base = hello_for(model, ALPACA, "hostile")
    many = spellings(ALPACA)
    hostile = [
        Hello.model_validate({**base.model_dump(), "run_id": f"hostile-{i}", "dataset": many})
        for i in (2, 3)
    ]
    for i, hello in zip((2, 3), hostile, strict=True):
        request(from_host(scorer.zmq_url, f"127.0.0.{i}"), [encode_hello(hello)])
        time.sleep(STAGGER)
    waited, status = register_wait(scorer.zmq_url, hello_for(model, legit_data, "legit"))
    hostile_seconds = []
    for i, hello in zip((2, 3), hostile, strict=True):
        seconds, outcome = register_wait(from_host(scorer.zmq_url, f"127.0.0.{i}"), hello)
        hostile_seconds.append((round(seconds, 2), outcome))
    return {
        "spellings": many.count(",") + 1,
        "legit_wait_s": round(waited, 2),
        "legit_status": status,
        "hostile": hostile_seconds,
        "rss_before_mb": round(before / 1e6),
        "rss_after_mb": round(rss_bytes(pid) / 1e6),
        "rss_peak_mb": round(rss_bytes(pid, "VmHWM") / 1e6),
    }


def uploads(scorer: ScorerProcess, model: Path, legit_data: Path) -> dict:
    hello = hello_for(model, legit_data, "legit")
    register_wait(scorer.zmq_url, hello)
    from tests.support.scorer import lora_checkpoints

    tensors = lora_checkpoints(model, 1)[0]

    def upload(step: int) -> list:
        return encode_checkpoint(run_id="legit", step=step, update_index=1, kind="lora",
                                 tensors=tensors, chunk_bytes=1024)  # fmt: skip

    held = []
    for i in range(60):
        sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(from_host(scorer.zmq_url, "127.0.0.2"))
        for frames in upload(100 + i)[:2]:
            sock.send_multipart(frames)
        held.append(sock)
    time.sleep(1.0)  # the hostile uploads are open before the trainer's comes
    busy, started, status = 0, time.perf_counter(), "not through"
    try:
        while time.perf_counter() - started < 60:
            reply = request(scorer.zmq_url, upload(2)) or {}
            if reply.get("code") != "busy":
                status = reply.get("status") or reply.get("code", "?")
                break
            busy += 1
            time.sleep(0.5)
    finally:
        for sock in held:
            sock.close(0)
    return {"busy": busy, "seconds": round(time.perf_counter() - started, 2), "status": status}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help="run the scorer from this checkout")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = build_tiny_model(work / "model", seed=0)
        legit_data = write_dataset(work / "data" / "legit.json", n=64)
        env = {"PYTHONPATH": str(args.source.resolve())} if args.source else {}
        flags = ["--model-root", str(work), "--data-root", str(work), "--data-root",
                 str(ALPACA.parent)]  # fmt: skip
        figures = {}
        for name, measure in (("registrations", registrations), ("uploads", uploads)):
            scorer = ScorerProcess(
                work / f"scorer-{name}", *flags, env=env,
                log_path=Path(tempfile.gettempdir()) / f"hostile-{name}.log",
            )  # fmt: skip
            cwd = os.getcwd()
            if args.source:
                os.chdir(args.source)  # the scorer's modules come from there
            try:
                with scorer:
                    figures[name] = measure(scorer, model, legit_data)
            finally:
                os.chdir(cwd)
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
