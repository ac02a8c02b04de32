"""Uploads in progress at the scorer, without a socket: ids, replacement, idleness, bounds."""

import pytest
import torch

from common.wire.errors import Busy, IntegrityError, MalformedMessage
from common.wire.protocol import decode_request, encode_checkpoint
from scorer_svc.intake.uploads import CLOSED_REMEMBERED, Uploads
from scorer_svc.storage.checkpoint_files import CheckpointWriter
from tests.support.wire import as_bytes


def _upload(step=2):
    return as_bytes(
        encode_checkpoint(
            run_id="r", step=step, update_index=1, kind="full",
            tensors={"w": torch.arange(10, dtype=torch.float32)}, chunk_bytes=16,
        )
    )  # fmt: skip


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


def _open(uploads, messages, tmp_path, client=""):
    begin = decode_request(messages[0])
    path = tmp_path / f"{begin.upload}.safetensors"
    writer = lambda: CheckpointWriter(path, [("w", "float32", [10], 40)])  # noqa: E731
    return uploads.open(begin, writer, client)


def test_an_upload_is_checked_and_written_chunk_by_chunk_then_committed(tmp_path):
    uploads, messages = Uploads(), _upload()
    upload = _open(uploads, messages, tmp_path)
    for message in messages[1:-1]:
        uploads.add(upload, decode_request(message))
    uploads.check_commit(upload, decode_request(messages[-1]))
    upload.writer.commit()
    uploads.finish(upload)
    assert uploads.is_closed(upload.begin.upload) and uploads.get(upload.begin.upload) is None
    assert upload.writer.path.exists()


def test_a_commit_before_every_chunk_arrived_is_refused(tmp_path):
    uploads, messages = Uploads(), _upload()
    upload = _open(uploads, messages, tmp_path)
    uploads.add(upload, decode_request(messages[1]))
    with pytest.raises(IntegrityError, match="after 1 of its 3 chunks"):
        uploads.check_commit(upload, decode_request(messages[-1]))


def test_an_id_already_open_is_refused_and_the_same_step_replaces_an_unfinished_upload(tmp_path):
    uploads, first = Uploads(), _upload()
    upload = _open(uploads, first, tmp_path)
    with pytest.raises(MalformedMessage, match="open already"):
        _open(uploads, first, tmp_path)
    again = _upload()  # the same step, a new id: the trainer started again
    replacing = _open(uploads, again, tmp_path)
    assert uploads.is_closed(upload.begin.upload) and uploads.get(upload.begin.upload) is None
    assert not list(tmp_path.glob(f"{upload.begin.upload}*"))  # its file removed
    assert uploads.get(replacing.begin.upload) is replacing


def test_idle_uploads_are_dropped_and_open_ones_are_bounded(tmp_path):
    clock = Clock()
    uploads = Uploads(idle_seconds=10, max_open=2, clock=clock)
    a = _open(uploads, _upload(step=2), tmp_path)
    _open(uploads, _upload(step=4), tmp_path)
    with pytest.raises(Busy, match="receiving 2 checkpoints"):
        _open(uploads, _upload(step=6), tmp_path)
    clock.now = 11
    assert {u.begin.upload for u in uploads.sweep()} >= {a.begin.upload}
    assert uploads.get(a.begin.upload) is None and not list(tmp_path.glob("*.partial"))


def test_one_client_holds_at_most_its_share_and_stale_uploads_give_up_their_slot(tmp_path):
    clock = Clock()
    uploads = Uploads(max_open=4, per_client=2, stale_seconds=5, clock=clock)
    hostile = [_open(uploads, _upload(step=2 * i), tmp_path, "address 10.0.0.9") for i in (1, 2)]
    with pytest.raises(Busy, match="this client is sending 2 checkpoints"):
        _open(uploads, _upload(step=6), tmp_path, "address 10.0.0.9")
    # another client is not held up by the first one's partial uploads
    sent = [_upload(step=2 * i) for i in (4, 5)]
    mine = [_open(uploads, messages, tmp_path, "address 10.0.0.1") for messages in sent]
    assert len(uploads._open) == 4
    with pytest.raises(Busy, match="receiving 4 checkpoints"):
        _open(uploads, _upload(step=12), tmp_path, "address 10.0.0.2")
    # left hanging for stale_seconds: the one idle longest gives up its slot to a newcomer
    clock.now = 5
    uploads.add(mine[0], decode_request(sent[0][1]))  # still sending: not stale
    clock.now = 6
    newcomer = _open(uploads, _upload(step=12), tmp_path, "address 10.0.0.2")
    assert uploads.get(hostile[0].begin.upload) is None
    # not closed: its next chunk finds no upload, and its trainer is told upload_lost
    assert not uploads.is_closed(hostile[0].begin.upload)
    # a client at its share makes room among its own first
    again = _open(uploads, _upload(step=14), tmp_path, "address 10.0.0.1")
    assert uploads.get(mine[1].begin.upload) is None and uploads.get(mine[0].begin.upload)
    assert {u.begin.upload for u in uploads._open.values()} == {
        hostile[1].begin.upload, mine[0].begin.upload, newcomer.begin.upload,
        again.begin.upload,
    }  # fmt: skip
    assert len(list(tmp_path.glob("*.partial"))) == 4  # the dropped ones' files are removed


def test_an_upload_trickling_in_gives_way_and_only_its_own_client_replaces_it(tmp_path):
    clock = Clock()
    uploads = Uploads(max_open=2, per_client=2, stale_seconds=5, clock=clock)
    trickle = _upload(step=2)
    slow = _open(uploads, trickle, tmp_path, "address 10.0.0.9")
    clock.now = 4  # a chunk every 4 s: never idle for 5 s, but far below 1 MiB/s
    uploads.add(slow, decode_request(trickle[1]))
    clock.now = 4.5
    _open(uploads, _upload(step=4), tmp_path, "address 10.0.0.1")
    # another client's header for the same run and step does not replace it
    with pytest.raises(Busy, match="receiving 2 checkpoints"):
        _open(uploads, _upload(step=2), tmp_path, "address 10.0.0.1")
    assert uploads.get(slow.begin.upload) is slow
    clock.now = 8
    uploads.add(slow, decode_request(trickle[2]))
    clock.now = 9  # open for 9 s at 4 bytes a second: it gives way to a newcomer
    newcomer = _open(uploads, _upload(step=6), tmp_path, "address 10.0.0.2")
    assert uploads.get(slow.begin.upload) is None and uploads.get(newcomer.begin.upload)


def test_closed_ids_are_remembered_up_to_a_bound(tmp_path):
    uploads = Uploads()
    for i in range(CLOSED_REMEMBERED + 5):
        uploads.refuse(f"{i:032x}")
    assert not uploads.is_closed(f"{0:032x}") and uploads.is_closed(f"{5:032x}")
    upload = _open(uploads, _upload(), tmp_path)
    for message in _upload()[1:-1]:
        uploads.add(upload, decode_request(message))
    uploads.finish(upload)
    assert len(uploads._closed) == CLOSED_REMEMBERED
