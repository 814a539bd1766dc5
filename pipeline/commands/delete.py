"""`delete SPEC`: the tutorial's service.delete(): stop and remove the service, keep the history."""
from __future__ import annotations

import argparse

from pipeline import service as services
from pipeline import state as states
from pipeline.commands._common import context, lock_options
from pipeline.console import Console


def main(args: argparse.Namespace, console: Console) -> int:
    ctx = context(args, console, check_files=False)
    with states.locked(ctx.paths, f"delete {args.spec}", **lock_options(args, console)):
        ctx.state = states.load(ctx.paths)
        if ctx.service is None:
            console.print(f"{ctx.spec.name}: no service is deployed; nothing to delete")
            return 0
        detail = services.remove(ctx)
        ctx.state.setdefault("history", []).append({"at": ctx.clock(), "command": f"delete {args.spec}",
                                                    "stages": [], "ok": True, "detail": detail})
        states.save(ctx.paths, ctx.state)
    console.print(f"{ctx.spec.name}: deleted ({detail})")
    return 0
