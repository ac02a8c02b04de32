"""trainer-svc report on a run folder written here: the pictures from the run's own files,
and those read from a scorer answering through httpx's MockTransport."""

import functools
import io
import json
from pathlib import Path

import httpx
import matplotlib.image
import pytest

from common.api import client as scorer_api
from common.api.plots import png, trajectories
from trainer_svc.cli import main
from trainer_svc.tools.report import EVAL_LOSS_PLOT, ReportError, write_report
from trainer_svc.training.records import SELECTIONS, TRAINED

RUN_ID = "run-r"
N = 12
PICTURE = png(trajectories({"#0": [(1, 1.0), (2, 0.5)]}, "a scorer's picture"))


def run_folder(tmp_path: Path, *, eval_loss: bool) -> Path:
    """An output_dir as a run leaves it: two updates, the steps trained, the log history."""
    folder = tmp_path / "run"
    folder.mkdir()
    selections = [
        {"update_index": 1, "global_step": 10, "weights_step": 10, "window": None,
         "sampled_indices": list(range(N))},
        {"update_index": 2, "global_step": 20, "weights_step": 20,
         "window": {"start": 0, "end": 3, "truncated_at": 9}, "sampled_indices": [0, 1, 2]},
    ]  # fmt: skip
    (folder / SELECTIONS).write_text("".join(json.dumps(r) + "\n" for r in selections))
    trained = [{"step": s, "indices": [s % N, (s + 1) % N]} for s in range(1, 21)]
    (folder / TRAINED).write_text("".join(json.dumps(r) + "\n" for r in trained))
    history = [{"step": s, "loss": 2.0 - s / 20} for s in range(5, 25, 5)]
    if eval_loss:
        history += [{"step": 0, "eval_loss": 2.1}, {"step": 20, "eval_loss": 1.4}]
    (folder / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    (folder / "run.json").write_text(json.dumps({"run_id": RUN_ID}))
    return folder


def linked(folder: Path) -> str:
    return (folder / "report" / "index.html").read_text()


def test_the_eval_loss_picture_is_written_when_the_run_logged_eval_loss(tmp_path):
    folder = run_folder(tmp_path, eval_loss=True)
    write_report(folder)
    picture = folder / "report" / EVAL_LOSS_PLOT
    image = matplotlib.image.imread(io.BytesIO(picture.read_bytes()), format="png")
    assert image.shape[:2] == (400, 700) and image.std() > 0
    assert f'src="{EVAL_LOSS_PLOT}"' in linked(folder)


def test_no_eval_loss_picture_without_eval_loss(tmp_path):
    folder = run_folder(tmp_path, eval_loss=False)
    write_report(folder)
    assert (folder / "report" / "training_loss.png").is_file()
    assert not (folder / "report" / EVAL_LOSS_PLOT).exists()
    assert EVAL_LOSS_PLOT not in linked(folder)


def delta_page(step: int, indices: list[int]) -> dict:
    """A /deltas answer (the scorer's DeltaPage) ranking these samples."""
    items = [
        {"rank": r, "sample_index": i, "delta": 1.0 - r / 10, "loss": 1.0, "initial_loss": 2.0,
         "in_window": False}
        for r, i in enumerate(indices)
    ]  # fmt: skip
    return {"run_id": RUN_ID, "step": step, "update_index": 2, "window": None, "n_ranked": N,
            "items": items, "next_page_token": None}  # fmt: skip


class FakeScorer:
    """The scorer's answers for RUN_ID: pictures, the ranking and each sample's history; a
    color_by other than `group` is a 422 as the scorer gives it. Records what was asked."""

    def __init__(self, fields: tuple[str, ...] = ("group",), dataset_readable: bool = True):
        self.fields = fields
        self.dataset_readable = dataset_readable
        self.asked: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.asked.append(request)
        path, params = request.url.path, request.url.params
        base = f"/v1/runs/{RUN_ID}"
        if path == f"{base}/plots/deltas":
            field = params.get("color_by")
            if field is not None and not self.dataset_readable:
                return httpx.Response(409, json={"detail": "the dataset changed"})
            if field is not None and field not in self.fields:
                detail = f"no column '{field}'; its columns: {', '.join(self.fields)}"
                return httpx.Response(422, json={"detail": detail})
            return httpx.Response(200, content=PICTURE, headers={"content-type": "image/png"})
        if path == f"{base}/deltas":
            order = range(N) if params["order"] == "desc" else reversed(range(N))
            chosen = list(order)[: int(params["max_results"])]
            return httpx.Response(200, json=delta_page(int(params["step"]), chosen))
        if path.startswith(f"{base}/samples/") and path.endswith("/losses"):
            index = int(path.split("/")[-2])
            if index >= N:
                return httpx.Response(404, json={"detail": f"sample {index} does not exist"})
            history = [
                {"step": s, "update_index": k, "loss": 2.0 - index / 10 - s / 40, "delta": None}
                for k, s in enumerate((10, 20), start=1)
            ]
            body = {"run_id": RUN_ID, "sample_index": index, "history": history}
            return httpx.Response(200, json=body)
        return httpx.Response(404, json={"detail": "not here"})

    def paths(self, suffix: str) -> list[httpx.Request]:
        return [r for r in self.asked if r.url.path.endswith(suffix)]


@pytest.fixture
def scorer(monkeypatch) -> FakeScorer:
    fake = FakeScorer()
    client = functools.partial(httpx.Client, transport=httpx.MockTransport(fake))
    monkeypatch.setattr(scorer_api.httpx, "Client", client)
    return fake


def test_samples_add_the_trajectories_of_the_samples_asked_for(tmp_path, scorer, caplog):
    folder = run_folder(tmp_path, eval_loss=False)
    write_report(folder, "http://scorer", samples=[6, 5, 6, N])
    picture = folder / "report" / "trajectories_samples.png"
    image = matplotlib.image.imread(io.BytesIO(picture.read_bytes()), format="png")
    assert image.shape[:2] == (400, 700) and image.std() > 0
    page = linked(folder)
    assert 'src="trajectories_samples.png"' in page and "asked for: 6, 5." in page
    asked = [r.url.path for r in scorer.asked]
    for index in (6, 5, N):  # neither among the top nor the bottom 5
        assert asked.count(f"/v1/runs/{RUN_ID}/samples/{index}/losses") == 1
    assert f"has no sample {N}; left out" in caplog.text
    assert (folder / "report" / "trajectories.png").is_file()  # the top and bottom ones too


def test_without_samples_there_is_no_picture_of_chosen_samples(tmp_path, scorer):
    folder = run_folder(tmp_path, eval_loss=False)
    write_report(folder, "http://scorer")
    assert not (folder / "report" / "trajectories_samples.png").exists()
    assert all("color_by" not in r.url.params for r in scorer.paths("/plots/deltas"))


def test_color_by_asks_the_scorer_for_coloured_pictures(tmp_path, scorer):
    folder = run_folder(tmp_path, eval_loss=False)
    write_report(folder, "http://scorer", color_by="group")
    asked = scorer.paths("/plots/deltas")
    assert [(r.url.params["step"], r.url.params["color_by"]) for r in asked] == [
        ("10", "group"),
        ("20", "group"),
    ]
    assert (folder / "report" / "deltas_step_20.png").read_bytes() == PICTURE
    assert "each sample coloured by its &#x27;group&#x27;" in linked(folder)


def test_color_by_a_field_the_dataset_lacks_fails_naming_its_fields(tmp_path, scorer):
    folder = run_folder(tmp_path, eval_loss=False)
    with pytest.raises(
        ReportError, match="--color-by colour: no column 'colour'; its columns: group"
    ):
        write_report(folder, "http://scorer", color_by="colour")


def test_color_by_a_dataset_the_scorer_cannot_read_draws_the_pictures_uncoloured(
    tmp_path, scorer, caplog
):
    scorer.dataset_readable = False
    folder = run_folder(tmp_path, eval_loss=False)
    write_report(folder, "http://scorer", color_by="group")
    assert (folder / "report" / "deltas_step_10.png").is_file()
    assert (folder / "report" / "deltas_step_20.png").is_file()
    assert "not coloured by group: the dataset changed" in caplog.text
    assert "coloured by" not in linked(folder)


def test_color_by_and_samples_need_the_scorer(tmp_path):
    folder = run_folder(tmp_path, eval_loss=False)
    with pytest.raises(ReportError, match="give --scorer URL"):
        write_report(folder, color_by="group")
    assert main(["report", str(folder), "--samples", "1,2"]) == 2


def test_the_command_line_reads_color_by_and_samples(tmp_path, scorer, capsys):
    folder = run_folder(tmp_path, eval_loss=True)
    argv = ["report", str(folder), "--scorer", "http://scorer", "--color-by", "group"]
    assert main([*argv, "--samples", "2,5"]) == 0
    assert "report: " in capsys.readouterr().out
    assert (folder / "report" / "trajectories_samples.png").is_file()
    assert scorer.paths("/plots/deltas")[0].url.params["color_by"] == "group"
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--samples", "1,x"])
    assert exited.value.code == 2
    assert "is not a list of sample indices" in capsys.readouterr().err
