"""Encoded samples as a torch Dataset, and a collator that keeps each sample's index.

The index travels with the batch (`sample_index`) so the trainer can record which samples it
actually trained at each step; it is removed before the forward pass.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from common.tokenization import IGNORE_INDEX, EncodedSample

INDEX_KEY = "sample_index"


class EncodedDataset(Dataset):
    def __init__(self, encoded: list[EncodedSample]):
        self.encoded = encoded

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.encoded[index]
        return {"input_ids": sample.input_ids, "labels": sample.labels, INDEX_KEY: index}


class PadCollator:
    """Right-pads input_ids with the pad id and labels with -100."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(row["input_ids"]) for row in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row["input_ids"])
            ids[i, :n] = torch.tensor(row["input_ids"])
            labels[i, :n] = torch.tensor(row["labels"])
            mask[i, :n] = 1
        index = torch.tensor([row[INDEX_KEY] for row in rows], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, INDEX_KEY: index}
