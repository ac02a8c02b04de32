"""The update callback's decisions at the last step, with stand-ins for the update side."""

from types import SimpleNamespace

from trainer_svc.scorer.retry import ScorerFailure
from trainer_svc.training.trainer import GracefulStop, SelectionCallback


class Updates:
    def __init__(self, failure=None):
        self.failure = failure
        self.finish_stop = None

    def check_sent(self):
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise failure

    def run_update(self, segment, tensors):
        raise AssertionError("no update at these steps")

    def finish(self, stop_requested):
        self.finish_stop = stop_requested()

    def unsent(self):
        return None


class Trained:
    def flush(self):
        pass


class NoUpdates:
    def update_at(self, step):
        return None


def _callback(updates):
    stop = GracefulStop()
    return SelectionCallback(NoUpdates(), updates, dict, Trained(), stop), stop


def test_a_send_failure_noticed_at_the_last_step_is_reported_after_the_model_is_saved():
    updates = Updates(ScorerFailure("sending the checkpoint step 10 (update 1) failed"))
    callback, stop = _callback(updates)
    state, control = SimpleNamespace(global_step=12, max_steps=12), SimpleNamespace()
    callback.on_step_end(None, state, control)
    assert not stop.requested  # no stop checkpoint: training is over, the model gets saved
    assert "step 10" in str(callback.unsent_at_end)


def test_a_send_failure_before_the_last_step_stops_the_run():
    updates = Updates(ScorerFailure("sending the checkpoint step 4 (update 2) failed"))
    callback, stop = _callback(updates)
    callback.on_step_end(None, SimpleNamespace(global_step=5, max_steps=12), SimpleNamespace())
    assert stop.failure is not None and callback.unsent_at_end is None


def test_a_stop_asked_for_in_the_last_step_still_waits_for_the_last_send():
    updates = Updates()
    callback, stop = _callback(updates)
    stop.signal = 15  # SIGTERM during the last step
    callback.on_train_end(None, SimpleNamespace(global_step=12, max_steps=12), SimpleNamespace())
    assert updates.finish_stop is False  # the wait is not cut short by that same stop
