"""What the stateful commands share: load the spec, find its state and backend, build the stage context."""
from __future__ import annotations

import argparse
from typing import Any

from pipeline import backends, project
from pipeline import spec as specs
from pipeline import state as states
from pipeline.backends.document import StateDocument
from pipeline.console import Console
from pipeline.context import Context


def context(args: argparse.Namespace, console: Console, *, check_files: bool = True) -> Context:
    """check_files=False for commands that only touch the service: a moved data file must not block delete."""
    from pipeline import service

    loaded = specs.load(args.spec, check_files=check_files)
    paths = paths_for(loaded, getattr(args, "state_url", None), args.spec)
    ctx = Context(spec=loaded, paths=paths, state=states.load(paths), console=console)
    service.check_owner(ctx, adopt=bool(getattr(args, "adopt", False)))
    return ctx


def paths_for(spec: specs.Spec, state_url: str | None, shown: str, *,
              choice: backends.Choice | None = None) -> states.Paths:
    """The spec's local folder at its project root, and its state document in the chosen backend."""
    choice = choice or backends.choose(spec.state, state_url)
    home = project.home(spec.path)
    document = StateDocument(backends.open_backend(choice, home), spec.name, home / spec.name,
                             reports=project.reports_root(spec.path) / spec.name,
                             project=project.root_of(spec.path), spec_arg=str(shown))
    return states.Paths(home / spec.name, document)


def lock_options(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """--lock-timeout for the commands that hold the lock; the wait is announced on stderr."""
    return {"timeout": getattr(args, "lock_timeout", 0.0) or 0.0, "notify": console.error}


def selection(args: argparse.Namespace) -> Any:
    from pipeline.runner import Selection

    return Selection(force=args.force, only=args.only, from_stage=args.from_stage, to_stage=args.to_stage)


def show(value: Any) -> str:
    """A field value in a diff line."""
    if value is None:
        return "(none)"
    return repr(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)
