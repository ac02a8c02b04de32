"""A service started as root inside the image is refused with the fix; elsewhere nothing is
checked; DELTA_LOSS_ALLOW_ROOT=1 turns the refusal into a warning."""

import os
import subprocess
import sys

import pytest

from common.container import ALLOW_ROOT, IMAGE_MARK, root_in_image


def test_outside_the_image_or_as_another_user_nothing_is_said():
    assert root_in_image({}, 0) is None
    assert root_in_image({IMAGE_MARK: "1"}, 1000) is None
    assert root_in_image({IMAGE_MARK: "0"}, 0) is None


def test_root_in_the_image_is_refused_with_the_fix():
    refused, message = root_in_image({IMAGE_MARK: "1"}, 0)
    assert refused
    assert "runs as root (uid 0)" in message and "HOST_UID=0" in message
    assert "Set HOST_UID and HOST_GID" in message and "docker compose up --build" in message
    assert f"{ALLOW_ROOT}=1" in message


def test_allowed_root_is_a_warning():
    refused, message = root_in_image({IMAGE_MARK: "1", ALLOW_ROOT: "1"}, 0)
    assert not refused and "running as root all the same" in message


@pytest.mark.slow  # starts the services' processes
@pytest.mark.skipif(os.geteuid() != 0, reason="the services must be started as root")
@pytest.mark.parametrize("command", [["scorer_svc", "serve"], ["trainer_svc", "train", "x.yaml"]])
def test_the_services_started_as_root_in_the_image_stop_before_anything_else(tmp_path, command):
    env = {**os.environ, IMAGE_MARK: "1"}
    env.pop(ALLOW_ROOT, None)
    done = subprocess.run([sys.executable, "-m", *command], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "runs as root (uid 0)" in done.stderr
    assert not (tmp_path / "scorer_data").exists()  # refused before any folder was made
