"""The trainer-to-scorer wire format over ZeroMQ: pure encode/decode functions.

A request is a multipart message: frame 0 is a UTF-8 JSON header with a protocol version,
the frames after it carry the checkpoint's payload: its tensors' raw bytes end to end, in the
order of the header's table, cut into frames of at most FRAME_BYTES. The scorer drops a
peer that declares a larger frame, so one that has not authenticated costs it at most one
such frame. Every request gets exactly one reply, a single JSON frame: an ack or an error
with a code and a reason a person can act on. Nothing received is ever unpickled: tensors are
rebuilt from raw bytes with a declared dtype and shape.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from common import dtypes
from common.errors import (
    IntegrityError,
    MalformedMessage,
    ProtocolError,
    TooLarge,
    VersionMismatch,
)
from common.tokenization import TEMPLATE_NAMES
from common.validation import RunId, describe_errors, one_of

PROTOCOL_VERSION = 2
FRAME_BYTES = 16 << 20  # the largest payload frame
MAX_HEADER_BYTES = 1 << 20
MAX_CUTOFF_LEN = 1 << 20  # tokens per sample: far beyond any model's context
MAX_STEP = 2**62  # steps, indices and counts fit a signed 64-bit database integer
# Bounds on what a hello may ask the scorer to build: far beyond real runs, far below what
# would let one hello make the scorer allocate gigabytes.
MAX_LORA_RANK = 4096
MAX_SAMPLES = 100_000_000
MAX_UPDATES = 1_000_000
MAX_VOCAB = 10_000_000
MAX_PATH_CHARS = 4096
MAX_NAME_CHARS = 256
MAX_TARGET_MODULES = 256
MAX_DIMS = 64  # dimensions of one tensor

PathText = Annotated[str, Field(min_length=1, max_length=MAX_PATH_CHARS)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]

Frame = bytes | memoryview | Any  # anything exposing the buffer protocol


Kind = Literal["lora", "full"]  # what a run fine-tunes: a LoRA adapter, or every weight


class _Header(BaseModel):
    model_config = ConfigDict(extra="forbid")
    protocol: int
    token: str | None = None


class LoraSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    r: int = Field(gt=0, le=MAX_LORA_RANK)
    alpha: float = Field(gt=0, le=1e6)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: Annotated[list[Name], Field(min_length=1, max_length=MAX_TARGET_MODULES)] | Name


class TokenizationSpec(BaseModel):
    """How samples become tokens: the settings trainer and scorer must share."""

    model_config = ConfigDict(extra="forbid")
    template: Annotated[str, one_of(TEMPLATE_NAMES)]
    cutoff_len: int = Field(ge=2, le=MAX_CUTOFF_LEN)


class Hello(_Header):
    """Registers a run: what the scorer needs to score the same samples the trainer trains on."""

    type: Literal["hello"] = "hello"
    run_id: RunId
    base_model: PathText
    finetuning_type: Kind
    lora: LoraSpec | None = None  # exactly when finetuning_type is lora
    trust_remote_code: bool = False
    dataset: PathText
    dataset_dir: PathText | None = None
    tokenization: TokenizationSpec
    window_size: float = Field(ge=0.0, le=1.0)
    update_times: int = Field(ge=1, le=MAX_UPDATES)
    n_samples: int = Field(ge=1, le=MAX_SAMPLES)
    fingerprint: str = Field(pattern=r"^[0-9a-f]{64}$")
    vocab_size: int | None = Field(None, ge=1, le=MAX_VOCAB)  # len(tokenizer)
    model_digest: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")  # see shapes_digest
    # The training run's own identity, kept in its output_dir: a resume of it carries the same,
    # another run reusing the run id does not.
    run_token: str | None = Field(None, pattern=r"^[0-9a-f]{32}$")

    @model_validator(mode="after")
    def _lora_settings_for_lora_only(self) -> Hello:
        if (self.finetuning_type == "lora") != (self.lora is not None):
            raise ValueError("lora settings come with finetuning_type lora, and only with it")
        return self


def shapes_digest(shapes: Iterable[tuple[str, Sequence[int]]]) -> str:
    """sha256 over the sorted names and shapes of the tensors a checkpoint carries: the same
    on both sides when they build the same model (base, LoRA settings)."""
    digest = hashlib.sha256()
    for name, shape in sorted((n, tuple(s)) for n, s in shapes):
        digest.update(f"{name}:{','.join(map(str, shape))}\n".encode())
    return digest.hexdigest()


class TensorEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=MAX_PATH_CHARS)
    dtype: str = Field(max_length=MAX_NAME_CHARS)
    shape: list[Annotated[int, Field(ge=0, le=MAX_STEP)]] = Field(max_length=MAX_DIMS)
    offset: int = Field(ge=0)  # into the payload: the frames after the header, end to end
    length: int = Field(ge=0)


class CheckpointHeader(_Header):
    """One checkpoint: where each tensor lies in the payload after the header."""

    type: Literal["checkpoint"] = "checkpoint"
    run_id: RunId
    step: int = Field(ge=0, le=MAX_STEP)
    update_index: int = Field(ge=1, le=MAX_STEP)
    kind: Kind
    encoding: Literal["raw"] = "raw"  # the tensors' bytes end to end, in table order
    tensors: list[TensorEntry] = Field(default_factory=list)
    total_bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class CheckpointMessage(BaseModel):
    """A decoded checkpoint request: the header and its payload frames."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    header: CheckpointHeader
    frames: list[Any]


Request = Hello | CheckpointMessage


def _json_frame(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def encode_hello(hello: Hello) -> list[bytes]:
    return [_json_frame(hello.model_dump(exclude_none=True))]


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's bytes without a copy when it is already contiguous on the CPU."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())  # type: ignore[arg-type]


def payload_sha256(frames: Sequence[Frame]) -> str:
    digest = hashlib.sha256()
    for frame in frames:
        digest.update(frame)
    return digest.hexdigest()


def payload_frames(data: memoryview, frame_bytes: int = FRAME_BYTES) -> list[memoryview]:
    """The bytes cut into frames of at most frame_bytes, as views (no copy)."""
    return [data[i : i + frame_bytes] for i in range(0, data.nbytes, frame_bytes)]


def encode_checkpoint(
    *,
    run_id: str,
    step: int,
    update_index: int,
    kind: str,
    tensors: dict[str, torch.Tensor],
    token: str | None = None,
) -> list[Frame]:
    """Header frame, then the payload frames (zero-copy when sent with copy=False)."""
    frames: list[Frame] = []
    table = []
    offset = 0
    for name, tensor in tensors.items():
        try:
            dtype = dtypes.name_of(tensor.dtype)
        except ValueError as exc:
            raise ValueError(f"tensor {name}: {exc}") from None
        data = tensor_bytes(tensor)
        frames.extend(payload_frames(data))
        table.append(
            TensorEntry(
                name=name, dtype=dtype, shape=list(tensor.shape), offset=offset, length=data.nbytes
            )
        )
        offset += data.nbytes
    header = CheckpointHeader(
        protocol=PROTOCOL_VERSION,
        token=token,
        run_id=run_id,
        step=step,
        update_index=update_index,
        kind=kind,  # type: ignore[arg-type]
        tensors=table,
        total_bytes=offset,
        sha256=payload_sha256(frames),
    )
    return [_json_frame(header.model_dump(exclude_none=True)), *frames]


def _parse_header(frame: Frame) -> dict[str, Any]:
    raw = bytes(frame)
    if len(raw) > MAX_HEADER_BYTES:
        raise TooLarge(f"header is {len(raw)} bytes; the limit is {MAX_HEADER_BYTES}")
    try:
        obj = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise MalformedMessage("frame 0 nests JSON too deeply to be a header") from None
    except ValueError as exc:  # not UTF-8, not JSON, or an integer of thousands of digits
        raise MalformedMessage(f"frame 0 must be a UTF-8 JSON header: {exc}") from exc
    if not isinstance(obj, dict):
        raise MalformedMessage("frame 0 must be a JSON object")
    version = obj.get("protocol")
    if version != PROTOCOL_VERSION:
        raise VersionMismatch(
            f"protocol version {version!r} is not supported; this scorer speaks version "
            f"{PROTOCOL_VERSION}: run trainer and scorer from the same release"
        )
    return obj


def _validate(model: type[BaseModel], obj: dict[str, Any]) -> Any:
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        problems = "; ".join(describe_errors(exc.errors(), default="header"))
        raise MalformedMessage(f"invalid {obj.get('type')} header: {problems}") from exc


def _check_table(header: CheckpointHeader, frames: Sequence[Frame], max_bytes: int) -> None:
    if header.total_bytes > max_bytes:
        raise TooLarge(
            f"checkpoint declares {header.total_bytes} bytes; this scorer accepts at most "
            f"{max_bytes} (raise max_checkpoint_bytes to allow it)"
        )
    sizes = [memoryview(f).nbytes for f in frames]
    if any(size > FRAME_BYTES for size in sizes):
        raise MalformedMessage(f"a payload frame holds more than {FRAME_BYTES} bytes")
    if sum(sizes) != header.total_bytes:
        raise IntegrityError(
            f"payload frames hold {sum(sizes)} bytes but the header declares "
            f"{header.total_bytes}: the message was truncated or padded"
        )
    if not header.tensors:
        raise MalformedMessage("a checkpoint must carry at least one tensor")
    names = set()
    offset = 0
    for entry in header.tensors:
        if entry.name in names:
            raise MalformedMessage(f"tensor {entry.name} appears twice in the table")
        names.add(entry.name)
        if entry.dtype not in dtypes.BY_NAME:
            raise MalformedMessage(
                f"tensor {entry.name}: dtype '{entry.dtype}' is not one of {sorted(dtypes.BY_NAME)}"
            )
        itemsize = torch.empty((), dtype=dtypes.BY_NAME[entry.dtype].torch).element_size()
        expected = math.prod(entry.shape) * itemsize
        if entry.length != expected:
            raise IntegrityError(
                f"tensor {entry.name}: {entry.dtype}{entry.shape} needs {expected} bytes, "
                f"the table declares {entry.length}"
            )
        if entry.offset != offset:
            raise MalformedMessage(
                f"tensor {entry.name} starts at byte {entry.offset} of the payload; the "
                f"tensors lie end to end in table order, so it must start at {offset}"
            )
        offset += entry.length
    if offset != header.total_bytes:
        raise IntegrityError(
            f"the table's tensors hold {offset} bytes, the header declares {header.total_bytes}"
        )


def decode_request(frames: Sequence[Frame], *, max_bytes: int = 1 << 34) -> Request:
    """Validate a request's framing, header, table and sha256; tensors stay raw bytes."""
    if not frames:
        raise MalformedMessage("empty message")
    obj = _parse_header(frames[0])
    kind = obj.get("type")
    if kind == "hello":
        if len(frames) != 1:
            raise MalformedMessage("hello takes a single header frame")
        return _validate(Hello, obj)
    if kind == "checkpoint":
        header = _validate(CheckpointHeader, obj)
        payload = list(frames[1:])
        _check_table(header, payload, max_bytes)
        actual = payload_sha256(payload)
        if actual != header.sha256:
            raise IntegrityError(
                f"payload sha256 is {actual}, the header declares {header.sha256}: "
                "the checkpoint was corrupted in transit; send it again"
            )
        return CheckpointMessage(header=header, frames=payload)
    raise MalformedMessage(f"unknown message type {kind!r}; expected 'hello' or 'checkpoint'")


def decode_tensors(checkpoint: CheckpointMessage) -> dict[str, torch.Tensor]:
    """Rebuild tensors from the payload (one copy of it)."""
    payload = bytearray().join(checkpoint.frames)
    tensors = {}
    for entry in checkpoint.header.tensors:
        torch_dtype = dtypes.BY_NAME[entry.dtype].torch
        data = payload[entry.offset : entry.offset + entry.length]
        tensor = (
            torch.frombuffer(data, dtype=torch_dtype) if data else torch.empty(0, dtype=torch_dtype)
        )
        tensors[entry.name] = tensor.reshape(entry.shape)
    return tensors


def ack(**fields: Any) -> list[bytes]:
    return [_json_frame({"protocol": PROTOCOL_VERSION, "ok": True, "type": "ack", **fields})]


def error_reply(error: ProtocolError) -> list[bytes]:
    return [
        _json_frame(
            {
                "protocol": PROTOCOL_VERSION,
                "ok": False,
                "type": "error",
                "code": error.code,
                "reason": str(error),
            }
        )
    ]


def decode_reply(frames: Sequence[Frame]) -> dict[str, Any]:
    """A reply as a dict; raises the ProtocolError subclass named by an error's code."""
    if len(frames) != 1:
        raise MalformedMessage(f"a reply is one frame, got {len(frames)}")
    reply = json.loads(bytes(frames[0]).decode("utf-8"))
    if not reply.get("ok"):
        raise ProtocolError.from_code(reply.get("code", "error"), reply.get("reason", ""))
    return reply
