"""What the stateful commands share: load the spec, find its state, build the stage context."""
from __future__ import annotations

import argparse
from typing import Any

from pipeline import spec as specs
from pipeline import state as states
from pipeline.console import Console
from pipeline.context import Context


def context(args: argparse.Namespace, console: Console, *, check_files: bool = True) -> Context:
    """check_files=False for commands that only touch the service: a moved data file must not block delete."""
    loaded = specs.load(args.spec, check_files=check_files)
    paths = states.Paths.for_name(loaded.name)
    return Context(spec=loaded, paths=paths, state=states.load(paths), console=console)


def selection(args: argparse.Namespace) -> Any:
    from pipeline.runner import Selection

    return Selection(force=args.force, only=args.only, from_stage=args.from_stage, to_stage=args.to_stage)


def show(value: Any) -> str:
    """A field value in a diff line."""
    if value is None:
        return "(none)"
    return repr(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)
