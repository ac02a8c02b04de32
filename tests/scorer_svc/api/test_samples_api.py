"""A sample's text over REST, and the pictures that read the dataset's rows: in-process, a
TestClient on a SQLite file seeded through the queries with a run whose hello names a real dataset
file (tokenized with the tiny model, so that its fingerprint is the trainer's)."""

import io
import json
import pathlib
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib.colors
import matplotlib.image
import numpy as np
import pytest
from fastapi.testclient import TestClient
from transformers import AutoTokenizer

from common.api.client import NotFound, ScorerApi
from common.api.schemas import SampleText
from common.data.datasets import DatasetSpec, load_samples, split_validation
from common.data.tokenization import encode_dataset
from common.model_spec import ModelSpec
from common.selection import delta_window, rank_by_delta
from common.wire.hello import build_hello
from scorer_svc.api.routes import plots as plot_routes
from scorer_svc.api.run_texts import RunTexts
from scorer_svc.api.state import ApiState
from scorer_svc.config import Settings
from scorer_svc.main import create_app
from scorer_svc.storage import checkpoints as checkpoint_store
from scorer_svc.storage import runs as run_store
from scorer_svc.storage.db import make_engine, make_sessionmaker
from scorer_svc.storage.failures import UnrecordedFailures
from tests.support.scorer import LORA, SETTINGS

GROUPS = ("add", "copy", "noise", "upper")
N_ROWS = 24
UPDATE_TIMES, WINDOW_SIZE = 3, 0.25
LONG_NOTE = "n" * 500


def dataset_rows(n: int = N_ROWS) -> list[dict]:
    """Alpaca rows with other columns: text, numbers, true/false, null, and a list (which is
    not a scalar, so never a field)."""
    rows = []
    for i in range(n):
        row = {
            "instruction": f"Add {i} and {2 * i}.",
            "input": "show your work" if i % 3 == 0 else "",
            "output": str(3 * i),
            "group": GROUPS[i % len(GROUPS)],
            "score": i / 4,
            "reviewed": i % 2 == 0,
            "source": None,
            "tags": ["a", "b"],
            "note": LONG_NOTE,
        }
        if i % 5 == 0:
            row["system"] = f"You are helper {i}."
        rows.append(row)
    return rows


def run_config(
    tiny_model: Path, dataset: DatasetSpec, run_id: str, val_size: float | None = None
) -> dict:
    """The stored hello of a LoRA run on the dataset, as the intake stores it."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    samples = load_samples(dataset)
    if val_size:
        samples = split_validation(samples, val_size, 7)[0]
    hello = build_hello(
        run_id=run_id,
        spec=ModelSpec(str(tiny_model), "lora", LORA),
        dataset=dataset,
        val_size=val_size,
        split_seed=7,
        tokenization=SETTINGS,
        encoded=encode_dataset(tokenizer, samples, SETTINGS),
        window_size=WINDOW_SIZE,
        update_times=UPDATE_TIMES,
        vocab_size=len(tokenizer),
    )
    return hello.model_dump(exclude={"token"})


def losses(n: int) -> dict[int, np.ndarray]:
    """step -> losses: step 2 the initial ones, step 4 after the samples' losses moved."""
    rng = np.random.default_rng(0)
    initial = rng.uniform(1.0, 3.0, n)
    return {2: initial, 4: initial - rng.uniform(-0.5, 1.0, n)}


def seed_run(state: ApiState, config: dict) -> None:
    """The run with its initial checkpoint (step 2) and one update's (step 4) scored."""
    n = config["n_samples"]
    values = losses(n)
    with state.sessions() as session:
        run = run_store.create_run(session, config=config, n_no_labels=0)
        for step, k in ((2, 1), (4, 2)):
            received = checkpoint_store.Received(
                step, k, "lora", f"{step:064d}", f"step-{step}", 100
            )
            checkpoint = checkpoint_store.add_checkpoint(session, run=run, received=received)
            window = None
            if k == 2:
                window, _ = delta_window(values[2], values[4], k, UPDATE_TIMES, WINDOW_SIZE)
            checkpoint_store.store_scores(
                session, checkpoint=checkpoint, losses=values[step], window=window, seconds=1.0
            )


@contextmanager
def serving(tmp_path: Path, *configs: dict, **settings) -> Iterator[TestClient]:
    """A TestClient on a fresh state (nothing read yet) holding the runs of configs."""
    config = Settings(data_dir=Path(tempfile.mkdtemp(dir=tmp_path)), **settings)
    engine = make_engine(config.resolved_database_url)
    state = ApiState(config, make_sessionmaker(engine), UnrecordedFailures())
    for run in configs:
        seed_run(state, run)
    try:
        with TestClient(create_app(config, state)) as client:
            yield client
    finally:
        engine.dispose()


@pytest.fixture
def data_file(tmp_path) -> Path:
    path = tmp_path / "data" / "train.json"
    path.parent.mkdir()
    path.write_text(json.dumps(dataset_rows()), encoding="utf-8")
    return path


@pytest.fixture
def config(tiny_model, data_file) -> dict:
    return run_config(tiny_model, DatasetSpec(str(data_file)), "run-t")


@pytest.fixture
def client(tmp_path, config) -> Iterator[TestClient]:
    with serving(tmp_path, config) as client:
        yield client


def expected_text(row: dict, index: int, run_id: str = "run-t") -> dict:
    user = "\n".join(part for part in (row["instruction"], row["input"]) if part)
    return {
        "run_id": run_id,
        "sample_index": index,
        "system": row.get("system"),
        "turns": [{"user": user, "assistant": row["output"]}],
        "fields": {
            "group": row["group"],
            "score": row["score"],
            "reviewed": row["reviewed"],
            "source": None,
            "note": LONG_NOTE[:199] + "…",
        },
    }


# the sample's text


@pytest.mark.parametrize("index", [0, 3, 5, N_ROWS - 1])
def test_a_samples_text_and_fields_are_its_rows(client, index):
    response = client.get(f"/v1/runs/run-t/samples/{index}")
    assert response.status_code == 200, response.text
    assert response.json() == expected_text(dataset_rows()[index], index)


def test_sample_indices_are_the_training_samples_after_the_validation_split(
    tmp_path, tiny_model, data_file
):
    config = run_config(tiny_model, DatasetSpec(str(data_file)), "run-v", val_size=0.25)
    training = split_validation(dataset_rows(), 0.25, 7)[0]
    assert config["n_samples"] == len(training) == 18
    with serving(tmp_path, config) as client:
        for index in (0, 9, 17):
            body = client.get(f"/v1/runs/run-v/samples/{index}").json()
            assert body == expected_text(training[index], index, "run-v")
        assert client.get("/v1/runs/run-v/samples/18").status_code == 404


def test_a_sample_past_the_run_or_of_an_unknown_run_is_404(client):
    response = client.get(f"/v1/runs/run-t/samples/{N_ROWS}")
    assert response.status_code == 404
    assert response.json()["detail"] == f"sample {N_ROWS} does not exist: run run-t has {N_ROWS}"
    response = client.get("/v1/runs/run-x/samples/0")
    assert response.status_code == 404 and "no run 'run-x'" in response.json()["detail"]
    assert client.get("/v1/runs/run-t/samples/-1").status_code == 422


def test_a_dataset_changed_since_registration_is_409(tmp_path, config, data_file):
    changed = dataset_rows()
    changed[4]["output"] = "a different answer"
    data_file.write_text(json.dumps(changed), encoding="utf-8")
    with serving(tmp_path, config) as client:
        response = client.get("/v1/runs/run-t/samples/0")
    assert response.status_code == 409
    detail = response.json()["detail"]
    assert "changed since the run was registered" in detail and "restore the files" in detail


def test_a_dataset_gone_is_409_saying_so(tmp_path, config, data_file):
    data_file.unlink()
    with serving(tmp_path, config) as client:
        response = client.get("/v1/runs/run-t/samples/0")
    assert response.status_code == 409
    assert "can no longer be read" in response.json()["detail"]


def test_text_read_before_the_file_changed_is_still_served(client, data_file):
    first = client.get("/v1/runs/run-t/samples/4").json()
    data_file.write_text(json.dumps(dataset_rows()[::-1]), encoding="utf-8")
    assert client.get("/v1/runs/run-t/samples/4").json() == first  # the text the run trained on


@pytest.fixture
def reads(monkeypatch) -> list[Path]:
    """Every file read through Path.read_text (how the datasets are read), in order."""
    seen: list[Path] = []
    read_text = pathlib.Path.read_text

    def spy(self, *args, **kwargs):
        seen.append(Path(self).resolve())
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "read_text", spy)
    return seen


@pytest.mark.parametrize("how", ["path", "dataset_info"])
def test_a_dataset_outside_the_roots_is_refused_and_never_read(
    tmp_path, tiny_model, scorer_roots, reads, how
):
    outside = tmp_path / "elsewhere" / "train.json"
    outside.parent.mkdir()
    outside.write_text(json.dumps(dataset_rows()), encoding="utf-8")
    roots = tmp_path / "roots"
    (roots / "info").mkdir(parents=True)
    if how == "path":
        spec = DatasetSpec(str(outside))
    else:  # a name whose entry points out of the roots
        entry = {"file_name": "../../elsewhere/train.json"}
        (roots / "info" / "dataset_info.json").write_text(json.dumps({"mine": entry}))
        spec = DatasetSpec("mine", str(roots / "info"))
    config = run_config(tiny_model, spec, "run-o")  # registered while the roots held it
    reads.clear()
    with serving(tmp_path, config, data_root=[roots], model_root=[scorer_roots]) as client:
        response = client.get("/v1/runs/run-o/samples/0")
        coloured = client.get("/v1/runs/run-o/plots/deltas", params={"color_by": "group"})
    assert response.status_code == coloured.status_code == 403
    assert "not under this scorer's roots" in response.json()["detail"]
    assert outside.resolve() not in reads
    if how == "dataset_info":  # the guard let the info file be read, and stopped at its entry
        assert (roots / "info" / "dataset_info.json").resolve() in reads


# the loss reduction by rank, coloured


def colours_found(png: bytes, names: list[str]) -> set[str]:
    """Which of the named colours some pixel of the picture has (within 4/255 per channel)."""
    image = matplotlib.image.imread(io.BytesIO(png), format="png")[..., :3]
    return {
        name
        for name in names
        if (np.abs(image - np.array(matplotlib.colors.to_rgb(name))).max(axis=-1) < 4 / 255).any()
    }


def test_color_by_colours_the_samples_by_their_rows_value(client):
    plain = client.get("/v1/runs/run-t/plots/deltas", params={"step": 4})
    coloured = client.get("/v1/runs/run-t/plots/deltas", params={"step": 4, "color_by": "group"})
    assert plain.status_code == coloured.status_code == 200, coloured.text
    assert coloured.headers["content-type"] == "image/png"
    image = matplotlib.image.imread(io.BytesIO(coloured.content), format="png")
    assert image.shape[:2] == (550, 700) and image.std() > 0  # with the strip of groups
    group_colours = ["tab:blue", "tab:green", "black", "tab:purple"]  # four groups
    assert colours_found(coloured.content, group_colours) == set(group_colours)
    # green and purple are groups' only: the plain picture has blue points, black text
    assert colours_found(plain.content, group_colours) == {"tab:blue", "black"}


def test_color_by_passes_each_ranked_samples_value_in_rank_order(client, monkeypatch):
    drawn = {}
    original = plot_routes.deltas_by_rank

    def spy(deltas, **kwargs):
        drawn.update(deltas=deltas, **kwargs)
        return original(deltas, **kwargs)

    monkeypatch.setattr(plot_routes, "deltas_by_rank", spy)
    response = client.get("/v1/runs/run-t/plots/deltas", params={"step": 4, "color_by": "score"})
    assert response.status_code == 200
    values = losses(N_ROWS)
    delta = values[2] - values[4]
    ranking = rank_by_delta(delta)
    assert drawn["groups"] == [str(i / 4) for i in ranking]
    assert drawn["deltas"].tolist() == delta[ranking].tolist()
    assert drawn["title"].endswith(", by score")


def test_color_by_an_unknown_field_is_422_naming_the_fields(client):
    response = client.get("/v1/runs/run-t/plots/deltas", params={"color_by": "colour"})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "no column 'colour'" in detail
    assert "note, reviewed, score, source" in detail and "group" in detail
    assert "tags" not in detail  # a list, never a field


def test_color_by_on_a_changed_dataset_is_409(tmp_path, config, data_file):
    data_file.write_text(json.dumps(dataset_rows()[1:]), encoding="utf-8")
    with serving(tmp_path, config) as client:
        response = client.get("/v1/runs/run-t/plots/deltas", params={"color_by": "group"})
        assert client.get("/v1/runs/run-t/plots/deltas").status_code == 200  # uncoloured
    assert response.status_code == 409


# trajectories


@pytest.fixture
def drawn_trajectories(monkeypatch) -> dict:
    """What the trajectories route hands the picture: the histories by label, the title."""
    drawn: dict = {}
    original = plot_routes.trajectories

    def recording(histories, title):
        drawn.update(histories=histories, title=title)
        return original(histories, title)

    monkeypatch.setattr(plot_routes, "trajectories", recording)
    return drawn


def assert_png(response) -> None:
    assert response.status_code == 200, response.text
    image = matplotlib.image.imread(io.BytesIO(response.content), format="png")
    assert image.shape[:2] == (400, 700) and image.std() > 0


def test_trajectories_of_chosen_samples(client, drawn_trajectories):
    response = client.get("/v1/runs/run-t/plots/trajectories", params={"indices": "3,1,3,20"})
    assert_png(response)
    values = losses(N_ROWS)
    assert drawn_trajectories["histories"] == {
        f"#{i}": [(2, pytest.approx(values[2][i])), (4, pytest.approx(values[4][i]))]
        for i in (3, 1, 20)
    }


def test_trajectories_of_the_top_and_bottom_samples_at_a_step(client, drawn_trajectories):
    response = client.get(
        "/v1/runs/run-t/plots/trajectories", params={"top": 2, "bottom": 3, "step": 4}
    )
    assert_png(response)
    values = losses(N_ROWS)
    ranking = rank_by_delta(values[2] - values[4]).tolist()
    labels = list(drawn_trajectories["histories"])
    assert labels == [f"#{i} (fell most)" for i in ranking[:2]] + [
        f"#{i} (fell least)" for i in ranking[::-1][:3]
    ]
    assert "by step 4" in drawn_trajectories["title"]
    default = client.get("/v1/runs/run-t/plots/trajectories")  # 5 and 5 at the latest step
    assert_png(default)
    assert len(drawn_trajectories["histories"]) == 10


@pytest.mark.parametrize(
    ("params", "status", "detail"),
    [
        ({"indices": "1,x"}, 422, "query.indices: String should match pattern"),
        ({"indices": ""}, 422, "query.indices: String should match pattern"),
        ({"indices": "1,-2"}, 422, "query.indices: String should match pattern"),
        ({"indices": ",".join(map(str, range(21)))}, 422, "query.indices: String should match"),
        ({"indices": str(N_ROWS)}, 404, f"sample {N_ROWS} does not exist"),
        ({"top": 11}, 422, "query.top: Input should be less than or equal to 10"),
        ({"bottom": -1}, 422, "query.bottom: Input should be greater than or equal to 0"),
    ],
)
def test_bad_trajectory_choices_say_what_was_wrong(client, params, status, detail):
    response = client.get("/v1/runs/run-t/plots/trajectories", params=params)
    assert response.status_code == status
    assert detail in response.json()["detail"]


def test_chosen_samples_are_drawn_with_the_top_and_bottom_ones(client, drawn_trajectories):
    params = {"indices": "0,1", "top": 1, "bottom": 1, "step": 4}
    assert_png(client.get("/v1/runs/run-t/plots/trajectories", params=params))
    values = losses(N_ROWS)
    ranking = rank_by_delta(values[2] - values[4]).tolist()
    expected = {f"#{ranking[0]} (fell most)", f"#{ranking[-1]} (fell least)"}
    expected = {label for label in expected if int(label[1:].split()[0]) not in (0, 1)}
    assert set(drawn_trajectories["histories"]) == expected | {"#0", "#1"}


def test_top_and_bottom_at_a_step_never_received_is_404(client):
    response = client.get("/v1/runs/run-t/plots/trajectories", params={"top": 1, "step": 3})
    assert response.status_code == 404


def test_a_refused_dataset_is_not_read_again_at_each_click(
    tmp_path, config, data_file, monkeypatch
):
    data_file.write_text("[]", encoding="utf-8")
    reads = []
    original = RunTexts.read
    monkeypatch.setattr(RunTexts, "read", lambda *args: reads.append(1) or original(*args))
    with serving(tmp_path, config) as client:
        answers = [client.get("/v1/runs/run-t/samples/0") for _ in range(3)]
    assert [a.status_code for a in answers] == [409] * 3
    assert len({a.json()["detail"] for a in answers}) == 1
    assert len(reads) == 1


def test_the_typed_client_reads_a_samples_text(client):
    api = ScorerApi("http://testserver", client=client)
    text = api.sample("run-t", 3)
    assert isinstance(text, SampleText)
    assert text.model_dump() == expected_text(dataset_rows()[3], 3)
    with pytest.raises(NotFound, match="sample 999 does not exist"):
        api.sample("run-t", 999)
