"""One logical scorer over several processes (torchrun): rank 0 owns the intake, the database
and REST; every rank scores a share of each checkpoint's samples.

Two process groups join the ranks. The default group (NCCL on GPUs, gloo on CPUs) carries
only the checkpoint's tensors; a gloo group, made by every rank right after the default one
starts, carries the control traffic: the commands, the heartbeat, the ranks' readiness, rank
0's stream status and the losses gathered with each rank's status (small, and nothing is
pickled).

Each checkpoint is one sequence of collectives, the same on every rank whatever fails
locally (every branch below is taken by all ranks together, on values they all received):
1. command (control, broadcast): the run's stored hello, the tensor table and the samples,
   as JSON bytes. Every rank prepares its run and model (rank 0 has them) and allocates its
   receive buffer (the largest tensor's bytes, on its device), catching any failure.
2. readiness (control, all_reduce MIN of each rank's ok flag). If a rank could not prepare
   or allocate, no rank enters the stream: on to 5, where the ranks that could not report
   it and the checkpoint fails naming them.
3. the stream (default group, one broadcast per tensor): rank 0 reads each tensor from the
   stored file into host memory and copies it into its buffer, the others receive it into
   theirs, and every rank copies it into its model's tensor; beside the model one tensor's
   bytes are alive per rank (and on rank 0's host), and nothing is allocated on the device.
   A local failure (a read, a copy) stops the reading and copying there but not the
   broadcasts. The buffer is then freed, for scoring.
4. rank 0's stream status (control, broadcast): if rank 0 could not read or copy a tensor,
   no rank scores (the others may hold what was not the checkpoint's) and the checkpoint
   fails with rank 0's error; otherwise every rank whose own stream went through scores its
   share of the run's batches (balanced by token count, the same split on every rank).
5. the losses (control, gather to rank 0), each rank's row ending in its status: scored,
   failed (it could not prepare, allocate, take the tensors or score: named in the
   checkpoint's error, and in its own log) or skipped (another rank's failure stopped it).
While there is nothing to score rank 0 broadcasts `idle` every HEARTBEAT_SECONDS, so no rank
sits in one collective for longer than the process group's timeout allows. A collective that
fails (a rank lost) breaks the group; a local failure never does.

What is noticed when, a gloo collective failing as soon as a peer's connection closes:
- a rank that dies while idle: at rank 0's next heartbeat (HEARTBEAT_SECONDS apart), and
  /healthz answers 503; rank 0 dying: by every other rank at once;
- a rank that dies while the ranks prepare or score: as soon as another waits for it on the
  control group (the readiness exchange, the gather of the losses);
- a rank that dies while the tensors stream (NCCL): only when the default group's timeout
  (rank_timeout_seconds) ends the NCCL collective; the readiness exchange just before the
  stream has shown every rank alive, so only a death within the stream itself waits;
- a rank that hangs without dying: when the collective it holds up times out;
- a rank that cannot prepare its run or allocate its buffer (out of memory on a GPU it
  shares): at the readiness exchange, before any tensor moves; rank 0's failed read or copy:
  after the stream, before any rank scores; another rank's failed copy or scoring: in the
  gather. None of these costs more than the checkpoint: the next one is scored by all ranks.
"""

from __future__ import annotations

import heapq
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from common.collectives import broadcast_json, control_group, start_group
from scorer_svc.scoring.batches import Batch
from scorer_svc.scoring.model import ScoringAborted, ScoringModel
from scorer_svc.scoring.registry import Registry
from scorer_svc.storage.checkpoint_files import (
    StoredCheckpoint,
    TableRow,
    receive_buffer,
    stream_tensors,
)

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 5.0
CPU = torch.device("cpu")

# a rank's status, the last element of its row in the gather of the losses
SCORED, FAILED, SKIPPED = 1.0, 0.0, -1.0


class RankLost(RuntimeError):
    """A collective failed: a rank died or stopped answering. The group cannot be used again."""


def share(batches: Sequence[Batch], world: int) -> list[list[int]]:
    """Batch positions per rank, balanced by real tokens: the largest batch first to the least
    loaded rank (ties to the lower rank). Pure: every rank computes the same split."""
    load = [(0, rank) for rank in range(world)]
    shares: list[list[int]] = [[] for _ in range(world)]
    order = sorted(range(len(batches)), key=lambda i: (-batches[i].real_tokens, i))
    for position in order:
        tokens, rank = heapq.heappop(load)
        shares[rank].append(position)
        heapq.heappush(load, (tokens + batches[position].real_tokens, rank))
    return [sorted(s) for s in shares]


@dataclass(eq=False)
class RankGroup:
    """The ranks of a torchrun-launched scorer: the default process group, on `device`'s
    backend, for the checkpoints' tensors, and `control`, a gloo group, for the rest."""

    rank: int
    world: int
    device: torch.device  # where this rank scores; tensors travel there (NCCL) or on the CPU
    control: dist.ProcessGroup  # gloo: commands, heartbeats, readiness, losses

    @classmethod
    def start(cls, device: torch.device, timeout_seconds: float) -> RankGroup:
        start_group(device, timeout_seconds)
        control = control_group(timeout_seconds)
        group = cls(dist.get_rank(), dist.get_world_size(), device, control)
        log.info("rank %d of %d on %s (%s)", group.rank, group.world, device, dist.get_backend())
        return group

    def __post_init__(self) -> None:
        self.lost: str | None = None  # why the group broke, once it has
        self.stopped = False  # rank 0 told the others to stop
        self._lock = threading.Lock()  # one sequence of collectives at a time (rank 0)
        self._last = time.monotonic()

    @property
    def comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    # rank 0

    def score(
        self,
        config: dict[str, Any],
        checkpoint: StoredCheckpoint,
        batches: Sequence[Batch],
        model: ScoringModel,
        n_samples: int,
        *,
        samples: list[int] | None = None,
        stop: threading.Event | None = None,
        desc: str = "scoring",
        on_batch: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Every sample's loss, scored by all ranks; RankLost if a collective fails,
        RuntimeError naming the ranks that could not score their share. samples: the only
        samples to score (a scoring budget; batches are then theirs), which every rank is
        told. on_batch follows rank 0's batches, scaled by the number of ranks (the shares
        are alike)."""
        if self.stopped or (stop is not None and stop.is_set()):
            raise ScoringAborted(desc)  # left pending: scored after the restart
        command = {"op": "score", "config": config, "tensors": checkpoint.table, "samples": samples}
        # the file is opened before any collective: a file that cannot be read fails the
        # checkpoint, not the group. Its tensors are read into host memory, one at a time,
        # and copied into the receive buffer on the device.
        with checkpoint.reading(CPU) as read, self._collectives():
            self._broadcast_json(command)
            streamed, error = self._take(checkpoint.table, read, model)
            if streamed:
                self._rank_0_streamed(error is None)
            status, losses = (SCORED if streamed else SKIPPED), np.full(n_samples, np.nan)
            if error is None and streamed:  # whatever happens here, the others wait in the gather
                try:
                    losses = self._score_first_share(
                        batches, model, n_samples, stop, desc, on_batch
                    )
                except Exception as exc:
                    error = exc
            results = self._gather(losses, FAILED if error is not None else status)
        if error is not None:
            raise error
        return self._combined(results, batches, n_samples)

    def _score_first_share(
        self,
        batches: Sequence[Batch],
        model: ScoringModel,
        n_samples: int,
        stop: threading.Event | None,
        desc: str,
        on_batch: Callable[[int, int], None] | None,
    ) -> np.ndarray:
        """Rank 0's share of the losses; on_batch scaled to the whole checkpoint."""
        mine = [batches[i] for i in share(batches, self.world)[0]]
        scaled = None
        if on_batch is not None:
            world, report = self.world, on_batch
            scaled = lambda rows, tokens: report(rows * world, tokens * world)  # noqa: E731
        return model.score(mine, n_samples, stop=stop, desc=desc, on_batch=scaled)

    def _combined(
        self, results: list[tuple[float, np.ndarray]], batches: Sequence[Batch], n_samples: int
    ) -> np.ndarray:
        """Every rank's share of the losses in one array; RuntimeError naming the ranks that
        could not score theirs (or, were there none, those that skipped theirs)."""
        failed = [rank for rank, (status, _) in enumerate(results) if status == FAILED]
        if failed:
            raise RuntimeError(
                f"rank(s) {failed} of the scorer could not score their share (see their log)"
            )
        skipped = [rank for rank, (status, _) in enumerate(results) if status != SCORED]
        if skipped:
            raise RuntimeError(f"rank(s) {skipped} of the scorer did not score their share")
        combined = np.full(n_samples, np.nan)
        for rank, positions in enumerate(share(batches, self.world)):
            indices = [i for p in positions for i in batches[p].indices]
            combined[indices] = results[rank][1][indices]
        return combined

    def heartbeat(self) -> None:
        """Tell the other ranks rank 0 is alive, at most every HEARTBEAT_SECONDS."""
        if self.stopped or self.lost is not None:
            return
        if time.monotonic() - self._last >= HEARTBEAT_SECONDS:
            with self._collectives():
                self._broadcast_json({"op": "idle"})

    def stop_others(self) -> None:
        self.stopped = True
        if self.lost is None:
            try:
                with self._collectives():
                    self._broadcast_json({"op": "stop"})
            except RankLost:
                pass
        if self.lost is not None:
            log.error(
                "a scorer rank was lost (%s): restart the whole scorer with torchrun; the "
                "checkpoints not scored are scored then",
                self.lost,
            )
        dist.destroy_process_group()

    # ranks 1..world-1

    def follow(self, registry: Registry) -> int:
        """Score shares as rank 0 asks until it says stop (0) or is lost (1)."""
        stopping = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stopping.set())  # rank 0 says when to stop
        try:
            while True:
                command = self._broadcast_json(None)
                if command["op"] == "stop":
                    log.info("rank %d: stopping, as rank 0 asks", self.rank)
                    dist.destroy_process_group()
                    return 0
                if command["op"] == "score":
                    self._score_share(command, registry, stopping)
        except Exception as exc:  # a collective failed: rank 0 (or another rank) is gone
            log.error(
                "rank %d: lost the other ranks (%s: %s); stopping: restart the whole scorer",
                self.rank,
                type(exc).__name__,
                exc,
            )
            return 1

    def _score_share(
        self, command: dict[str, Any], registry: Registry, stopping: threading.Event
    ) -> None:
        n_samples = int(command["config"]["n_samples"])
        prepared = self._prepare(command, registry)
        model = None if prepared is None else prepared[0]
        streamed, failure = self._take(command["tensors"], None, model)
        if failure is not None:
            log.error(
                "rank %d could not take the checkpoint's tensors: %s: %s",
                self.rank,
                type(failure).__name__,
                failure,
            )
        failed = prepared is None or failure is not None
        status, losses = (FAILED if failed else SKIPPED), np.full(n_samples, np.nan)
        if streamed:
            rank_0_ok = self._rank_0_streamed(None)
            if not rank_0_ok:
                log.error("rank %d: rank 0 could not stream the checkpoint; not scored", self.rank)
            elif prepared is not None and failure is None:
                ok, losses = self._score_share_of(prepared[0], prepared[1], n_samples, stopping)
                status = SCORED if ok else FAILED
        self._gather(losses, status)

    def _prepare(
        self, command: dict[str, Any], registry: Registry
    ) -> tuple[ScoringModel, list[Batch]] | None:
        """The run's model and batches (those of the command's samples, under a budget);
        None, logged, when they cannot be had."""
        config = command["config"]
        try:
            hello = registry.runs.hello_of(config["run_id"], config)
            data = registry.runs.prepare(hello)
            model = registry.models.model(hello)
            if command.get("samples") is None:
                return model, data.batches
            return model, data.only(command["samples"], registry.settings)
        except Exception:
            log.exception("rank %d could not prepare its share", self.rank)
            return None

    def _score_share_of(
        self,
        model: ScoringModel,
        batches: list[Batch],
        n_samples: int,
        stopping: threading.Event,
    ) -> tuple[bool, np.ndarray]:
        """(ok, losses) of this rank's share of the batches."""
        mine = [batches[i] for i in share(batches, self.world)[self.rank]]
        try:
            return True, model.score(mine, n_samples, stop=stopping, desc=f"rank {self.rank}")
        except ScoringAborted:
            log.info("rank %d: stopping, its share left unscored", self.rank)
        except Exception:
            log.exception("rank %d could not score its share", self.rank)
        return False, np.full(n_samples, np.nan)

    # collectives

    def _collectives(self) -> _Guard:
        return _Guard(self)

    def _broadcast_json(self, obj: Any) -> Any:
        return broadcast_json(obj, device=torch.device("cpu"), group=self.control)

    def _take(
        self,
        table: Sequence[Sequence[Any]],
        read: Callable[[str], torch.Tensor] | None,
        model: ScoringModel | None,
    ) -> tuple[bool, Exception | None]:
        """The checkpoint's tensors from rank 0 (read: its file) into every rank's model, one
        at a time through this rank's receive buffer, once every rank is ready (model None:
        this rank could not prepare, and is not). (streamed: every rank was ready, so the
        tensors went through; this rank's first failure: its buffer, a read or a copy)."""
        rows: list[TableRow] = [(str(n), str(dtype), list(shape)) for n, dtype, shape in table]
        buffer, failure = None, None
        if model is not None:
            try:
                buffer = receive_buffer(rows, self.comm_device)
            except Exception as exc:  # out of memory, on a GPU another process shares
                failure = exc
        if not self._ready(buffer is not None) or buffer is None or model is None:
            return False, failure
        failure = stream_tensors(rows, read, self._broadcast_tensor, model.targets, buffer)
        del buffer  # back to the allocator, for scoring
        return True, failure

    def _ready(self, ok: bool) -> bool:
        """Whether every rank is ready (has prepared its run and its receive buffer), on the
        control group: the tensors' collectives (NCCL) then wait for no rank's preparation,
        are entered by all ranks or none, and a rank that died meanwhile is noticed here, at
        once."""
        flag = torch.tensor([1 if ok else 0], dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=self.control)
        return bool(flag.item())

    def _rank_0_streamed(self, ok: bool | None) -> bool:
        """Whether rank 0 read and copied every tensor (ok on rank 0, None elsewhere), from
        rank 0 to every rank on the control group."""
        flag = torch.tensor([1 if ok else 0], dtype=torch.int32)
        dist.broadcast(flag, src=0, group=self.control)
        return bool(flag.item())

    def _broadcast_tensor(self, tensor: torch.Tensor) -> None:
        """tensor's bytes from rank 0 into every rank's, in place, on the default group. On
        a GPU the host waits for it, so a failure shows at the tensor it concerns and the
        next tensor goes into the buffer only once this one has been taken."""
        dist.broadcast(tensor, src=0)
        if tensor.is_cuda:
            torch.cuda.current_stream(tensor.device).synchronize()

    def _gather(self, losses: np.ndarray, status: float) -> list[tuple[float, np.ndarray]]:
        """(status, losses) of every rank on rank 0; [] elsewhere, on the control group. The
        status (SCORED, FAILED, SKIPPED) rides as the last element, so one collective carries
        both."""
        row = torch.from_numpy(np.append(losses, status))
        rows = [torch.empty_like(row) for _ in range(self.world)] if self.rank == 0 else None
        dist.gather(row, rows, dst=0, group=self.control)
        if rows is None:
            return []
        return [(float(r[-1].item()), r[:-1].numpy()) for r in rows]


class _Guard:
    """One sequence of collectives: serialised on rank 0, and a failure breaks the group."""

    def __init__(self, group: RankGroup) -> None:
        self.group = group

    def __enter__(self) -> None:
        if self.group.lost is not None:
            raise RankLost(self.group.lost)
        self.group._lock.acquire()

    def __exit__(self, kind: Any, error: BaseException | None, tb: Any) -> None:
        self.group._last = time.monotonic()
        self.group._lock.release()
        if isinstance(error, Exception):  # the ranks' sequences of collectives now differ
            self.group.lost = f"{type(error).__name__}: {error}"
            raise RankLost(
                f"a scorer rank stopped answering ({error}); restart the whole scorer "
                "(torchrun): the checkpoints not scored are scored after the restart"
            ) from error
