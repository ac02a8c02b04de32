"""The model a run trains and scores: which base, LoRA or full, with which LoRA settings,
attention implementation and quantization.

Trainer and scorer build it with the same functions, so both agree on the tensors a
checkpoint carries, their names and shapes, the numerics of the forward pass, and the pad id
their batches use.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from common.wire.protocol import Hello, Kind, LoraSpec, shapes_digest

if TYPE_CHECKING:
    from peft import LoraConfig


# LLaMA-Factory's flash_attn values and the attn_implementation each stands for (None: the
# one transformers picks by default).
ATTENTION = {
    "auto": None,
    "disabled": "eager",
    "sdpa": "sdpa",
    "fa2": "flash_attention_2",
    "fa3": "flash_attention_3",
}
# The package each flash attention implementation imports.
FLASH_PACKAGES = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}
QUANTIZATION_BITS = (4, 8)


@dataclass(frozen=True)
class LoraSettings:
    r: int
    alpha: float
    dropout: float
    target_modules: str | Sequence[str]  # "all-linear" or module names (kept as a tuple)

    def __post_init__(self) -> None:
        if not isinstance(self.target_modules, str):  # a list of names, kept hashable
            object.__setattr__(self, "target_modules", tuple(self.target_modules))

    @classmethod
    def from_spec(cls, spec: LoraSpec) -> LoraSettings:
        return cls(spec.r, float(spec.alpha), float(spec.dropout), spec.target_modules)

    def to_spec(self) -> LoraSpec:
        targets = self.target_modules
        return LoraSpec(
            r=self.r,
            alpha=self.alpha,
            dropout=self.dropout,
            target_modules=targets if isinstance(targets, str) else list(targets),
        )

    def peft_config(self) -> LoraConfig:
        from peft import LoraConfig

        targets = self.target_modules
        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,  # type: ignore[arg-type]  # peft scales by alpha / r as a float
            lora_dropout=self.dropout,
            target_modules=targets if isinstance(targets, str) else list(targets),
            task_type="CAUSAL_LM",
        )


@dataclass(frozen=True)
class ModelSpec:
    """Everything that decides a run's model; hashable, so it keys caches of models."""

    base_model: str
    kind: Kind
    lora: LoraSettings | None = None
    trust_remote_code: bool = False
    attn_implementation: str | None = None  # transformers' name; None: its default
    quantization_bit: int | None = None  # 4 or 8: the base loaded through bitsandbytes

    def __post_init__(self) -> None:
        if (self.kind == "lora") != (self.lora is not None):
            raise ValueError("a lora model needs LoRA settings, and only a lora model has them")
        if self.quantization_bit is not None and self.kind != "lora":
            raise ValueError("a quantized base model trains LoRA adapters only")

    @classmethod
    def from_hello(cls, hello: Hello) -> ModelSpec:
        lora = LoraSettings.from_spec(hello.lora) if hello.lora is not None else None
        return cls(
            hello.base_model,
            hello.finetuning_type,
            lora,
            hello.trust_remote_code,
            hello.attn_implementation,
            hello.quantization_bit,
        )

    @property
    def quantized(self) -> bool:
        return self.quantization_bit is not None

    def build(
        self, *, dtype: torch.dtype | None = None, local_files_only: bool = False
    ) -> torch.nn.Module:
        """The base model with its weights (in dtype, or as transformers loads it by default),
        LoRA-wrapped for a LoRA run. A quantized base is placed on the current CUDA device as
        it loads (bitsandbytes' layers cannot be moved afterwards). local_files_only: read a
        folder on disk (or the local Hugging Face cache), never ask a hub."""
        from transformers import AutoModelForCausalLM

        extra: dict[str, Any] = {} if dtype is None else {"dtype": dtype}
        if local_files_only:
            # transformers' check for a PEFT adapter in the folder goes by adapter_kwargs alone
            extra.update(local_files_only=True, adapter_kwargs={"local_files_only": True})
        if self.attn_implementation is not None:
            extra["attn_implementation"] = self.attn_implementation
        if self.quantization_bit is not None:
            extra["quantization_config"] = self._bitsandbytes(dtype)
            extra["device_map"] = {"": torch.cuda.current_device()}
        model = AutoModelForCausalLM.from_pretrained(
            self.base_model, trust_remote_code=self.trust_remote_code, **extra
        )
        return self._wrap(model)

    def _bitsandbytes(self, dtype: torch.dtype | None) -> Any:
        """LLaMA-Factory's on-the-fly quantization: NF4 with double quantization for 4 bits,
        LLM.int8 for 8; computed in dtype (bfloat16 when none is given)."""
        from transformers import BitsAndBytesConfig

        if self.quantization_bit == 8:
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_compute_dtype=dtype or torch.bfloat16,
            bnb_4bit_use_double_quant=True,
            bnb_4bit_quant_type="nf4",
        )

    def load_problem(self, cuda: bool) -> str | None:
        """What stops this process building the model (None when nothing does)."""
        return quantization_problem(self.quantization_bit, cuda) or attention_problem(
            self.attn_implementation, cuda
        )

    def skeleton(self, *, local_files_only: bool = False) -> torch.nn.Module:
        """The same model without weights (meta device, no memory): names and shapes only."""
        return self._wrap(
            empty_model(
                self.base_model,
                trust_remote_code=self.trust_remote_code,
                local_files_only=local_files_only,
            )
        )

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.lora is None:
            return model
        from peft import get_peft_model

        return get_peft_model(model, self.lora.peft_config())  # type: ignore[arg-type]


def quantization_problem(bits: int | None, cuda: bool) -> str | None:
    """Quantization needs a CUDA GPU and the bitsandbytes package."""
    if bits is None:
        return None
    if not cuda:
        return f"{bits}-bit quantization (bitsandbytes) needs a CUDA GPU, and there is none here"
    if importlib.util.find_spec("bitsandbytes") is None:
        return f"{bits}-bit quantization needs the bitsandbytes package: pip install bitsandbytes"
    return None


def attention_problem(implementation: str | None, cuda: bool) -> str | None:
    """Flash attention needs a CUDA GPU and its package."""
    package = FLASH_PACKAGES.get(implementation or "")
    if package is None:
        return None
    if not cuda:
        return f"attention {implementation} needs a CUDA GPU, and there is none here"
    if importlib.util.find_spec(package) is None:
        return f"attention {implementation} needs the {package} package; install it, or use sdpa"
    return None


def empty_model(
    base_model: str,
    *,
    trust_remote_code: bool = False,
    config: Any = None,
    local_files_only: bool = False,
) -> torch.nn.Module:
    """The base model's module tree on the meta device, built from its config alone (read
    from base_model unless given; local_files_only: never from a hub)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if config is None:
        config = AutoConfig.from_pretrained(
            base_model, trust_remote_code=trust_remote_code, local_files_only=local_files_only
        )
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def checkpoint_tensors(model: torch.nn.Module, kind: str) -> dict[str, torch.Tensor]:
    """What a checkpoint carries: LoRA's trainable tensors, or the whole state dict for full
    fine-tuning. The tensors are the model's own (detached), not copies."""
    if kind == "full":
        return {name: t.detach() for name, t in model.state_dict().items()}
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def checkpoint_digest(model: torch.nn.Module, kind: str) -> str:
    """The shapes digest of what this model's checkpoints carry (see shapes_digest)."""
    return shapes_digest((n, t.shape) for n, t in checkpoint_tensors(model, kind).items())


def pad_id(tokenizer: Any) -> int:
    """The id batches are right-padded with: the pad token, else EOS, else 0. Padded positions
    are masked and unlabelled, so the choice changes no loss."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0
