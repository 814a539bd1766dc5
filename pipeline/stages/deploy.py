"""Stage deploy: create, update or replace the service so it matches the rendered files and the model."""
from __future__ import annotations

import difflib
import shutil
import signal
from pathlib import Path
from typing import Any

from pipeline import state as states
from pipeline.context import Context, digest, plain
from pipeline.errors import StageFailed
from pipeline.files import sha256_bytes


def inputs(ctx: Context) -> dict[str, Any] | None:
    from pipeline.stages import evaluate

    model = evaluate.model_digest(ctx)
    if model is None:
        return None
    data = plain(ctx.spec.data)
    # only the chosen target's block counts: switching off aks settings on a local service changes nothing
    others = {"local", "azureml", "kubernetes"} - {{"local": "local", "kubernetes": "kubernetes"}.get(ctx.spec.deploy.target, "azureml")}
    # ready_timeout_s is how long we wait, not a property of the service: changing it redeploys nothing
    deploy = {k: v for k, v in data["deploy"].items() if k not in others and k != "ready_timeout_s"}
    return {"name": ctx.spec.name, "description": ctx.spec.description, "tags": data["tags"],
            "target": ctx.spec.deploy.target, "deploy": deploy, "model": {"name": ctx.spec.model.name,
            "version": ctx.spec.model.version, "sha256": model},
            "files": {name: sha256_bytes(text.encode()) for name, text in ctx.rendered.items()}}


def _deployed_dir(ctx: Context) -> Path:
    return ctx.paths.root / "deployed"


def facts(ctx: Context, new_inputs: dict[str, Any] | None) -> dict[str, Any]:
    """The live side of the plan: the probe of the recorded service and the files it runs."""
    record = ctx.state.get("service")
    out: dict[str, Any] = {"record": record, "live": None, "old_files": {}, "new_files": {}}
    if record:
        if record.get("target") != ctx.spec.deploy.target:
            out["live"] = {"reachable": True, "healthy": False, "drift": [],
                           "detail": f"the service runs on target {record.get('target')!r}; the spec now says {ctx.spec.deploy.target!r}"}
        else:
            live = ctx.target.probe(record, ctx.spec)
            out["live"] = {"reachable": live.reachable, "healthy": live.healthy, "detail": live.detail, "drift": list(live.drift)}
        shared = (ctx.state.get("deployed") or {}).get("files")
        if shared is not None:  # the live files as the state document records them, whoever deployed
            out["old_files"] = dict(shared)
        folder = _deployed_dir(ctx)
        for path in sorted(folder.glob("*")) if shared is None and folder.is_dir() else []:
            out["old_files"][path.name] = path.read_text(encoding="utf-8", errors="replace")
    elif ctx.spec.deploy.target != "local":
        # nothing recorded: ask the cloud whether it can be reached and whether a service of that name exists
        live = ctx.target.probe({}, ctx.spec)
        out["live"] = {"reachable": live.reachable, "healthy": live.healthy, "detail": live.detail, "drift": list(live.drift)}
    try:
        out["new_files"] = dict(ctx.rendered)
    except Exception:  # noqa: BLE001  a render error is reported by the render stage itself
        out["new_files"] = {}
    return out


def change(state: dict[str, Any], facts: dict[str, Any], new_inputs: dict[str, Any] | None) -> Any:
    """Pure: create / update / replace / no-op, with the field-level and file-level diff."""
    from pipeline.runner import Change

    record = facts.get("record")
    if not record:
        live = facts.get("live")
        why = "no service is recorded" + (f"; {live['detail']}" if live else "")
        new_files = tuple((name, f"+ {name} ({len(text.splitlines())} lines; `render` writes it)\n")
                          for name, text in sorted(facts["new_files"].items()))
        return Change("create", why, _fields({}, new_inputs or {}), new_files)
    live = facts["live"] or {}
    old_inputs = record.get("inputs") or {}
    fields = _fields(old_inputs, new_inputs or {})
    files = _files(facts["old_files"], facts["new_files"])
    drift = tuple(live.get("drift", ()))
    if not live.get("reachable", True):
        action = "no-op" if new_inputs is not None and record.get("digest") == digest(new_inputs) else "update"
        return Change(action, f"cannot check the live service: {live.get('detail')}", fields, files, drift)
    if not live.get("healthy"):
        return Change("replace", f"the recorded service is down: {live.get('detail')}", fields, files, drift)
    if drift:
        return Change("replace", "the live service drifted from its record: " + "; ".join(drift), fields, files, drift)
    if new_inputs is None or record.get("digest") != digest(new_inputs):
        return Change("update", live.get("detail", ""), fields, files, drift)
    return Change("no-op", live.get("detail", "the service matches the spec"), (), (), drift)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and (value or not prefix):
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(_flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def _fields(old: dict[str, Any], new: dict[str, Any]) -> tuple[tuple[str, Any, Any], ...]:
    flat_old = {k: v for k, v in _flatten(old).items() if not k.startswith("files.")}
    flat_new = {k: v for k, v in _flatten(new).items() if not k.startswith("files.")}
    out = []
    for key in sorted(set(flat_old) | set(flat_new)):
        a, b = flat_old.get(key), flat_new.get(key)
        if key not in flat_old:
            out.append((key, None, b))
        elif key not in flat_new:
            out.append((key, a, None))
        elif a != b:
            out.append((key, a, b))
    return tuple(out)


def _files(old: dict[str, str], new: dict[str, str]) -> tuple[tuple[str, str], ...]:
    out = []
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name, ""), new.get(name, "")
        if a != b:
            diff = difflib.unified_diff(a.splitlines(keepends=True), b.splitlines(keepends=True),
                                        f"deployed/{name}", f"rendered/{name}")
            out.append((name, "".join(line if line.endswith("\n") else line + "\n" for line in diff)))
    return tuple(out)


def run(ctx: Context, step: Any) -> Any:
    from pipeline.stages import Outcome
    from pipeline.targets.base import DeployRequest

    fetched = ctx.output("fetch")
    build = ctx.output("render")
    if not fetched.get("path") or not build.get("dir"):
        raise StageFailed("needs a fetched model and rendered files: run fetch and render first")
    new_inputs = inputs(ctx)
    from pipeline import render

    render.write_files(Path(build["dir"]), ctx.rendered)  # ship exactly what was rendered, not a hand-edited build
    previous = ctx.state.get("service")
    if previous and previous.get("target") != ctx.spec.deploy.target:
        remove(ctx)  # moving to another target: the old service must not keep running unseen
        previous = None
    request = DeployRequest(spec=ctx.spec, build_dir=Path(build["dir"]), model_path=Path(fetched["path"]),
                            model_dir=Path(fetched["model_dir"]), service_dir=ctx.paths.service,
                            previous=previous, console=ctx.console)
    ctx.paths.service.mkdir(parents=True, exist_ok=True)
    try:
        record = ctx.target.deploy(request)
    except BaseException:
        if previous is not None and ctx.spec.deploy.target == "local":
            ctx.state["service"] = None  # the local target stopped the old service before starting anew
            states.save(ctx.paths, ctx.state)
        raise
    # a service that runs is recorded before anything else can happen: hold Ctrl-C/SIGTERM until it is saved
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        record = dict(record) | {"inputs": new_inputs, "digest": digest(new_inputs), "deployed_at": ctx.clock(),
                                 "model_sha256": fetched.get("sha256"), "model": f"{ctx.spec.model.name}:{ctx.spec.model.version}"}
        ctx.state["service"] = record
        states.save(ctx.paths, ctx.state)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
    _snapshot(ctx, Path(build["dir"]))
    verb = {"create": "created", "update": "updated", "replace": "replaced"}.get(step.change.action if step.change else "", "deployed")
    return Outcome(f"{verb} {record.get('scoring_uri', '')}", {"scoring_uri": record.get("scoring_uri"),
                   "deployed_at": record["deployed_at"]}, inputs=new_inputs, digest=record["digest"])


def _snapshot(ctx: Context, build: Path) -> None:
    """Keep a copy of what is live: plan diffs the next render against it."""
    folder = _deployed_dir(ctx)
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(build, folder)
    # and in the state document, which may be shared: a runner that did not deploy diffs against what is live
    ctx.state["deployed"] = {"files": {p.name: p.read_text(encoding="utf-8", errors="replace")
                                       for p in sorted(folder.iterdir()) if p.is_file()}}


def remove(ctx: Context) -> str:
    """Delete the recorded service; forget its deploy and smoke records, keep the history."""
    record = ctx.state.get("service")
    if not record:
        return "no service is recorded; nothing to delete"
    from pipeline import targets

    detail = targets.get(record.get("target", ctx.spec.deploy.target)).delete(record, ctx.paths.service)
    ctx.state["service"] = None
    ctx.state.pop("deployed", None)
    for stage in ("deploy", "smoke"):
        ctx.state["stages"].pop(stage, None)
    folder = _deployed_dir(ctx)
    if folder.exists():
        shutil.rmtree(folder)
    states.save(ctx.paths, ctx.state)
    return detail
