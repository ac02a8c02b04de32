"""`trainer-svc train CONFIG.yaml [key=value ...]`: validate the config, then train.
`trainer-svc export MERGE.yaml [key=value ...]`: merge a LoRA adapter into its base and export.
`trainer-svc report OUTPUT_DIR [--scorer URL] [--color-by FIELD] [--samples 1,2,3]`: the run's
pictures and a page, in OUTPUT_DIR/report.
`trainer-svc compare CONFIG.yaml [key=value ...] [--strategies delta_sync,delta_async,uniform]
[--seeds 42,43,44] [--group-by FIELD]`: the config trained once per strategy and seed, the eval
losses compared in OUTPUT_DIR/compare (exits 0 when every run finished, 2 on a bad config, 1
when a run failed).
`trainer-svc keys [--format markdown]`: every key of the train YAML, by group, with its type,
its default and its meaning.

train exits 0 when the run finished, 2 on a bad config, 1 when the scorer failed
(on_scorer_failure: fail), and 143 (128 + SIGTERM) when SIGTERM stopped it before its end,
once its checkpoint is saved (or while it waited to register), so that a scheduler requeues it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from common.container import root_in_image
from trainer_svc.config.reference import FORMATS, render
from trainer_svc.config.train_config import KEY_GROUPS, ConfigError, load_config
from trainer_svc.scorer.retry import ScorerFailure, StopRequested
from trainer_svc.tools.compare import DEFAULT_STRATEGIES, STRATEGIES, parse_seeds, parse_strategies

logger = logging.getLogger("trainer_svc")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainer-svc", description=__doc__)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train with Delta Loss selection")
    train.add_argument("config", help="YAML config (the seed's keys plus the scorer's)")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="override config keys")
    export = commands.add_parser("export", help="merge a LoRA adapter and export the model")
    export.add_argument("config", help="merge YAML (the seed's keys)")
    export.add_argument("overrides", nargs="*", metavar="key=value", help="override config keys")
    report = commands.add_parser("report", help="draw a run's selection into OUTPUT_DIR/report")
    report.add_argument("output_dir", help="the output_dir of a trainer-svc run")
    report.add_argument(
        "--scorer", metavar="URL", help="the scorer's REST URL, for the loss reductions by rank"
    )
    report.add_argument(
        "--color-by",
        metavar="FIELD",
        help="colour the loss reductions by rank by this column of the dataset's rows "
        "(a group, a source...); needs --scorer",
    )
    report.add_argument(
        "--samples",
        metavar="I,J,...",
        type=sample_indices,
        default=[],
        help="also draw the loss trajectories of these samples (indices); needs --scorer",
    )
    compare = commands.add_parser(
        "compare", help="train the config once per strategy and seed; compare the eval losses"
    )
    compare.add_argument("config", help="YAML config, with eval_dataset or val_size")
    compare.add_argument("overrides", nargs="*", metavar="key=value", help="override config keys")
    compare.add_argument(
        "--strategies",
        type=_parsed(parse_strategies),
        default=list(DEFAULT_STRATEGIES),
        help=f"comma-separated, among {', '.join(STRATEGIES)} (default all three); a Delta "
        "Loss strategy may take a scoring budget after @, as delta_async@0.1",
    )
    compare.add_argument(
        "--seeds", type=_parsed(parse_seeds), default=[42], help="comma-separated (default 42)"
    )
    compare.add_argument(
        "--group-by",
        metavar="FIELD",
        help="report the share of each value of this column of the dataset's rows among the "
        "samples each strategy trained",
    )
    keys = commands.add_parser(
        "keys",
        help="print every key of the train YAML: its type, default and meaning",
        description=f"Print every key the train YAML takes, by group "
        f"({', '.join(group for group, _ in KEY_GROUPS)}), with its type, its default and "
        "what it does.",
    )
    keys.add_argument(
        "--format",
        choices=FORMATS,
        default="text",
        help="text, wrapped for this terminal (default), or markdown: a table per group",
    )
    return parser


def _parsed(parse: Callable[[str], list[Any]]) -> Callable[[str], list[Any]]:
    """An argparse type from a parser that raises ValueError with its message."""

    def read(text: str) -> list[Any]:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return read


def sample_indices(text: str) -> list[int]:
    """--samples 1,2,3 as [1, 2, 3]."""
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isascii() and part.isdigit() for part in parts):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of sample indices; give whole numbers separated by "
            "commas, as 1,2,3"
        )
    return [int(part) for part in parts]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    if args.command == "keys":
        print(render(args.format), end="")
        return 0
    if args.command == "export":
        return export(args.config, args.overrides)
    if args.command == "report":
        return report(args.output_dir, args.scorer, args.color_by, args.samples)
    if args.command == "compare":
        return compare(args.config, args.overrides, args.strategies, args.seeds, args.group_by)
    as_root = root_in_image(os.environ, os.geteuid())
    if as_root is not None:
        refused, message = as_root
        (logger.error if refused else logger.warning)("%s", message)
        if refused:
            return 2
    try:  # checked here first under FORCE_TORCHRUN too: one error, not one per rank
        loaded = load_config(args.config, args.overrides)
    except (ConfigError, OSError) as exc:
        logger.error("%s", exc)
        return 2
    if forced_torchrun(os.environ):
        return relaunch_under_torchrun(args.config, args.overrides, os.environ)
    from trainer_svc.training.recipe import run  # heavy imports only once the config is valid

    try:
        recipe = run(loaded, handle_sigterm=True)
    except StopRequested as exc:  # before any step: nothing to save, the run to requeue
        logger.warning("stopped: %s; nothing trained in this run", exc)
        return 128 + signal.SIGTERM
    except ScorerFailure as exc:
        logger.error("stopped: %s", exc)
        return 1
    signum = recipe.stop.signal
    if recipe.stopped and signum is not None:  # the state is saved, the run is not finished
        logger.warning(
            "stopped by %s at step %d; resume with resume_from_checkpoint=%s",
            signal.Signals(signum).name,
            recipe.trainer.state.global_step,
            recipe.stop_checkpoint,
        )
        return 128 + signum  # as a process the signal ended: a scheduler requeues the run
    return 0


def forced_torchrun(environ: Mapping[str, str]) -> bool:
    """FORCE_TORCHRUN=1 (as LLaMA-Factory reads it), and not already under torchrun."""
    return environ.get("FORCE_TORCHRUN", "").lower() in ("1", "true", "yes") and (
        "RANK" not in environ
    )


# How long torchrun lets its ranks save after SIGTERM (its own default is 30 s); compose gives
# the trainer the same.
SHUTDOWN_SECONDS = "120"


def torchrun_command(config: str, overrides: list[str], environ: Mapping[str, str]) -> list[str]:
    """`torchrun ... -m trainer_svc train CONFIG`, from NPROC_PER_NODE (default: every GPU, or
    one process on a CPU machine), NNODES, NODE_RANK, MASTER_ADDR and MASTER_PORT."""
    import torch

    nproc = environ.get("NPROC_PER_NODE") or str(max(1, torch.cuda.device_count()))
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", environ.get("NNODES", "1"),
        "--node-rank", environ.get("NODE_RANK", "0"),
        "--nproc-per-node", nproc,
        "--master-addr", environ.get("MASTER_ADDR", "127.0.0.1"),
        "--master-port", environ.get("MASTER_PORT", "29500"),
        "--shutdown-timeout", environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", SHUTDOWN_SECONDS),
        "-m", "trainer_svc", "train", config, *overrides,
    ]  # fmt: skip


def relaunch_under_torchrun(config: str, overrides: list[str], environ: Mapping[str, str]) -> int:
    """Run torchrun and pass it SIGTERM, and SIGINT as SIGTERM (it forwards it to every rank,
    which save a checkpoint and stop at the same step); its exit status is this command's,
    but 143 (128 + SIGTERM) once a signal stopped the run."""
    command = torchrun_command(config, overrides, environ)
    logger.info("FORCE_TORCHRUN: %s", " ".join(command))
    # Its own session: a Ctrl-C in the terminal reaches this process only, which passes it
    # on as SIGTERM (the signal the ranks stop on with a checkpoint).
    launcher = subprocess.Popen(command, env={**environ}, start_new_session=True)
    received: list[int] = []

    def forward(signum: int, frame: object) -> None:
        received.append(signum)
        launcher.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in FORWARDED}
    try:
        code = launcher.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received and code != 0:  # torchrun exits 1 once its ranks stopped on the signal
        return 128 + signal.SIGTERM
    return code


FORWARDED = (signal.SIGTERM, signal.SIGINT)


def export(path: str, overrides: list[str]) -> int:
    from trainer_svc.tools.merge import export as run_export
    from trainer_svc.tools.merge import load_export_config

    try:
        cfg = load_export_config(path, overrides)
    except (ConfigError, OSError) as exc:
        logger.error("%s", exc)
        return 2
    try:
        run_export(cfg)  # checks the adapter against the base before loading any weight
    except ConfigError as exc:
        logger.error("%s", exc)
        return 2
    except OSError as exc:
        logger.error("export failed, %s left as it was: %s", cfg.export_dir, exc)
        return 1
    return 0


def compare(
    config: str,
    overrides: list[str],
    strategies: Sequence[str],
    seeds: Sequence[int],
    group_by: str | None,
) -> int:
    from trainer_svc.tools.compare import compare as run_compare

    try:
        summary = run_compare(
            config, overrides, strategies=strategies, seeds=seeds, group_by=group_by
        )
    except (ConfigError, OSError) as exc:
        logger.error("%s", exc)
        return 2
    except (ScorerFailure, StopRequested) as exc:
        logger.error("comparison stopped: %s", exc)
        return 1
    print((summary.parent / "summary.md").read_text())
    logger.info(
        "comparison written to %s (summary.json, summary.md, eval_loss.png)", summary.parent
    )
    return 0


def report(
    output_dir: str,
    scorer_url: str | None,
    color_by: str | None = None,
    samples: Sequence[int] = (),
) -> int:
    """2 when the folder is not a run's, or the run's dataset has no column --color-by names;
    1 when the scorer cannot be reached."""
    import httpx

    from trainer_svc.tools.report import ReportError, write_report

    try:
        page = write_report(
            Path(output_dir),
            scorer_url,
            os.environ.get("SCORER_TOKEN"),
            color_by=color_by,
            samples=samples,
        )
    except (ReportError, OSError) as exc:
        logger.error("%s", exc)
        return 2
    except httpx.HTTPError as exc:
        logger.error("cannot read the run's losses from the scorer at %s: %s", scorer_url, exc)
        return 1
    print(f"report: {page}")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
