"""The scorer's parts, built once at start and shared by the routes and the threads."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from scorer_svc.config import Settings
from scorer_svc.failures import UnrecordedFailures
from scorer_svc.intake import IntakeServer
from scorer_svc.weights import WeightsCache
from scorer_svc.worker import Worker


@dataclass
class ServiceState:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    worker: Worker
    intake: IntakeServer
    weights: WeightsCache
    failures: UnrecordedFailures
