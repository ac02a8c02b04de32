from collections import Counter

from common.data.datasets import DatasetSpec, load_samples
from delta_loss_devtools.demo_data import groups_of, make_samples, write_dataset


def test_groups_and_noise_share():
    rows = make_samples(n=100, noise_share=0.2, seed=3)
    counts = Counter(r["group"] for r in rows)
    assert counts["noise"] == 20 and set(counts) == {"copy", "upper", "reverse", "add", "noise"}
    assert all(
        r["output"] == r["instruction"].split(": ")[1][::-1]
        for r in rows
        if r["group"] == "reverse"
    )


def test_written_file_is_alpaca_and_reproducible(tmp_path):
    path = write_dataset(tmp_path / "d.json", n=40, seed=5)
    assert len(load_samples(DatasetSpec(str(path)))) == 40 and len(groups_of(path)) == 40
    assert make_samples(n=40, seed=5) == make_samples(n=40, seed=5)
