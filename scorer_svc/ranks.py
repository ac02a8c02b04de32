"""One logical scorer over several processes (torchrun): rank 0 owns the intake, the database
and REST; every rank scores a share of each checkpoint's samples.

For each checkpoint rank 0 broadcasts a command (the run's stored hello and the tensor table,
as JSON bytes: nothing is pickled), then every tensor, then all ranks score their share of
the run's batches (balanced by token count, the same split computed on every rank) and rank 0
gathers the losses. Every rank goes through the same collectives whatever happens locally: a
rank that cannot score reports it in its result, and the checkpoint fails naming the rank.
While there is nothing to score rank 0 broadcasts `idle` every HEARTBEAT_SECONDS, so no rank
sits in one collective for longer than the process group's timeout allows.
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

from common import dtypes
from common.collectives import broadcast_json, start_group
from scorer_svc.batching import Batch
from scorer_svc.registry import Registry
from scorer_svc.scoring import ScoringAborted, ScoringModel

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 5.0


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
    """The default process group of a torchrun-launched scorer, on `device`'s backend."""

    rank: int
    world: int
    device: torch.device  # where this rank scores; collectives run there (NCCL) or on the CPU

    @classmethod
    def start(cls, device: torch.device, timeout_seconds: float) -> RankGroup:
        start_group(device, timeout_seconds)
        group = cls(dist.get_rank(), dist.get_world_size(), device)
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
        tensors: dict[str, torch.Tensor],
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
        table = [[name, dtypes.name_of(t.dtype), list(t.shape)] for name, t in tensors.items()]
        with self._collectives():
            command = {"op": "score", "config": config, "tensors": table, "samples": samples}
            self._broadcast_json(command)
            for tensor in tensors.values():
                self._broadcast_tensor(tensor.contiguous())
            losses = np.full(n_samples, np.nan)
            error: Exception | None = None
            try:  # whatever happens here, the others wait in the gather: always reach it
                model.apply(tensors)
                mine = [batches[i] for i in share(batches, self.world)[0]]
                scaled = None
                if on_batch is not None:
                    world, report = self.world, on_batch
                    scaled = lambda rows, tokens: report(rows * world, tokens * world)  # noqa: E731
                losses = model.score(mine, n_samples, stop=stop, desc=desc, on_batch=scaled)
            except Exception as exc:
                error = exc
            results = self._gather(losses, error is None)
        if error is not None:
            raise error
        failed = [rank for rank, (ok_r, _) in enumerate(results) if not ok_r]
        if failed:
            raise RuntimeError(
                f"rank(s) {failed} of the scorer could not score their share (see their log)"
            )
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
        # Each tensor arrives on the collective's device and is kept on the CPU, as rank 0
        # keeps its own: no second copy of the weights beside the model's on the GPU.
        tensors = {
            name: self._broadcast_tensor(
                torch.empty(shape, dtype=dtypes.BY_NAME[dtype].torch, device=self.comm_device)
            ).cpu()
            for name, dtype, shape in command["tensors"]
        }
        config = command["config"]
        n_samples = int(config["n_samples"])
        ok, losses = True, np.full(n_samples, np.nan)
        try:
            hello = registry.hello_of(config["run_id"], config)
            data = registry.prepare(hello)
            model = registry.model(hello)
            model.apply(tensors)
            batches = data.batches
            if command.get("samples") is not None:
                batches = data.only(command["samples"], registry.settings)
            mine = [batches[i] for i in share(batches, self.world)[self.rank]]
            losses = model.score(mine, n_samples, stop=stopping, desc=f"rank {self.rank}")
        except ScoringAborted:
            log.info("rank %d: stopping, its share left unscored", self.rank)
            ok = False
        except Exception:
            log.exception("rank %d could not score its share", self.rank)
            ok = False
        self._gather(losses, ok)

    # collectives

    def _collectives(self) -> _Guard:
        return _Guard(self)

    def _broadcast_json(self, obj: Any) -> Any:
        return broadcast_json(obj, device=self.comm_device)

    def _broadcast_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        on_device = tensor.to(self.comm_device)
        dist.broadcast(on_device, src=0)
        return on_device

    def _gather(self, losses: np.ndarray, ok: bool) -> list[tuple[bool, np.ndarray]]:
        """(ok, losses) of every rank on rank 0; [] elsewhere. The flag rides as the last
        element, so one collective carries both."""
        row = torch.from_numpy(np.append(losses, 1.0 if ok else 0.0)).to(self.comm_device)
        rows = [torch.empty_like(row) for _ in range(self.world)] if self.rank == 0 else None
        dist.gather(row, rows, dst=0)
        if rows is None:
            return []
        return [(bool(r[-1].item() == 1.0), r[:-1].cpu().numpy()) for r in rows]


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
