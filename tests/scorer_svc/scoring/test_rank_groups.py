"""The scorer's ranks as process groups (gloo on the CPU): the control traffic on the gloo
group, only the checkpoint's tensors on the default group; a rank that cannot prepare or
allocate its receive buffer fails the checkpoint, before any tensor moves, and the next one
is scored by every rank; a lost rank is noticed without waiting for the group's timeout."""

import json
import multiprocessing
import os
import signal
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
from safetensors.torch import save_file

from delta_loss_devtools.scorer_process import free_port
from delta_loss_devtools.waiting import wait_until
from scorer_svc.scoring import ranks
from scorer_svc.scoring.batches import Batch
from scorer_svc.scoring.ranks import RankGroup, RankLost, share
from scorer_svc.storage import checkpoint_files
from scorer_svc.storage.checkpoint_files import StoredCheckpoint

CPU = torch.device("cpu")
N_SAMPLES = 12
CHECKPOINT = {"w": torch.arange(6.0).view(2, 3), "v": torch.full((4,), 0.5)}
TOTAL = float(sum(t.sum() for t in CHECKPOINT.values()))  # 17.0
# far beyond any wait below: a loss noticed in time was not noticed by a timeout
GROUP_TIMEOUT_S = 3600


def _batches() -> list[Batch]:
    out = []
    for first in range(0, N_SAMPLES, 3):
        ids = torch.ones(3, 4 + first, dtype=torch.long)
        out.append(Batch(list(range(first, first + 3)), ids, torch.ones_like(ids), ids))
    return out


class SumModel:
    """A scoring model whose every loss is the sum of its tensors: equal to TOTAL exactly
    when the checkpoint reached them. Its tensors are bfloat16, the checkpoint's float32."""

    def __init__(self) -> None:
        self.targets = {n: torch.zeros_like(t, dtype=torch.bfloat16) for n, t in CHECKPOINT.items()}

    def score(self, batches, n_samples, **_) -> np.ndarray:
        losses = np.full(n_samples, np.nan)
        total = float(sum(t.double().sum() for t in self.targets.values()))
        for batch in batches:
            losses[batch.indices] = total
        return losses


class Registry:
    """A follower's registry: every run can be prepared."""

    settings = None

    def __init__(self) -> None:
        self.runs = self.models = self  # its run data store and model catalogue in one

    def hello_of(self, run_id, config):
        return run_id

    def prepare(self, hello):
        return SimpleNamespace(batches=_batches())

    def model(self, hello):
        return SumModel()


class RefusedOnce:
    """An allocation that fails the first time, as a GPU another process fills would."""

    def __init__(self, allocate) -> None:
        self.allocate = allocate
        self.asked = 0

    def __call__(self, count: int, device: torch.device) -> torch.Tensor:
        self.asked += 1
        if self.asked == 1:
            raise torch.OutOfMemoryError(f"could not allocate {count} bytes on {device}")
        return self.allocate(count, device)


class RegistryFailingOnce:
    """A follower's registry: the first run asked for cannot be prepared, the next can."""

    settings = None

    def __init__(self) -> None:
        self.asked = 0
        self.runs = self.models = self  # its run data store and model catalogue in one

    def hello_of(self, run_id, config):
        self.asked += 1
        if self.asked == 1:
            raise FileNotFoundError("the base model is not on this host")
        return run_id

    def prepare(self, hello):
        return SimpleNamespace(batches=_batches())

    def model(self, hello):
        return SumModel()


def _stored(folder: Path) -> StoredCheckpoint:
    path = folder / "step.safetensors"
    if not path.exists():
        save_file(CHECKPOINT, path)
    return StoredCheckpoint.open(path)


def _join(rank: int, world: int, port: int) -> RankGroup:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world))  # fmt: skip
    return RankGroup.start(CPU, GROUP_TIMEOUT_S)


def _report(folder: Path, rank: int, result: object) -> None:
    tmp = folder / f"rank-{rank}.tmp"
    tmp.write_text(json.dumps(result))
    tmp.replace(folder / f"rank-{rank}.json")


def _reported(folder: Path, rank: int):
    path = folder / f"rank-{rank}.json"
    return json.loads(path.read_text()) if path.exists() else None


# one rank, in this process: which group carries what


@pytest.fixture
def one_rank(tmp_path):
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    try:
        yield RankGroup.start(CPU, GROUP_TIMEOUT_S)
    finally:
        dist.destroy_process_group()


def _record_groups(monkeypatch, group: RankGroup) -> list[tuple[str, str]]:
    """(collective, "control" or "default") of every collective from now on."""
    calls: list[tuple[str, str]] = []
    for op in ("broadcast", "all_reduce", "gather", "barrier"):
        real = getattr(dist, op)

        def recording(*args, _op=op, _real=real, **kwargs):
            on = "control" if kwargs.get("group") is group.control else "default"
            calls.append((_op, on))
            return _real(*args, **kwargs)

        monkeypatch.setattr(dist, op, recording)
    return calls


def test_only_the_checkpoints_tensors_travel_on_the_default_group(one_rank, monkeypatch, tmp_path):
    calls = _record_groups(monkeypatch, one_rank)
    model = SumModel()
    config = {"run_id": "r", "n_samples": N_SAMPLES}
    losses = one_rank.score(config, _stored(tmp_path), _batches(), model, N_SAMPLES)
    np.testing.assert_array_equal(losses, np.full(N_SAMPLES, TOTAL))
    assert calls == [
        ("broadcast", "control"), ("broadcast", "control"),  # the command: its size, its bytes
        ("all_reduce", "control"),  # every rank prepared and made its buffer
        ("broadcast", "default"), ("broadcast", "default"),  # the two tensors
        ("broadcast", "control"),  # rank 0 read and copied them
        ("gather", "control"),  # the losses and statuses
    ]  # fmt: skip
    calls.clear()
    monkeypatch.setattr(ranks, "HEARTBEAT_SECONDS", 0.0)
    one_rank.heartbeat()
    assert calls == [("broadcast", "control")] * 2


def test_rank_0_short_of_memory_fails_the_checkpoint_before_any_tensor_moves(
    one_rank, monkeypatch, tmp_path
):
    calls = _record_groups(monkeypatch, one_rank)
    monkeypatch.setattr(
        checkpoint_files, "allocate_bytes", RefusedOnce(checkpoint_files.allocate_bytes)
    )
    config = {"run_id": "r", "n_samples": N_SAMPLES}
    with pytest.raises(torch.OutOfMemoryError):
        one_rank.score(config, _stored(tmp_path), _batches(), SumModel(), N_SAMPLES)
    assert calls == [("broadcast", "control")] * 2 + [("all_reduce", "control"),
                                                      ("gather", "control")]  # fmt: skip
    assert one_rank.lost is None  # the checkpoint failed, not the group
    losses = one_rank.score(config, _stored(tmp_path), _batches(), SumModel(), N_SAMPLES)
    np.testing.assert_array_equal(losses, np.full(N_SAMPLES, TOTAL))


class NeverScored(SumModel):
    def score(self, batches, n_samples, **_) -> np.ndarray:
        raise AssertionError("scored a checkpoint that did not reach the model")


class Unreadable(StoredCheckpoint):
    """A stored checkpoint whose second tensor cannot be read."""

    @contextmanager
    def reading(self, device):
        with super().reading(device) as read:

            def failing(name: str) -> torch.Tensor:
                if name == self.table[1][0]:
                    raise OSError("the disk went away")
                return read(name)

            yield failing


def test_rank_0_that_cannot_read_a_tensor_tells_the_others_and_scores_nothing(
    one_rank, monkeypatch, tmp_path
):
    calls = _record_groups(monkeypatch, one_rank)
    stored = _stored(tmp_path)
    config = {"run_id": "r", "n_samples": N_SAMPLES}
    unreadable = Unreadable(stored.path, stored.table)
    with pytest.raises(OSError, match="the disk went away"):
        one_rank.score(config, unreadable, _batches(), NeverScored(), N_SAMPLES)
    assert calls[-4:] == [("broadcast", "default"), ("broadcast", "default"),  # both tensors
                          ("broadcast", "control"), ("gather", "control")]  # fmt: skip
    assert one_rank.lost is None
    losses = one_rank.score(config, stored, _batches(), SumModel(), N_SAMPLES)
    np.testing.assert_array_equal(losses, np.full(N_SAMPLES, TOTAL))


# two ranks, each a process of its own


def _lead(folder: Path, port: int) -> None:
    """Rank 0: a checkpoint the follower cannot prepare, then one it can; then stop."""
    group = _join(0, 2, port)
    config = {"run_id": "r", "n_samples": N_SAMPLES}
    results: list[object] = []
    for _ in range(2):
        try:
            losses = group.score(config, _stored(folder), _batches(), SumModel(), N_SAMPLES)
            results.append(losses.tolist())
        except RuntimeError as exc:
            results.append(str(exc))
    _report(folder, 0, results)
    group.stop_others()


def _follow(folder: Path, port: int) -> None:
    """Rank 1: the first run asked for cannot be prepared."""
    group = _join(1, 2, port)
    _report(folder, 1, group.follow(RegistryFailingOnce()))


def _follow_short_of_memory(folder: Path, port: int) -> None:
    """Rank 1: its first receive buffer cannot be allocated."""
    checkpoint_files.allocate_bytes = RefusedOnce(checkpoint_files.allocate_bytes)
    group = _join(1, 2, port)
    _report(folder, 1, group.follow(Registry()))


def _beat(folder: Path, port: int) -> None:
    """Rank 0 while idle: a heartbeat as often as it may, until a rank is lost."""
    ranks.HEARTBEAT_SECONDS = 0.0
    group = _join(0, 2, port)
    group.heartbeat()
    _report(folder, 0, "beating")
    while True:
        try:
            group.heartbeat()
        except RankLost as exc:
            _report(folder, 0, str(exc))
            return


def _lost(folder: Path) -> str | None:
    """What rank 0 said once it lost a rank; None while it beats."""
    said = _reported(folder, 0)
    return None if said == "beating" else said


def _start(*targets, folder: Path) -> list[multiprocessing.Process]:
    context = multiprocessing.get_context("spawn")
    port = free_port()
    processes = [context.Process(target=t, args=(folder, port), daemon=True) for t in targets]
    for process in processes:
        process.start()
    return processes


def _exited(processes: list[multiprocessing.Process]) -> list[int | None]:
    return [process.exitcode for process in processes]


@pytest.mark.slow
@pytest.mark.parametrize("follow", [_follow, _follow_short_of_memory],
                         ids=["cannot-prepare", "cannot-allocate"])  # fmt: skip
def test_a_follower_that_cannot_prepare_or_allocate_fails_the_checkpoint_naming_it(
    tmp_path, follow
):
    processes = _start(_lead, follow, folder=tmp_path)
    try:
        assert wait_until(lambda: None not in _exited(processes), "both ranks done")
    finally:
        for process in processes:
            process.kill()
    assert _exited(processes) == [0, 0]
    failed, scored = _reported(tmp_path, 0)
    assert failed == "rank(s) [1] of the scorer could not score their share (see their log)"
    # the ranks stayed in step: the next checkpoint reached both models, each scored a share
    assert scored == [TOTAL] * N_SAMPLES
    assert all(share(_batches(), 2))
    assert _reported(tmp_path, 1) == 0  # rank 1 stopped as rank 0 asked


@contextmanager
def _two_beating_ranks(folder):
    """Rank 0 sending heartbeats, rank 1 following; both killed at the end."""
    processes = _start(_beat, _follow, folder=folder)
    try:
        wait_until(lambda: _reported(folder, 0) == "beating", "a first heartbeat")
        yield processes
    finally:
        for process in processes:
            process.kill()


@pytest.mark.slow
def test_a_follower_killed_while_idle_is_lost_at_the_next_heartbeat(tmp_path):
    """The group's timeout is an hour: the loss is noticed by the heartbeat, not by it."""
    with _two_beating_ranks(tmp_path) as processes:
        os.kill(processes[1].pid, signal.SIGKILL)
        lost = wait_until(lambda: _lost(tmp_path), "rank 1 lost")
    assert lost.startswith("a scorer rank stopped answering"), lost


@pytest.mark.slow
def test_a_follower_notices_at_once_that_rank_0_is_gone(tmp_path):
    with _two_beating_ranks(tmp_path) as processes:
        os.kill(processes[0].pid, signal.SIGKILL)
        wait_until(lambda: processes[1].exitcode is not None, "rank 1 stopping")
    assert _reported(tmp_path, 1) == 1  # follow: lost the other ranks
