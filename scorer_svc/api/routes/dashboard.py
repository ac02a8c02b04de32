"""The dashboard: one page and its script and style, all served from the package, so that it
works on a host without internet. The page holds no data: it reads the REST API with the
token the user gives it, so it and its assets are open (scorer_svc.security.tokens)."""

from importlib.resources import files

from fastapi import APIRouter, HTTPException
from fastapi.responses import RedirectResponse, Response

router = APIRouter(include_in_schema=False)

PAGE = "/ui"
PACKAGE = "scorer_svc.api.dashboard"
ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
# Only this origin's scripts, styles and API; images also from blob: (the deltas PNG fetched
# with the token) and data: (the empty favicon). An external URL would fail, not load.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",  # revalidated, so an upgraded scorer serves its new page
}


def _read(name: str) -> bytes:
    return (files(PACKAGE) / name).read_bytes()


@router.get("/")
def root() -> RedirectResponse:
    return RedirectResponse(PAGE)


@router.get(PAGE)
def page() -> Response:
    return Response(_read("index.html"), media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get(PAGE + "/assets/{name}")
def asset(name: str) -> Response:
    media_type = ASSETS.get(name)
    if media_type is None:  # only the files named above: no path is ever built from input
        raise HTTPException(404, detail=f"no dashboard asset {name!r}")
    return Response(_read(name), media_type=media_type, headers=HEADERS)
