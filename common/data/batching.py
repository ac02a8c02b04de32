"""Right-padded batches of (input ids, labels): the same padding on both sides."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from common.data.tokenization import IGNORE_INDEX


@dataclass(frozen=True)
class PaddedBatch:
    input_ids: torch.Tensor  # (rows, width), pad_id after each row's tokens
    attention_mask: torch.Tensor  # 1 on real tokens
    labels: torch.Tensor  # IGNORE_INDEX on padding


def pad_right(
    input_ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], pad_id: int
) -> PaddedBatch:
    """Rows padded on the right to the longest row."""
    width = max(len(row) for row in input_ids)
    ids = torch.full((len(input_ids), width), pad_id, dtype=torch.long)
    padded_labels = torch.full((len(input_ids), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(input_ids), width), dtype=torch.long)
    for row, (tokens, row_labels) in enumerate(zip(input_ids, labels, strict=True)):
        n = len(tokens)
        ids[row, :n] = torch.tensor(tokens, dtype=torch.long)
        padded_labels[row, :n] = torch.tensor(row_labels, dtype=torch.long)
        mask[row, :n] = 1
    return PaddedBatch(ids, mask, padded_labels)
