"""Merge a LoRA adapter into its base model and export a standalone model (the seed's Step 5).

`load_export_config` reads the merge YAML (and `key=value` overrides), warns once about
unknown keys and raises one `ConfigError` naming every bad key: missing base or adapter
paths, an export_dir that already holds files. `export` then checks, on an empty (meta-device)
copy of the base, that every adapter tensor fits the module it targets, loads the weights,
merges with peft's `merge_and_unload`, and writes weights, config, tokenizer and chat template
into a temporary sibling of export_dir that is renamed into place only once complete.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from common.data.templates import CONTENT, TEMPLATES, Piece, Special
from common.data.tokenization import TemplateName
from common.model_spec import empty_model
from trainer_svc.config.train_config import (
    ConfigError,
    base_model_problem,
    read_yaml,
    validate_keys,
)

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
GB = 10**9  # export_size is in GB, as LLaMA-Factory's f"{export_size}GB"
LORA_PARTS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B")


class ExportConfig(BaseModel):
    """Every key the export reads (the seed's merge YAML plus overwrite_export_dir)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_name_or_path: str = Field(min_length=1)
    adapter_name_or_path: str = Field(min_length=1)  # one directory, or a comma list merged in turn
    template: TemplateName = "auto"
    trust_remote_code: bool = False
    export_dir: str = Field(min_length=1)
    export_size: float = Field(5.0, gt=0)  # largest shard, GB
    export_device: Literal["cpu", "auto"] = "cpu"
    export_legacy_format: bool = False  # true: pytorch_model*.bin instead of safetensors
    overwrite_export_dir: bool = False

    @property
    def adapters(self) -> list[str]:
        return [name.strip() for name in self.adapter_name_or_path.split(",") if name.strip()]

    @property
    def max_shard_bytes(self) -> int:
        return max(1, int(self.export_size * GB))


class AdapterMismatch(ConfigError):
    """The adapter does not fit the base model (found before any weight is loaded)."""

    def __init__(self, message: str):
        super().__init__({"adapter_name_or_path": message})


# ---- config ----
def load_export_config(
    path: str | Path, overrides: list[str] | tuple[str, ...] = ()
) -> ExportConfig:
    return parse_export_config(read_yaml(path, overrides))


def parse_export_config(raw: dict[str, Any]) -> ExportConfig:
    """Validate everything that needs no model; one error naming every bad key."""
    cfg, problems = validate_keys(ExportConfig, raw)
    # A key that failed alone is unset in the partial config: getattr gives None.
    base = getattr(cfg, "model_name_or_path", None)
    if base is not None and (problem := base_model_problem(base)):
        problems["model_name_or_path"] = problem
    adapters = getattr(cfg, "adapter_name_or_path", None)
    if adapters is not None:
        _check_adapters(adapters, problems)
    if getattr(cfg, "export_dir", None) is not None:
        _check_export_dir(cfg, problems)
    if problems:
        raise ConfigError(problems)
    return cfg


def _check_adapters(value: str, problems: dict[str, str]) -> None:
    bad = []
    for name in (n.strip() for n in value.split(",") if n.strip()):
        path = Path(name).expanduser()
        if not path.is_dir():
            bad.append(f"{name} does not exist (or is not a directory)")
        elif not (path / ADAPTER_CONFIG).is_file():
            bad.append(
                f"{name} has no {ADAPTER_CONFIG}: not a LoRA adapter (a full fine-tuning run "
                "saves a whole model, which needs no merge)"
            )
        elif not any((path / w).is_file() for w in ADAPTER_WEIGHTS):
            bad.append(f"{name} has no {' or '.join(ADAPTER_WEIGHTS)}")
    if not value.strip():
        bad.append("name at least one adapter directory")
    if bad:
        problems["adapter_name_or_path"] = "; ".join(bad)


def _check_export_dir(cfg: ExportConfig, problems: dict[str, str]) -> None:
    out = Path(cfg.export_dir).expanduser()
    adapters = getattr(cfg, "adapter_name_or_path", "")
    inputs = [getattr(cfg, "model_name_or_path", None), *adapters.split(",")]
    for name in filter(None, (str(n).strip() for n in inputs if n)):
        if Path(name).expanduser().exists() and _holds(out, Path(name).expanduser()):
            problems["export_dir"] = f"{out} is (or holds) the input {name}; choose another"
            return
    if out.exists() and not out.is_dir():
        problems["export_dir"] = f"{out} exists and is not a directory"
    elif out.is_dir() and any(out.iterdir()) and not cfg.overwrite_export_dir:
        problems["export_dir"] = (
            f"{out} exists and is not empty; set overwrite_export_dir: true to replace it"
        )


def _holds(out: Path, other: Path) -> bool:
    """Replacing `out` would remove `other`."""
    out, other = out.resolve(), other.resolve()
    return out == other or out in other.parents


# ---- the adapter's fit, on an empty copy of the base ----
def check_adapter_fits(cfg: ExportConfig) -> None:
    """Every adapter tensor must target a module of the base with matching dimensions."""
    from transformers import AutoConfig

    try:
        base_config = AutoConfig.from_pretrained(
            cfg.model_name_or_path, trust_remote_code=cfg.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise ConfigError({"model_name_or_path": f"cannot read its config: {exc}"}) from exc
    skeleton = empty_model(  # the module tree and shapes, no memory for weights
        cfg.model_name_or_path, trust_remote_code=cfg.trust_remote_code, config=base_config
    )
    modules = dict(skeleton.named_modules())
    params = {name: tuple(p.shape) for name, p in skeleton.state_dict().items()}
    for adapter in cfg.adapters:
        _compare_recorded_base(cfg, Path(adapter), base_config)
        bad = _misfits(adapter_shapes(Path(adapter)), modules, params)
        if bad:
            more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
            raise AdapterMismatch(
                f"{adapter} does not fit {cfg.model_name_or_path}: " + "; ".join(bad[:3]) + more
            )


def adapter_shapes(adapter: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes of the adapter's weights, read from the safetensors header (no tensor
    data). A legacy .bin adapter is not opened here: it has no header to read without
    unpickling, and peft's own load reports a shape mismatch (reworded by export)."""
    safetensors_file = adapter / ADAPTER_WEIGHTS[0]
    if not safetensors_file.is_file():
        return {}
    from safetensors import safe_open

    with safe_open(str(safetensors_file), framework="pt") as f:
        return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118 - safe_open is not iterable


def _misfits(
    shapes: dict[str, tuple[int, ...]], modules: dict[str, Any], params: dict[str, tuple]
) -> list[str]:
    bad = []
    for key, shape in sorted(shapes.items()):
        name = key.removeprefix("base_model.model.")
        parts = name.split(".")
        lora = next((p for p in LORA_PARTS if p in parts), None)
        if lora is None:  # a fully trained module (modules_to_save): same shape as the base's
            if name in params and params[name] != shape:
                bad.append(f"{name} is {list(shape)} in the adapter, {list(params[name])} in base")
            continue
        target = ".".join(parts[: parts.index(lora)])
        module = modules.get(target)
        if module is None:
            bad.append(f"the base has no module {target}")
            continue
        expected = _expected_dim(module, lora)
        got = shape[1] if lora.endswith("A") else shape[0]
        if expected is not None and len(shape) == 2 and got != expected:
            side = "input" if lora.endswith("A") else "output"
            bad.append(f"{target} has {side} size {expected} in the base, {got} in the adapter")
    return bad


def _expected_dim(module: Any, lora: str) -> int | None:
    """The dimension lora_A's columns (input) or lora_B's rows (output) must match."""
    weight = getattr(module, "weight", None)
    if weight is None or weight.dim() != 2:
        return None  # convolutions and others: peft's own loading checks them
    if lora.startswith("lora_embedding"):  # A: [r, num_embeddings], B: [embedding_dim, r]
        return weight.shape[0] if lora.endswith("A") else weight.shape[1]
    return weight.shape[1] if lora.endswith("A") else weight.shape[0]  # Linear: [out, in]


def _compare_recorded_base(cfg: ExportConfig, adapter: Path, base_config: Any) -> None:
    """The adapter records the base it was trained on: warn when it names another one."""
    recorded = json.loads((adapter / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    given = cfg.model_name_or_path
    if not recorded or recorded == given:
        return
    recorded_path, given_path = Path(recorded).expanduser(), Path(given).expanduser()
    if recorded_path.exists() and given_path.exists():
        if recorded_path.resolve() == given_path.resolve():
            return
    elif recorded_path.name.lower() == given_path.name.lower():
        return
    logger.warning(
        "%s was trained on %s, and is merged into %s; the shapes fit, so going on",
        adapter,
        recorded,
        given,
    )


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ---- merge and save ----
def export(cfg: ExportConfig) -> Path:
    """Check, merge, save into a temporary sibling, then rename it to export_dir."""
    check_adapter_fits(cfg)
    out = Path(cfg.export_dir).expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    tmp.chmod(0o777 & ~_umask())  # a folder as mkdir makes it, not mkdtemp's private 0700
    try:
        model = merge(cfg)
        save_model(model, tmp, cfg)
        save_tokenizer(cfg, tmp)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("exported to %s: %s", out, ", ".join(sorted(p.name for p in out.iterdir())))
    return out


def merge(cfg: ExportConfig):
    """The base with each adapter merged in turn (peft merge_and_unload)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    logger.info("loading %s on %s", cfg.model_name_or_path, cfg.export_device)
    model = AutoModelForCausalLM.from_pretrained(
        cfg.model_name_or_path,
        dtype="auto",  # the checkpoint's own dtype: merging changes no precision
        trust_remote_code=cfg.trust_remote_code,
        device_map="auto" if cfg.export_device == "auto" else None,
    )
    for adapter in cfg.adapters:
        logger.info("merging %s", adapter)
        try:
            peft_model = PeftModel.from_pretrained(model, adapter)
        except RuntimeError as exc:  # size mismatches that the header check could not see
            raise AdapterMismatch(
                f"{adapter} does not fit {cfg.model_name_or_path}: {exc}"
            ) from exc
        model = peft_model.merge_and_unload()
    model.eval()
    return model


def save_model(model: Any, directory: Path, cfg: ExportConfig) -> None:
    model.save_pretrained(str(directory), max_shard_size=cfg.max_shard_bytes)
    if cfg.export_legacy_format:
        to_legacy_format(directory)


def to_legacy_format(directory: Path) -> None:
    """Rewrite model*.safetensors (and their index) as pytorch_model*.bin, torch.save format.

    transformers 5 writes safetensors only; its from_pretrained still reads .bin checkpoints.
    """
    import torch
    from safetensors.torch import load_file

    renames = {}
    for shard in sorted(directory.glob("model*.safetensors")):
        legacy = "pytorch_" + shard.name.removesuffix(".safetensors") + ".bin"
        torch.save(load_file(str(shard)), directory / legacy)
        shard.unlink()
        renames[shard.name] = legacy
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        body = json.loads(index.read_text())
        body["weight_map"] = {k: renames[v] for k, v in body["weight_map"].items()}
        (directory / "pytorch_model.bin.index.json").write_text(json.dumps(body, indent=2) + "\n")
        index.unlink()


def save_tokenizer(cfg: ExportConfig, directory: Path) -> None:
    """The base's tokenizer; a built-in template becomes its chat template if it has none."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        cfg.model_name_or_path, trust_remote_code=cfg.trust_remote_code
    )
    if not getattr(tokenizer, "chat_template", None) and cfg.template in TEMPLATES:
        tokenizer.chat_template = chat_template_for(cfg.template)
    tokenizer.save_pretrained(str(directory))


def chat_template_for(name: str) -> str:
    """A Jinja chat template giving the same text the trainer built with the template `name`.

    The prefix opens the conversation; the system message (the template's default system
    prompt when there is none) follows it, or opens the first user message's content for
    templates that fuse the two. Each user turn ends where the response starts, so
    add_generation_prompt adds nothing; each assistant turn ends as its training labels did.
    BOS and EOS are the tokenizer's own, left out when it has none.
    """
    template = TEMPLATES[name]
    system = _jinja(template.system, "ns.system")
    if template.system_in_user:
        open_system = ""
        first_user = f"{{% set content = {system} + content %}}{{% set ns.system = '' %}}"
    else:
        open_system = f"{{% if ns.system %}}{{{{ {system} }}}}{{% endif %}}"
        first_user = ""
    return (
        f"{{% set ns = namespace(system={json.dumps(template.default_system)}) %}}"
        "{% if messages and messages[0]['role'] == 'system' %}"
        "{% set ns.system = messages[0]['content'] %}{% endif %}"
        + (f"{{{{ {_jinja(template.prefix, '')} }}}}" if template.prefix else "")
        + open_system
        + "{% for message in messages %}{% set content = message['content'] %}"
        "{% if message['role'] == 'user' %}"
        + (f"{{% if ns.system %}}{first_user}{{% endif %}}" if first_user else "")
        + f"{{{{ {_jinja(template.user, 'content')} }}}}"
        "{% elif message['role'] == 'assistant' %}"
        f"{{{{ {_jinja(template.assistant, 'content')} }}}}"
        "{% endif %}{% endfor %}"
    )


def _jinja(piece: Piece, variable: str) -> str:
    """A Jinja expression for the piece, the message read from `variable`."""
    parts = []
    for slot in piece:
        if isinstance(slot, Special):
            token = slot.value  # bos_token or eos_token, as apply_chat_template passes them
            parts.append(f"({token} if {token} else '')")
            continue
        before, found, after = slot.partition(CONTENT)
        parts += [json.dumps(before)] if before else []
        parts += [variable] if found else []
        parts += [json.dumps(after)] if after else []
    return " + ".join(parts) or "''"


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished export to export_dir; an old export is removed only afterwards."""
    old = None
    if out.exists() and any(out.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
    elif out.exists():
        out.rmdir()
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
