"""A checkpoint reaches a model's tensors one tensor at a time: between ranks through one
receive buffer per rank, made before the stream (read into it, or received, broadcast,
copied into the target with the target's dtype); in one process read and copied, stopping at
the first failure. A follower that cannot make its buffer, or whose rank 0 could not read the
checkpoint, enters no tensor collective or scores nothing, and says so in the gather."""

import json
import struct
import threading
import weakref
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from scorer_svc.scoring.ranks import FAILED, SCORED, SKIPPED, RankGroup
from scorer_svc.storage import checkpoint_files
from scorer_svc.storage.checkpoint_files import (
    CheckpointWriter,
    StoredCheckpoint,
    copy_tensors,
    read_checkpoint,
    receive_buffer,
    stream_tensors,
)

CPU = torch.device("cpu")
TABLE = [("a", "float32", [2, 3]), ("b", "float32", [4]), ("c", "bfloat16", [3, 1])]
LARGEST = 2 * 3 * 4  # bytes, of "a"


def _values(name: str, shape: list[int]) -> torch.Tensor:
    """What rank 0 holds of tensor `name`: distinct per tensor, exact in bfloat16."""
    start = 1 + 16 * "abc".index(name)
    return torch.arange(start, start + torch.Size(shape).numel(), dtype=torch.float32).view(shape)


def _as_stored(name: str) -> torch.Tensor:
    """Tensor `name` in the table's dtype and shape, as the file holds it."""
    _, dtype, shape = next(row for row in TABLE if row[0] == name)
    return _values(name, shape).to(getattr(torch, dtype))


def _bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous().view(-1).view(torch.uint8)


def _targets(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {name: torch.zeros(shape, dtype=dtype) for name, _, shape in TABLE}


class RecordingBroadcast:
    """Fills each buffer as a receiving rank's broadcast would (when fill), and records the
    bytes each broadcast carried and where they lay."""

    def __init__(self, fill: bool = True) -> None:
        self.fill = fill
        self.sent: list[torch.Tensor] = []
        self.addresses: list[int] = []

    def __call__(self, tensor: torch.Tensor) -> None:
        assert tensor.dtype == torch.uint8 and tensor.dim() == 1
        self.addresses.append(tensor.data_ptr())
        if self.fill:
            tensor.copy_(_bytes(_as_stored("abc"[len(self.sent)])))
        self.sent.append(tensor.clone())


def test_the_receive_buffer_holds_the_largest_tensors_bytes():
    buffer = receive_buffer(TABLE, CPU)
    assert buffer.dtype == torch.uint8 and buffer.shape == (LARGEST,)
    assert receive_buffer([], CPU).numel() == 0


def test_a_receiving_rank_takes_every_tensor_through_its_buffer_and_casts_into_its_targets():
    buffer = receive_buffer(TABLE, CPU)
    broadcast = RecordingBroadcast()
    targets = _targets(torch.bfloat16)
    assert stream_tensors(TABLE, None, broadcast, targets, buffer) is None
    assert broadcast.addresses == [buffer.data_ptr()] * 3  # nothing else was received into
    assert [t.numel() for t in broadcast.sent] == [24, 16, 6]  # each tensor's bytes
    for name, _, shape in TABLE:
        assert targets[name].dtype == torch.bfloat16
        assert torch.equal(targets[name], _values(name, shape).to(torch.bfloat16))


def test_the_reading_rank_broadcasts_what_it_reads_from_its_buffer_and_keeps_none_of_it():
    read_tensors: list[weakref.ref[torch.Tensor]] = []

    def read(name: str) -> torch.Tensor:
        assert [ref for ref in read_tensors if ref() is not None] == []
        tensor = _as_stored(name)
        read_tensors.append(weakref.ref(tensor))
        return tensor

    buffer = receive_buffer(TABLE, CPU)
    broadcast = RecordingBroadcast(fill=False)
    targets = _targets(torch.float64)
    assert stream_tensors(TABLE, read, broadcast, targets, buffer) is None
    assert broadcast.addresses == [buffer.data_ptr()] * 3
    for (name, _, shape), sent in zip(TABLE, broadcast.sent, strict=True):
        assert torch.equal(sent, _bytes(_as_stored(name)))
        assert torch.equal(targets[name], _values(name, shape).double())
    assert len(read_tensors) == 3 and all(ref() is None for ref in read_tensors)


def test_a_failed_copy_is_returned_and_every_tensor_is_still_broadcast():
    broadcast = RecordingBroadcast()
    targets = _targets(torch.float32)
    targets["a"] = torch.zeros(5)  # a shape the checkpoint does not fit
    failure = stream_tensors(TABLE, None, broadcast, targets, receive_buffer(TABLE, CPU))
    assert isinstance(failure, RuntimeError)
    assert len(broadcast.sent) == 3  # the other ranks' collectives stay in step
    assert not targets["b"].any() and not targets["c"].any()  # nothing copied after it


def test_a_failed_read_broadcasts_the_buffer_in_its_place_and_reads_nothing_more():
    asked = []

    def read(name: str) -> torch.Tensor:
        asked.append(name)
        if name == "b":
            raise OSError("the disk went away")
        return _as_stored(name)

    buffer = receive_buffer(TABLE, CPU)
    broadcast = RecordingBroadcast(fill=False)
    targets = _targets(torch.float32)
    failure = stream_tensors(TABLE, read, broadcast, targets, buffer)
    assert isinstance(failure, OSError)
    assert asked == ["a", "b"]
    assert broadcast.addresses == [buffer.data_ptr()] * 3
    assert [t.numel() for t in broadcast.sent] == [24, 16, 6]
    assert not targets["b"].any() and not targets["c"].any()


def test_one_process_stops_at_the_first_failure():
    asked = []

    def read(name: str) -> torch.Tensor:
        asked.append(name)
        raise OSError("unreadable")

    assert isinstance(copy_tensors(TABLE, read, _targets(torch.float32)), OSError)
    assert asked == ["a"]
    asked.clear()
    misfit = _targets(torch.float32) | {"a": torch.zeros(5)}
    assert isinstance(copy_tensors(TABLE, lambda n: asked.append(n) or _as_stored(n), misfit),
                      RuntimeError)  # fmt: skip
    assert asked == ["a"]


# a follower (rank 1 of 2) whose collectives are answered here


class Follower(RankGroup):
    """Rank 1 of two, its collectives answered as rank 0 would: every other rank ready, and
    rank 0's tensors (then its stream status) as given. Records what it took part in."""

    def __init__(self, rank_0_streamed: bool = True) -> None:
        super().__init__(1, 2, CPU, control=None)  # type: ignore[arg-type]
        self.rank_0_ok = rank_0_streamed
        self.calls: list[object] = []

    def _ready(self, ok: bool) -> bool:
        self.calls.append(("ready", ok))
        return ok

    def _broadcast_tensor(self, tensor: torch.Tensor) -> None:
        self.calls.append("tensor")
        tensor.copy_(_bytes(_as_stored("abc"[self.calls.count("tensor") - 1])))

    def _rank_0_streamed(self, ok: bool | None) -> bool:
        assert ok is None
        self.calls.append(("rank 0 streamed", self.rank_0_ok))
        return self.rank_0_ok

    def _gather(self, losses: np.ndarray, status: float) -> list:
        self.calls.append(("gather", status))
        return []


class ScoredModel:
    def __init__(self) -> None:
        self.targets = _targets(torch.float32)
        self.scored = 0

    def score(self, batches, n_samples, **_) -> np.ndarray:
        self.scored += 1
        return np.zeros(n_samples)


class Registry:
    """A follower's registry, its run data store and model catalogue in one."""

    settings = None

    def __init__(self) -> None:
        self.built: list[ScoredModel] = []
        self.runs = self.models = self

    def hello_of(self, run_id, config):
        return run_id

    def prepare(self, hello):
        return SimpleNamespace(batches=[])

    def model(self, hello):
        self.built.append(ScoredModel())
        return self.built[-1]


COMMAND = {"op": "score", "config": {"run_id": "r", "n_samples": 3}, "tensors": TABLE,
           "samples": None}  # fmt: skip


def test_a_follower_takes_the_tensors_and_scores_its_share():
    follower, registry = Follower(), Registry()
    follower._score_share(COMMAND, registry, threading.Event())
    assert follower.calls == [("ready", True), "tensor", "tensor", "tensor",
                              ("rank 0 streamed", True), ("gather", SCORED)]  # fmt: skip
    (model,) = registry.built
    assert model.scored == 1
    for name, _, shape in TABLE:
        assert torch.equal(model.targets[name], _values(name, shape))


def test_a_follower_that_cannot_make_its_buffer_enters_no_tensor_collective(monkeypatch):
    def refused(count: int, device: torch.device) -> torch.Tensor:
        raise torch.OutOfMemoryError(f"could not allocate {count} bytes on {device}")

    monkeypatch.setattr(checkpoint_files, "allocate_bytes", refused)
    follower, registry = Follower(), Registry()
    follower._score_share(COMMAND, registry, threading.Event())
    assert follower.calls == [("ready", False), ("gather", FAILED)]
    assert registry.built[0].scored == 0


def test_when_rank_0_could_not_read_the_checkpoint_followers_do_not_score():
    follower, registry = Follower(rank_0_streamed=False), Registry()
    follower._score_share(COMMAND, registry, threading.Event())
    assert follower.calls == [("ready", True), "tensor", "tensor", "tensor",
                              ("rank 0 streamed", False), ("gather", SKIPPED)]  # fmt: skip
    assert registry.built[0].scored == 0


# a checkpoint file


FILE_ORDER = [("z", torch.ones(2, 2)), ("m", torch.full((4,), 2.0, dtype=torch.bfloat16)),
              ("a", torch.arange(3.0))]  # fmt: skip


def _file_order(path) -> list[str]:
    """The tensors' names in the order their bytes lie in the file, from its header."""
    with open(path, "rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(length))
    header.pop("__metadata__", None)
    return sorted(header, key=lambda name: header[name]["data_offsets"][0])


@pytest.fixture
def stored(tmp_path) -> StoredCheckpoint:
    """A checkpoint file whose tensors lie in another order than their names sort in (and
    than their dtypes would put them)."""
    path = tmp_path / "step.safetensors"
    layout = [(n, str(t.dtype).removeprefix("torch."), list(t.shape), t.nbytes)
              for n, t in FILE_ORDER]  # fmt: skip
    writer = CheckpointWriter(path, layout)
    for _, tensor in FILE_ORDER:
        writer.write(_bytes(tensor).numpy().tobytes())
    writer.commit()
    return StoredCheckpoint.open(path)


def test_a_stored_checkpoint_gives_its_table_in_file_order(stored):
    names = [name for name, _, _ in stored.table]
    assert _file_order(stored.path) == ["z", "m", "a"] != sorted(names)
    assert stored.table == [("z", "float32", [2, 2]), ("m", "bfloat16", [4]),
                            ("a", "float32", [3])]  # fmt: skip
    with stored.reading(CPU) as read:
        for name, tensor in FILE_ORDER:
            assert torch.equal(read(name), tensor)


def test_a_stored_checkpoint_is_copied_into_targets_of_another_dtype(stored):
    targets = {"z": torch.zeros(2, 2, dtype=torch.bfloat16), "m": torch.zeros(4),
               "a": torch.zeros(3, dtype=torch.float64)}  # fmt: skip
    stored.copy_into(targets, CPU)
    whole = read_checkpoint(stored.path)
    for name, target in targets.items():
        assert torch.equal(target, whole[name].to(target.dtype))


def test_a_stored_checkpoint_that_does_not_fit_raises(stored):
    with pytest.raises(RuntimeError):
        stored.copy_into({"z": torch.zeros(4), "m": torch.zeros(4), "a": torch.zeros(3)}, CPU)
