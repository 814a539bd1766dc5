"""`state show SPEC` (what is recorded, where, who holds the lock) and `state push SPEC --to URL`."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from pipeline import backends
from pipeline import spec as specs
from pipeline import state as states
from pipeline.backends.document import is_empty
from pipeline.commands._common import paths_for
from pipeline.console import Console
from pipeline.errors import StateError, UsageError
from pipeline.files import atomic_write
from pipeline.stages import STAGES

SERVICE_FIELDS = ("target", "scoring_uri", "model", "model_sha256", "digest", "deployed_at")


def main(args: argparse.Namespace, console: Console) -> int:
    return {"show": show, "push": push}[args.state_command](args, console)


def _when(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else "-"


def describe(paths: states.Paths, choice: backends.Choice, data: dict[str, Any]) -> dict[str, Any]:
    """The summary `state show` prints: where, which version, the lock, what is recorded."""
    document = paths.document
    history = data.get("history") or []
    service = data.get("service")
    return {
        "spec": document.name,
        "backend": document.backend.scheme,
        "url": document.backend.url,
        "chosen_by": choice.source,
        "where": document.where,
        "version": document.etag,
        "lock": document.backend.inspect(document.name).to_dict(),
        "local_files": str(paths.root),
        "stages": {
            name: {"digest": data["stages"][name].get("digest"), "at": data["stages"][name].get("at")}
            for name in STAGES
            if name in data["stages"]
        },
        "service": {k: service.get(k) for k in SERVICE_FIELDS if k in service} if service else None,
        "history": {
            "runs": len(history),
            "last": ({k: history[-1].get(k) for k in ("at", "command", "ok")} if history else None),
        },
    }


def show(args: argparse.Namespace, console: Console) -> int:
    loaded = specs.load(args.spec, check_files=False)
    choice = backends.choose(loaded.state, args.state_url)
    paths = paths_for(loaded, args.state_url, args.spec, choice=choice)
    out = describe(paths, choice, states.load(paths))
    if args.json:
        console.always(json.dumps(out, indent=2, default=str))
        return 0
    console.print(f"{out['spec']}: state in {out['where']} ({out['backend']}, chosen by {out['chosen_by']})")
    console.print(f"  version      {out['version'] or '(nothing recorded yet)'}")
    console.print(f"  lock         {out['lock']['detail']}")
    for name, rec in out["stages"].items():
        console.print(f"  {name:<12} {str(rec['digest'])[:12]}  recorded {_when(rec['at'])}")
    service = out["service"]
    if service:
        console.print(
            f"  service      {service.get('target')} {service.get('scoring_uri')}, deployed "
            f"{_when(service.get('deployed_at'))}, inputs {str(service.get('digest'))[:12]}"
        )
    else:
        console.print("  service      (none recorded)")
    last = out["history"]["last"]
    console.print(
        f"  history      {out['history']['runs']} run(s)"
        + (f"; last `{last['command']}` {_when(last['at'])}, {'ok' if last['ok'] else 'failed'}" if last else "")
    )
    console.print(f"  local files  {out['local_files']} (models, builds, plots: never shared)")
    return 0


def push(args: argparse.Namespace, console: Console) -> int:
    """Local document -> backend, under both locks; the local document then points at the backend."""
    loaded = specs.load(args.spec, check_files=False)
    target = backends.choose(None, args.to)
    if target.backend == "local":
        raise UsageError("--to names the local backend, where the state already is: give a shared backend's URL")
    source = paths_for(loaded, "local", args.spec)
    dest = paths_for(loaded, args.to, args.spec, choice=target)
    command = f"state push {args.spec}"
    lock = {"timeout": args.lock_timeout, "notify": console.error}
    with states.locked(source, command, **lock):
        data = states.load(source)
        if is_empty(data):
            raise StateError(f"nothing is recorded for {loaded.name} in {source.document.where}: nothing to push")
        with states.locked(dest, command, **lock):
            there = states.load(dest)
            if not is_empty(there) and not args.force:
                raise StateError(
                    f"{dest.document.where} already holds state for {loaded.name} ({len(there['stages'])} "
                    f"stage(s), {len(there['history'])} run(s)); --force replaces it"
                )
            states.save(dest, data)
        raw, _ = source.document.backend.read(loaded.name)
        backup = source.root / "state.json.pushed"
        atomic_write(backup, raw or b"")
        # the local document now says where the state went: a run still pointed here stops instead of
        # deploying from a copy that no longer changes (and would see `create` for a live service)
        pointer = {"version": 1, "moved_to": dest.document.backend.url, "stages": {}, "service": None, "history": []}
        source.document.backend.write(
            loaded.name, (json.dumps(pointer, indent=2) + "\n").encode(), source.document.etag, source.document.lock
        )
    out: dict[str, Any] = {
        "spec": loaded.name,
        "from": source.document.where,
        "to": dest.document.where,
        "version": dest.document.etag,
        "stages": sorted(data["stages"]),
        "runs": len(data["history"]),
        "service": (data.get("service") or {}).get("scoring_uri"),
        "backup": str(backup),
    }
    if args.json:
        console.always(json.dumps(out, indent=2))
        return 0
    console.print(
        f"{loaded.name}: pushed {len(out['stages'])} stage record(s), {out['runs']} run(s)"
        + (f" and the service {out['service']}" if out["service"] else "")
        + f" to {out['to']}"
    )
    console.print(
        f"  {out['from']} now points there (the copy before the push: {backup}); "
        f"use the backend with --state {dest.document.backend.url}, PIPELINE_STATE, "
        f"or the spec's state: block"
    )
    return 0
