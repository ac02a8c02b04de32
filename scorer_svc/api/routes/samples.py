"""A sample's own text, and its dataset row's other columns.

The scorer keeps no text: it reads the run's dataset again, through the same access checks
as registration, and serves it only once it tokenizes to the run's fingerprint, so that a
file changed since the run started is never shown as what the run trained on. What was
read is kept (ApiState.dataset_rows) by run and fingerprint.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException
from fastapi import Path as PathParam
from pydantic import ValidationError

from common.api.schemas import ErrorBody, SampleText, Turn
from common.data.datasets import DatasetError, DatasetSpec, Row, training_rows
from common.data.tokenization import TokenizationSettings, encode_dataset, fingerprint
from common.validation import describe_errors
from common.wire.errors import Forbidden
from common.wire.protocol import MAX_STEP, Hello
from scorer_svc.api.deps import ApiDep, RunDep
from scorer_svc.api.state import ApiState
from scorer_svc.config import Settings
from scorer_svc.scoring.weights import run_key
from scorer_svc.security.policy import AccessPolicy
from scorer_svc.storage.tables import Run

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/runs/{run_id}", tags=["samples"])

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

_cache_lock = threading.Lock()  # ApiState.dataset_rows, the loads under way, the refusals
_loading: dict[object, tuple[threading.Lock, int]] = {}


@router.get(
    "/samples/{index}",
    summary="A sample's text and its row's other columns",
    responses={
        404: {"model": ErrorBody, "description": "unknown run, or no such sample"},
        **DATASET_RESPONSES,
    },
)
def sample_text(
    api: ApiDep,
    run: RunDep,
    index: Annotated[int, PathParam(ge=0, le=MAX_STEP, description="the sample's index")],
) -> SampleText:
    """The sample's system prompt and turns as the run trains on them, with the dataset
    row's other scalar columns as `fields`."""
    if index >= run.n_samples:
        raise HTTPException(
            404, detail=f"sample {index} does not exist: run {run.run_id} has {run.n_samples}"
        )
    row = run_rows(api, run)[index]
    return SampleText(
        run_id=run.run_id,
        sample_index=index,
        system=row.sample.system or None,
        turns=[Turn(user=user, assistant=assistant) for user, assistant in row.sample.turns],
        fields=row.fields,
    )


def run_rows(api: ApiState, run: Run) -> tuple[Row, ...]:
    """The run's training rows by sample index, read once and checked against the run's
    fingerprint; raises HTTPException 403 or 409 when they cannot be served."""
    key = (run_key(run), run.fingerprint)
    with _loading_of(key):  # one request reads a run's dataset, the others wait for it
        with _cache_lock:
            rows = api.dataset_rows.get(key)
            # a dataset that could not be served is not read again for a while: the
            # requests that waited on its load, and the clicks after, get the answer at once
            refused = api.dataset_refusals.get(key)
        if rows is not None:
            return rows
        if refused is not None:
            raise refused
        try:
            rows = read_checked_rows(api.settings, run)
        except HTTPException as exc:
            with _cache_lock:
                api.dataset_refusals[key] = exc
            raise
        with _cache_lock:
            try:
                api.dataset_rows[key] = rows
            except ValueError:  # more text than the whole cache holds
                log.warning("run %s: its dataset is read again at each request", run.run_id)
        return rows


@contextmanager
def _loading_of(key: object) -> Iterator[None]:
    with _cache_lock:
        lock, users = _loading.get(key, (threading.Lock(), 0))
        _loading[key] = (lock, users + 1)
    try:
        with lock:
            yield
    finally:
        with _cache_lock:
            lock, users = _loading[key]
            if users == 1:
                del _loading[key]
            else:
                _loading[key] = (lock, users - 1)


def read_checked_rows(settings: Settings, run: Run) -> tuple[Row, ...]:
    """The rows the run's stored hello names, as registration reads them (every path checked
    against the scorer's roots before it is looked at), if they still tokenize to the run's
    fingerprint."""
    try:
        hello = Hello.model_validate(run.config)
    except ValidationError as exc:
        raise HTTPException(
            409,
            detail=f"run {run.run_id} was stored without the settings that name its dataset "
            f"({'; '.join(describe_errors(exc.errors()))}): its text cannot be read again",
        ) from exc
    access = AccessPolicy.of(
        model_roots=settings.model_root,
        data_roots=settings.data_root,
        data_dir=settings.data_dir,
        trust_remote_code=settings.trust_remote_code,
    )
    spec = DatasetSpec(hello.dataset, hello.dataset_dir, hello.max_samples)
    try:
        access.check_hello(hello)
        rows = training_rows(
            spec,
            hello.val_size,
            hello.split_seed,
            lambda path: access.check_dataset_file(hello, path),
        )
    except Forbidden as exc:
        raise HTTPException(403, detail=str(exc)) from exc
    except (DatasetError, OSError) as exc:
        raise HTTPException(
            409,
            detail=f"the dataset of run {run.run_id} can no longer be read ({exc}); put the "
            "files the run trained on back where its hello names them",
        ) from exc
    ours = _fingerprint(hello, access, rows)
    if len(rows) != run.n_samples or ours != run.fingerprint:
        raise HTTPException(
            409,
            detail=f"the dataset of run {run.run_id} ({hello.dataset}) changed since the run "
            f"was registered: it reads as {len(rows)} samples with fingerprint {ours[:12]}, "
            f"the run has {run.n_samples} with {run.fingerprint[:12]}, so its text would not "
            "be what the run trained on; restore the files as they were when the run started",
        )
    return tuple(rows)


def _fingerprint(hello: Hello, access: AccessPolicy, rows: list[Row]) -> str:
    """The rows' fingerprint as the trainer computed it (the run's tokenizer and settings)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            hello.base_model, trust_remote_code=access.trusts(hello), local_files_only=True
        )
        settings = TokenizationSettings(**hello.tokenization.model_dump())
        encoded = encode_dataset(tokenizer, [row.sample for row in rows], settings)
    except (OSError, ValueError) as exc:
        raise HTTPException(
            409,
            detail=f"the dataset of run {hello.run_id} cannot be checked against the run's "
            f"fingerprint: tokenizing it with {hello.base_model} failed ({exc}); the scorer "
            "must see the base model at the path the run names",
        ) from exc
    return fingerprint(encoded)
