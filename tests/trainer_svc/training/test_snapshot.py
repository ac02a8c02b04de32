"""The snapshot buffer for a GPU's tensors: ordinary host memory of the checkpoint's exact size,
page-locked in place by host registration, registered once and released before it is replaced
or when the snapshot goes. A GPU is simulated: the module's `_on_gpu` check says yes, a
recording HostPin stands in for CUDA, and the buffers made are recorded."""

import gc
import logging
import weakref

import pytest
import torch

from common.wire.protocol import tensor_bytes
from trainer_svc.training import snapshot as snapshot_module
from trainer_svc.training.snapshot import CheckpointUpload, HostPin, HostPinError, Snapshot


class RecordingPin:
    """HostPin's calls, in order, in a log shared with the buffers' allocations; refuses to
    register when told to, as CUDA may."""

    def __init__(self, log, refuse=False):
        self.log = log
        self.refuse = refuse

    def register(self, address, nbytes):
        if self.refuse:
            raise HostPinError("cudaHostRegister of 3.00 MiB failed: out of memory (CUDA error 2)")
        self.log.append(("register", address, nbytes))

    def unregister(self, address):
        self.log.append(("unregister", address))


class Allocations:
    """Wraps the module's `_allocate`: each buffer made is logged with its size, whether torch
    pins it, and how many buffers made before are still alive. torch cannot pin here (no GPU),
    so a pinned buffer is made as ordinary memory and only logged as pinned."""

    def __init__(self, log):
        self.log = log
        self.made = []  # weak references: the log must not keep a buffer alive
        self.zeroed = []  # whether each was made zeroed (its pages touched)

    def __call__(self, total, *, zeroed, pinned=False):
        alive = sum(ref() is not None for ref in self.made)
        buffer = (torch.zeros if zeroed else torch.empty)(total, dtype=torch.uint8)
        self.made.append(weakref.ref(buffer))
        self.zeroed.append(zeroed)
        self.log.append(("allocate", total, pinned, alive))
        return buffer

    def last(self):
        return self.made[-1]()


@pytest.fixture
def log():
    return []


@pytest.fixture
def allocations(monkeypatch, log):
    recorder = Allocations(log)
    monkeypatch.setattr(snapshot_module, "_allocate", recorder)
    return recorder


@pytest.fixture
def on_gpu(monkeypatch, allocations):
    """The tensors count as a GPU's; the copy's wait for the device does nothing."""
    monkeypatch.setattr(snapshot_module, "_on_gpu", lambda tensors: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "odd.bf16": torch.randn(3, generator=g).to(torch.bfloat16),
        "w.f32": torch.randn(2, 5, generator=g),
        "count": torch.arange(4),
        "t.view": torch.randn(4, 3, generator=g).t(),
    }  # 126 bytes: a power of two is 128


def _payload_size(tensors):
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _address(upload):
    return upload.payload.obj.__array_interface__["data"][0]


def test_a_gpu_checkpoint_buffer_is_its_exact_size_registered_once_at_its_address(
    on_gpu, allocations, log
):
    tensors = _tensors()
    snapshot = Snapshot(RecordingPin(log))
    taken = snapshot.take(CheckpointUpload("r", 4, 2, "lora", tensors))
    address = _address(taken)
    assert log == [("allocate", 126, False, 0), ("register", address, 126)]
    buffer = allocations.last()
    assert buffer.untyped_storage().nbytes() == 126 and buffer.data_ptr() == address
    assert snapshot.nbytes == 126 == _payload_size(tensors)
    assert bytes(taken.payload) == b"".join(bytes(tensor_bytes(t)) for t in tensors.values())
    again = snapshot.take(CheckpointUpload("r", 6, 3, "lora", tensors))
    assert _address(again) == address and len(log) == 2  # the same buffer, registered once


def test_reserve_makes_the_gpu_buffer_touched_and_registered_and_take_reuses_it(
    on_gpu, allocations, log
):
    tensors = _tensors()
    snapshot = Snapshot(RecordingPin(log))
    snapshot.reserve(tensors)
    buffer = allocations.last()
    assert log == [("allocate", 126, False, 0), ("register", buffer.data_ptr(), 126)]
    assert buffer.untyped_storage().nbytes() == 126 and allocations.zeroed == [True]
    taken = snapshot.take(CheckpointUpload("r", 4, 2, "lora", tensors))
    assert _address(taken) == buffer.data_ptr() and len(log) == 2


def test_the_old_registration_is_released_before_a_new_buffer_is_made_and_when_dropped(on_gpu, log):
    snapshot = Snapshot(RecordingPin(log))
    snapshot.reserve(_tensors())
    snapshot.reserve({"w": torch.zeros(10)})  # another size: another buffer
    first, second = log[1][1], log[4][1]
    assert log == [
        ("allocate", 126, False, 0),
        ("register", first, 126),
        ("unregister", first),
        ("allocate", 40, False, 0),  # 0: the old buffer is freed before
        ("register", second, 40),
    ]
    del snapshot
    gc.collect()
    assert log[5:] == [("unregister", second)]


def test_a_released_snapshot_unregisters_its_buffer_once(on_gpu, log):
    snapshot = Snapshot(RecordingPin(log))
    snapshot.reserve(_tensors())
    address = log[1][1]
    assert log == [("allocate", 126, False, 0), ("register", address, 126)]
    snapshot.release()
    assert log[2:] == [("unregister", address)] and snapshot.nbytes == 0
    del snapshot
    gc.collect()
    assert len(log) == 3  # not again when it is collected


class RefusingRelease(RecordingPin):
    def unregister(self, address):
        super().unregister(address)
        raise HostPinError("cudaHostUnregister failed: an illegal memory access (CUDA error 700)")


def test_a_buffer_cuda_will_not_release_is_kept_and_closing_the_sender_goes_on(
    on_gpu, allocations, log, caplog
):
    """After a sticky CUDA error the release fails: the buffer is not freed while registered,
    and closing the sender logs it rather than hide the run's own outcome."""
    from trainer_svc.scorer.sender import BackgroundSender

    sender = BackgroundSender(lambda upload: {})
    sender.snapshot = Snapshot(RefusingRelease(log))
    sender.snapshot.reserve(_tensors())
    buffer = allocations.last()
    with caplog.at_level("WARNING", logger="trainer_svc.scorer.sender"):
        sender.close()
    assert "the snapshot buffer is kept: cudaHostUnregister failed" in caplog.text
    del buffer
    gc.collect()
    assert allocations.last() is not None  # still alive: never freed while registered


def test_on_the_cpu_nothing_is_registered(allocations, log):
    tensors = _tensors()
    snapshot = Snapshot(RecordingPin(log))
    snapshot.reserve(tensors)
    snapshot.take(CheckpointUpload("r", 4, 2, "lora", tensors))
    assert log == [("allocate", 126, False, 0)]
    del snapshot
    gc.collect()
    assert log == [("allocate", 126, False, 0)]


def test_an_empty_checkpoint_on_a_gpu_registers_nothing(on_gpu, log):
    snapshot = Snapshot(RecordingPin(log))
    taken = snapshot.take(CheckpointUpload("r", 4, 2, "lora", {"empty": torch.zeros(0, 3)}))
    snapshot.take(CheckpointUpload("r", 6, 3, "lora", {"empty": torch.zeros(0, 3)}))
    assert bytes(taken.payload) == b"" and log == [("allocate", 0, False, 0)]


def test_a_refused_registration_falls_back_to_torchs_pinned_buffer_saying_what_it_costs(
    on_gpu, log, caplog
):
    tensors = {"w": torch.zeros(3 << 18)}  # 3 MiB
    snapshot = Snapshot(RecordingPin(log, refuse=True))
    with caplog.at_level(logging.WARNING, logger="trainer_svc.training.snapshot"):
        snapshot.reserve(tensors)
    # the ordinary buffer is freed before torch pins one; nothing is registered
    assert log == [("allocate", 3 << 20, False, 0), ("allocate", 3 << 20, True, 0)]
    assert caplog.messages == [
        "cudaHostRegister of 3.00 MiB failed: out of memory (CUDA error 2); the snapshot "
        "buffer is pinned by torch's allocator instead, which rounds its 3.00 MiB up to "
        "4.00 MiB of page-locked memory (1.00 MiB more)"
    ]
    snapshot.take(CheckpointUpload("r", 4, 2, "lora", tensors))
    snapshot.release()
    assert len(log) == 2  # kept, not registered again, nothing to unregister


class FakeCudart:
    """torch.cuda.cudart()'s host registration calls, answering the codes it is given."""

    def __init__(self, code):
        self.code = code
        self.calls = []

    cudaError = int

    def cudaGetErrorString(self, code):
        return {2: "out of memory", 712: "part or all of the range is already registered"}[code]

    def cudaHostRegister(self, address, nbytes, flags):
        self.calls.append(("register", address, nbytes, flags))
        return self.code

    def cudaHostUnregister(self, address):
        self.calls.append(("unregister", address))
        return self.code


@pytest.fixture
def cudart(monkeypatch):
    """A fake CUDA runtime (code 0 unless a test sets it) and the error-clearing calls."""
    fake = FakeCudart(0)
    fake.cleared = []
    monkeypatch.setattr(torch.cuda, "cudart", lambda: fake)
    monkeypatch.setattr(snapshot_module, "_take_last_cuda_error", lambda: fake.cleared.append(1))
    return fake


def test_host_pin_registers_for_every_context_and_checks_each_return_code(cudart):
    pin = HostPin()
    pin.register(4096, 126)
    pin.unregister(4096)
    assert cudart.calls == [("register", 4096, 126, 1), ("unregister", 4096)]  # Portable
    assert cudart.cleared == []


def test_host_pin_raises_cudas_message_and_clears_the_threads_cuda_error(cudart):
    cudart.code = 2
    with pytest.raises(HostPinError, match=r"^cudaHostRegister of 9.00 GiB failed: out of memory"):
        HostPin().register(4096, 9 << 30)
    cudart.code = 712
    with pytest.raises(
        HostPinError, match=r"^cudaHostUnregister failed: part or .*\(CUDA error 712\)"
    ):
        HostPin().unregister(4096)
    assert cudart.cleared == [1, 1]


def test_float32_master_weights_travel_in_the_dtype_the_model_was_stored_in():
    """A full run's upcast weights are sent as stored (bfloat16): the payload is half the
    float32 one, and each value is the float32 weight rounded to bfloat16."""
    weights = {"w": torch.randn(4, 3), "norm": torch.randn(3), "step": torch.tensor([7])}
    snap = Snapshot()
    snap.wire_dtypes = {"w": torch.bfloat16, "norm": torch.bfloat16}
    snap.reserve(weights)
    assert snap.nbytes == 2 * 12 + 2 * 3 + 8
    sent = snap.take(CheckpointUpload("run", 2, 1, "full", weights))
    assert {n: t.dtype for n, t in sent.tensors.items()} == {
        "w": torch.bfloat16, "norm": torch.bfloat16, "step": torch.int64,
    }  # fmt: skip
    assert torch.equal(sent.tensors["w"], weights["w"].bfloat16())
    assert torch.equal(sent.tensors["step"], weights["step"])
    assert sent.payload is not None and sent.payload.nbytes == snap.nbytes
