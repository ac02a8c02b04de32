"""A stand-in for the Hugging Face Hub on a loopback port: it answers every request 404 and
keeps the paths asked for, so a test can tell whether anything tried to reach a hub."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


class FakeHub:
    def __init__(self) -> None:
        self.requests: list[str] = []  # "METHOD /path", in the order they came
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                hub.requests.append(f"{self.command} {self.path}")
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD = do_POST = _answer

            def log_message(self, format: str, *args: object) -> None:
                pass  # counted, not printed

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def aim_at(hub: FakeHub, monkeypatch: Any) -> None:
    """Point this process's huggingface_hub at `hub`, online (whatever the environment said):
    the variables it reads at import, and the constants it read them into. The list of agents
    it fetches once per process for its user agent is forgotten, so it is fetched again."""
    from huggingface_hub import constants
    from huggingface_hub.utils import _detect_agent

    monkeypatch.setattr(_detect_agent, "_registry", None)

    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    for name in OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        hub.url + "/{repo_id}/resolve/{revision}/{filename}",
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def process_environment(hub: FakeHub) -> dict[str, str]:
    """Variables that point a new process at `hub`, online unless it decides otherwise."""
    return {"HF_ENDPOINT": hub.url, **{name: "" for name in OFFLINE_VARIABLES}}
