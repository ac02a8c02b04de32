"""Unknown query parameters are refused: `GET /v1/runs?stats=failed` answers 422 naming
`stats` and the parameters the route takes, rather than ignoring it and listing every run."""

from __future__ import annotations

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute


def query_parameters(dependant: Dependant) -> set[str]:
    """The query parameters a route or dependency reads, its sub-dependencies' included."""
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= query_parameters(sub)
    return names


def refuse_unknown_query(request: Request) -> None:
    """A dependency of every API route: 422 for a query parameter the route does not read."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    known = query_parameters(route.dependant)  # a few dependencies: no cache needed
    unknown = sorted(set(request.query_params) - known)
    if not unknown:
        return
    takes = f"it takes {', '.join(sorted(known))}" if known else "it takes none"
    raise RequestValidationError(
        [
            {
                "type": "extra_forbidden",
                "loc": ("query", name),
                "msg": f"unknown query parameter of {request.method} {route.path}; {takes}",
                "input": request.query_params.get(name),
            }
            for name in unknown
        ]
    )
