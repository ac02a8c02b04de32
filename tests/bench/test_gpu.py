"""The GPU benchmark's arithmetic and report, without a GPU: peak by device name, FLOPs per
token, and the summary rows it writes once measured."""

import pytest

from bench import gpu, report


def test_the_peak_is_looked_up_by_device_name():
    assert gpu.peak_flops("NVIDIA H200") == 989e12
    assert gpu.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert gpu.peak_flops("Some GPU") is None


def test_flops_per_token_count_the_products_and_attention():
    # 1B parameters, 16 layers, hidden 2048, 256 tokens of context on average
    assert gpu.flops_per_token(10**9, 16, 2048, 256) == pytest.approx(2e9 + 4 * 16 * 256 * 2048)


def test_without_cuda_it_says_so_and_the_report_keeps_the_row():
    measured = gpu.measure()
    if "skipped" not in measured:
        pytest.skip("a GPU is here: the benchmark measures it")
    rows = report.summary({"gpu": measured})
    assert "| 7. GPU | when available | no GPU here | not run |" in rows
    assert "Not measured" in "\n".join(report.gpu({"gpu": measured}))


def test_measured_figures_are_judged_against_their_goals():
    figures = {"mfu": 0.42, "speedup_over_one_by_one": 12.0}
    rows = "\n".join(report.summary({"gpu": figures}))
    assert "| 7. GPU scoring MFU (bf16) | >= 50% | 42.0% | **missed** |" in rows
    assert "| 7. GPU batched / batch of one | >= 10x | 12.0x | met |" in rows
