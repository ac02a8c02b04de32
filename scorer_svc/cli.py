"""`scorer-svc serve`: flags over SCORER_* variables over an optional YAML file."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml

from scorer_svc.config import Settings, SettingsError, load_settings

FLAGS = {
    "--http-host": ("http_host", str),
    "--http-port": ("http_port", int),
    "--zmq-url": ("zmq_url", str),
    "--data-dir": ("data_dir", str),
    "--database-url": ("database_url", str),
    "--device": ("device", str),
    "--dtype": ("dtype", str),
    "--batch-size": ("batch_size", int),
    "--max-batch-tokens": ("max_batch_tokens", int),
    "--log-level": ("log_level", str),
    "--token-file": ("token_file", str),
    "--curve-secret-key-file": ("curve_secret_key_file", str),
    "--curve-authorized-keys-dir": ("curve_authorized_keys_dir", str),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scorer-svc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the scorer (ZeroMQ intake, worker, REST API)")
    serve.add_argument("--config", type=Path, help="YAML file of settings (keys as in Settings)")
    for flag, (dest, kind) in FLAGS.items():
        serve.add_argument(flag, dest=dest, type=kind, default=None)
    keys = sub.add_parser("keys", help="write a CURVE key pair (NAME.key, NAME.key_secret)")
    keys.add_argument("directory", type=Path)
    keys.add_argument("name")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    overrides: dict = {}
    if args.config is not None:
        if not args.config.is_file():
            raise SettingsError(f"config file {args.config} does not exist")
        loaded = yaml.safe_load(args.config.read_text()) or {}
        if not isinstance(loaded, dict):
            raise SettingsError(f"{args.config} must hold a mapping of settings")
        overrides.update(loaded)
    flags = {dest: getattr(args, dest) for dest, _ in FLAGS.values()}
    overrides.update({key: value for key, value in flags.items() if value is not None})
    return load_settings(overrides)


def _server_class():  # type: ignore[no-untyped-def]
    import uvicorn

    class Server(uvicorn.Server):
        """Treats SIGTERM/SIGINT as a request to stop: shut down cleanly and exit 0,
        instead of re-raising the signal after shutdown."""

        def handle_exit(self, sig, frame):  # type: ignore[no-untyped-def]
            super().handle_exit(sig, frame)
            getattr(self, "_captured_signals", []).clear()

    return Server


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "keys":
        from common.curve import create_keys

        public, secret = create_keys(args.directory, args.name)
        print(f"public key (give to peers): {public}\nsecret key (keep): {secret}")
        return 0
    try:
        settings = settings_from(args)
    except SettingsError as exc:
        print(f"scorer-svc: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    import uvicorn

    from scorer_svc.main import create_app

    _Server = _server_class()

    config = uvicorn.Config(
        create_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        timeout_graceful_shutdown=30,
    )
    server = _Server(config)
    server.run()
    return 0 if server.started else 1
