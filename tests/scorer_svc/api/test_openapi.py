"""The OpenAPI document against the API as it answers: schemathesis generates requests for
every operation from /openapi.json and checks each answer (no server error; status, headers,
content type and body as documented), with and without a token; without one, no generated
request ends or deletes a run."""

from dataclasses import replace

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from scorer_svc.main import create_app
from scorer_svc.storage import checkpoints as checkpoint_store
from scorer_svc.storage import runs as run_store
from tests.scorer_svc.api.test_api import TOKEN, seeded_state

RUN = "run-a"  # the seeded run: most generated requests then reach the routes' real answers


@pytest.mark.parametrize("token", [None, TOKEN], ids=["open", "token"])
def test_every_operation_answers_as_documented(tmp_path, token):
    with seeded_state(tmp_path, token=token) as state:
        writable = replace(state, instance="scorer-t")
        app = create_app(state.settings, writable)
        app.state.api = writable  # as the lifespan does: requests are made without it
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        failures: dict[str, str] = {}
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 14
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(
                max_examples=25,
                deadline=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
                database=None,
            )
            def answers_as_documented(case: schemathesis.Case) -> None:
                if "run_id" in (case.path_parameters or {}):
                    case.path_parameters["run_id"] = RUN
                case.call_and_validate(headers=headers)

            try:
                answers_as_documented()
            except Exception as exc:  # every operation's failure, not only the first
                failures[operation.label] = str(exc)[:2000]
        assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
        if token is None:  # no request showed a run's token: none was ended or deleted
            with state.sessions() as session:
                runs = run_store.list_runs(session)
                assert [(r.run_id, r.end_status) for r in runs] == [
                    (RUN, None), ("run-empty", None),
                ]  # fmt: skip
                assert len(checkpoint_store.list_checkpoints(session, run=runs[0], limit=100)) == 6


def test_every_route_parameter_and_field_is_described(tmp_path):
    with seeded_state(tmp_path, token=TOKEN) as state:
        document = create_app(state.settings, state).openapi()
    missing = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            if not (operation.get("summary") and operation.get("description")):
                missing.append(f"{where}: summary or description")
            missing += [
                f"{where}: parameter {p['name']}"
                for p in operation.get("parameters", [])
                if not p.get("description")
            ]
            if path != "/healthz" and not path.startswith("/docs"):
                assert operation.get("security") == [{"bearerAuth": []}], where
                assert "401" in operation["responses"], where
    for name, schema in document["components"]["schemas"].items():
        missing += [
            f"{name}.{field}"
            for field, spec in schema.get("properties", {}).items()
            if not spec.get("description")
        ]
    assert not missing, missing
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    error = document["components"]["schemas"]["ErrorBody"]["properties"]["detail"]
    assert error["type"] == "string"  # a 422's detail too, as the API answers it
    statuses = document["components"]["schemas"]["CheckpointInfo"]["properties"]["status"]
    assert statuses["enum"] == ["received", "scoring", "scored", "failed", "superseded"]
