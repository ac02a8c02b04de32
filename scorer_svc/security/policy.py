"""What a hello may make the scorer read and run: the scorer decides, not the client.

A run's base model must be a folder under one of the scorer's model roots, its dataset (and
dataset_dir) under one of its data roots; with no root given, the scorer's data directory is
the only one. Model code shipped with a model folder (`auto_map`) runs only when the scorer's
own trust_remote_code setting allows it: a hello asking for it is loaded without it otherwise.
A refusal says which setting to change and nothing about the file named: the check looks at
the path's text (symlinks resolved), never at whether or what it is.

The scorer never asks a model hub for anything: a base model under the roots that is no folder
on disk (a hub repository's name, relative to the scorer's working folder) is refused, every
model and tokenizer is read from local files only, and the scorer's command puts
huggingface_hub and transformers in offline mode before they are imported.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common.data.datasets import is_path
from common.wire.errors import Forbidden, RunMismatch
from common.wire.protocol import Hello

# What huggingface_hub (and transformers through it) read, once, when imported.
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def stay_off_the_hub() -> None:
    """Offline mode for this process and those it starts, whatever the environment said:
    huggingface_hub refuses every request. Set before huggingface_hub is imported, which
    reads the variables then; where it was imported already, its constant is set too."""
    for name in OFFLINE_VARIABLES:
        os.environ[name] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True  # type: ignore[attr-defined]


def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(path))))


@dataclass(frozen=True)
class Roots:
    """Folders the scorer may read from; a path is inside when its real path lies below one."""

    folders: tuple[Path, ...]
    flag: str  # the flag that adds one, named in refusals

    @classmethod
    def of(cls, folders: Sequence[Path], default: Path, flag: str) -> Roots:
        return cls(tuple(_real(f) for f in (folders or [default])), flag)

    def holds(self, path: str | Path) -> bool:
        real = _real(path)
        return any(real == root or root in real.parents for root in self.folders)

    def refuse(self, run_id: str, what: str, name: str) -> Forbidden:
        shown = ", ".join(str(f) for f in self.folders)
        return Forbidden(
            f"run {run_id} refused: its {what} {name} is not under this scorer's roots "
            f"({shown}); start the scorer with {self.flag} FOLDER for a folder that holds it"
        )


@dataclass(frozen=True)
class AccessPolicy:
    models: Roots
    data: Roots
    trust_remote_code: bool

    @classmethod
    def of(
        cls,
        *,
        model_roots: Sequence[Path],
        data_roots: Sequence[Path],
        data_dir: Path,
        trust_remote_code: bool,
    ) -> AccessPolicy:
        return cls(
            Roots.of(model_roots, data_dir, "--model-root"),
            Roots.of(data_roots, data_dir, "--data-root"),
            trust_remote_code,
        )

    def check_hello(self, hello: Hello) -> None:
        """Refuse, before anything is read, a hello that would make the scorer read outside
        its roots."""
        if not self.models.holds(hello.base_model):
            raise self.models.refuse(hello.run_id, "base model", hello.base_model)
        if hello.dataset_dir is not None and not self.data.holds(hello.dataset_dir):
            raise self.data.refuse(hello.run_id, "dataset_dir", hello.dataset_dir)
        # A file path is checked now; a name in dataset_dir's dataset_info.json, and every
        # file it names, as they are resolved (check_dataset_file).
        for item in (part.strip() for part in hello.dataset.split(",")):
            if is_path(item):
                if not self.data.holds(item):
                    raise self.data.refuse(hello.run_id, "dataset", item)
            elif hello.dataset_dir is None:
                raise Forbidden(
                    f"run {hello.run_id} refused: its dataset {item} is a name, which needs "
                    "the dataset_dir whose dataset_info.json lists it"
                )

    def check_model_folder(self, hello: Hello) -> None:
        """Refuse a base model that is no folder on disk: transformers would take its name for
        a hub repository's. Only after check_hello: the path lies under the roots, so telling
        what it is tells nothing of what lies outside them."""
        if os.path.isdir(hello.base_model):
            return
        name = hello.base_model
        real = _real(name)
        shown = name if str(real) == name else f"{name} ({real})"
        roots = ", ".join(str(f) for f in self.models.folders)
        raise RunMismatch(
            f"run {hello.run_id} refused: its base model {shown} is not a folder on this "
            "scorer's disk; the scorer loads base models only from local folders under its "
            f"model roots ({roots}), never from a model hub: put the model's folder under one "
            "and name that folder as the base model"
        )

    def trusts(self, hello: Hello) -> bool:
        """Whether this run's model code may run: asked for, and allowed by the scorer."""
        return hello.trust_remote_code and self.trust_remote_code

    def untrusted_hint(self, hello: Hello) -> str:
        """What to add to a loading error of a run whose model code was not run."""
        if hello.trust_remote_code and not self.trust_remote_code:
            return (
                " (the run asks to run the model's own code, which this scorer does not: "
                "start it with --trust-remote-code if you trust every model under its roots)"
            )
        return ""

    def check_dataset_file(self, hello: Hello, path: Path) -> None:
        """A path the datasets resolve to, before it is looked at: dataset_info.json, the files
        and folders its entries name (which may point anywhere), path items."""
        if not self.data.holds(path):
            raise self.data.refuse(hello.run_id, "dataset", hello.dataset)
