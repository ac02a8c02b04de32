"""The command line: a bad config stops before any model is loaded, naming every bad key."""

import yaml

from trainer_svc import cli


def test_bad_config_exits_2_naming_every_key(tmp_path, caplog, monkeypatch):
    loaded_models = []
    monkeypatch.setattr(
        "transformers.AutoModelForCausalLM.from_pretrained",
        lambda *a, **k: loaded_models.append(a),
    )
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": "x",
                "dataset": str(tmp_path / "missing.json"),
                "output_dir": str(tmp_path / "out"),
                "update_step": 0,
                "selection_mode": "sometimes",
                "typo_key": 1,
            }
        )
    )
    assert cli.main(["train", str(path)]) == 2
    text = caplog.text
    for key in ("dataset", "update_step", "selection_mode"):
        assert f"  {key}:" in text
    assert "typo_key" in text and not loaded_models


def test_parser_takes_overrides():
    args = cli.build_parser().parse_args(["train", "c.yaml", "selection_mode=async"])
    assert args.config == "c.yaml" and args.overrides == ["selection_mode=async"]
