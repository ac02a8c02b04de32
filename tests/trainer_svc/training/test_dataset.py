"""The training batches: padded rows and the indices of the samples they hold."""

from trainer_svc.training.dataset import INDEX_KEY, PadCollator


def test_the_collated_sample_indices_stay_on_the_host():
    """The Trainer moves every tensor of a batch to the GPU; the indices the step records are
    a list, so reading them never waits for the GPU."""
    rows = [
        {"input_ids": [1, 2, 3], "labels": [-100, 2, 3], INDEX_KEY: 7},
        {"input_ids": [4, 5], "labels": [-100, 5], INDEX_KEY: 2},
    ]
    batch = PadCollator(0)(rows)
    assert batch[INDEX_KEY] == [7, 2] and isinstance(batch[INDEX_KEY][0], int)
    assert batch["input_ids"].shape == (2, 3)
