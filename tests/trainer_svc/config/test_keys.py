"""The trainer's keys: each described, each in one group, the groups one flat YAML that is
still checked at once; the reference `trainer-svc keys` prints is built from them."""

from typing import Annotated, Literal

from pydantic import BaseModel

from trainer_svc.config.reference import REQUIRED, as_markdown, as_text, key_groups, type_name
from trainer_svc.config.train_config import (
    KEY_GROUPS,
    TrainConfig,
    key_group,
    unknown_key,
    validate_keys,
)


def test_every_key_has_a_description():
    """A new key needs one: `trainer-svc keys` prints it as the key's reference."""
    undescribed = [
        name
        for name, field in TrainConfig.model_fields.items()
        if not (field.description or "").strip()
    ]
    assert undescribed == []


def test_every_key_is_in_exactly_one_group_and_the_yaml_stays_flat():
    grouped = [name for _, keys in KEY_GROUPS for name in keys.model_fields]
    assert sorted(grouped) == sorted(TrainConfig.model_fields)  # each once, none left out
    assert list(TrainConfig.model_fields) == grouped  # in the groups' order
    assert [group for group, _ in KEY_GROUPS] == [
        "model", "data", "training", "evaluation and output", "selection", "scorer",
    ]  # fmt: skip
    assert key_group("lora_rank") == "model" and key_group("score_budget") == "scorer"
    for name, field in TrainConfig.model_fields.items():  # no key nests another model
        assert not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel))
        assert name in TrainConfig.model_json_schema()["properties"]
    assert "$defs" not in TrainConfig.model_json_schema()
    assert TrainConfig.model_config.get("extra") == "forbid"


def test_bad_keys_of_every_group_are_reported_at_once():
    raw = {
        "model_name_or_path": "m",
        "dataset": "d.json",
        "output_dir": "out",
        "lora_rank": 0,  # model
        "cutoff_len": 1,  # data
        "learning_rate": 0,  # training
        "eval_steps": 0,  # evaluation and output
        "update_step": 0,  # selection
        "score_budget": 1.5,  # scorer
        "lora_rnak": 8,  # no group
    }
    cfg, problems = validate_keys(TrainConfig, raw)
    assert set(problems) == {
        "lora_rank", "cutoff_len", "learning_rate", "eval_steps", "update_step", "score_budget",
        "lora_rnak",
    }  # fmt: skip
    assert cfg.model_name_or_path == "m" and cfg.lora_rank == 8  # the bad ones at defaults
    assert cfg.alpha == 16 and cfg.target_modules == "all-linear"


def test_other_configs_keep_the_documentation_pointer():
    said = unknown_key("typo", {"export_dir"})
    assert said.endswith("remove it (the keys: docs/CONFIGURATION.md)")
    assert "trainer-svc keys" not in said


def test_types_and_defaults_read_as_yaml():
    assert type_name(int) == "int"
    assert type_name(str | None) == "str | null"
    assert type_name(Literal["sync", "async"]) == "sync | async"
    assert type_name(Literal[4, 8] | None) == "4 | 8 | null"
    assert type_name(list[str]) == "list of str"
    assert type_name(Annotated[str, "a check"]) == "str"
    keys = {key.name: key for _, group in key_groups() for key in group}
    assert keys["model_name_or_path"].default == REQUIRED
    assert keys["report_to"].default == "[]"
    assert keys["lora_alpha"].default == "null" and keys["bf16"].default == "false"
    assert keys["scorer_http_url"].default == "http://127.0.0.1:8000"


def test_the_text_is_wrapped_to_the_width():
    text = as_text(width=72)
    assert max(len(line) for line in text.splitlines()) <= 72
    assert "\nSCORER\n" in text and text.startswith("MODEL\n")
    assert "  lora_rank  (int; default 8)\n" in text


def test_the_markdown_escapes_pipes_in_cells():
    rows = [line for line in as_markdown().splitlines() if line.startswith("| `selection_mode`")]
    assert rows == [
        "| `selection_mode` | sync \\| async | sync | "
        + TrainConfig.model_fields["selection_mode"].description
        + " |"
    ]
