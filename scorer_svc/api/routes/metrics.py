"""Operations metrics for Prometheus (scorer_svc.metrics); behind the token when one is set."""

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from scorer_svc.api.deps import ApiDep

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    response_class=Response,
    summary="Operations metrics in Prometheus' text format",
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "the metrics"}},
)
def metrics(api: ApiDep) -> Response:
    """Checkpoints by status and the queue depth (read from the database now), seconds spent
    scoring and storing each checkpoint, samples per second, samples scored, failures."""
    return Response(generate_latest(api.metrics.registry), media_type=CONTENT_TYPE_LATEST)
