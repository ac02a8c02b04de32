"""The trainer-to-scorer wire format over ZeroMQ: pure encode/decode functions.

Every message is a multipart ZeroMQ message whose frame 0 is a UTF-8 JSON header with a
protocol version. A hello is that one frame, and gets one reply. A checkpoint is an upload
that the trainer streams as several messages, with an upload id it picks itself:

- `checkpoint`: the tensor table (name, dtype, shape, where its bytes lie in the payload, the
  tensors' bytes end to end), the payload's size and the chunk size;
- `chunk` i: bytes [i x chunk_bytes, (i+1) x chunk_bytes) of the payload in one frame of at
  most FRAME_BYTES, with the chunk's xxh3-128 digest, in order;
- `commit`: the payload's digest (xxh3-128 over the chunk digests in order).

An upload gets exactly one reply: at the commit once the checkpoint is stored, or earlier when
the scorer refuses it (a duplicate, a corrupted chunk, a run it does not know); the chunks of a
refused upload are dropped without reply. Each chunk is checked as it arrives and written as
it arrives, so neither side hashes or holds the whole payload at once. The scorer drops a
peer that declares a frame larger than FRAME_BYTES, so one that has not authenticated costs it
at most one such frame. A reply is a single JSON frame: an ack or an error with a code and a
reason a person can act on. Nothing received is ever unpickled: tensors are rebuilt from raw
bytes with a declared dtype and shape.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Annotated, Any, Literal

import torch
import xxhash
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

from common import dtypes
from common.data.tokenization import TemplateName
from common.validation import PlainText, RunId, RunName, RunTags, describe_errors
from common.wire.errors import (
    IntegrityError,
    MalformedMessage,
    ProtocolError,
    TooLarge,
    VersionMismatch,
)

PROTOCOL_VERSION = 5
FRAME_BYTES = 16 << 20  # the largest payload frame, and the chunk size trainers use
DIGEST = "xxh3-128"  # of each chunk; the payload's is the same hash over the chunk digests
UPLOAD_ID = r"^[0-9a-f]{32}$"
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

PathText = Annotated[PlainText, Field(min_length=1, max_length=MAX_PATH_CHARS)]
Name = Annotated[PlainText, Field(min_length=1, max_length=MAX_NAME_CHARS)]

Frame = bytes | memoryview | Any  # anything exposing the buffer protocol


Kind = Literal["lora", "full"]  # what a run fine-tunes: a LoRA adapter, or every weight


class _Header(BaseModel):
    model_config = ConfigDict(extra="forbid")
    protocol: int
    token: str | None = None


def _one_or_list(value: Any) -> str:
    return "name" if isinstance(value, str) else "list"


# One module name ("all-linear") or a list of them; an error's location says which was read
# (lora.target_modules.list.2), not how the validators are built.
TargetModules = Annotated[
    Annotated[
        Annotated[list[Name], Field(min_length=1, max_length=MAX_TARGET_MODULES)], Tag("list")
    ]
    | Annotated[Name, Tag("name")],
    Discriminator(_one_or_list),
]


class LoraSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    r: int = Field(gt=0, le=MAX_LORA_RANK)
    alpha: float = Field(gt=0, le=1e6)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: TargetModules


class TokenizationSpec(BaseModel):
    """How samples become tokens: the settings trainer and scorer must share."""

    model_config = ConfigDict(extra="forbid")
    template: TemplateName
    cutoff_len: int = Field(ge=2, le=MAX_CUTOFF_LEN)


class Hello(_Header):
    """Registers a run: what the scorer needs to score the same samples the trainer trains on."""

    type: Literal["hello"] = "hello"
    run_id: RunId
    base_model: PathText
    finetuning_type: Kind
    lora: LoraSpec | None = None  # exactly when finetuning_type is lora
    trust_remote_code: bool = False
    # the base model's attention and quantization, as the trainer loads it (None: defaults)
    attn_implementation: (
        Literal["eager", "sdpa", "flash_attention_2", "flash_attention_3"] | None
    ) = None
    quantization_bit: Literal[4, 8] | None = None
    dataset: PathText  # a comma list of dataset names and file paths
    dataset_dir: PathText | None = None
    max_samples: int | None = Field(None, ge=1)  # the first rows of each dataset
    # a validation split held out of the training samples (common.data.datasets.split_validation)
    val_size: float | None = Field(None, gt=0.0)
    split_seed: int | None = Field(None, ge=0, lt=2**32)
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
    # async: the trainer draws from the newest weights, so a checkpoint that a newer one
    # supersedes while it waits is never scored; sync: every checkpoint is scored, in order
    selection_mode: Literal["sync", "async"] = "sync"
    # the samples each checkpoint after the first with a window measures (common.budget): a
    # fraction in (0, 1] or a count; 1 is every sample, the published method
    score_budget: float = Field(1.0, gt=0.0, le=MAX_SAMPLES, allow_inf_nan=False)
    # what people call and mark the run by (MLflow's run name and tags); a resume may change them
    run_name: RunName | None = None
    tags: RunTags = Field(default_factory=dict)

    @model_validator(mode="after")
    def _whole_count(self) -> Hello:
        if self.score_budget > 1 and self.score_budget != int(self.score_budget):
            raise ValueError("score_budget above 1 is a number of samples: a whole number")
        return self

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
    """Opens an upload: where each tensor lies in the payload that its chunks carry."""

    type: Literal["checkpoint"] = "checkpoint"
    upload: str = Field(pattern=UPLOAD_ID)
    run_id: RunId
    step: int = Field(ge=0, le=MAX_STEP)
    update_index: int = Field(ge=1, le=MAX_STEP)
    kind: Kind
    encoding: Literal["raw"] = "raw"  # the tensors' bytes end to end, in table order
    tensors: list[TensorEntry] = Field(default_factory=list)
    total_bytes: int = Field(ge=0)
    chunk_bytes: int = Field(gt=0, le=FRAME_BYTES)

    @property
    def n_chunks(self) -> int:
        return -(-self.total_bytes // self.chunk_bytes)

    def chunk_size(self, index: int) -> int:
        """The bytes chunk `index` carries (the last one may be short)."""
        return min(self.chunk_bytes, self.total_bytes - index * self.chunk_bytes)


class ChunkHeader(_Header):
    type: Literal["chunk"] = "chunk"
    upload: str = Field(pattern=UPLOAD_ID)
    index: int = Field(ge=0, le=MAX_STEP)
    digest: str = Field(pattern=r"^[0-9a-f]{32}$")  # xxh3-128 of the chunk's bytes


class Chunk(BaseModel):
    """A decoded chunk: its header and its one payload frame."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    header: ChunkHeader
    data: Any


class CommitHeader(_Header):
    type: Literal["commit"] = "commit"
    upload: str = Field(pattern=UPLOAD_ID)
    digest: str = Field(pattern=rf"^{DIGEST}:[0-9a-f]{{32}}$")  # payload_digest of the chunks


Request = Hello | CheckpointHeader | Chunk | CommitHeader


def chunk_digest(data: Frame) -> str:
    return xxhash.xxh3_128_hexdigest(data)


def payload_digest(chunk_digests: Iterable[str]) -> str:
    """The checkpoint's digest: xxh3-128 over its chunks' digests, in order, as
    "xxh3-128:<hex>" (the scorer stores it, and a repeated upload can be compared with it)."""
    digest = xxhash.xxh3_128()
    for hexdigest in chunk_digests:
        digest.update(bytes.fromhex(hexdigest))
    return f"{DIGEST}:{digest.hexdigest()}"


def _json_frame(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def encode_hello(hello: Hello) -> list[bytes]:
    return [_json_frame(hello.model_dump(exclude_none=True))]


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The tensor's bytes without a copy when it is already contiguous on the CPU."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())  # type: ignore[arg-type]


def payload_table(tensors: Mapping[str, torch.Tensor]) -> list[TensorEntry]:
    """Where each tensor's bytes lie in the payload: end to end, in the mapping's order."""
    table = []
    offset = 0
    for name, tensor in tensors.items():
        try:
            dtype = dtypes.name_of(tensor.dtype)
        except ValueError as exc:
            raise ValueError(f"tensor {name}: {exc}") from None
        length = tensor.numel() * tensor.element_size()
        table.append(
            TensorEntry(
                name=name, dtype=dtype, shape=list(tensor.shape), offset=offset, length=length
            )
        )
        offset += length
    return table


def new_upload_id() -> str:
    return secrets.token_hex(16)


def upload_messages(
    begin: CheckpointHeader, payload: memoryview, *, token: str | None = None
) -> Iterator[list[Frame]]:
    """The messages of one upload, each made when asked for: the header, each chunk (hashed
    then, so hashing overlaps with sending the chunk before it) and the commit. payload holds
    begin.total_bytes bytes; the chunks are views of it (sent without a copy)."""
    if payload.nbytes != begin.total_bytes:
        raise ValueError(f"the payload holds {payload.nbytes} bytes, the header declares "
                         f"{begin.total_bytes}")  # fmt: skip
    data = payload.cast("B") if payload.format != "B" or payload.ndim != 1 else payload
    yield [_json_frame(begin.model_dump(exclude_none=True))]
    digests = []
    for index in range(begin.n_chunks):
        start = index * begin.chunk_bytes
        chunk = data[start : start + begin.chunk_size(index)]
        digest = chunk_digest(chunk)
        digests.append(digest)
        header = ChunkHeader(
            protocol=PROTOCOL_VERSION, token=token, upload=begin.upload, index=index, digest=digest
        )
        yield [_json_frame(header.model_dump(exclude_none=True)), chunk]
    commit = CommitHeader(
        protocol=PROTOCOL_VERSION, token=token, upload=begin.upload, digest=payload_digest(digests)
    )
    yield [_json_frame(commit.model_dump(exclude_none=True))]


def checkpoint_header(
    *,
    run_id: str,
    step: int,
    update_index: int,
    kind: str,
    table: list[TensorEntry],
    token: str | None = None,
    chunk_bytes: int = FRAME_BYTES,
    upload: str | None = None,
) -> CheckpointHeader:
    return CheckpointHeader(
        protocol=PROTOCOL_VERSION,
        token=token,
        upload=upload or new_upload_id(),
        run_id=run_id,
        step=step,
        update_index=update_index,
        kind=kind,  # type: ignore[arg-type]
        tensors=table,
        total_bytes=sum(e.length for e in table),
        chunk_bytes=chunk_bytes,
    )


def encode_checkpoint(
    *,
    run_id: str,
    step: int,
    update_index: int,
    kind: str,
    tensors: Mapping[str, torch.Tensor],
    token: str | None = None,
    chunk_bytes: int = FRAME_BYTES,
) -> list[list[Frame]]:
    """Every message of one upload of these tensors, in order (the tensors are copied into
    one payload; the trainer streams from its snapshot instead, trainer_svc.training.snapshot)."""
    table = payload_table(tensors)
    payload = bytearray().join(tensor_bytes(t) for t in tensors.values())
    begin = checkpoint_header(
        run_id=run_id, step=step, update_index=update_index, kind=kind, table=table,
        token=token, chunk_bytes=chunk_bytes,
    )  # fmt: skip
    return list(upload_messages(begin, memoryview(payload), token=token))


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


def upload_id_of(frame: Frame) -> str | None:
    """The upload id a header names, read leniently (for a header refused as a whole: the
    rest of its upload is then dropped, not answered again)."""
    try:  # a header refused for its size is still read here (frames are at most FRAME_BYTES)
        raw = bytes(frame)
        obj = json.loads(raw.decode("utf-8")) if len(raw) <= FRAME_BYTES else None
    except (ValueError, RecursionError):
        return None
    upload = obj.get("upload") if isinstance(obj, dict) else None
    if isinstance(upload, str) and re.fullmatch(UPLOAD_ID, upload):
        return upload
    return None


def _validate(model: type[BaseModel], obj: dict[str, Any]) -> Any:
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        problems = "; ".join(describe_errors(exc.errors(), default="header"))
        raise MalformedMessage(f"invalid {obj.get('type')} header: {problems}") from exc


def _check_table(header: CheckpointHeader, max_bytes: int) -> None:
    if header.total_bytes > max_bytes:
        raise TooLarge(
            f"checkpoint declares {header.total_bytes} bytes; this scorer accepts at most "
            f"{max_bytes} (raise max_checkpoint_bytes to allow it)"
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


MESSAGE_TYPES = "'hello', 'checkpoint', 'chunk' or 'commit'"


def _message_type(obj: dict[str, Any]) -> str:
    """The header's type, checked to be a string before anything looks it up."""
    if "type" not in obj:
        raise MalformedMessage(f"the header has no type; expected {MESSAGE_TYPES}")
    kind = obj["type"]
    if not isinstance(kind, str):
        shown = json.dumps(kind)
        shown = shown if len(shown) <= 64 else shown[:61] + "..."
        raise MalformedMessage(
            f"the header's type must be one of the strings {MESSAGE_TYPES}; got {shown}"
        )
    return kind


def decode_request(frames: Sequence[Frame], *, max_bytes: int = 1 << 34) -> Request:
    """Validate a message's framing, header and (for a checkpoint) table. A chunk's digest is
    checked by `check_chunk`, against the upload it belongs to."""
    if not frames:
        raise MalformedMessage("empty message")
    obj = _parse_header(frames[0])
    kind = _message_type(obj)
    single: dict[str, type[BaseModel]] = {
        "hello": Hello,
        "checkpoint": CheckpointHeader,
        "commit": CommitHeader,
    }
    if kind in single:
        if len(frames) != 1:
            raise MalformedMessage(f"a {kind} message is a single header frame")
        message = _validate(single[kind], obj)
        if isinstance(message, CheckpointHeader):
            _check_table(message, max_bytes)
        return message
    if kind == "chunk":
        if len(frames) != 2:
            raise MalformedMessage("a chunk message is a header frame and one payload frame")
        if memoryview(frames[1]).nbytes > FRAME_BYTES:
            raise MalformedMessage(f"a payload frame holds more than {FRAME_BYTES} bytes")
        return Chunk(header=_validate(ChunkHeader, obj), data=frames[1])
    raise MalformedMessage(f"unknown message type {kind[:64]!r}; expected {MESSAGE_TYPES}")


def check_chunk(begin: CheckpointHeader, chunk: Chunk, expected_index: int) -> None:
    """The chunk is the next one of the upload begin opened, whole and intact."""
    index = chunk.header.index
    if index != expected_index:  # a chunk lost (or repeated) on the way
        raise IntegrityError(
            f"chunk {index} of upload {begin.upload} arrived where chunk {expected_index} was "
            "due: chunks were lost in transit; send it again"
        )
    if index >= begin.n_chunks:
        raise MalformedMessage(
            f"upload {begin.upload} has {begin.n_chunks} chunks; got chunk {index}"
        )
    size = memoryview(chunk.data).nbytes
    if size != begin.chunk_size(index):
        raise IntegrityError(
            f"chunk {index} holds {size} bytes, the header's table makes it "
            f"{begin.chunk_size(index)}: the message was truncated or padded"
        )
    actual = chunk_digest(chunk.data)
    if actual != chunk.header.digest:
        raise IntegrityError(
            f"chunk {index} of checkpoint step {begin.step} has {DIGEST} {actual}, its header "
            f"declares {chunk.header.digest}: the checkpoint was corrupted in transit; send it "
            "again"
        )


def decode_tensors(header: CheckpointHeader, payload: Frame) -> dict[str, torch.Tensor]:
    """Rebuild tensors from a payload (copied once)."""
    data = bytearray(payload)
    tensors = {}
    for entry in header.tensors:
        torch_dtype = dtypes.BY_NAME[entry.dtype].torch
        part = data[entry.offset : entry.offset + entry.length]
        tensor = (
            torch.frombuffer(part, dtype=torch_dtype) if part else torch.empty(0, dtype=torch_dtype)
        )
        tensors[entry.name] = tensor.reshape(entry.shape)
    return tensors


def ack(**fields: Any) -> list[bytes]:
    return [_json_frame({"protocol": PROTOCOL_VERSION, "ok": True, "type": "ack", **fields})]


def error_reply(error: ProtocolError, **fields: Any) -> list[bytes]:
    return [
        _json_frame(
            {
                "protocol": PROTOCOL_VERSION,
                "ok": False,
                "type": "error",
                "code": error.code,
                "reason": str(error),
                **fields,
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
