"""The memory figures of the first GPU, computed from 7-8B shapes."""

from bench import gpu_memory


def test_the_kv_cache_and_the_logits_of_a_16k_batch():
    figures = gpu_memory.computed()
    llama3, llama2 = figures["Llama 3 8B"], figures["Llama 2 7B"]
    assert round(llama3["kv_cache_gb"], 1) == 2.1 and round(llama2["kv_cache_gb"], 1) == 8.6
    assert round(llama3["logits_gb"], 1) == 4.2  # 16,384 x 128,256 x 2 bytes
    assert llama3["master_fp32_gb"] == 2 * llama3["pure_bf16_gb"]


def test_pinned_buffers_were_rounded_to_a_power_of_two():
    assert gpu_memory.pinned_rounded(9 * 10**9) == 1 << 34
    assert gpu_memory.pinned_rounded(1 << 30) == 1 << 30


def test_a_failed_section_renders_its_error():
    text = "\n".join(gpu_memory.render({"error": "boom"}))
    assert gpu_memory.SECTION in text and "boom" in text
