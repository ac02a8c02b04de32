"""Checkpoints on disk: raw frames written as safetensors read back bit for bit."""

import torch

from common.protocol import decode_request, encode_checkpoint, raw_tensors
from scorer_svc.store import read_checkpoint, write_raw_checkpoint


def test_raw_frames_become_a_safetensors_file_with_the_same_tensors(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "a.weight": torch.randn(3, 5, generator=g),
        "b.weight": torch.randn(7, generator=g).to(torch.bfloat16),
        "c.half": torch.randn(2, 2, generator=g).half(),
        "d.count": torch.arange(5),
        "e.empty": torch.zeros(0, 4),
    }
    frames = [bytes(f) for f in encode_checkpoint(
        run_id="r", step=1, update_index=1, kind="full", tensors=tensors)]  # fmt: skip
    path = tmp_path / "step.safetensors"
    size = write_raw_checkpoint(path, raw_tensors(decode_request(frames)))
    assert size == path.stat().st_size and not path.with_suffix(".partial").exists()
    back = read_checkpoint(path)
    assert back.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor), name
