"""Wire format: round trips and every kind of refusal, without sockets."""

import json
import pickle

import pytest
import torch

from common.wire import errors
from common.wire.protocol import (
    FRAME_BYTES,
    PROTOCOL_VERSION,
    CheckpointHeader,
    Hello,
    ack,
    decode_reply,
    decode_request,
    decode_tensors,
    encode_checkpoint,
    encode_hello,
    error_reply,
    upload_id_of,
)
from tests.support.wire import as_bytes, assemble


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


def _messages(chunk_bytes=FRAME_BYTES, tensors=None):
    return as_bytes(
        encode_checkpoint(
            run_id="run-1", step=4, update_index=2, kind="lora", tensors=tensors or _tensors(),
            chunk_bytes=chunk_bytes,
        )
    )  # fmt: skip


def _frames():
    """The upload's first message: its header."""
    return _messages()[0]


def test_hello_round_trip():
    msg = decode_request(encode_hello(_hello()))
    assert isinstance(msg, Hello) and msg == _hello()


def test_checkpoint_round_trip_keeps_dtype_shape_and_bits():
    header, payload = assemble(_messages())
    assert (header.step, header.update_index, header.kind) == (4, 2, "lora")
    decoded = decode_tensors(header, payload)
    for name, tensor in _tensors().items():
        assert decoded[name].dtype == tensor.dtype and decoded[name].shape == tensor.shape
        assert torch.equal(decoded[name], tensor)


def test_an_upload_is_a_header_its_chunks_in_order_and_a_commit():
    messages = _messages(chunk_bytes=16)  # 68 payload bytes: chunks of 16, 16, 16, 16, 4
    types = [json.loads(m[0])["type"] for m in messages]
    assert types == ["checkpoint", *["chunk"] * 5, "commit"]
    assert [len(m[1]) for m in messages[1:-1]] == [16, 16, 16, 16, 4]
    assert [json.loads(m[0])["index"] for m in messages[1:-1]] == [0, 1, 2, 3, 4]
    assert len({json.loads(m[0])["upload"] for m in messages}) == 1


def test_an_encoding_other_than_raw_is_refused():
    header = json.loads(_frames()[0])
    header["encoding"] = "safetensors"
    with pytest.raises(errors.MalformedMessage, match="encoding"):
        decode_request([json.dumps(header).encode()])


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
        ([b'{"protocol": 5, "type": "nope"}'], errors.MalformedMessage, "unknown message"),
        ([b'{"protocol": 5, "type": "hello"}'], errors.MalformedMessage, "run_id"),
        ([b'{"protocol": 5, "type": "chunk"}'], errors.MalformedMessage, "header frame and one"),
        ([b'{"protocol": 5, "type": "commit"}', b"x"], errors.MalformedMessage, "single header"),
    ],
)
def test_bad_headers_are_refused(frames, error, words):
    with pytest.raises(error, match=words):
        decode_request(frames)


def test_a_checkpoint_of_the_previous_protocol_gets_a_version_refusal():
    old = {"protocol": 2, "type": "checkpoint", "run_id": "r", "step": 1, "sha256": "0" * 64}
    with pytest.raises(errors.VersionMismatch, match="version 2 is not supported.*version 5"):
        decode_request([json.dumps(old).encode(), b"payload"])
    # version 3 scorers weighed update 1 of later epochs uniformly: refused too
    hello = {"protocol": 3, "type": "hello", "run_id": "r"}
    with pytest.raises(errors.VersionMismatch, match="version 3 is not supported.*version 5"):
        decode_request([json.dumps(hello).encode()])
    # version 4 hellos carried no run name or tags
    hello = {"protocol": 4, "type": "hello", "run_id": "r"}
    with pytest.raises(errors.VersionMismatch, match="version 4 is not supported.*version 5"):
        decode_request([json.dumps(hello).encode()])


def _chunk_with(message, **changes):
    return _mutate_header(message, **changes)


def test_a_wrong_chunk_digest_is_an_integrity_error():
    messages = _messages()
    messages[1] = _chunk_with(messages[1], digest="0" * 32)
    with pytest.raises(errors.IntegrityError, match="corrupted in transit"):
        assemble(messages)


def test_a_flipped_payload_byte_is_caught_in_its_chunk():
    messages = _messages(chunk_bytes=16)
    data = messages[3][1]
    messages[3][1] = bytes([data[0] ^ 1]) + data[1:]
    with pytest.raises(errors.IntegrityError, match="chunk 2 .*corrupted"):
        assemble(messages)


def test_a_commit_that_does_not_match_its_chunks_is_caught():
    messages = _messages(chunk_bytes=16)
    messages[-1] = _mutate_header(messages[-1], digest="xxh3-128:" + "0" * 32)
    with pytest.raises(errors.IntegrityError, match="commit"):
        assemble(messages)


def test_chunks_shorter_longer_or_out_of_order_are_refused():
    messages = _messages(chunk_bytes=16)
    short = [*messages[:2], [messages[2][0], messages[2][1][:-4]], *messages[3:]]
    with pytest.raises(errors.IntegrityError, match="truncated or padded"):
        assemble(short)
    long = [*messages[:2], [messages[2][0], messages[2][1] + b"\0" * 4], *messages[3:]]
    with pytest.raises(errors.IntegrityError, match="truncated or padded"):
        assemble(long)
    swapped = [messages[0], messages[2], messages[1], *messages[3:]]
    with pytest.raises(errors.IntegrityError, match="chunk 1 .*chunk 0 was due.*lost in transit"):
        assemble(swapped)


def test_table_that_disagrees_with_shape_is_refused():
    header = json.loads(_frames()[0])
    header["tensors"][0]["shape"] = [4, 4]
    with pytest.raises(errors.IntegrityError, match="needs 64 bytes"):
        decode_request([json.dumps(header).encode()])
    header = json.loads(_frames()[0])
    header["tensors"][0]["dtype"] = "object"
    with pytest.raises(errors.MalformedMessage, match="dtype 'object'"):
        decode_request([json.dumps(header).encode()])
    header = json.loads(_frames()[0])
    header["tensors"][1]["offset"] += 4
    with pytest.raises(errors.MalformedMessage, match="must start at 48"):
        decode_request([json.dumps(header).encode()])


def test_a_large_tensor_travels_in_bounded_chunks_and_comes_back_whole():
    big = torch.arange(FRAME_BYTES // 4 * 2 + 3, dtype=torch.float32)  # two frames and a bit
    tensors = {"small": torch.ones(3), "big": big, "after": torch.full((5,), 7.0)}
    messages = encode_checkpoint(run_id="r", step=1, update_index=1, kind="full", tensors=tensors)
    sizes = [memoryview(m[1]).nbytes for m in messages[1:-1]]
    assert max(sizes) == FRAME_BYTES and len(sizes) == 3 and sum(sizes) == 4 * (3 + big.numel() + 5)
    header, payload = assemble(messages)
    decoded = decode_tensors(header, payload)
    assert all(torch.equal(decoded[name], tensor) for name, tensor in tensors.items())


def test_a_frame_or_chunk_size_over_the_bound_is_refused():
    chunk = _messages()[1]
    with pytest.raises(errors.MalformedMessage, match="more than"):
        decode_request([chunk[0], bytes(FRAME_BYTES + 1)])
    with pytest.raises(errors.MalformedMessage, match="chunk_bytes"):
        decode_request(_mutate_header(_frames(), chunk_bytes=FRAME_BYTES + 1))


def test_declared_size_over_limit_is_refused_before_any_chunk():
    with pytest.raises(errors.TooLarge, match="at most 10"):
        decode_request(_frames(), max_bytes=10)
    assert isinstance(decode_request(_frames(), max_bytes=68), CheckpointHeader)


def test_replies_round_trip_and_errors_raise_their_class():
    assert decode_reply(ack(status="queued", step=3))["status"] == "queued"
    with pytest.raises(errors.UnknownRun, match="no run"):
        decode_reply(error_reply(errors.UnknownRun("no run x")))
    with pytest.raises(errors.UploadLost, match="again"):
        decode_reply(error_reply(errors.UploadLost("send it again"), upload="0" * 32))


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
        (b'{"protocol": 5, "type": "hello", "n_samples": 1' + b"0" * 5000 + b"}", "digits"),
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
        decode_request([json.dumps(header).encode()])


def test_the_upload_id_of_a_header_refused_as_a_whole_is_still_read():
    begin = json.loads(_frames()[0])
    huge = json.dumps({**begin, "padding": "x" * (2 << 20)}).encode()  # over MAX_HEADER_BYTES
    with pytest.raises(errors.TooLarge):
        decode_request([huge])
    assert upload_id_of(huge) == begin["upload"]
    assert upload_id_of(b"not json") is None
    assert upload_id_of(json.dumps({"upload": "../x"}).encode()) is None


@pytest.mark.parametrize(
    ("kind", "shown"),
    [([], "got []"), ({}, "got {}"), (5, "got 5"), (None, "got null"), ([1] * 100, "...")],
    ids=["list", "object", "number", "null", "long list"],
)
def test_a_type_that_is_not_a_string_is_malformed_naming_the_field(kind, shown):
    for header in (json.loads(encode_hello(_hello())[0]), json.loads(_frames()[0])):
        with pytest.raises(errors.MalformedMessage, match="type must be one of the strings") as e:
            decode_request([json.dumps({**header, "type": kind}).encode()])
        assert str(e.value).endswith(shown) and len(str(e.value)) < 200


def test_a_header_without_a_type_is_malformed_naming_the_field():
    header = json.loads(encode_hello(_hello())[0])
    del header["type"]
    with pytest.raises(errors.MalformedMessage, match="has no type"):
        decode_request([json.dumps(header).encode()])


@pytest.mark.parametrize("char", ["\0", "\n", "\x1b", "\x7f", "\x85"])
@pytest.mark.parametrize("field", ["base_model", "dataset", "dataset_dir", "lora.target_modules"])
def test_a_control_character_in_a_path_or_name_of_the_hello_is_malformed(field, char):
    obj = json.loads(encode_hello(_hello(dataset_dir="/data"))[0])
    if field == "lora.target_modules":
        obj["lora"]["target_modules"] = ["q_proj", f"v{char}proj"]
    else:
        obj[field] = f"/data/a{char}b"
    with pytest.raises(errors.MalformedMessage, match="control character") as e:
        decode_request([json.dumps(obj).encode()])
    assert f"hello header: {field}" in str(e.value)


def test_a_single_target_module_with_a_control_character_is_malformed():
    obj = json.loads(encode_hello(_hello())[0])
    obj["lora"]["target_modules"] = "all\0linear"
    with pytest.raises(errors.MalformedMessage, match=r"lora\.target_modules\.name: .*control"):
        decode_request([json.dumps(obj).encode()])
