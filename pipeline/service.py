"""The recorded service as a whole: save it, and delete it (the tutorial's service.delete()), for any target."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

from pipeline import state as states

if TYPE_CHECKING:
    from pipeline.context import Context


def save(ctx: Context) -> None:
    states.save(ctx.paths, ctx.state)


def owner_of(ctx: Context) -> str:
    """The spec file as the state names its owner: relative to the project root, so clones agree."""
    from pipeline import project

    root = project.root_of(ctx.spec.path)
    try:
        return ctx.spec.path.relative_to(root.resolve()).as_posix()
    except ValueError:
        return ctx.spec.path.as_posix()


def check_owner(ctx: Context, *, adopt: bool = False) -> None:
    """A service name belongs to the spec file that made it: a second spec with the same name: is refused."""
    from pipeline.errors import UsageError

    owner, mine = ctx.state.get("owner"), owner_of(ctx)
    if owner and owner != mine and not adopt:
        raise UsageError(
            f"the service {ctx.spec.name!r} belongs to {owner}, and {mine} has the same name: give one of "
            "them another `name:`, or take the service over with `run --adopt`"
        )


def claim(ctx: Context) -> None:
    """This spec file owns the service name from now on."""
    ctx.state["owner"] = owner_of(ctx)


def remove(ctx: Context) -> str:
    """Delete the recorded service; forget the records of the stages that describe it, keep the history."""
    from pipeline import stages, targets

    record = ctx.service
    if record is None:
        return "no service is recorded; nothing to delete"
    detail = targets.get(record.target).delete(record, ctx.paths.service)
    ctx.service = None
    ctx.state.pop("deployed", None)
    for stage in stages.all_stages():
        if stage.needs_service:
            ctx.state["stages"].pop(stage.name, None)
    if ctx.paths.deployed.exists():
        shutil.rmtree(ctx.paths.deployed)
    save(ctx)
    return detail
