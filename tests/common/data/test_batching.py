"""Right padding: ids padded with the pad id, labels with -100, the mask marks real tokens."""

import torch

from common.data.batching import pad_right
from common.data.tokenization import IGNORE_INDEX


def test_rows_are_padded_on_the_right_to_the_longest():
    batch = pad_right([[5, 6, 7], [8]], [[-100, 6, 7], [8]], pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch.labels.tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    assert {t.dtype for t in (batch.input_ids, batch.attention_mask, batch.labels)} == {torch.long}


def test_the_pad_id_is_the_one_given():
    assert pad_right([[1], [1, 2]], [[1], [1, 2]], pad_id=9).input_ids[0, 1] == 9
