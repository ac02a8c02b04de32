"""A worker's collaborators for the tests: real, fresh and lightweight (scoring in this
process alone, an empty weights cache, metrics and progress of its own)."""

from __future__ import annotations

from typing import Any

from scorer_svc.metrics import ScorerMetrics
from scorer_svc.scoring.progress import ScoringProgress
from scorer_svc.scoring.single_rank import SingleRank
from scorer_svc.scoring.weights import WeightsCache


def worker_parts(**given: Any) -> dict[str, Any]:
    """Worker keyword arguments group, weights, metrics and progress: fresh ones, but for
    those given."""
    parts: dict[str, Any] = {
        "group": SingleRank(),
        "weights": WeightsCache(),
        "metrics": ScorerMetrics(),
        "progress": ScoringProgress(),
    }
    return {**parts, **given}
