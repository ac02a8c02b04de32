"""Encoded samples as a torch Dataset, and a collator that keeps each sample's index.

The index travels with the batch (`sample_index`) so the trainer can record which samples it
actually trained at each step; it is removed before the forward pass.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset

from common.data.batching import pad_right
from common.data.tokenization import EncodedSample

INDEX_KEY = "sample_index"


class EncodedDataset(Dataset):
    def __init__(self, encoded: list[EncodedSample], *, with_index: bool = True):
        """with_index: each row carries its index (the training set's, to record what was
        trained); an evaluation set's need not."""
        self.encoded = encoded
        self.with_index = with_index

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.encoded[index]
        row: dict[str, Any] = {"input_ids": sample.input_ids, "labels": sample.labels}
        if self.with_index:
            row[INDEX_KEY] = index
        return row


class PadCollator:
    """Right-pads input_ids with the pad id and labels with -100; keeps each row's index
    when the rows carry one."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        batch = pad_right(
            [row["input_ids"] for row in rows], [row["labels"] for row in rows], self.pad_token_id
        )
        out: dict[str, Any] = {
            "input_ids": batch.input_ids,
            "attention_mask": batch.attention_mask,
            "labels": batch.labels,
        }
        if rows and all(INDEX_KEY in row for row in rows):
            # a list, not a tensor: the Trainer moves tensors to the GPU, and reading them back
            # to record the step's samples would wait for the GPU before every micro-batch
            out[INDEX_KEY] = [int(row[INDEX_KEY]) for row in rows]
        return out
