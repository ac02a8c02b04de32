"""Routes are thin: each route module imports dependencies and services, never another route
module (what two routes share lives in a service, scorer_svc.api.rankings or run_texts)."""

import ast
from pathlib import Path

import pytest

import scorer_svc.api.routes

ROUTES_PACKAGE = "scorer_svc.api.routes"
ROUTES = Path(scorer_svc.api.routes.__file__).parent
MODULES = sorted(path for path in ROUTES.glob("*.py") if path.name != "__init__.py")


def _is_routes(module: str) -> bool:
    return module == ROUTES_PACKAGE or module.startswith(ROUTES_PACKAGE + ".")


def route_imports(source: str, module: str) -> list[str]:
    """The routes package or route modules that `source` (the module `module` of the routes
    package) imports, absolutely or relatively, at its top or inside a function."""
    package = module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if _is_routes(alias.name)]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's package, or above it
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            named = [f"{target}.{alias.name}" for alias in node.names]  # modules, perhaps
            found += [name for name in [target, *named] if _is_routes(name)]
    return [name for name in dict.fromkeys(found) if name != module]


def test_the_routes_are_found():
    names = {path.stem for path in MODULES}
    assert {"samples", "plots", "deltas", "runs"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda path: path.stem)
def test_a_route_module_imports_no_other(path):
    module = f"{ROUTES_PACKAGE}.{path.stem}"
    assert route_imports(path.read_text(encoding="utf-8"), module) == []


@pytest.mark.parametrize(
    "source",
    [
        "from scorer_svc.api.routes.deltas import ranked_deltas",
        "from scorer_svc.api.routes import samples",
        "import scorer_svc.api.routes.samples as samples",
        "from .deltas import ranked_deltas",
        "from . import samples",
        "from ..routes.samples import run_rows",
        "from .. import routes",
        "def f():\n    from scorer_svc.api.routes.deltas import ranked_deltas\n",
    ],
)
def test_the_checker_flags_an_import_of_another_route_module(source):
    assert route_imports(source, f"{ROUTES_PACKAGE}.plots") != []


@pytest.mark.parametrize(
    "source",
    [
        "from scorer_svc.api.deps import RunDep",
        "from scorer_svc.api.rankings import Rankings",
        "import scorer_svc.api.run_texts",
        "from ..deps import RunDep",
        "from .. import deps",
        "from scorer_svc.api.routes_extra import x",
    ],
)
def test_the_checker_lets_dependencies_and_services_be_imported(source):
    assert route_imports(source, f"{ROUTES_PACKAGE}.plots") == []
