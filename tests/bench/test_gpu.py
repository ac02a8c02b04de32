"""The GPU benchmark's arithmetic and report, without a GPU: peak by device name, the FLOPs
counted, and the summary rows and section it writes once measured."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from bench import gpu, report
from bench.util import python_env
from common.data.tokenization import IGNORE_INDEX, EncodedSample
from scorer_svc.scoring.batches import make_batches


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("NVIDIA H200", (989e12, "bf16")),
        ("NVIDIA H200 NVL", (835e12, "bf16")),
        ("NVIDIA H100 80GB HBM3", (989e12, "bf16")),
        ("NVIDIA H100 SXM5 80GB", (989e12, "bf16")),
        ("NVIDIA H100 PCIe", (756e12, "bf16")),
        ("NVIDIA H100 NVL", (835e12, "bf16")),
        ("NVIDIA A100-SXM4-80GB", (312e12, "bf16")),
        ("NVIDIA A100-PCIE-40GB", (312e12, "bf16")),
        ("NVIDIA A100 80GB PCIe", (312e12, "bf16")),
        ("NVIDIA L40S", (362e12, "bf16")),
        ("NVIDIA L40", (181e12, "bf16")),
        ("NVIDIA L4", (121e12, "bf16")),
        ("NVIDIA A10", (125e12, "bf16")),
        ("NVIDIA A10G", (125e12, "bf16")),
        ("NVIDIA RTX A6000", (155e12, "bf16")),
        ("NVIDIA GeForce RTX 4090", (165e12, "bf16")),
        ("Tesla V100-SXM2-32GB", (125e12, "fp16")),
        ("Tesla T4", (65e12, "fp16")),
    ],
)
def test_the_dense_peak_is_looked_up_by_device_name(name, expected):
    assert gpu.peak(name) == expected


@pytest.mark.parametrize(
    "name", ["Some GPU", "NVIDIA RTX 6000 Ada Generation", "NVIDIA GeForce RTX 3090", "NVIDIA L"]
)
def test_an_unknown_gpu_has_no_peak(name):
    assert gpu.peak(name) is None


def test_one_family_name_is_not_taken_for_another():
    # "L4" inside "L40", "A10" inside "A100", "H100" beside its PCIe and NVL variants
    names = ["NVIDIA L4", "NVIDIA L40", "NVIDIA L40S", "NVIDIA A10", "NVIDIA A100-SXM4-40GB"]
    assert len({gpu.peak(n) for n in names}) == len(names)
    variants = ["NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA H100 NVL"]
    assert len({gpu.peak(n) for n in variants}) == 3


def sample(length: int, prompt: int) -> EncodedSample:
    ids = list(range(3, 3 + length))
    return EncodedSample(input_ids=ids, labels=[IGNORE_INDEX] * prompt + ids[prompt:])


def test_logits_are_counted_from_each_batch_first_label_position_to_its_padded_end():
    data = [sample(6, prompt=2), sample(8, prompt=4)]
    # together: 8 wide, the first label at 2 (the shorter prompt), so logits from 1 on
    together = make_batches(data, batch_size=2, max_batch_tokens=64, pad_id=0)
    assert gpu.logit_positions(together) == 2 * (8 - 1)
    # alone: each from its own last prompt token, no padding
    alone = make_batches(data, batch_size=1, max_batch_tokens=64, pad_id=0)
    assert gpu.logit_positions(alone) == (6 - 1) + (8 - 3)
    # a model without logits_to_keep: every position, padding included
    assert gpu.logit_positions(together, keep_logits=False) == 2 * 8


def test_the_forward_flops_count_the_products_attention_and_the_lm_head():
    flops = gpu.forward_flops([3, 5], 7, params=1000, layers=2, hidden=16, vocab=100)
    products = 2 * 1000 * (3 + 5)
    attention = 4 * 2 * 16 * (3 * 4 // 2 + 5 * 6 // 2)  # causal: n(n+1)/2 pairs a sample
    head = 2 * 16 * 100 * 7
    assert flops == products + attention + head


def test_the_1b_shape_counts_its_layers_not_its_tied_embedding():
    with torch.device("meta"):  # the shape only, no memory
        network = LlamaForCausalLM(LlamaConfig(**gpu.SHAPE))
    per_layer = 2 * 2048 * 2048 + 2 * 2048 * 512 + 3 * 2048 * 8192 + 2 * 2048
    assert gpu.non_embedding_params(network) == 16 * per_layer + 2048


def test_an_untied_lm_head_is_left_out_of_the_parameters_too():
    config = LlamaConfig(**{**gpu.SHAPE, "num_hidden_layers": 1, "tie_word_embeddings": False})
    with torch.device("meta"):
        network = LlamaForCausalLM(config)
    per_layer = 2 * 2048 * 2048 + 2 * 2048 * 512 + 3 * 2048 * 8192 + 2 * 2048
    assert gpu.non_embedding_params(network) == per_layer + 2048


def test_on_the_benchmark_samples_the_lm_head_is_an_eighth_of_the_flops():
    data = gpu.random_samples(gpu.SAMPLES, seed=0, vocab=gpu.SHAPE["vocab_size"])
    batches = make_batches(data, batch_size=64, max_batch_tokens=32768, pad_id=0)
    lengths = [len(s.input_ids) for s in data]
    logits = gpu.logit_positions(batches)
    own = sum(len(s.input_ids) - s.labels.count(IGNORE_INDEX) + 1 for s in data)
    assert own < logits < 1.05 * own  # length-grouped: little padding
    shape = dict(params=973146112, layers=16, hidden=2048, vocab=128256)
    with_head = gpu.forward_flops(lengths, logits, **shape)
    without = gpu.forward_flops(lengths, 0, **shape)
    assert 0.10 < (with_head - without) / with_head < 0.15


def test_without_cuda_it_says_so_and_the_report_keeps_the_row():
    measured = gpu.measure()
    if "skipped" not in measured:
        pytest.skip("a GPU is here: the benchmark measures it")
    rows = report.summary({"gpu": measured})
    assert "| 7. GPU | when available | no GPU here | not run |" in rows
    assert "Not measured" in "\n".join(report.gpu({"gpu": measured}))


def test_the_cpu_sections_subprocesses_see_no_gpu():
    assert python_env()["CUDA_VISIBLE_DEVICES"] == ""


def measured(**changes) -> dict:
    figures = {
        "device": "NVIDIA H100 80GB HBM3",
        "params_non_embedding": 973146112,
        "layers": 16,
        "samples": 4096,
        "tokens": 1_300_000,
        "logit_positions": 680_000,
        "flops": 3.0e15,
        "batched_tokens_per_s": 400_000.0,
        "bare_forward_tokens_per_s": 450_000.0,
        "one_by_one_tokens_per_s": 20_000.0,
        "speedup_over_one_by_one": 20.0,
        "scoring_vs_bare_forward": 0.89,
        "mfu": 0.42,
        "bare_mfu": 0.47,
        "peak_flops": 989e12,
        "peak_precision": "bf16",
        "memory_batches": 4,
        "memory_float32_bytes": 20 << 30,
        "memory_bfloat16_bytes": 9 << 30,
    }
    return {**figures, **changes}


def test_measured_figures_are_judged_against_their_goals():
    figures = {"mfu": 0.42, "speedup_over_one_by_one": 12.0}
    rows = "\n".join(report.summary({"gpu": figures}))
    assert "| 7. GPU scoring MFU (bf16) | >= 50% | 42.0% | **missed** |" in rows
    assert "| 7. GPU batched / batch of one | >= 10x | 12.0x | met |" in rows


def test_the_section_shows_the_peak_and_both_precisions_memory():
    text = "\n".join(report.gpu({"gpu": measured()}))
    assert "| scorer, batched | 400,000 | 42.0% |" in text
    assert "MFU against the dense bf16 peak, 989 TFLOP/s." in text
    assert "| float32 | 20.0 GiB |" in text
    assert "| bfloat16 (autocast) | 9.0 GiB |" in text


def test_a_float32_run_out_of_memory_is_said_so():
    text = "\n".join(report.gpu({"gpu": measured(memory_float32_bytes=None)}))
    assert "| float32 | out of memory |" in text


def test_a_gpu_without_bf16_tensor_cores_is_judged_against_its_fp16_peak():
    figures = measured(device="Tesla T4", peak_flops=65e12, peak_precision="fp16", mfu=0.3)
    text = "\n".join(report.gpu({"gpu": figures}))
    assert "dense fp16 tensor peak, 65 TFLOP/s: this GPU has no bf16 tensor cores" in text
    rows = "\n".join(report.summary({"gpu": figures}))
    assert "| 7. GPU scoring MFU (bf16, against the fp16 peak) | >= 50% | 30.0% |" in rows


def test_an_unknown_gpu_is_measured_but_its_mfu_is_said_unknown():
    figures = measured(device="Some GPU", peak_flops=None, peak_precision=None)
    figures.update(mfu=None, bare_mfu=None)
    text = "\n".join(report.gpu({"gpu": figures}))
    assert "No dense peak FLOP/s is known for Some GPU (bench/gpu.py, PEAKS): no MFU." in text
    assert "| scorer, batched | 400,000 | unknown peak |" in text
    rows = "\n".join(report.summary({"gpu": figures}))
    assert "| 7. GPU scoring MFU | >= 50% | no known peak for Some GPU | not judged |" in rows
    assert "| 7. GPU batched / batch of one | >= 10x | 20.0x | met |" in rows
