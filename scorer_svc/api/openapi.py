"""The OpenAPI document as the API really answers: every error body is ErrorBody (a 422's
detail is one string, not FastAPI's list), 503 when the database is unavailable, and, when a
token is set, a bearer security scheme on every route that needs it (so that /docs' "Try it
out" sends it) with its 401."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from common.api.schemas import ErrorBody
from scorer_svc.security.tokens import OPEN_PATHS, OPEN_PREFIXES

SCHEME = "bearerAuth"

# Every route may answer these (the app adds them to each route's own answers).
COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    422: {
        "model": ErrorBody,
        "description": "a parameter or the body is not valid: detail says which",
    },
    503: {
        "model": ErrorBody,
        "description": "the scorer's database is unavailable; retry after Retry-After",
    },
}
UNAUTHORIZED = {
    "description": "missing or wrong token: send Authorization: Bearer <token>",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
}


def describe(app: FastAPI, *, token: bool) -> None:
    """Give the app its OpenAPI document: FastAPI's, with the security scheme when token."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            _no_422_without_input(schema)
            _drop_unused_validation_schemas(schema)
            if token:
                _require_bearer(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _require_bearer(schema: dict[str, Any]) -> None:
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})[SCHEME] = {
        "type": "http",
        "scheme": "bearer",
        "description": "the scorer's token (its --token, token_file or SCORER_TOKEN)",
    }
    components.setdefault("schemas", {}).setdefault(
        "ErrorBody", ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    )
    for path, operations in schema.get("paths", {}).items():
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            continue
        for operation in operations.values():
            operation["security"] = [{SCHEME: []}]
            operation.setdefault("responses", {})["401"] = UNAUTHORIZED


def _no_422_without_input(schema: dict[str, Any]) -> None:
    """A route that takes no parameter and no body never answers 422."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if not operation.get("parameters") and "requestBody" not in operation:
                operation.get("responses", {}).pop("422", None)


def _drop_unused_validation_schemas(schema: dict[str, Any]) -> None:
    """FastAPI lists its own validation-error schemas even when no route answers with them."""
    text = str(schema.get("paths", {}))
    schemas = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        if name in schemas and f"/{name}'" not in text:
            del schemas[name]
    if "ValidationError" in schemas and "HTTPValidationError" not in schemas:
        del schemas["ValidationError"]
