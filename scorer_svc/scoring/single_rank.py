"""Scoring in this process alone: what the worker scores with when no other ranks share the
work (a scorer not launched by torchrun). It answers as a RankGroup does, and never loses a
rank."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from scorer_svc.scoring.batches import Batch
from scorer_svc.scoring.model import ScoringModel
from scorer_svc.storage.checkpoint_files import StoredCheckpoint


class SingleRank:
    """The worker's scoring when it is the only rank: the checkpoint's tensors are copied
    into the model, which scores every batch here."""

    lost: str | None = None  # a single rank is never lost

    def heartbeat(self) -> None:
        """No other rank waits for one."""

    def stop_others(self) -> None:
        """No other rank to stop."""

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
        """Every sample's loss (NaN for those not in batches); config and samples are what
        other ranks would be told, and unused here."""
        checkpoint.copy_into(model.targets, model.device)
        return model.score(batches, n_samples, stop=stop, desc=desc, on_batch=on_batch)
