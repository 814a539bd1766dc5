"""What the stateful commands share: the spec as a Pipeline (pipeline.api), its paths, the stage context."""

from __future__ import annotations

import argparse
from typing import Any

from pipeline import api, backends
from pipeline import spec as specs
from pipeline import state as states
from pipeline.console import Console
from pipeline.context import Context
from pipeline.planview import show  # noqa: F401  (re-exported: a field value in a diff line)


def load(args: argparse.Namespace, console: Console, *, check_files: bool = True) -> api.Pipeline:
    """The command's spec, loaded and validated, with the --state the command was given."""
    return api.load(args.spec, state=getattr(args, "state_url", None), console=console, check_files=check_files)


def context(args: argparse.Namespace, console: Console, *, check_files: bool = True) -> Context:
    """check_files=False for commands that only touch the service: a moved data file must not block delete."""
    return load(args, console, check_files=check_files).context(console, adopt=bool(getattr(args, "adopt", False)))


def paths_for(
    spec: specs.Spec, state_url: str | None, shown: str, *, choice: backends.Choice | None = None
) -> states.Paths:
    """The spec's local folder at its project root, and its state document in the chosen backend."""
    return api.paths_for(spec, state_url, shown, choice=choice)


def lock_options(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """--lock-timeout for the commands that hold the lock; the wait is announced on stderr."""
    return {"timeout": getattr(args, "lock_timeout", 0.0) or 0.0, "notify": console.error}


def selection(args: argparse.Namespace) -> Any:
    return api.selection(force=args.force, only=args.only, from_stage=args.from_stage, to=args.to_stage)


def stages(args: argparse.Namespace) -> dict[str, Any]:
    """--force, --only, --from, --to as the API's keyword arguments."""
    return {"force": args.force, "only": args.only, "from_stage": args.from_stage, "to": args.to_stage}
