"""`delete SPEC`: the tutorial's service.delete(): stop and remove the service, keep the history.

It stops whatever runs from the service's folder even without a record (a run killed mid-deploy) and
even when the state document is damaged: what delete can identify, it can stop.
"""

from __future__ import annotations

import argparse

from pipeline import spec as specs
from pipeline import targets
from pipeline.commands._common import load, paths_for
from pipeline.console import Console
from pipeline.errors import StateConflict, StateError, StateLocked


def main(args: argparse.Namespace, console: Console) -> int:
    try:
        p = load(args, console, check_files=False)
        detail = p.delete(lock_timeout=args.lock_timeout or 0.0, adopt=args.adopt)
    except (StateLocked, StateConflict):
        raise
    except StateError as exc:  # damaged state: stop what runs from the service's folder, leave the state alone
        return _without_state(args, console, exc)
    if detail is None:
        console.print(f"{p.spec.name}: no service is deployed; nothing to delete")
    else:
        console.print(f"{p.spec.name}: deleted ({detail})")
    return 0


def _without_state(args: argparse.Namespace, console: Console, problem: StateError) -> int:
    loaded = specs.load(args.spec, check_files=False)
    paths = paths_for(loaded, getattr(args, "state_url", None), args.spec)
    stopped = targets.get(loaded.deploy.target).stop_orphans(paths.service)
    console.error(f"warning: {problem}")
    if not stopped:
        console.print(f"{loaded.name}: nothing runs from {paths.service}; the state was left as it is")
        return 1
    console.print(
        f"{loaded.name}: stopped what runs from its folder ({'; '.join(stopped)}); the damaged state was left as it is"
    )
    return 0
