"""The dashboard at /ui: its page and assets served open and local (in-process), and the page
driven in a real headless Chromium against a real uvicorn server on the seeded database of
test_api (run-a: scored steps 2, 4 and 6, a failed one, one scoring, one received), with a run
of its own data and an async run under a scoring budget."""

import json
import os
import re
from dataclasses import replace
from importlib.resources import files
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from common.budget import Estimates, advance
from common.data.datasets import DatasetSpec
from common.selection import delta_window, rank_by_delta, window_over
from scorer_svc.api.state import ApiState
from scorer_svc.main import create_app
from scorer_svc.scoring.progress import ScoringProgress
from scorer_svc.storage import checkpoints as checkpoint_store
from scorer_svc.storage import metrics as metric_store
from scorer_svc.storage import runs as run_store
from tests.scorer_svc.api.test_api import (
    FAILURE,
    INITIAL,
    LOSSES,
    SCORED,
    SCORING_STEP,
    TOKEN,
    UPDATE_TIMES,
    WINDOW_SIZE,
    N,
    seeded_state,
)
from tests.scorer_svc.api.test_samples_api import dataset_rows, losses, run_config, seed_run
from tests.support.serving import serving

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
TOKEN_KEY = "delta-loss-scorer.token"  # where the page keeps the token (sessionStorage)
WAIT_SECONDS = 60  # the machine may be loaded: generous, and only ever waited on conditions
STEP = 6  # the step charted: its window stops at the truncation rank
ASSETS = {"dashboard.js": "text/javascript", "dashboard.css": "text/css"}
# XML namespace names identify element kinds; nothing is fetched from them.
NAMESPACES = {"http://www.w3.org/2000/svg"}


def dashboard_files() -> list[Path]:
    folder = Path(str(files("scorer_svc.api.dashboard")))
    return sorted(p for p in folder.iterdir() if p.suffix in {".html", ".js", ".css"})


# in-process


def test_root_redirects_to_the_page(tmp_path):
    with (
        seeded_state(tmp_path) as state,
        TestClient(create_app(state.settings, state)) as client,
    ):
        response = client.get("/", follow_redirects=False)
        assert response.status_code in (302, 307)
        assert response.headers["location"] == "/ui"
        assert client.get("/").url.path == "/ui"


def test_page_and_assets_are_open_when_the_api_needs_a_token(tmp_path):
    with (
        seeded_state(tmp_path, token=TOKEN) as state,
        TestClient(create_app(state.settings, state)) as client,
    ):
        assert client.get("/v1/runs").status_code == 401
        for path in ("/", "/ui"):
            page = client.get(path)
            assert page.status_code == 200, path
            assert page.headers["content-type"] == "text/html; charset=utf-8"
        # the assets the page names are the ones served, each with its media type
        named = set(re.findall(r'(?:src|href)="ui/assets/([^"]+)"', page.text))
        assert named == set(ASSETS)
        for name, media_type in ASSETS.items():
            response = client.get(f"/ui/assets/{name}")
            assert response.status_code == 200, name
            assert response.headers["content-type"].split(";")[0] == media_type
            assert response.content == (files("scorer_svc.api.dashboard") / name).read_bytes()
        assert page.headers["content-security-policy"].startswith("default-src 'self'")
        assert client.get("/ui/assets/index.html").status_code == 404
        assert client.get("/ui/assets/..%2F__init__.py").status_code == 404
        assert client.get("/openapi.json").json()["paths"].keys().isdisjoint({"/", "/ui"})


def test_no_asset_references_an_external_url():
    found = dashboard_files()
    assert {p.name for p in found} == {"index.html", *ASSETS}
    for path in found:
        urls = set(re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"'`)]*", path.read_text()))
        assert urls <= NAMESPACES, f"{path.name} names {sorted(urls - NAMESPACES)}"


# in a browser


@pytest.fixture
def browser(tmp_path):
    """A headless Chromium (Debian's), its console log kept."""
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        why = f"{CHROMIUM} or {CHROMEDRIVER} is missing (Debian: apt-get install chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(f"{why}; CI needs them")
        pytest.skip(why)
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument("--window-size=1280,1600")
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(WAIT_SECONDS)
    try:
        yield driver
    finally:
        driver.quit()


def shown(driver, selector: str):
    """The element selector names once it is displayed (waited for)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_SECONDS).until(
        ec.visibility_of_element_located((By.CSS_SELECTOR, selector)), f"{selector} shown"
    )


def wait_for(driver, check, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_SECONDS).until(lambda d: check(d), what)


def count(driver, selector: str) -> int:
    from selenium.webdriver.common.by import By

    return len(driver.find_elements(By.CSS_SELECTOR, selector))


def severe(driver) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def screenshot(driver, tmp_path: Path, name: str) -> None:
    """The whole page as a PNG in tmp_path, and in $DASHBOARD_SCREENSHOTS when it names one."""
    for _ in range(3):  # the window's frame takes some of its height: grow until all shows
        page, view = driver.execute_script(
            "return [document.documentElement.scrollHeight, window.innerHeight]"
        )
        if view >= page:
            break
        driver.set_window_size(1280, driver.get_window_size()["height"] + page - view)
    targets = [tmp_path]
    if os.environ.get("DASHBOARD_SCREENSHOTS"):
        targets.append(Path(os.environ["DASHBOARD_SCREENSHOTS"]))
    for folder in targets:
        folder.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(folder / name)), folder / name


def check_sample_text(driver, base: str, run_id: str, index: int) -> int:
    """The page shows what the API answers for the run's sample: its turns, nothing (404), or
    why it cannot (another error's detail). The API's status."""
    answer = httpx.get(f"{base}/v1/runs/{run_id}/samples/{index}", timeout=WAIT_SECONDS)
    box = wait_for(
        driver,
        lambda d: (
            (e := d.find_element("id", "sample-text")).get_attribute("data-state")
            not in (None, "loading")
            and e
        ),
        "the sample's text settled",
    )
    state = box.get_attribute("data-state")
    if answer.status_code == 200:
        body = answer.json()
        assert state == "shown"
        messages = count(driver, "#sample-text .message")
        assert messages == 2 * len(body["turns"]) + (1 if body["system"] else 0)
    elif answer.status_code == 404:
        assert (state, box.text) == ("none", "")
    else:
        assert state == "unavailable"
        assert " ".join(answer.json()["detail"].split()) in " ".join(box.text.split())
    return answer.status_code


def seed_budgeted_async_run(state: ApiState, config: dict) -> int:
    """run-t's data as an async run under a scoring budget: steps 2 and 4 scored in full, step
    6 with half the samples measured, step 8 superseded by step 10, which waits. The samples
    measured at step 6."""
    config = {**config, "run_id": "run-b", "selection_mode": "async", "score_budget": 0.5}
    seed_run(state, config)
    n = config["n_samples"]
    values = losses(n)
    measured = np.arange(0, n, 2)
    with state.sessions() as session:
        run = run_store.get_run(session, run_id="run-b")
        checkpoint = checkpoint_store.add_checkpoint(
            session,
            run=run,
            received=checkpoint_store.Received(6, 3, "lora", "6" * 64, "step-6", 100),
        )
        current = np.full(n, np.nan)
        current[measured] = values[4][measured] - 0.1
        before = Estimates.measured_all(values[2] - values[4])
        estimates, _ = advance(before, measured, values[2] - current)
        window, _ = window_over(estimates.delta, 3, UPDATE_TIMES, WINDOW_SIZE)
        checkpoint_store.store_scores(
            session, checkpoint=checkpoint, losses=current, window=window, seconds=1.0,
            measured=measured, estimates=estimates,
        )  # fmt: skip
        for step in (8, 10):
            received = checkpoint_store.Received(
                step, 1, "lora", f"{step:064d}", f"step-{step}", 100
            )
            checkpoint_store.add_checkpoint(session, run=run, received=received)
        assert checkpoint_store.supersede(session, run=run) == ["step-8"]
    return measured.size


TRAIN_STEPS = range(1, 6)
EVAL_STEPS = (0, 3, 5)


def seed_training_curves(state: ApiState, run_id: str) -> None:
    """What the run's trainer logged: a falling training loss, and an eval loss."""
    points = [metric_store.Point("loss", s, 2.5 - 0.2 * s) for s in TRAIN_STEPS]
    points += [metric_store.Point("eval_loss", s, 2.6 - 0.1 * s) for s in EVAL_STEPS]
    points.append(metric_store.Point("learning_rate", 1, 1e-4))
    with state.sessions() as session:
        run = run_store.get_run(session, run_id=run_id)
        metric_store.store_metrics(session, run=run, points=points)


def scoring_progress(state: ApiState) -> ScoringProgress:
    """Progress for the seeded checkpoint being scored: 4 of N samples done."""
    now = [100.0]
    progress = ScoringProgress(clock=lambda: now[0])
    with state.sessions() as session:
        run = run_store.get_run(session, run_id="run-a")
        scoring = checkpoint_store.get_checkpoint(session, run=run, step=SCORING_STEP)
    progress.start(scoring.id, N, total_tokens=100)
    now[0] += 8.0
    progress.advance(scoring.id, 4, 40)
    return progress


@pytest.mark.slow
def test_dashboard_in_a_browser_from_runs_to_a_samples_history(tmp_path, browser, tiny_model):
    window, _ = delta_window(INITIAL, LOSSES[STEP], SCORED[STEP], UPDATE_TIMES, WINDOW_SIZE)
    delta = INITIAL - LOSSES[STEP]
    top = int(rank_by_delta(delta)[0])
    data_file = tmp_path / "data" / "train.json"
    data_file.parent.mkdir(parents=True, exist_ok=True)
    data_file.write_text(json.dumps(dataset_rows()), encoding="utf-8")
    text_losses = losses(len(dataset_rows()))
    text_top = int(rank_by_delta(text_losses[2] - text_losses[4])[0])
    with seeded_state(tmp_path) as state:
        texts = run_config(tiny_model, DatasetSpec(str(data_file)), "run-t")
        seed_run(state, {**texts, "run_name": "texts, full scoring", "tags": {"team": "nlp"}})
        seed_training_curves(state, "run-t")
        budgeted = run_config(tiny_model, DatasetSpec(str(data_file)), "run-b")
        budgeted |= {"run_name": "async under a budget", "tags": {"team": "nlp", "gpu": "h100"}}
        n_measured = seed_budgeted_async_run(state, budgeted)
        app = create_app(state.settings, replace(state, progress=scoring_progress(state)))
        with serving(app) as base:
            browser.get(f"{base}/")
            assert browser.current_url == f"{base}/ui"
            shown(browser, "#runs tr[data-run-id='run-a']").click()
            wait_for(browser, lambda d: "ok" in d.find_element("id", "health").text, "health ok")

            shown(browser, f"#checkpoints tr[data-step='{STEP}']")
            assert count(browser, "#checkpoints tbody tr") == 6
            assert FAILURE in shown(browser, "#checkpoints tr[data-step='8']").text

            # still scoring: progress, not an error
            shown(browser, f"#checkpoints tr[data-step='{SCORING_STEP}']").click()
            bar = shown(browser, "#deltas-progress progress")
            assert (bar.get_attribute("value"), bar.get_attribute("max")) == ("4", str(N))
            assert "4 of 10 samples" in shown(browser, "#deltas-progress").text
            assert not browser.find_element("id", "error").is_displayed()

            shown(browser, f"#checkpoints tr[data-step='{STEP}']").click()
            shade = shown(browser, "#delta-svg rect.window-shade")
            assert (shade.get_attribute("data-start"), shade.get_attribute("data-end")) == (
                str(window.start), str(window.end),
            )  # fmt: skip
            truncation = browser.find_element("css selector", "#delta-svg line.truncation")
            assert truncation.get_attribute("data-rank") == str(window.truncated_at)
            assert count(browser, "#delta-svg circle.point") == np.isfinite(delta).sum()
            assert count(browser, "#delta-svg circle.in-window") == window.end - window.start
            assert shown(browser, "#top-deltas tbody tr").get_attribute("data-sample") == str(top)

            # a run whose dataset the scorer reads: a sample's history and its own text
            shown(browser, "#runs tr[data-run-id='run-t']").click()
            wait_for(browser, lambda d: count(d, "#checkpoints tbody tr") == 2, "run-t's rows")
            assert browser.find_element("id", "checkpoints-run").text == "run-t"
            shown(browser, "#checkpoints tr[data-step='4']").click()
            shown(browser, "#delta-svg circle.point[data-rank='0']").click()
            shown(browser, "#history-svg")
            assert browser.find_element("id", "sample-index").text == str(text_top)
            assert count(browser, "#delta-svg .chosen-marker") == 1
            assert count(browser, "#history-svg circle.point") == 2  # steps 2 and 4
            assert browser.execute_script("return location.hash") == (
                f"#run=run-t&step=4&sample={text_top}"
            )
            assert check_sample_text(browser, base, "run-t", text_top) == 200
            assert dataset_rows()[text_top]["output"] in shown(browser, "#sample-text").text

            # its training curves beside its checkpoints, as its trainer logged them
            shown(browser, "#training-svg path.curve.train")
            assert count(browser, "#training-svg path.curve.eval") == 1
            assert count(browser, "#training-svg circle.eval-point") == len(EVAL_STEPS)
            markers = browser.find_elements("css selector", "#training-svg line.update-marker")
            assert sorted(int(m.get_attribute("data-step")) for m in markers) == [2, 4]
            assert (
                f"training loss ({len(TRAIN_STEPS)} points" in shown(browser, "#training-note").text
            )
            screenshot(browser, tmp_path, "training.png")

            # an async run under a scoring budget: a superseded step, a partly measured one
            shown(browser, "#runs tr[data-run-id='run-b']").click()
            wait_for(browser, lambda d: count(d, "#checkpoints tbody tr") == 5, "run-b's rows")
            superseded = shown(browser, "#checkpoints tr[data-step='8']")
            assert "status-superseded" in superseded.get_attribute("class")
            assert "superseded" in superseded.text
            budgeted_row = shown(browser, "#checkpoints tr[data-step='6']")
            assert f"{n_measured}, rest 1.0 old" in budgeted_row.text
            assert "all" in shown(browser, "#checkpoints tr[data-step='4']").text
            budgeted_row.click()
            wait_for(
                browser,
                lambda d: (
                    f"scoring budget: {n_measured} of"
                    in d.find_element("id", "deltas-summary").text
                ),
                "the budget in the summary",
            )
            superseded.click()  # nothing to show: the chosen step stays
            assert "step=6" in browser.execute_script("return location.hash")

            # runs by name and tags: shown, and searched (the API filters them)
            row = shown(browser, "#runs tr[data-run-id='run-b']")
            assert "async under a budget" in row.text and "gpu=h100, team=nlp" in row.text
            assert count(browser, "#runs tbody tr") > 2  # run-a and the seeded ones too
            browser.find_element("id", "runs-tag").send_keys("team=nlp")
            browser.find_element("css selector", "#runs-search button").click()
            wait_for(browser, lambda d: count(d, "#runs tbody tr") == 2, "the nlp runs only")
            browser.find_element("id", "runs-name").send_keys("BUDGET")
            browser.find_element("css selector", "#runs-search button").click()
            wait_for(browser, lambda d: count(d, "#runs tbody tr") == 1, "run-b alone")
            assert shown(browser, "#runs tbody tr").get_attribute("data-run-id") == "run-b"
            error = browser.find_element("id", "error")
            assert not error.is_displayed(), error.text
            assert severe(browser) == []  # no console error, no refused call
            screenshot(browser, tmp_path, "dashboard.png")


@pytest.mark.slow
def test_dashboard_asks_for_the_token_and_sends_it(tmp_path, browser):
    with (
        seeded_state(tmp_path, token=TOKEN) as state,
        serving(create_app(state.settings, state)) as base,
    ):
        browser.get(f"{base}/ui")
        field = shown(browser, "#token-input")
        assert "Bearer" in shown(browser, "#error").text  # the API's detail
        field.send_keys("wrong-token")
        browser.find_element("id", "token-submit").click()
        wait_for(
            browser,
            lambda d: "the token was refused" in d.find_element("id", "error").text,
            "refusal",
        )
        shown(browser, "#token-input").send_keys(TOKEN)
        browser.find_element("id", "token-submit").click()

        shown(browser, "#runs tr[data-run-id='run-a']").click()
        shown(browser, f"#checkpoints tr[data-step='{STEP}']")
        assert not browser.find_element("id", "token-form").is_displayed()
        stored = browser.execute_script(f"return sessionStorage.getItem('{TOKEN_KEY}')")
        assert stored == TOKEN
        browser.refresh()  # the tab keeps the token: no question this time
        shown(browser, f"#checkpoints tr[data-step='{STEP}']")
        assert not browser.find_element("id", "token-form").is_displayed()
        screenshot(browser, tmp_path, "dashboard-token.png")
        # the only errors are the browser's notes of refused calls (no token, then a wrong one)
        refused = severe(browser)
        assert refused and all(" 401 " in e["message"] for e in refused), refused
