"""Storage: checkpoints on disk (raw frames written as safetensors read back bit for bit); the
loss rows are tests/scorer_svc/storage/test_losses.py's."""

import pytest
import torch

from common.wire.protocol import encode_checkpoint
from scorer_svc.storage.checkpoint_files import CheckpointWriter, read_checkpoint
from tests.support.wire import assemble


def test_chunks_become_a_safetensors_file_with_the_same_tensors(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "a.weight": torch.randn(3, 5, generator=g),
        "b.weight": torch.randn(7, generator=g).to(torch.bfloat16),
        "c.half": torch.randn(2, 2, generator=g).half(),
        "d.count": torch.arange(5),
        "e.empty": torch.zeros(0, 4),
    }
    messages = encode_checkpoint(
        run_id="r", step=1, update_index=1, kind="full", tensors=tensors, chunk_bytes=16
    )
    header, _ = assemble(messages)
    path = tmp_path / "step.safetensors"
    writer = CheckpointWriter(path, [(e.name, e.dtype, e.shape, e.length) for e in header.tensors])
    for message in messages[1:-1]:  # chunk by chunk, as they arrive
        assert writer.path.with_suffix(".partial").exists() and not path.exists()
        writer.write(message[1])
    size = writer.commit()
    assert size == path.stat().st_size and not path.with_suffix(".partial").exists()
    back = read_checkpoint(path)
    assert back.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor), name


def test_partial_checkpoint_files_are_removed_at_start(tmp_path):
    from scorer_svc.storage.checkpoint_files import checkpoint_path, remove_partial_files

    done = checkpoint_path(tmp_path, "run-1", 2)
    done.parent.mkdir(parents=True)
    done.write_bytes(b"acknowledged")
    cut = done.with_suffix(".partial")
    cut.write_bytes(b"cut off")
    assert remove_partial_files(tmp_path) == [cut]
    assert done.exists() and not cut.exists()
    assert remove_partial_files(tmp_path / "empty") == []


def test_an_aborted_or_short_checkpoint_leaves_no_file(tmp_path):
    path = tmp_path / "step.safetensors"
    writer = CheckpointWriter(path, [("w", "float32", [4], 16)])
    writer.write(b"\0" * 8)
    with pytest.raises(ValueError, match="8 payload bytes written; the tensors declare 16"):
        writer.commit()
    writer.abort()
    assert list(tmp_path.iterdir()) == []
    writer = CheckpointWriter(path, [("w", "float32", [4], 16)])
    with pytest.raises(ValueError, match="more bytes"):
        writer.write(b"\0" * 20)
    writer.abort()
    assert list(tmp_path.iterdir()) == []
