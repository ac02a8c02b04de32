"""The snapshot buffer and the background sender, without a scorer."""

import threading

import pytest
import torch

from common.wire.errors import CheckpointRejected
from common.wire.protocol import tensor_bytes
from trainer_svc.scorer.retry import StopRequested
from trainer_svc.scorer.sender import BackgroundSender
from trainer_svc.training.snapshot import CheckpointUpload, Snapshot, load_unsent, save_unsent


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "odd.bf16": torch.randn(3, generator=g).to(torch.bfloat16),  # 6 bytes: what follows
        "w.f32": torch.randn(2, 5, generator=g),  # starts at an offset that is not 4-aligned
        "count": torch.arange(4),
        "empty": torch.zeros(0, 3),
        "t.view": torch.randn(4, 3, generator=g).t(),  # not contiguous
    }


def _upload(tensors, step=4):
    return CheckpointUpload("r", step, 2, "lora", tensors)


def test_a_snapshot_is_a_copy_of_the_tensors_end_to_end_in_one_reused_buffer():
    tensors = _tensors()
    snapshot = Snapshot()
    taken = snapshot.take(_upload(tensors))
    expected = b"".join(bytes(tensor_bytes(t)) for t in tensors.values())
    assert bytes(taken.payload) == expected and snapshot.nbytes == len(expected)
    for name, tensor in tensors.items():
        assert taken.tensors[name].dtype == tensor.dtype
        assert torch.equal(taken.tensors[name], tensor), name
    before = {name: t.clone() for name, t in tensors.items()}
    with torch.no_grad():
        tensors["w.f32"].add_(1.0)  # training goes on: the snapshot does not change
    assert torch.equal(taken.tensors["w.f32"], before["w.f32"])
    address = taken.payload.obj.__array_interface__["data"][0]
    again = snapshot.take(_upload(tensors))
    assert again.payload.obj.__array_interface__["data"][0] == address  # the same buffer
    assert torch.equal(again.tensors["w.f32"], tensors["w.f32"])


class GatedSend:
    """A send that waits until the test opens its gate, then acks or raises."""

    def __init__(self, error=None):
        self.gate = threading.Event()
        self.started = threading.Event()
        self.error = error
        self.sent = []
        self.cancelled = False

    def __call__(self, upload):
        self.started.set()
        self.gate.wait(60)
        if self.cancelled:
            raise StopRequested("cancelled")
        if self.error is not None:
            raise self.error
        self.sent.append((upload.step, bytes(upload.payload)))
        return {"ok": True, "status": "queued"}

    def cancel(self):
        self.cancelled = True
        self.gate.set()


def _bytes(tensors):
    return b"".join(bytes(tensor_bytes(t)) for t in tensors.values())


def test_the_send_runs_while_the_caller_goes_on_and_the_next_one_waits_for_it():
    send = GatedSend()
    sender = BackgroundSender(send, cancel=send.cancel)
    first = _tensors()
    second = {name: t + 1 for name, t in first.items()}
    sender.send(_upload(first, step=2))
    assert send.started.wait(60)
    assert sender.in_flight is not None and sender.in_flight.step == 2  # send() returned
    assert sender.unsent is not None and sender.unsent.step == 2
    handing = threading.Thread(target=sender.send, args=(_upload(second, step=4),))
    handing.start()  # must not copy into the buffer while step 2's send still reads it
    handing.join(0.5)
    assert handing.is_alive()  # it waits for step 2's send (which waits for the gate)
    send.gate.set()
    handing.join(60)
    assert sender.result()["status"] == "queued"
    assert send.sent == [(2, _bytes(first)), (4, _bytes(second))]
    assert sender.unsent is None
    sender.close()


def test_a_failed_send_is_taken_once_and_stays_unsent():
    send = GatedSend(CheckpointRejected("does not fit"))
    sender = BackgroundSender(send, cancel=send.cancel)
    sender.send(_upload(_tensors()))
    send.gate.set()
    sender.wait()
    upload, error = sender.take_failure()
    assert upload.step == 4 and isinstance(error, CheckpointRejected)
    assert sender.take_failure() is None  # once
    assert sender.unsent is not None and sender.unsent.step == 4  # kept for a stop's save
    sender.close()


def test_a_stop_ends_the_wait_for_the_send_in_flight_and_close_cancels_it():
    send = GatedSend()
    sender = BackgroundSender(send, cancel=send.cancel)
    sender.send(_upload(_tensors()))
    with pytest.raises(StopRequested, match="checkpoint step 4 .* was being sent"):
        sender.wait(stop_requested=lambda: True)
    assert sender.in_flight is not None
    sender.close()  # cancels it: the thread ends
    assert send.cancelled and sender.unsent is not None and send.sent == []


def test_an_unsent_upload_is_saved_beside_a_checkpoint_and_read_back(tmp_path):
    tensors = _tensors()
    taken = Snapshot().take(_upload(tensors, step=6))
    path = save_unsent(taken, tmp_path)
    assert path.parent == tmp_path and not list(tmp_path.glob("*.partial"))
    back = load_unsent(tmp_path)
    assert (back.run_id, back.step, back.update_index, back.kind) == ("r", 6, 2, "lora")
    assert set(back.tensors) == set(tensors)
    assert all(torch.equal(back.tensors[n], t) for n, t in tensors.items())
    assert load_unsent(tmp_path / "elsewhere") is None
