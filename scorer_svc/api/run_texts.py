"""Runs' sample texts and their dataset rows' other columns, read again from each run's dataset.

The scorer keeps no text: it reads the run's dataset again, through the same access checks
as registration (scorer_svc.scoring.run_dataset, which the worker's tokenization reads it
through too), and serves it only once it tokenizes to the run's fingerprint, so that a file
changed since the run started is never shown as what the run trained on. What was read is
kept by run and fingerprint.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from cachetools import LRUCache, TTLCache
from fastapi import HTTPException
from pydantic import ValidationError

from common.api.schemas import ErrorBody
from common.data.datasets import DatasetError, Row, rows_size
from common.validation import describe_errors
from common.wire.errors import Forbidden
from common.wire.protocol import Hello
from scorer_svc.scoring.run_dataset import DatasetReader
from scorer_svc.scoring.single_flight import SingleFlight
from scorer_svc.scoring.weights import RunKey, run_key
from scorer_svc.storage.tables import Run

log = logging.getLogger(__name__)

# What reading a run's dataset may answer, besides the route's own answers.
DATASET_RESPONSES: dict[int | str, dict[str, Any]] = {
    403: {
        "model": ErrorBody,
        "description": "the run's dataset or model is outside this scorer's roots",
    },
    409: {
        "model": ErrorBody,
        "description": "the dataset can no longer be read, or changed since registration",
    },
}

MAX_TEXT_CHARACTERS = 256 << 20  # about how much text the rows kept hold
REFUSAL_SECONDS = 30.0  # how long a dataset that could not be served is not read again
MAX_REFUSALS = 256


class RunTexts:
    """The training rows of runs' datasets, read once per run and fingerprint and checked
    against the run's fingerprint; the datasets that could not be served (403, 409) are not
    read again for REFUSAL_SECONDS."""

    def __init__(self, reader: DatasetReader) -> None:
        self.reader = reader
        # by run and fingerprint, within about MAX_TEXT_CHARACTERS
        self._rows: LRUCache[tuple[RunKey, str], tuple[Row, ...]] = LRUCache(
            MAX_TEXT_CHARACTERS, getsizeof=rows_size
        )
        self._refusals: TTLCache[tuple[RunKey, str], HTTPException] = TTLCache(
            maxsize=MAX_REFUSALS, ttl=REFUSAL_SECONDS
        )
        self._lock = threading.Lock()  # the rows kept and the refusals
        self._loading = SingleFlight()  # one request reads a run's dataset, the others wait

    def rows(self, run: Run) -> tuple[Row, ...]:
        """The run's training rows by sample index, read once and checked against the run's
        fingerprint; raises HTTPException 403 or 409 when they cannot be served."""
        key = (run_key(run), run.fingerprint)
        with self._loading(key):
            with self._lock:
                rows = self._rows.get(key)
                # a dataset that could not be served is not read again for a while: the
                # requests that waited on its load, and the clicks after, get the answer at once
                refused = self._refusals.get(key)
            if rows is not None:
                return rows
            if refused is not None:
                raise refused
            try:
                rows = self.read(run)
            except HTTPException as exc:
                with self._lock:
                    self._refusals[key] = exc
                raise
            with self._lock:
                try:
                    self._rows[key] = rows
                except ValueError:  # more text than the whole cache holds
                    log.warning("run %s: its dataset is read again at each request", run.run_id)
            return rows

    def read(self, run: Run) -> tuple[Row, ...]:
        """The rows the run's stored hello names, as registration reads them (every path
        checked against the scorer's roots before it is looked at), if they still tokenize to
        the run's fingerprint; nothing kept."""
        try:
            hello = Hello.model_validate(run.config)
        except ValidationError as exc:
            raise HTTPException(
                409,
                detail=f"run {run.run_id} was stored without the settings that name its dataset "
                f"({'; '.join(describe_errors(exc.errors()))}): its text cannot be read again",
            ) from exc
        try:
            self.reader.access.check_hello(hello)
            rows = self.reader.training_rows(hello)
        except Forbidden as exc:
            raise HTTPException(403, detail=str(exc)) from exc
        except (DatasetError, OSError) as exc:
            raise HTTPException(
                409,
                detail=f"the dataset of run {run.run_id} can no longer be read ({exc}); put the "
                "files the run trained on back where its hello names them",
            ) from exc
        ours = self._fingerprint(hello, rows)
        if len(rows) != run.n_samples or ours != run.fingerprint:
            raise HTTPException(
                409,
                detail=f"the dataset of run {run.run_id} ({hello.dataset}) changed since the run "
                f"was registered: it reads as {len(rows)} samples with fingerprint {ours[:12]}, "
                f"the run has {run.n_samples} with {run.fingerprint[:12]}, so its text would not "
                "be what the run trained on; restore the files as they were when the run started",
            )
        return tuple(rows)

    def _fingerprint(self, hello: Hello, rows: list[Row]) -> str:
        """The rows' fingerprint as the trainer computed it (the run's tokenizer and
        settings)."""
        try:
            tokenizer = self.reader.tokenizer(hello)
            encoded = self.reader.encode(hello, tokenizer, [row.sample for row in rows])
        except (OSError, ValueError) as exc:
            raise HTTPException(
                409,
                detail=f"the dataset of run {hello.run_id} cannot be checked against the run's "
                f"fingerprint: tokenizing it with {hello.base_model} failed ({exc}); the scorer "
                "must see the base model at the path the run names",
            ) from exc
        return self.reader.fingerprint(encoded)
