"""Length-grouped, right-padded batches: the same batches for every checkpoint of a run."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch

from common.data.batching import pad_right
from common.data.tokenization import EncodedSample


@dataclass(frozen=True)
class Batch:
    indices: list[int]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor

    @property
    def real_tokens(self) -> int:
        return int(self.attention_mask.sum())

    @property
    def padded_tokens(self) -> int:
        return self.input_ids.numel()


def group_by_length(
    lengths: Sequence[int], *, batch_size: int, max_batch_tokens: int
) -> list[list[int]]:
    """Sample indices sorted by length (ties by index), cut into batches of at most
    batch_size rows and at most max_batch_tokens padded tokens (a longer sample goes alone)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        width = lengths[index]  # sorted ascending: the newest sample is the longest
        if current and (
            len(current) >= batch_size or width * (len(current) + 1) > max_batch_tokens
        ):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def collate(samples: Sequence[EncodedSample], indices: list[int], pad_id: int) -> Batch:
    padded = pad_right(
        [samples[i].input_ids for i in indices], [samples[i].labels for i in indices], pad_id
    )
    return Batch(indices, padded.input_ids, padded.attention_mask, padded.labels)


def make_batches(
    samples: Sequence[EncodedSample], *, batch_size: int, max_batch_tokens: int, pad_id: int
) -> list[Batch]:
    """Batches of the samples that have label tokens; the others have no loss to compute."""
    scorable = [i for i, s in enumerate(samples) if s.n_label_tokens > 0]
    groups = group_by_length(
        [len(samples[i].input_ids) for i in scorable],
        batch_size=batch_size,
        max_batch_tokens=max_batch_tokens,
    )
    return [collate(samples, [scorable[j] for j in group], pad_id) for group in groups]


def subset_batches(
    batches: Sequence[Batch],
    samples: Collection[int],
    *,
    batch_size: int,
    max_batch_tokens: int,
    pad_id: int,
) -> list[Batch]:
    """Batches of the named samples alone, cut anew by the same rule (a scoring budget's
    checkpoint): each row is taken from the run's batches without its padding."""
    wanted = set(samples)
    rows: list[tuple[int, int, list[int], list[int]]] = []
    for batch in batches:
        lengths = batch.attention_mask.sum(dim=1).tolist()
        for row, index in enumerate(batch.indices):
            if index in wanted:
                n = int(lengths[row])
                ids, labels = batch.input_ids[row, :n].tolist(), batch.labels[row, :n].tolist()
                rows.append((n, index, ids, labels))
    rows.sort(key=lambda r: (r[0], r[1]))
    groups = group_by_length(
        [r[0] for r in rows], batch_size=batch_size, max_batch_tokens=max_batch_tokens
    )
    out = []
    for group in groups:
        picked = [rows[j] for j in group]
        padded = pad_right([r[2] for r in picked], [r[3] for r in picked], pad_id)
        out.append(
            Batch([r[1] for r in picked], padded.input_ids, padded.attention_mask, padded.labels)
        )
    return out


def split_batch(batch: Batch, max_tokens: int) -> list[Batch]:
    """The batch as it is when its padded tokens fit max_tokens; else cut into consecutive
    batches of its rows by the same rule as group_by_length (each trimmed to its own longest
    row: the rows are in ascending length), a row alone when even it does not fit."""
    if batch.padded_tokens <= max_tokens or len(batch.indices) == 1:
        return [batch]
    lengths = batch.attention_mask.sum(dim=1).tolist()
    groups = group_by_length(lengths, batch_size=len(lengths), max_batch_tokens=max_tokens)
    out = []
    for group in groups:
        rows = torch.tensor(group)
        width = max(int(lengths[r]) for r in group)
        out.append(
            Batch(
                [batch.indices[r] for r in group],
                batch.input_ids[rows, :width],
                batch.attention_mask[rows, :width],
                batch.labels[rows, :width],
            )
        )
    return out
