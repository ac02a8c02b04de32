"""The command line: a bad config stops before any model is loaded, naming every bad key; the
exit status says how a run ended."""

import importlib.util
import re
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests.support.trainer import trainer_config
from trainer_svc import cli
from trainer_svc.config.train_config import KEY_GROUPS, TrainConfig
from trainer_svc.scorer.retry import ScorerFailure, StopRequested


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


def ended(monkeypatch, *, stopped_by=None, raises=None):
    """Makes the recipe's run return a run stopped by the signal stopped_by (None: finished)
    at step 4, or raise `raises`."""

    def run(loaded, **kwargs):
        if raises is not None:
            raise raises
        stop = SimpleNamespace(signal=stopped_by)
        state = SimpleNamespace(global_step=4)
        return SimpleNamespace(
            stopped=stopped_by is not None,
            stop=stop,
            trainer=SimpleNamespace(state=state),
            stop_checkpoint=Path("out/checkpoint-4"),
        )

    monkeypatch.setattr("trainer_svc.training.recipe.run", run)


@pytest.fixture
def good_config(tiny_model, demo_file, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(trainer_config(tiny_model, demo_file, tmp_path / "out")))
    return str(path)


def test_a_finished_run_exits_0(good_config, monkeypatch):
    ended(monkeypatch)
    assert cli.main(["train", good_config]) == 0


def test_a_run_sigterm_stopped_exits_143_for_a_scheduler_to_requeue_it(
    good_config, monkeypatch, caplog
):
    ended(monkeypatch, stopped_by=signal.SIGTERM)
    assert cli.main(["train", good_config]) == 143
    assert "stopped by SIGTERM at step 4; resume with resume_from_checkpoint=out/checkpoint-4" in (
        caplog.text
    )


def test_a_scorer_failure_exits_1_with_its_message(good_config, monkeypatch, caplog):
    ended(monkeypatch, raises=ScorerFailure("update 2 at step 4 failed: ...; resume_from_..."))
    assert cli.main(["train", good_config]) == 1
    assert "stopped: update 2 at step 4 failed: ...; resume_from_..." in caplog.text


def test_sigterm_while_waiting_to_register_exits_143(good_config, monkeypatch, caplog):
    ended(monkeypatch, raises=StopRequested("SIGTERM while waiting for a reply from the scorer"))
    assert cli.main(["train", good_config]) == 143
    assert "nothing trained in this run" in caplog.text


def test_force_torchrun_relaunches_with_the_launch_variables():
    environ = {"FORCE_TORCHRUN": "1", "NPROC_PER_NODE": "4", "NNODES": "2", "NODE_RANK": "1",
               "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29501"}  # fmt: skip
    assert cli.forced_torchrun(environ)
    assert not cli.forced_torchrun({**environ, "RANK": "0"})  # already under torchrun
    assert not cli.forced_torchrun({})
    command = cli.torchrun_command("c.yaml", ["seed=3"], environ)
    flags = dict(zip(command[3:13:2], command[4:14:2], strict=True))
    assert flags == {"--nnodes": "2", "--node-rank": "1", "--nproc-per-node": "4",
                     "--master-addr": "10.0.0.1", "--master-port": "29501"}  # fmt: skip
    assert command[-5:] == ["-m", "trainer_svc", "train", "c.yaml", "seed=3"]
    assert command[command.index("--shutdown-timeout") + 1] == "120"  # time to save


def test_a_bad_config_under_force_torchrun_is_one_error_before_any_launch(tmp_path, monkeypatch):
    monkeypatch.setenv("FORCE_TORCHRUN", "1")
    monkeypatch.delenv("RANK", raising=False)
    launched = []
    monkeypatch.setattr(cli, "relaunch_under_torchrun", lambda *a: launched.append(a) or 0)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"dataset": str(tmp_path / "missing.json")}))
    assert cli.main(["train", str(path)]) == 2
    assert launched == []


def test_a_good_config_under_force_torchrun_is_relaunched(good_config, monkeypatch):
    monkeypatch.setenv("FORCE_TORCHRUN", "1")
    monkeypatch.delenv("RANK", raising=False)
    launched = []
    monkeypatch.setattr(cli, "relaunch_under_torchrun", lambda *a: launched.append(a) or 143)
    assert cli.main(["train", good_config]) == 143  # the launcher's status is the command's
    assert launched and launched[0][0] == good_config


def test_a_tracker_not_installed_exits_2_before_the_run_starts(
    tiny_model, demo_file, tmp_path, monkeypatch, caplog
):
    if importlib.util.find_spec("swanlab") is not None:
        pytest.skip("swanlab is installed here")
    started = []
    monkeypatch.setattr("trainer_svc.training.recipe.run", lambda *a, **k: started.append(a))
    path = tmp_path / "c.yaml"
    keys = trainer_config(tiny_model, demo_file, tmp_path / "out", report_to="tensorboard,swanlab")
    path.write_text(yaml.safe_dump(keys))
    assert cli.main(["train", str(path)]) == 2  # a config error, not a scorer's failure
    assert "pip install swanlab" in caplog.text and not started  # nothing registered


def test_report_of_a_folder_that_holds_no_run_says_so(tmp_path, caplog):
    from trainer_svc.cli import main

    assert main(["report", str(tmp_path)]) == 2
    assert "holds no selections.jsonl" in caplog.text and "Traceback" not in caplog.text


def markdown_tables(text):
    """{heading: [row cells, ...]} of the `### heading` + table blocks of a markdown text,
    checking that each is a table: a header, a separator, rows of as many cells."""
    tables, heading = {}, None
    for block in text.strip().split("\n\n"):
        lines = block.splitlines()
        if len(lines) == 1 and lines[0].startswith("### "):
            heading = lines[0][4:]
            continue
        header, separator, *rows = lines
        cells = [split_row(line) for line in (header, *rows)]
        assert set(separator.strip("|").split("|")) == {"---"} and heading is not None
        assert all(len(row) == len(cells[0]) for row in cells), block
        assert cells[0] == ["key", "type", "default", "meaning"]
        tables[heading] = cells[1:]
    return tables


def split_row(line):
    assert line.startswith("| ") and line.endswith(" |"), line
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line[1:-1])]


def test_keys_prints_every_key_with_its_description(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    assert cli.main(["keys"]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 100
    flat = " ".join(out.split())
    for group, keys in KEY_GROUPS:
        assert f"\n{group.upper()}\n" in f"\n{out}"
        for name, field in keys.model_fields.items():
            assert f"\n  {name}  (" in out, name
            assert " ".join(field.description.split()) in flat, name


def test_keys_as_markdown_is_a_table_per_group_with_a_row_per_key(capsys):
    assert cli.main(["keys", "--format", "markdown"]) == 0
    tables = markdown_tables(capsys.readouterr().out)
    assert list(tables) == [group.capitalize() for group, _ in KEY_GROUPS]
    for group, keys in KEY_GROUPS:
        rows = tables[group.capitalize()]
        assert [row[0] for row in rows] == [f"`{name}`" for name in keys.model_fields]
        for row, field in zip(rows, keys.model_fields.values(), strict=True):
            assert row[3] == field.description
    rows = {row[0]: row for table in tables.values() for row in table}
    assert len(rows) == len(TrainConfig.model_fields)
    assert rows["`selection_mode`"][1:3] == ["sync | async", "sync"]
    assert rows["`output_dir`"][2] == "required"


def test_keys_refuses_an_unknown_format(capsys):
    with pytest.raises(SystemExit):
        cli.main(["keys", "--format", "html"])
    assert "invalid choice" in capsys.readouterr().err
