"""The real scorer refuses bad requests with one clear reply each, and stores nothing for them."""

import json
import pickle

import httpx
import pytest
import torch

from common.wire.protocol import chunk_digest, encode_checkpoint, encode_hello
from delta_loss_devtools.scorer_process import ScorerProcess
from tests.support.scorer import (
    WritesFile,
    lora_checkpoints,
    make_hello,
    register,
    settled_weights,
    wait_weights,
    zmq_request,
    zmq_upload,
)
from tests.support.wire import as_bytes

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def live(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("rejections")
    dataset = root / "train.json"
    from tests.support.data import make_samples

    dataset.write_text(json.dumps(make_samples(12)))
    scorer = ScorerProcess(root / "scorer").start()
    hello = make_hello(tiny_model, dataset, run_id="run-r")
    assert register(scorer.zmq_url, hello)["status"] == "registered"
    tensors = lora_checkpoints(tiny_model, 1)[0]
    yield scorer, hello, tensors, root
    scorer.stop()


# A checkpoint as the previous protocol sent it: one message, a sha256 of the payload.
_V2_HEADER = json.dumps(
    {"protocol": 2, "type": "checkpoint", "run_id": "run-r", "step": 2, "update_index": 1,
     "kind": "lora", "encoding": "raw", "tensors": [], "total_bytes": 16, "sha256": "0" * 64}
).encode()  # fmt: skip


def _upload(tensors, **over):
    fields = dict(run_id="run-r", step=2, update_index=1, kind="lora", tensors=tensors)
    fields.update(over)
    return as_bytes(encode_checkpoint(**fields, chunk_bytes=4096))


def _with_header(message, **changes):
    header = json.loads(message[0])
    header.update(changes)
    return [json.dumps(header).encode(), *message[1:]]


def _replace(messages, index, message):
    return [*messages[:index], message, *messages[index + 1 :]]


def _pickle_as_blob(upload, marker):
    """A well-formed upload whose one chunk is a pickle that writes a file if unpickled."""
    blob = pickle.dumps(WritesFile(str(marker)))
    begin = _with_header(upload[0], encoding="safetensors", tensors=[], total_bytes=len(blob))
    chunk = _with_header(upload[1], digest=chunk_digest(blob))
    return [begin, [chunk[0], blob], upload[-1]]


def _checkpoints(scorer):
    return httpx.get(f"{scorer.base_url}/v1/runs/run-r/checkpoints").json()["checkpoints"]


def test_each_bad_request_gets_one_error_reply_and_stores_nothing(live):
    scorer, _, tensors, root = live
    marker = root / "pwned"

    def good():  # a new upload id each time: a refused upload's id is closed for good
        return _upload(tensors)

    def flipped(message):
        return [message[0], bytes([message[1][0] ^ 0x10]) + message[1][1:]]

    assert len(good()) > 4  # a header, several chunks, a commit
    cases = {
        "version": lambda g: _replace(g, 0, _with_header(g[0], protocol=7)),
        "malformed": lambda g: [[b"{not json"]],
        "old_trainer": lambda g: [[_V2_HEADER, b"\0" * 16]],
        "integrity": lambda g: _replace(g, 1, _with_header(g[1], digest="f" * 32)),
        "flipped": lambda g: _replace(g, 2, flipped(g[2])),
        "commit": lambda g: _replace(g, -1, _with_header(g[-1], digest="xxh3-128:" + "0" * 32)),
        "short": lambda g: _replace(g, 1, [g[1][0], g[1][1][:-4]]),
        "long": lambda g: _replace(g, 1, [g[1][0], g[1][1] + b"\0\0\0\0"]),
        "missing": lambda g: [*g[:2], *g[3:]],
        "lost": lambda g: g[1:],
        "unknown_run": lambda g: _upload(tensors, run_id="nobody"),
        "pickle": lambda g: [[pickle.dumps(WritesFile(str(marker)))]],
        "pickle_payload": lambda g: _pickle_as_blob(g, marker),
        "bad_update": lambda g: _upload(tensors, update_index=9),
        "huge_step": lambda g: _replace(g, 0, _with_header(g[0], step=2**63)),
        "wrong_kind": lambda g: _upload(tensors, kind="full"),
        "wrong_shape": lambda g: _upload(
            {**tensors, next(iter(tensors)): tensors[next(iter(tensors))][:1]}
        ),
    }
    expected = {
        "version": ("version", "protocol version 7"),
        "malformed": ("malformed", "JSON header"),
        "old_trainer": ("version", "protocol version 2 is not supported; this scorer speaks"),
        "integrity": ("integrity", "chunk 0"),
        "flipped": ("integrity", "chunk 1 of checkpoint step 2"),
        "commit": ("integrity", "its commit declares"),
        "missing": ("integrity", "chunk 2 of upload"),
        "lost": ("upload_lost", "send the checkpoint again"),
        "short": ("integrity", "truncated"),
        "long": ("integrity", "truncated"),
        "unknown_run": ("unknown_run", "send hello first"),
        "pickle": ("malformed", "JSON header"),
        "pickle_payload": ("malformed", "encoding"),
        "huge_step": ("malformed", "step"),
        "bad_update": ("rejected", "outside 1..3"),
        "wrong_kind": ("rejected", "does not match"),
        "wrong_shape": ("rejected", "has shape"),
    }
    for name, make in cases.items():
        reply = zmq_upload(scorer.zmq_url, make(good()))
        code, words = expected[name]
        assert reply["ok"] is False and reply["code"] == code, (name, reply)
        assert words in reply["reason"], (name, reply)
    assert not marker.exists()
    assert _checkpoints(scorer) == []
    assert not list((root / "scorer" / "checkpoints").rglob("*.*"))  # no file kept, none half


def _runs(scorer):
    return [r["run_id"] for r in httpx.get(f"{scorer.base_url}/v1/runs").json()["runs"]]


def _odd_hellos(hello, root):
    """Hellos (a new run id each) whose header is malformed, and the field each one names."""
    fields = json.loads(encode_hello(hello)[0])
    for kind in ([], {}, 5, None):
        yield "type", {**fields, "run_id": "run-t", "type": kind}
    for field in ("base_model", "dataset", "dataset_dir"):
        yield field, {**fields, "run_id": "run-n", field: f"{root}/a\0b"}
    lora = {**fields["lora"], "target_modules": ["q_proj", "v\0proj"]}
    yield "target_modules", {**fields, "run_id": "run-n", "lora": lora}


def test_odd_headers_are_malformed_naming_the_field_and_store_nothing(live):
    scorer, hello, tensors, root = live
    runs, checkpoints = _runs(scorer), _checkpoints(scorer)
    tracebacks = scorer.log().count("Traceback")
    begin = json.loads(_upload(tensors)[0][0])
    odd = [*_odd_hellos(hello, root)]
    odd += [("type", {**begin, "type": kind}) for kind in ([], {}, 5, None)]
    for field, header in odd:
        reply = zmq_request(scorer.zmq_url, [json.dumps(header).encode()])
        assert reply["ok"] is False and reply["code"] == "malformed", (field, header, reply)
        assert field in reply["reason"], (field, reply)
    assert _runs(scorer) == runs and _checkpoints(scorer) == checkpoints
    assert scorer.log().count("Traceback") == tracebacks


def test_checkpoint_before_initial_update_is_refused(live):
    scorer, _, tensors, _ = live
    reply = zmq_upload(scorer.zmq_url, _upload(tensors, step=4, update_index=2))
    assert reply["code"] == "rejected" and "update 1 must come first" in reply["reason"]


def test_hello_that_disagrees_is_refused_naming_both_values(live, tiny_model):
    scorer, hello, _, root = live
    other = make_hello(tiny_model, root / "train.json", run_id="run-x", fingerprint="0" * 64)
    reply = register(scorer.zmq_url, other)
    assert reply["code"] == "mismatch"
    assert "0" * 64 in reply["reason"] and hello.fingerprint in reply["reason"]
    changed = hello.model_copy(update={"window_size": 0.5})
    reply = register(scorer.zmq_url, changed)
    assert reply["code"] == "mismatch" and "window_size" in reply["reason"]
    assert [r["run_id"] for r in httpx.get(f"{scorer.base_url}/v1/runs").json()["runs"]] == [
        "run-r"
    ]


@pytest.mark.parametrize(
    ("path", "status", "words"),
    [
        ("/v1/runs/nobody", 404, "no run 'nobody'"),
        ("/v1/runs/nobody/weights", 404, "no run"),
        ("/v1/runs/run-r/weights?step=999", 404, "no checkpoint at step 999"),
        ("/v1/runs/run-r/weights?step=abc", 422, "step"),
        ("/v1/runs/run-r/weights?step=99999999999999999999", 422, "step"),
        ("/v1/runs/run-r/losses?step=9223372036854775808", 422, "step"),
        ("/v1/runs/run-r/losses?step=-1", 422, "step"),
        ("/v1/runs/run-r/losses?max_results=0", 422, "max_results"),
        ("/v1/runs/run-r/losses?page_token=9223372036854775808", 422, "page_token"),
        ("/v1/runs/run-r/losses", 404, "no scored checkpoint"),
        ("/v1/runs/run-r/samples/999/losses", 404, "sample 999 does not exist"),
        ("/v1/runs/run-r/samples/x/losses", 422, "index"),
    ],
)
def test_rest_errors_are_4xx_with_a_readable_detail(live, path, status, words):
    scorer = live[0]
    response = httpx.get(scorer.base_url + path)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]


def test_checkpoint_without_any_finite_loss_fails_with_409_and_can_be_sent_again(live):
    scorer, _, tensors, _ = live
    poisoned = {name: torch.full_like(t, float("nan")) for name, t in tensors.items()}
    assert zmq_upload(scorer.zmq_url, _upload(poisoned, step=8))["status"] == "queued"
    r = settled_weights(scorer, "run-r", 8, timeout=60)
    assert r.status_code == 409 and "no sample has a finite loss" in r.json()["detail"]
    # The same step sent again (fixed) is scored again, and then served.
    assert zmq_upload(scorer.zmq_url, _upload(tensors, step=8))["status"] == "queued"
    body = wait_weights(scorer, "run-r", 8)
    assert body["step"] == 8 and abs(sum(body["weights"]) - 1) < 1e-9


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"n_samples": 13}, "the trainer has 13 samples, the scorer reads 12"),
        ({"vocab_size": 999}, "tokenizer vocabulary: trainer 999, scorer 384"),
        ({"model_digest": "1" * 64}, "other tensor names or shapes"),
        # paths under the scorer's roots that it cannot read
        ({"base_model": "{root}/nonexistent/model"}, "is not a folder on this scorer's disk"),
        ({"dataset": "{root}/nonexistent/train.json"}, "cannot read the dataset"),
    ],
)
def test_trainer_and_scorer_that_disagree_are_refused_before_scoring(
    live, tiny_model, change, words
):
    scorer, _, _, root = live
    change = {k: v.format(root=root) if isinstance(v, str) else v for k, v in change.items()}
    words = words.format(root=root)
    hello = make_hello(tiny_model, root / "train.json", run_id="run-d", **change)
    reply = register(scorer.zmq_url, hello)
    assert reply["code"] == "mismatch" and words in reply["reason"], reply
    assert "run-d" not in [
        r["run_id"] for r in httpx.get(f"{scorer.base_url}/v1/runs").json()["runs"]
    ]


def test_the_trainers_model_digest_matches_the_scorers(live, tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from common.wire.protocol import shapes_digest

    scorer, _, _, root = live
    # built as a trainer would build it, by hand: the digest rule must agree with the scorer's
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model),
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    digest = shapes_digest((n, p.shape) for n, p in model.named_parameters() if p.requires_grad)
    hello = make_hello(tiny_model, root / "train.json", run_id="run-g", model_digest=digest)
    assert register(scorer.zmq_url, hello)["status"] == "registered"
