"""`delete SPEC`: the tutorial's service.delete(): stop and remove the service, keep the history.

It stops whatever runs from the service's folder even without a record (a run killed mid-deploy) and
even when the state document is damaged: what delete can identify, it can stop.
"""
from __future__ import annotations

import argparse

from pipeline import service as services
from pipeline import spec as specs
from pipeline import state as states
from pipeline import targets
from pipeline.commands._common import context, lock_options, paths_for
from pipeline.console import Console
from pipeline.errors import StateConflict, StateError, StateLocked


def main(args: argparse.Namespace, console: Console) -> int:
    try:
        return _delete(args, console)
    except (StateLocked, StateConflict):
        raise
    except StateError as exc:  # damaged state: stop what runs from the service's folder, leave the state alone
        return _without_state(args, console, exc)


def _delete(args: argparse.Namespace, console: Console) -> int:
    ctx = context(args, console, check_files=False)
    with states.locked(ctx.paths, f"delete {args.spec}", **lock_options(args, console)):
        ctx.state = states.load(ctx.paths)
        services.check_owner(ctx, adopt=args.adopt)
        if ctx.service is None:
            stopped = ctx.target.stop_orphans(ctx.paths.service)
            if not stopped:
                console.print(f"{ctx.spec.name}: no service is deployed; nothing to delete")
                return 0
            detail = "; ".join(stopped) + " (an unfinished deploy's, not in the record)"
        else:
            detail = services.remove(ctx)
        ctx.state.setdefault("history", []).append({"at": ctx.clock(), "command": f"delete {args.spec}",
                                                    "stages": [], "ok": True, "detail": detail})
        states.save(ctx.paths, ctx.state)
    console.print(f"{ctx.spec.name}: deleted ({detail})")
    return 0


def _without_state(args: argparse.Namespace, console: Console, problem: StateError) -> int:
    loaded = specs.load(args.spec, check_files=False)
    paths = paths_for(loaded, getattr(args, "state_url", None), args.spec)
    stopped = targets.get(loaded.deploy.target).stop_orphans(paths.service)
    console.error(f"warning: {problem}")
    if not stopped:
        console.print(f"{loaded.name}: nothing runs from {paths.service}; the state was left as it is")
        return 1
    console.print(f"{loaded.name}: stopped what runs from its folder ({'; '.join(stopped)}); "
                  "the damaged state was left as it is")
    return 0
