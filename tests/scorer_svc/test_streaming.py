"""A checkpoint reaches a model's tensors one tensor at a time: read (or received), broadcast,
copied into the target with the target's dtype, dropped before the next."""

import weakref

import pytest
import torch
from safetensors.torch import save_file

from scorer_svc.store import StoredCheckpoint, read_checkpoint, stream_tensors

CPU = torch.device("cpu")
TABLE = [("a", "float32", [2, 3]), ("b", "float32", [4]), ("c", "bfloat16", [3, 1])]


def _values(name: str, shape: list[int]) -> torch.Tensor:
    """What rank 0 holds of tensor `name`: distinct per tensor, exact in bfloat16."""
    start = 1 + 16 * "abc".index(name)
    return torch.arange(start, start + torch.Size(shape).numel(), dtype=torch.float32).view(shape)


def _targets(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {name: torch.zeros(shape, dtype=dtype) for name, _, shape in TABLE}


class RecordingBroadcast:
    """Fills each buffer as a receiving rank's broadcast would, and checks that every buffer
    it saw before is gone by the time the next arrives."""

    def __init__(self) -> None:
        self.seen: list[weakref.ref[torch.Tensor]] = []
        self.shapes: list[tuple[torch.dtype, list[int]]] = []

    def __call__(self, tensor: torch.Tensor) -> None:
        assert [ref for ref in self.seen if ref() is not None] == []
        self.seen.append(weakref.ref(tensor))
        self.shapes.append((tensor.dtype, list(tensor.shape)))
        name = "abc"[len(self.seen) - 1]
        tensor.copy_(_values(name, list(tensor.shape)))


def test_a_receiving_rank_holds_one_buffer_at_a_time_and_casts_into_its_targets():
    broadcast = RecordingBroadcast()
    targets = _targets(torch.bfloat16)
    assert stream_tensors(TABLE, None, broadcast, targets, CPU) is None
    assert broadcast.shapes == [(torch.float32, [2, 3]), (torch.float32, [4]),
                                (torch.bfloat16, [3, 1])]  # fmt: skip
    assert all(ref() is None for ref in broadcast.seen)
    for name, _, shape in TABLE:
        assert targets[name].dtype == torch.bfloat16
        assert torch.equal(targets[name], _values(name, shape).to(torch.bfloat16))


def test_the_reading_rank_broadcasts_what_it_reads_and_keeps_none_of_it():
    read_tensors: list[weakref.ref[torch.Tensor]] = []

    def read(name: str) -> torch.Tensor:
        assert [ref for ref in read_tensors if ref() is not None] == []
        shape = next(shape for n, _, shape in TABLE if n == name)
        tensor = _values(name, shape)
        read_tensors.append(weakref.ref(tensor))
        return tensor

    sent: list[torch.Tensor] = []
    targets = _targets(torch.float64)
    assert stream_tensors(TABLE, read, lambda t: sent.append(t.clone()), targets, CPU) is None
    for (name, _, shape), tensor in zip(TABLE, sent, strict=True):
        assert torch.equal(tensor, _values(name, shape))
        assert torch.equal(targets[name], _values(name, shape).double())
    assert len(read_tensors) == 3 and all(ref() is None for ref in read_tensors)


def test_a_rank_without_a_model_receives_every_tensor_and_discards_it():
    broadcast = RecordingBroadcast()
    assert stream_tensors(TABLE, None, broadcast, None, CPU) is None
    assert len(broadcast.shapes) == 3


def test_a_failed_copy_is_returned_and_every_tensor_is_still_broadcast():
    broadcast = RecordingBroadcast()
    targets = _targets(torch.float32)
    targets["a"] = torch.zeros(5)  # a shape the checkpoint does not fit
    failure = stream_tensors(TABLE, None, broadcast, targets, CPU)
    assert isinstance(failure, RuntimeError)
    assert len(broadcast.shapes) == 3  # the other ranks' collectives stay in step
    assert not targets["b"].any() and not targets["c"].any()  # nothing copied after it


def test_a_failed_read_broadcasts_an_empty_buffer_in_its_place():
    def read(name: str) -> torch.Tensor:
        if name == "b":
            raise OSError("the disk went away")
        return _values(name, next(shape for n, _, shape in TABLE if n == name))

    shapes = []
    failure = stream_tensors(
        TABLE, read, lambda t: shapes.append(list(t.shape)), _targets(torch.float32), CPU
    )
    assert isinstance(failure, OSError)
    assert shapes == [[2, 3], [4], [3, 1]]


def test_one_process_stops_at_the_first_failure():
    asked = []

    def read(name: str) -> torch.Tensor:
        asked.append(name)
        raise OSError("unreadable")

    assert isinstance(stream_tensors(TABLE, read, None, _targets(torch.float32), CPU), OSError)
    assert asked == ["a"]


@pytest.fixture
def stored(tmp_path) -> StoredCheckpoint:
    """A checkpoint file whose tensors lie in another order than their names sort in."""
    path = tmp_path / "step.safetensors"
    save_file({"z": torch.ones(2, 2), "m": torch.full((3,), 2.0, dtype=torch.bfloat16)}, path)
    return StoredCheckpoint.open(path)


def test_a_stored_checkpoint_gives_its_table_in_file_order(stored):
    assert sorted(stored.table) == [("m", "bfloat16", [3]), ("z", "float32", [2, 2])]
    with stored.reading(CPU) as read:
        assert [read(name).dtype for name, _, _ in stored.table] == [
            torch.bfloat16 if name == "m" else torch.float32 for name, _, _ in stored.table
        ]


def test_a_stored_checkpoint_is_copied_into_targets_of_another_dtype(stored):
    targets = {"z": torch.zeros(2, 2, dtype=torch.bfloat16), "m": torch.zeros(3)}
    stored.copy_into(targets, CPU)
    whole = read_checkpoint(stored.path)
    for name, target in targets.items():
        assert torch.equal(target, whole[name].to(target.dtype))


def test_a_stored_checkpoint_that_does_not_fit_raises(stored):
    with pytest.raises(RuntimeError):
        stored.copy_into({"z": torch.zeros(4), "m": torch.zeros(3)}, CPU)
