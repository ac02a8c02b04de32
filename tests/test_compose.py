"""Checks docker-compose.yml through `docker-compose config` (no Docker engine needed).

Skipped when no compose CLI is installed, unless the CI environment variable is set,
in which case a missing CLI is a failure. `apt-get install docker-compose` provides one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
MULTI_GPU_FILE = ROOT / "docker-compose.multi-gpu.yml"  # laid over COMPOSE_FILE
ENV_EXAMPLE = ROOT / ".env.example"
# Seconds between SIGTERM and SIGKILL the trainer needs at least: to end its step and save.
MIN_TRAINER_GRACE = 60

# Variables the compose file interpolates; removed from the environment so the
# ${VAR:-default} fallbacks are what gets tested.
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")


def _compose_cmd() -> list[str] | None:
    exe = shutil.which("docker-compose")
    if exe:
        return [exe]
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    return None


@pytest.fixture(scope="module")
def compose() -> list[str]:
    cmd = _compose_cmd()
    if cmd is None:
        reason = (
            "no `docker-compose` (or `docker compose`) on PATH; "
            "install it with `apt-get install docker-compose`"
        )
        if os.environ.get("CI"):
            pytest.fail(reason + " (CI is set, so this is an error)")
        pytest.skip(reason)
    return cmd


def _compose_vars() -> set[str]:
    lines = COMPOSE_FILE.read_text().splitlines() + MULTI_GPU_FILE.read_text().splitlines()
    return {v for line in lines if not line.lstrip().startswith("#") for v in _VAR_RE.findall(line)}


def _run(
    compose: list[str],
    *args: str,
    env_file: Path,
    profile: str | None = None,
    files: tuple[Path, ...] = (COMPOSE_FILE,),
) -> str:
    env = {k: v for k, v in os.environ.items() if k not in _compose_vars()}
    cmd = [*compose, "--env-file", str(env_file)]
    for file in files:
        cmd += ["-f", str(file)]
    cmd += ["--project-directory", str(ROOT)]
    if profile:
        cmd += ["--profile", profile]
    proc = subprocess.run(
        [*cmd, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, f"{' '.join(cmd + list(args))} failed:\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def empty_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # An empty env file, so a developer's local `.env` cannot change the defaults tested.
    path = tmp_path_factory.mktemp("compose") / "empty.env"
    path.write_text("")
    return path


def _config(compose: list[str], env_file: Path, profile: str | None = None) -> dict[str, Any]:
    return yaml.safe_load(_run(compose, "config", env_file=env_file, profile=profile))


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


def _gpu_ids(service: dict[str, Any]) -> list[list[str]]:
    devices = (
        service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    )
    return [
        [str(i) for i in d.get("device_ids", [])]
        for d in devices
        if d.get("driver") == "nvidia" or "gpu" in d.get("capabilities", [])
    ]


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> source (host path or volume name)."""
    out = {}
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            out[v["target"]] = v.get("source", "")
        else:
            parts = str(v).split(":")
            out[parts[1]] = parts[0]
    return out


def _seconds(duration: str | int | float) -> float:
    """A compose duration ("120s", "2m0s", "1h", "500ms") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(duration))
    assert parts, f"not a duration: {duration!r}"
    return sum(float(value) * units[unit] for value, unit in parts)


def _problems(cfg: dict[str, Any]) -> list[str]:
    """Everything wrong with a parsed `compose config` (default profile)."""
    problems = []
    services = cfg.get("services", {})
    scorer, trainer = services.get("scorer"), services.get("trainer")
    if scorer is None or trainer is None:
        return [f"scorer and trainer services expected, got {sorted(services)}"]

    ports = _ports(scorer)
    if sorted(t for _, _, t in ports) != ["5555", "8000"]:
        problems.append(f"scorer should publish 8000 and 5555, got {ports}")
    for host_ip, published, target in ports:
        if host_ip != "127.0.0.1":
            problems.append(f"scorer port {published}:{target} bound to {host_ip or 'all'}")

    env = scorer.get("environment", {})
    if env.get("SCORER_HTTP_HOST") != "0.0.0.0":
        problems.append("scorer must set SCORER_HTTP_HOST=0.0.0.0 inside the container")
    if env.get("SCORER_ZMQ_URL") != "tcp://0.0.0.0:5555":
        problems.append("scorer must set SCORER_ZMQ_URL=tcp://0.0.0.0:5555")

    if _gpu_ids(scorer) != [["1"]]:
        problems.append(f"scorer GPU reservation should be device 1, got {_gpu_ids(scorer)}")
    if _gpu_ids(trainer) != [["0"]]:
        problems.append(f"trainer GPU reservation should be device 0, got {_gpu_ids(trainer)}")

    test = (scorer.get("healthcheck") or {}).get("test")
    if not test or "/healthz" not in " ".join(test if isinstance(test, list) else [test]):
        problems.append(f"scorer healthcheck on /healthz missing: {test}")

    dep = (trainer.get("depends_on") or {}).get("scorer")
    if not isinstance(dep, dict) or dep.get("condition") != "service_healthy":
        problems.append(f"trainer must depend on scorer being healthy, got {dep}")

    command = trainer.get("command") or []
    if "scorer_zmq_url=tcp://scorer:5555" not in command:
        problems.append("trainer must be pointed at tcp://scorer:5555")
    if "scorer_http_url=http://scorer:8000" not in command:
        problems.append("trainer must be pointed at http://scorer:8000")

    grace = _seconds(trainer.get("stop_grace_period", "10s"))
    if grace < MIN_TRAINER_GRACE:
        problems.append(
            f"trainer stop_grace_period is {grace:g}s: give it at least {MIN_TRAINER_GRACE}s "
            "to save a checkpoint on SIGTERM"
        )

    sm, tm = _mounts(scorer), _mounts(trainer)
    for path in ("/data", "/models"):
        if path not in sm or sm.get(path) != tm.get(path):
            problems.append(f"{path} must be the same mount in scorer and trainer")
    if "/outputs" not in tm:
        problems.append("trainer must mount /outputs")
    state = sm.get("/var/lib/scorer", "")
    if state not in (cfg.get("volumes") or {}):
        problems.append(f"scorer state must be a named volume, got {state!r}")

    for name in ("scorer", "trainer"):
        if services[name].get("profiles"):
            problems.append(f"{name} must not be behind a profile")
    demo = services.get("demo")
    if demo is not None and demo.get("profiles") != ["cpu"]:
        problems.append(f"demo must be only in the cpu profile, got {demo.get('profiles')}")
    return problems


# --- tests ---------------------------------------------------------------------------


def test_config_quiet(compose: list[str], empty_env: Path) -> None:
    _run(compose, "config", "-q", env_file=empty_env)


def test_config_quiet_cpu_profile(compose: list[str], empty_env: Path) -> None:
    _run(compose, "config", "-q", env_file=empty_env, profile="cpu")


def test_default_config(compose: list[str], empty_env: Path) -> None:
    assert _problems(_config(compose, empty_env)) == []


def test_checks_can_fail(compose: list[str], empty_env: Path) -> None:
    # The checker must reject a scorer published on all interfaces, a wrong GPU, and
    # a trainer that does not wait for the scorer's health.
    cfg = _config(compose, empty_env)
    scorer, trainer = cfg["services"]["scorer"], cfg["services"]["trainer"]
    scorer["ports"] = ["0.0.0.0:8000:8000/tcp", "5555:5555"]
    scorer["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] = ["0"]
    trainer["depends_on"] = {"scorer": {"condition": "service_started"}}
    trainer.pop("stop_grace_period", None)  # the default 10s: too short to save a checkpoint
    problems = "\n".join(_problems(cfg))
    assert "bound to 0.0.0.0" in problems
    assert "bound to all" in problems
    assert "scorer GPU reservation" in problems
    assert "healthy" in problems
    assert "trainer stop_grace_period is 10s" in problems


def test_durations_in_seconds() -> None:
    durations = ("120s", "2m0s", "1m30s", "1h", "500ms")
    assert [_seconds(d) for d in durations] == [120, 120, 90, 3600, 0.5]


def test_demo_only_in_cpu_profile(compose: list[str], empty_env: Path) -> None:
    cpu = _config(compose, empty_env, profile="cpu")["services"]
    demo = cpu.get("demo")
    assert demo is not None, "demo service missing with --profile cpu"
    assert demo.get("profiles") == ["cpu"]
    assert "deploy" not in demo, "the cpu demo must not reserve devices"
    assert "/outputs/demo" in demo["command"]
    # compose v2 drops profiled services without --profile; v1 lists them but will not
    # start them. Either way, only demo carries a profile.
    default = _config(compose, empty_env)["services"]
    assert "demo" not in default or default["demo"].get("profiles") == ["cpu"]


def test_env_example_matches_defaults(compose: list[str], empty_env: Path) -> None:
    documented = {
        line.split("=", 1)[0].strip()
        for line in ENV_EXAMPLE.read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    }
    assert _compose_vars() <= documented, (
        f"undocumented in .env.example: {sorted(_compose_vars() - documented)}"
    )
    # .env.example holds the same defaults as the compose file.
    assert _config(compose, ENV_EXAMPLE) == _config(compose, empty_env)


def test_the_multi_gpu_variant_runs_one_scorer_rank_per_listed_gpu(
    compose: list[str], tmp_path: Path
) -> None:
    env_file = tmp_path / "multi.env"
    env_file.write_text("SCORER_GPUS=1,2,3\nSCORER_GPU_COUNT=3\n")
    files = (COMPOSE_FILE, MULTI_GPU_FILE)
    _run(compose, "config", "-q", env_file=env_file, files=files)
    cfg = yaml.safe_load(_run(compose, "config", env_file=env_file, files=files))
    scorer = cfg["services"]["scorer"]
    assert scorer["command"][:4] == ["torchrun", "--standalone", "--nproc-per-node", "3"]
    assert scorer["command"][-3:] == ["-m", "scorer_svc", "serve"]
    assert scorer["environment"]["CUDA_VISIBLE_DEVICES"] == "1,2,3"
    devices = scorer["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("count") == "all" for d in devices)  # CUDA_VISIBLE_DEVICES picks
    # Otherwise as the two-GPU setup: loopback only, the trainer starts once it is healthy.
    assert [p for p in _problems(cfg) if "GPU reservation" not in p] == []
