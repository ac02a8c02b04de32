"""`scorer-svc serve`: flags over a YAML file (--config) over SCORER_* variables over defaults."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path

import zmq
from pydantic_settings import CliSettingsSource

from common.launch import Launch
from scorer_svc.config import (
    Settings,
    SettingsError,
    config_file_values,
    load_settings,
    warn_unknown_environment,
)
from scorer_svc.db import DatabaseDamaged, DatabaseDriverMissing, check_driver, check_integrity


def build_parser() -> tuple[argparse.ArgumentParser, CliSettingsSource[Settings]]:
    """The scorer-svc parser, and the source that reads the serve flags, one per setting."""
    parser = argparse.ArgumentParser(prog="scorer-svc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="run the scorer (ZeroMQ intake, worker, REST API)",
        description="Run the scorer. Every setting but token is a flag, a key of the --config "
        "file and a SCORER_<NAME> environment variable; flags win over the file, the file "
        "over the environment.",
    )
    serve.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="a YAML file of settings by name (http_port: 8000)",
    )
    flags: CliSettingsSource[Settings] = CliSettingsSource(Settings, root_parser=serve)
    keys = sub.add_parser("keys", help="write a CURVE key pair (NAME.key, NAME.key_secret)")
    keys.add_argument("directory", type=Path, help="folder to write the two files into")
    keys.add_argument("name", help="the key's name: scorer, or a trainer's name")
    return parser, flags


def serve_settings(args: argparse.Namespace, flags: CliSettingsSource[Settings]) -> Settings:
    """The settings of a parsed `serve` command line."""
    if getattr(args, "token", None) is not None:  # a hidden flag, only to refuse it
        raise SettingsError(
            "token is not a flag, since a command line shows in ps: set SCORER_TOKEN, "
            "token in the --config file, or --token-file"
        )
    file_values = config_file_values(args.config) if args.config is not None else {}
    return load_settings(file_values, flags(parsed_args=args))


def _server_class():  # type: ignore[no-untyped-def]
    import uvicorn

    class Server(uvicorn.Server):
        """Treats SIGTERM/SIGINT as a request to stop: shut down cleanly and exit 0,
        instead of re-raising the signal after shutdown."""

        def handle_exit(self, sig, frame):  # type: ignore[no-untyped-def]
            super().handle_exit(sig, frame)
            getattr(self, "_captured_signals", []).clear()

    return Server


def rank_device(settings: Settings, local_rank: int) -> str:
    """The device of one rank under torchrun: its own GPU (cuda:LOCAL_RANK), or the CPU."""
    import torch

    if settings.device == "cpu" or (settings.device == "auto" and not torch.cuda.is_available()):
        return "cpu"
    if settings.device in ("auto", "cuda"):
        return f"cuda:{local_rank}"
    raise SettingsError(
        f"device {settings.device} names one GPU, but under torchrun each rank takes its own: "
        "give --device auto (or cuda), and choose the GPUs with CUDA_VISIBLE_DEVICES"
    )


class AddressInUse(RuntimeError):
    """An address the scorer must bind is taken (the message names it and the flag)."""


def check_addresses_free(settings: Settings) -> None:
    """Both addresses must be free before anything starts: otherwise one line, not a
    traceback from deep inside the server's start-up."""
    # A context of its own, terminated at once: closing a socket is asynchronous, terminating
    # its context waits until the address is released for the scorer's own socket.
    context = zmq.Context()
    probe = context.socket(zmq.ROUTER)
    probe.setsockopt(zmq.LINGER, 0)
    try:
        probe.bind(settings.zmq_url)
    except zmq.ZMQError as exc:
        raise AddressInUse(
            f"cannot bind the ZeroMQ address {settings.zmq_url} ({exc}): is another scorer "
            "running there? Stop it, or choose another with --zmq-url"
        ) from None
    finally:
        probe.close(0)
        context.term()
    with socket.socket(socket.AF_INET6 if ":" in settings.http_host else socket.AF_INET) as http:
        http.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            http.bind((settings.http_host, settings.http_port))
        except OSError as exc:
            raise AddressInUse(
                f"cannot bind the REST address {settings.http_host}:{settings.http_port} "
                f"({exc.strerror}): is another scorer running there? Stop it, or choose "
                "another with --http-port"
            ) from None


def main(argv: list[str] | None = None) -> int:
    parser, flags = build_parser()
    args = parser.parse_args(argv)
    if args.command == "keys":
        from common.curve import create_keys

        public, secret = create_keys(args.directory, args.name)
        print(f"public key (give to peers): {public}\nsecret key (keep): {secret}")
        return 0
    launch = Launch.from_environment()
    rank, world = launch.rank, launch.world
    try:
        settings = serve_settings(args, flags)
        if world > 1:
            device = rank_device(settings, launch.local_rank)
            settings = settings.model_copy(update={"device": device})
        if rank == 0:  # the other ranks touch neither the database nor the addresses
            check_driver(settings.resolved_database_url)
            check_integrity(settings.resolved_database_url)
            check_addresses_free(settings)
    except (SettingsError, DatabaseDamaged, DatabaseDriverMissing, AddressInUse) as exc:
        print(f"scorer-svc: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s "
        + (f"rank {rank} " if world > 1 else "")
        + "%(name)s: %(message)s",
    )
    warn_unknown_environment(os.environ)
    group = None
    if world > 1:
        from scorer_svc.ranks import RankGroup
        from scorer_svc.registry import Registry
        from scorer_svc.scoring import resolve_device

        group = RankGroup.start(resolve_device(settings.device), settings.rank_timeout_seconds)
        if rank != 0:
            return group.follow(Registry(settings))
    import uvicorn

    from scorer_svc.main import create_app

    _Server = _server_class()

    config = uvicorn.Config(
        create_app(settings, group=group),
        host=settings.http_host,
        port=settings.http_port,
        log_config=None,
        timeout_graceful_shutdown=30,
        ssl_certfile=settings.tls_certfile,
        ssl_keyfile=settings.tls_keyfile,
    )
    server = _Server(config)
    server.run()
    return 0 if server.started else 1
