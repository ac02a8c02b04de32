"""Wire format: round trips and every kind of refusal, without sockets."""

import json
import pickle

import pytest
import torch

from common import errors
from common.protocol import (
    FRAME_BYTES,
    PROTOCOL_VERSION,
    CheckpointMessage,
    Hello,
    ack,
    decode_reply,
    decode_request,
    decode_tensors,
    encode_checkpoint,
    encode_hello,
    error_reply,
)


def _hello(**over):
    fields = dict(
        protocol=PROTOCOL_VERSION,
        run_id="run-1",
        base_model="/models/tiny",
        finetuning_type="lora",
        lora={"r": 4, "alpha": 8, "target_modules": "all-linear"},
        dataset="/data/train.json",
        tokenization={"template": "auto", "cutoff_len": 256},
        window_size=0.2,
        update_times=3,
        n_samples=64,
        fingerprint="a" * 64,
    )
    fields.update(over)
    return Hello(**fields)


def _tensors():
    return {
        "a.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4),
        "b.weight": torch.randn(2, 5, generator=torch.Generator().manual_seed(0)).to(
            torch.bfloat16
        ),
        "c.bias": torch.zeros(0),
    }


def _frames():
    return [
        bytes(f)
        for f in encode_checkpoint(
            run_id="run-1", step=4, update_index=2, kind="lora", tensors=_tensors()
        )
    ]


def test_hello_round_trip():
    msg = decode_request(encode_hello(_hello()))
    assert isinstance(msg, Hello) and msg == _hello()


def test_checkpoint_round_trip_keeps_dtype_shape_and_bits():
    msg = decode_request(_frames())
    assert isinstance(msg, CheckpointMessage)
    assert (msg.header.step, msg.header.update_index, msg.header.kind) == (4, 2, "lora")
    decoded = decode_tensors(msg)
    for name, tensor in _tensors().items():
        assert decoded[name].dtype == tensor.dtype and decoded[name].shape == tensor.shape
        assert torch.equal(decoded[name], tensor)


def test_an_encoding_other_than_raw_is_refused():
    header = json.loads(_frames()[0])
    header["encoding"] = "safetensors"
    with pytest.raises(errors.MalformedMessage, match="encoding"):
        decode_request([json.dumps(header).encode(), *_frames()[1:]])


def _mutate_header(frames, **changes):
    header = json.loads(frames[0])
    header.update(changes)
    return [json.dumps(header).encode(), *frames[1:]]


@pytest.mark.parametrize(
    ("frames", "error", "words"),
    [
        ([], errors.MalformedMessage, "empty"),
        ([b"\xff\x00not json"], errors.MalformedMessage, "JSON header"),
        ([b"[1, 2]"], errors.MalformedMessage, "JSON object"),
        ([pickle.dumps({"type": "hello"})], errors.MalformedMessage, "JSON header"),
        ([b'{"protocol": 99, "type": "hello"}'], errors.VersionMismatch, "99"),
        ([b'{"type": "hello"}'], errors.VersionMismatch, "None"),
        ([b'{"protocol": 2, "type": "nope"}'], errors.MalformedMessage, "unknown message"),
        ([b'{"protocol": 2, "type": "hello"}'], errors.MalformedMessage, "run_id"),
    ],
)
def test_bad_headers_are_refused(frames, error, words):
    with pytest.raises(error, match=words):
        decode_request(frames)


def test_wrong_sha256_is_an_integrity_error():
    frames = _mutate_header(_frames(), sha256="0" * 64)
    with pytest.raises(errors.IntegrityError, match="sha256"):
        decode_request(frames)


def test_flipped_payload_byte_is_caught():
    frames = _frames()
    frames[1] = bytes([frames[1][0] ^ 1]) + frames[1][1:]
    with pytest.raises(errors.IntegrityError, match="corrupted"):
        decode_request(frames)


def test_tensor_bytes_shorter_or_longer_than_declared():
    frames = _frames()
    with pytest.raises(errors.IntegrityError, match="truncated or padded"):
        decode_request([frames[0], frames[1][:-4], *frames[2:]])
    with pytest.raises(errors.IntegrityError, match="truncated or padded"):
        decode_request([frames[0], frames[1] + b"\0" * 4, *frames[2:]])


def test_table_that_disagrees_with_shape_is_refused():
    header = json.loads(_frames()[0])
    header["tensors"][0]["shape"] = [4, 4]
    with pytest.raises(errors.IntegrityError, match="needs 64 bytes"):
        decode_request([json.dumps(header).encode(), *_frames()[1:]])
    header = json.loads(_frames()[0])
    header["tensors"][0]["dtype"] = "object"
    with pytest.raises(errors.MalformedMessage, match="dtype 'object'"):
        decode_request([json.dumps(header).encode(), *_frames()[1:]])
    header = json.loads(_frames()[0])
    header = json.loads(_frames()[0])
    header["tensors"][1]["offset"] += 4
    with pytest.raises(errors.MalformedMessage, match="must start at 48"):
        decode_request([json.dumps(header).encode(), *_frames()[1:]])


def test_a_large_tensor_travels_in_bounded_frames_and_comes_back_whole():
    big = torch.arange(FRAME_BYTES // 4 * 2 + 3, dtype=torch.float32)  # two frames and a bit
    tensors = {"small": torch.ones(3), "big": big, "after": torch.full((5,), 7.0)}
    frames = encode_checkpoint(run_id="r", step=1, update_index=1, kind="full", tensors=tensors)
    sizes = [memoryview(f).nbytes for f in frames[1:]]
    assert max(sizes) == FRAME_BYTES and len(sizes) == 5 and sum(sizes) == 4 * (3 + big.numel() + 5)
    decoded = decode_tensors(decode_request(frames))
    assert all(torch.equal(decoded[name], tensor) for name, tensor in tensors.items())


def test_a_frame_over_the_bound_is_refused():
    frames = _frames()
    payload = b"".join(frames[1:])
    header = json.loads(frames[0])
    header["total_bytes"] = len(payload) + FRAME_BYTES
    with pytest.raises(errors.MalformedMessage, match="more than"):
        decode_request([json.dumps(header).encode(), payload + bytes(FRAME_BYTES)])


def test_declared_size_over_limit_is_refused_before_decoding():
    with pytest.raises(errors.TooLarge, match="at most 10"):
        decode_request(_frames(), max_bytes=10)


def test_replies_round_trip_and_errors_raise_their_class():
    assert decode_reply(ack(status="queued", step=3))["status"] == "queued"
    with pytest.raises(errors.UnknownRun, match="no run"):
        decode_reply(error_reply(errors.UnknownRun("no run x")))


@pytest.mark.parametrize(
    "over", [{"finetuning_type": "full"}, {"lora": None}], ids=["full with lora", "lora without"]
)
def test_lora_settings_come_with_a_lora_run_only(over):
    fields = json.loads(encode_hello(_hello())[0])
    fields.update(over)
    with pytest.raises(errors.MalformedMessage, match="lora settings come with finetuning_type"):
        decode_request([json.dumps({k: v for k, v in fields.items() if v is not None}).encode()])


@pytest.mark.parametrize("run_id", ["..", "../x", ".hidden"])
def test_a_run_id_that_could_leave_its_folder_is_refused_in_every_message(run_id):
    with pytest.raises(errors.MalformedMessage, match="run_id"):
        decode_request(
            [json.dumps({**json.loads(encode_hello(_hello())[0]), "run_id": run_id}).encode()]
        )
    with pytest.raises(errors.MalformedMessage, match="run_id"):
        decode_request(_mutate_header(_frames(), run_id=run_id))


@pytest.mark.parametrize(
    ("frame", "words"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "too deeply"),
        (b'{"protocol": 2, "type": "hello", "n_samples": 1' + b"0" * 5000 + b"}", "digits"),
    ],
    ids=["nested", "huge integer"],
)
def test_hostile_json_is_malformed_not_a_crash(frame, words):
    with pytest.raises(errors.MalformedMessage, match=words):
        decode_request([frame])


@pytest.mark.parametrize(
    "tokenization",
    [{"template": "auto", "cutoff_len": 64, "extra": 1}, {"template": "auto", "cutoff_len": "x"},
     {"template": "nope", "cutoff_len": 64}, {"template": "auto", "cutoff_len": 2**40}],
    ids=["unknown key", "ill-typed", "unknown template", "huge cutoff"],
)  # fmt: skip
def test_tokenization_settings_are_checked_with_the_hello(tokenization):
    fields = {**json.loads(encode_hello(_hello())[0]), "tokenization": tokenization}
    with pytest.raises(errors.MalformedMessage, match="tokenization"):
        decode_request([json.dumps(fields).encode()])


@pytest.mark.parametrize(
    "over, field",
    [
        ({"lora": {"r": 2_000_000, "alpha": 8, "target_modules": "all-linear"}}, "lora.r"),
        ({"lora": {"r": 4, "alpha": float("inf"), "target_modules": "q"}}, "lora.alpha"),
        ({"lora": {"r": 4, "alpha": 8, "target_modules": ["q"] * 10_000}}, "lora.target_modules"),
        ({"n_samples": 10**12}, "n_samples"),
        ({"update_times": 10**9}, "update_times"),
        ({"vocab_size": 10**12}, "vocab_size"),
        ({"base_model": "m" * 10_000}, "base_model"),
        ({"dataset_dir": "d" * 10_000}, "dataset_dir"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_hello_values_beyond_their_bounds_are_refused_before_anything_is_built(over, field):
    obj = json.loads(encode_hello(_hello())[0])
    obj.update(over)
    frame = json.dumps(obj).replace("Infinity", "1e999").encode()
    with pytest.raises(errors.MalformedMessage, match=field.split(".")[-1]):
        decode_request([frame])


@pytest.mark.parametrize(
    "shape", [[10**3000, 10**3000], [-1, 4], [1] * 65], ids=["huge", "negative", "many"]
)
def test_a_table_shape_beyond_bounds_is_malformed_not_an_internal_failure(shape):
    header = json.loads(_frames()[0])
    header["tensors"][0]["shape"] = shape
    with pytest.raises(errors.MalformedMessage, match="shape"):
        decode_request([json.dumps(header).encode(), *_frames()[1:]])
