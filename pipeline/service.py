"""The recorded service as a whole: save it, and delete it (the tutorial's service.delete()), for any target."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

from pipeline import state as states

if TYPE_CHECKING:
    from pipeline.context import Context


def save(ctx: Context) -> None:
    states.save(ctx.paths, ctx.state)


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
