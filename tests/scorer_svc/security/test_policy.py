"""What a hello may make the scorer read and run: only files under the scorer's roots, and a
model's own code only when the scorer's setting allows it. A refusal reveals nothing about the
file it names."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from common.wire.errors import RunMismatch
from common.wire.protocol import encode_hello
from delta_loss_devtools.scorer_process import ScorerProcess
from scorer_svc.config import Settings
from scorer_svc.intake.server import Intake
from scorer_svc.scoring.registry import Registry
from scorer_svc.security.policy import stay_off_the_hub
from scorer_svc.storage import runs as run_store
from scorer_svc.storage.db import make_engine, make_sessionmaker
from tests.support.data import write_samples
from tests.support.hub import FakeHub, aim_at, process_environment
from tests.support.scorer import make_hello, register, until_registered

# A model module that leaves a file behind when it is imported.
EVIL = """\
import pathlib
pathlib.Path({marker!r}).write_text("model code ran")
from transformers import LlamaConfig, LlamaForCausalLM


class EvilConfig(LlamaConfig):
    pass


class EvilModel(LlamaForCausalLM):
    config_class = EvilConfig
"""


@pytest.fixture
def place(tiny_model, tmp_path):
    """A model root holding the tiny model and a copy of it shipping its own code, a data root
    holding a dataset, and a folder outside both."""
    models, data, outside = tmp_path / "models", tmp_path / "data", tmp_path / "outside"
    for folder in (models, data, outside):
        folder.mkdir()
    shutil.copytree(tiny_model, models / "tiny")
    custom = shutil.copytree(tiny_model, models / "custom")
    marker = tmp_path / "marker"
    (custom / "evil.py").write_text(EVIL.format(marker=str(marker)))
    config = json.loads((custom / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel"}
    (custom / "config.json").write_text(json.dumps(config))
    dataset = write_samples(data / "train.json", 8)
    shutil.copytree(tiny_model, outside / "tiny")
    write_samples(outside / "train.json", 8)
    return {"models": models, "data": data, "outside": outside, "marker": marker,
            "dataset": dataset, "tmp": tmp_path}  # fmt: skip


def intake_for(place, **settings) -> Intake:
    values = dict(
        data_dir=place["tmp"] / "scorer", device="cpu",
        model_root=[place["models"]], data_root=[place["data"]],
    )  # fmt: skip
    config = Settings(**{**values, **settings})
    sessions = make_sessionmaker(make_engine(config.resolved_database_url))
    return Intake(config, sessions, Registry(config), on_queued=lambda: None, instance="here")


def ask(intake: Intake, hello) -> dict:
    return until_registered(lambda: json.loads(intake.handle(encode_hello(hello))[0]))


def stored_runs(intake: Intake) -> list[str]:
    with intake.sessions() as session:
        return [run.run_id for run in run_store.list_runs(session)]


def test_a_hello_inside_the_roots_is_registered(place):
    intake = intake_for(place)
    hello = make_hello(place["models"] / "tiny", place["dataset"], run_id="fine")
    assert ask(intake, hello)["status"] == "registered"


def test_a_hello_asking_to_run_model_code_is_loaded_without_it(place):
    intake = intake_for(place)
    hello = make_hello(place["models"] / "custom", place["dataset"], trust_remote_code=True)
    assert ask(intake, hello)["status"] == "registered"  # a Llama: it needs no code of its own
    assert not place["marker"].exists()


def test_a_model_that_needs_its_own_code_is_refused_saying_how_to_allow_it(place):
    config_file = place["models"] / "custom" / "config.json"
    config = json.loads(config_file.read_text())
    config["model_type"] = "evil-llama"  # a type transformers knows only from the model's code
    config_file.write_text(json.dumps(config))
    hello = make_hello(place["models"] / "custom", place["dataset"], trust_remote_code=True)
    reply = ask(intake_for(place), hello)
    assert reply["code"] == "mismatch" and "--trust-remote-code" in reply["reason"]
    assert not place["marker"].exists()


def test_model_code_runs_only_when_the_scorer_trusts_it(place):
    intake = intake_for(place, trust_remote_code=True)
    hello = make_hello(place["models"] / "custom", place["dataset"], trust_remote_code=True)
    ask(intake, hello)
    assert place["marker"].read_text() == "model code ran"


def test_a_run_stored_with_trust_is_built_without_it_by_a_scorer_that_does_not_trust(place):
    registry = intake_for(place).registry
    hello = make_hello(place["models"] / "custom", place["dataset"], trust_remote_code=True)
    registry.models.manifest(hello)  # what the intake and the worker build for a stored run
    assert not place["marker"].exists()


@pytest.mark.parametrize("name", ["tiny", "absent"], ids=["existing", "missing"])
def test_a_model_outside_the_roots_is_refused_saying_nothing_of_it(place, name):
    intake = intake_for(place)
    base = place["outside"] / name
    reply = ask(
        intake, make_hello(place["models"] / "tiny", place["dataset"], base_model=str(base))
    )
    assert reply["code"] == "forbidden"
    assert reply["reason"] == (
        f"run run-a refused: its base model {base} is not under this scorer's roots "
        f"({place['models']}); start the scorer with --model-root FOLDER for a folder that "
        "holds it"
    )  # the same words whether the folder exists or not: nothing about it is told
    assert stored_runs(intake) == []


def test_a_symlink_out_of_a_root_is_outside(place):
    (place["models"] / "link").symlink_to(place["outside"] / "tiny")
    reply = ask(intake_for(place), make_hello(place["models"] / "link", place["dataset"]))
    assert reply["code"] == "forbidden" and "--model-root" in reply["reason"]


@pytest.mark.parametrize("name", ["train.json", "absent.json"])
def test_a_dataset_outside_the_roots_is_refused(place, name):
    dataset = place["outside"] / name
    hello = make_hello(place["models"] / "tiny", place["dataset"], dataset=str(dataset))
    reply = ask(intake_for(place), hello)
    assert reply["code"] == "forbidden" and f"its dataset {dataset}" in reply["reason"]
    assert "--data-root" in reply["reason"]


def test_a_dataset_name_resolving_outside_the_roots_is_refused(place):
    info = {"escape": {"file_name": str(place["outside"] / "train.json")}}
    (place["data"] / "dataset_info.json").write_text(json.dumps(info))
    hello = make_hello(
        place["models"] / "tiny", place["dataset"], dataset="escape",
        dataset_dir=str(place["data"]),
    )  # fmt: skip
    reply = ask(intake_for(place), hello)
    assert reply["code"] == "forbidden" and "its dataset escape" in reply["reason"]


@pytest.mark.parametrize("how", ["info link", "folder", "folder member link"])
def test_nothing_of_a_dataset_outside_the_roots_is_looked_at(place, how):
    """dataset_info.json, an entry's folder and the files in it are checked before they are
    read, listed or even looked for: no reply tells what lies outside the roots."""
    outside = place["outside"]
    (outside / "dataset_info.json").write_text(json.dumps({"secret_entry_name": {}}))
    (outside / "parts").mkdir()
    write_samples(outside / "parts" / "a.json", 4)
    inside = place["data"] / "inner"
    inside.mkdir()
    if how == "info link":
        (inside / "dataset_info.json").symlink_to(outside / "dataset_info.json")
    else:
        parts = inside / "parts"
        if how == "folder":
            parts.symlink_to(outside / "parts")
        else:
            parts.mkdir()
            (parts / "a.json").symlink_to(outside / "parts" / "a.json")
        info = {"secret": {"file_name": "parts"}}
        (inside / "dataset_info.json").write_text(json.dumps(info))
    hello = make_hello(
        place["models"] / "tiny", place["dataset"], dataset="secret", dataset_dir=str(inside)
    )
    reply = ask(intake_for(place), hello)
    assert reply["code"] == "forbidden" and "--data-root" in reply["reason"], reply
    assert "secret_entry_name" not in reply["reason"]


def test_a_dataset_name_without_its_dataset_dir_is_refused(place):
    hello = make_hello(place["models"] / "tiny", place["dataset"], dataset="../outside/x")
    reply = ask(intake_for(place), hello)
    assert reply["code"] == "forbidden" and "needs the dataset_dir" in reply["reason"]


def test_without_roots_only_the_data_dir_is_open(place):
    intake = intake_for(place, model_root=[], data_root=[])
    reply = ask(intake, make_hello(place["models"] / "tiny", place["dataset"]))
    assert reply["code"] == "forbidden"
    assert f"({(place['tmp'] / 'scorer').resolve()})" in reply["reason"]


# A hub repository's name: relative, so under the model root a scorer runs in, yet no folder.
HUB_NAME = "ws/evil-org-model"


@pytest.fixture
def hub(place, monkeypatch):
    """A fake hub this process's huggingface_hub asks; the working folder is the model root."""
    monkeypatch.chdir(place["models"])
    with FakeHub() as hub:
        aim_at(hub, monkeypatch)
        yield hub


def no_folder_refusal(place) -> str:
    return (
        f"run run-a refused: its base model {HUB_NAME} ({place['models'] / HUB_NAME}) is not "
        "a folder on this scorer's disk; the scorer loads base models only from local "
        f"folders under its model roots ({place['models']}), never from a model hub: put the "
        "model's folder under one and name that folder as the base model"
    )


def test_a_model_that_is_no_folder_under_the_roots_is_refused_without_asking_a_hub(place, hub):
    intake = intake_for(place)
    hello = make_hello(place["models"] / "tiny", place["dataset"], base_model=HUB_NAME)
    reply = ask(intake, hello)
    assert hub.requests == []
    assert reply["code"] == "mismatch" and reply["reason"] == no_folder_refusal(place)
    assert stored_runs(intake) == []


def test_a_model_under_the_roots_is_registered_without_asking_a_hub(place, hub):
    intake = intake_for(place)
    hello = make_hello(place["models"] / "tiny", place["dataset"], base_model="tiny")
    assert ask(intake, hello)["status"] == "registered"
    assert hub.requests == []


def test_a_stored_run_whose_model_is_no_folder_is_refused_without_asking_a_hub(place, hub):
    """Tokenizer, skeleton and weights of a run stored before: none is looked for on a hub."""
    registry = intake_for(place).registry
    hello = make_hello(place["models"] / "tiny", place["dataset"], base_model=HUB_NAME)
    for load in (registry.runs.prepare, registry.models.manifest, registry.models.model):
        with pytest.raises(RunMismatch) as refused:
            load(hello)
        assert str(refused.value) == no_folder_refusal(place)
    assert hub.requests == []


def test_a_scorer_process_refuses_a_hub_model_without_asking_a_hub(place, monkeypatch):
    monkeypatch.chdir(place["models"])  # the scorer's working folder: HUB_NAME lies under it
    with FakeHub() as hub:
        scorer = ScorerProcess(
            place["tmp"] / "scorer",
            "--model-root", str(place["models"]), "--data-root", str(place["data"]),
            env=process_environment(hub),
        )  # fmt: skip
        with scorer:
            hello = make_hello(place["models"] / "tiny", place["dataset"], base_model=HUB_NAME)
            reply = register(scorer.zmq_url, hello)
        assert hub.requests == []
    assert reply["code"] == "mismatch" and reply["reason"] == no_folder_refusal(place)


def test_the_scorer_goes_offline_before_the_hub_library_is_imported():
    """huggingface_hub reads HF_HUB_OFFLINE once, when imported: the scorer's command sets it
    first, for itself and every process it starts."""
    script = (
        "import os, sys\n"
        "from scorer_svc.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'huggingface_hub' not in sys.modules\n"
        "from huggingface_hub import constants\n"
        "print(os.environ['HF_HUB_OFFLINE'], os.environ['TRANSFORMERS_OFFLINE'],"
        " constants.HF_HUB_OFFLINE)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    assert done.stdout.splitlines()[-1] == "1 1 True"


def test_going_offline_reaches_a_hub_library_already_imported(monkeypatch):
    from huggingface_hub import constants

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "0")  # restored after the test
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    stay_off_the_hub()
    assert constants.is_offline_mode()
    assert (os.environ["HF_HUB_OFFLINE"], os.environ["TRANSFORMERS_OFFLINE"]) == ("1", "1")
