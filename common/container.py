"""Starting inside the project's image: a service run there as root is refused, with the fix.

The Dockerfile sets IMAGE_MARK; the compose files run the services as HOST_UID:HOST_GID, so a
root container means those ids were 0 (`export HOST_UID=$(id -u)` as root or under sudo), and
everything the trainer writes to the mounted outputs would be root's. Outside the image (a
laptop, CI, a cluster node) nothing is checked.
"""

from __future__ import annotations

from collections.abc import Mapping

IMAGE_MARK = "DELTA_LOSS_IMAGE"  # "1" in the image (Dockerfile ENV)
ALLOW_ROOT = "DELTA_LOSS_ALLOW_ROOT"  # "1": run as root all the same, with a warning


def in_image(environ: Mapping[str, str]) -> bool:
    """Whether this process runs in the project's image."""
    return environ.get(IMAGE_MARK) == "1"


def root_in_image(environ: Mapping[str, str], euid: int) -> tuple[bool, str] | None:
    """None when all is well; else (refused, what to say): refused unless ALLOW_ROOT is 1."""
    if euid != 0 or not in_image(environ):
        return None
    allowed = environ.get(ALLOW_ROOT) == "1"
    what = (
        "this container runs as root (uid 0), so what it writes to mounted folders is root's: "
        "the image was built or started with HOST_UID=0, as `export HOST_UID=$(id -u)` gives "
        "as root or under sudo. Set HOST_UID and HOST_GID (in .env or the shell) to the ids of "
        "the user who should own the outputs (1000 by default), create OUTPUT_DIR as that "
        "user, and build again (docker compose up --build)"
    )
    if allowed:
        return False, f"{what}; running as root all the same ({ALLOW_ROOT}=1)"
    return True, f"{what}; or set {ALLOW_ROOT}=1 to run as root all the same"
