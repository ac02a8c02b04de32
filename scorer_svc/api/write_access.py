"""Who may change a run over REST (report its end, delete it, log its metrics): the scorer
instance that owns it, on a database it may write, for a request that shows the shared token,
or the run's own token (X-Run-Token) on a scorer without one."""

from typing import Annotated

from fastapi import Header, HTTPException

from common.api.client import RUN_TOKEN_HEADER
from common.api.schemas import ErrorBody
from scorer_svc.api.state import ApiState
from scorer_svc.config import Settings
from scorer_svc.security.tokens import has_shared_token, is_runs_token
from scorer_svc.storage.tables import Run

READ_ONLY = "this API serves a database read-only: it changes nothing"

# The answer of a route that changes a run, refused: where the API cannot change it, or the
# request has not shown it may.
WRITE_REFUSED = {
    "model": ErrorBody,
    "description": "the API serves its database read-only; or the run is another scorer "
    "instance's; or, on a scorer without a token, the request does not carry the run's own "
    f"token in {RUN_TOKEN_HEADER} (nor was the scorer started with "
    "--allow-unauthenticated-writes)",
}
RunTokenDep = Annotated[
    str | None,
    Header(
        alias=RUN_TOKEN_HEADER,
        description="the run's own token: the run_token its trainer sent at registration "
        "(kept in run.json in the trainer's output_dir). Authorizes this request on a scorer "
        "without a token; with a token set, Authorization: Bearer is needed instead",
    ),
]


def check_writable(run: Run, api: ApiState, there: str) -> str:
    """This scorer's instance; 403 where this API may not change the run whoever asks: a
    database served read-only, or a run another scorer instance owns (`there`: what to do on
    that one)."""
    if api.instance is None:
        raise HTTPException(403, detail=READ_ONLY)
    if run.instance is not None and run.instance != api.instance:
        raise HTTPException(
            403,
            detail=f"run {run.run_id} belongs to the scorer instance {run.instance!r} (this one "
            f"is {api.instance!r}): {there}",
        )
    return api.instance


def check_authorized(run: Run, settings: Settings, run_token: str | None, action: str) -> None:
    """403 unless the request may change the run: with a token set, the bearer token (checked
    before any route); without one, the run's own token, or the scorer started with
    allow_unauthenticated_writes."""
    if has_shared_token(settings) or settings.allow_unauthenticated_writes:
        return
    if is_runs_token(run.config, run_token):
        return
    other_ways = (
        "set a token on the scorer (SCORER_TOKEN or token_file) and send it as Authorization: "
        "Bearer, or start the scorer with --allow-unauthenticated-writes"
    )
    if not run.config.get("run_token"):
        raise HTTPException(
            403,
            detail=f"{action} needs a token, and run {run.run_id} has no run token of its own "
            f"(its trainer sent none when it registered): {other_ways}",
        )
    sent = "carries none" if run_token is None else f"carries another in {RUN_TOKEN_HEADER}"
    raise HTTPException(
        403,
        detail=f"{action} needs run {run.run_id}'s own token, and the request {sent}: send "
        f"the run_token of run.json in its trainer's output_dir as {RUN_TOKEN_HEADER}, or "
        + other_ways,
    )
