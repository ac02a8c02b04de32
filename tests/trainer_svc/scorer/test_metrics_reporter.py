"""The metrics reporter: what the Trainer logs reaches the scorer in batches from its own
thread; adding never waits on the scorer; a batch not taken is sent again; a full queue lets
the oldest go and counts them; closing sends what is left within a bounded time."""

import threading

import pytest

from common.api.schemas import MetricPoint
from delta_loss_devtools.waiting import wait_until
from trainer_svc.scorer.metrics_reporter import MetricsReporter, points_of


def test_a_log_lines_finite_numbers_are_its_points():
    logs = {"loss": 1.5, "learning_rate": 1e-4, "epoch": 0.5, "flag": True, "note": "x",
            "grad_norm": float("nan"), "selection/window_start": 3, "bad=key": 1.0}  # fmt: skip
    assert points_of(7, logs) == [
        MetricPoint(key="loss", step=7, value=1.5),
        MetricPoint(key="learning_rate", step=7, value=1e-4),
        MetricPoint(key="epoch", step=7, value=0.5),
        MetricPoint(key="selection/window_start", step=7, value=3.0),
    ]


class Scorer:
    """Takes batches, refusing the first `refuse` of them; `gate` holds a send until set."""

    def __init__(self, refuse: int = 0) -> None:
        self.batches: list[list[MetricPoint]] = []
        self.refuse = refuse
        self.tries = 0
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()

    def send(self, batch: list[MetricPoint]) -> None:
        self.gate.wait()
        with self.lock:
            self.tries += 1
            if self.tries <= self.refuse:
                raise ConnectionError("scorer away")
            self.batches.append(batch)

    def steps(self) -> list[int]:
        with self.lock:
            return [p.step for batch in self.batches for p in batch]


def test_points_arrive_in_order_in_batches():
    scorer = Scorer()
    reporter = MetricsReporter(scorer.send, interval=0.01, batch=3)
    for step in range(10):
        reporter.add(step, {"loss": float(step)})
    wait_until(lambda: len(scorer.steps()) == 10, "every point sent", timeout=60)
    reporter.close()
    assert scorer.steps() == list(range(10))
    assert all(len(b) <= 3 for b in scorer.batches) and reporter.sent == 10


def test_adding_never_waits_on_a_scorer_that_hangs():
    scorer = Scorer()
    scorer.gate.clear()  # every send hangs until released
    reporter = MetricsReporter(scorer.send, interval=0.01, batch=2, max_pending=100)
    reporter.add(0, {"loss": 0.0})
    wait_until(lambda: reporter.pending() == 0, "the first batch taken into a send", timeout=60)
    for step in range(1, 1001):  # all while the send hangs: returns at once each time
        reporter.add(step, {"loss": float(step)})
    assert reporter.pending() == 100 and reporter.dropped == 900  # the oldest went
    scorer.gate.set()
    wait_until(lambda: reporter.pending() == 0, "the queue sent once released", timeout=60)
    reporter.close()
    assert scorer.steps() == [0, *range(901, 1001)]


def test_a_batch_not_taken_is_sent_again_and_the_outage_logged_once(caplog):
    scorer = Scorer(refuse=3)
    with caplog.at_level("INFO", logger="trainer_svc.scorer.metrics_reporter"):
        reporter = MetricsReporter(scorer.send, interval=0.01)
        for step in range(5):
            reporter.add(step, {"loss": 1.0})
        wait_until(lambda: len(scorer.steps()) == 5, "sent once the scorer takes them", timeout=60)
        reporter.close()
    assert scorer.steps() == list(range(5)) and scorer.tries == 4
    messages = [r.getMessage() for r in caplog.records]
    assert sum("did not store logged metrics" in m for m in messages) == 1
    assert any("stores logged metrics again (3 batch(es) retried)" in m for m in messages)


def test_closing_sends_what_is_left_and_says_what_was_not_stored(caplog):
    scorer = Scorer()
    reporter = MetricsReporter(scorer.send, interval=3600)  # only closing sends
    reporter.add(1, {"loss": 1.0, "eval_loss": 2.0})
    reporter.close()
    assert scorer.steps() == [1, 1]
    gone = Scorer(refuse=10**6)
    reporter = MetricsReporter(gone.send, interval=3600)
    reporter.add(1, {"loss": 1.0})
    with caplog.at_level("WARNING"):
        reporter.close(timeout=60)
    assert "1 logged value(s) not stored by the scorer" in caplog.text


@pytest.mark.parametrize("bad", [{"loss": float("inf")}, {"": 1.0}, {"k" * 251: 1.0}])
def test_what_the_scorer_would_refuse_is_left_out(bad):
    assert points_of(1, bad) == []


def test_the_trainers_log_reaches_the_reporter_through_its_callback_handler():
    """The selection's events, as a Trainer calls them: each log line at its step."""
    from transformers import TrainerControl, TrainerState, TrainingArguments
    from transformers.trainer_callback import CallbackHandler

    from trainer_svc.training.selection import _SelectionEvents

    class Queue:
        def __init__(self) -> None:
            self.added: list[tuple[int, dict]] = []

        def add(self, step: int, logs: dict) -> None:
            self.added.append((step, logs))

    events = _SelectionEvents()
    events.metrics = queue = Queue()  # type: ignore[assignment]
    handler = CallbackHandler([events], None, None, None, None)
    state = TrainerState()
    state.global_step = 7
    args = TrainingArguments("unused", report_to=[])
    handler.on_log(args, state, TrainerControl(), {"loss": 1.5})
    assert queue.added == [(7, {"loss": 1.5})]
