"""Stage deploy: create, update or replace the service so it matches the rendered files and the model."""

from __future__ import annotations

import difflib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import interrupts, releases
from pipeline import service as services
from pipeline.changes import flatten
from pipeline.context import digest, plain
from pipeline.errors import PipelineError, StageFailed
from pipeline.files import sha256_bytes
from pipeline.records import Change, DeployAction, Live
from pipeline.stages import Outcome, Output, Stage
from pipeline.targets.base import (
    STAMP_DIGEST,
    STAMP_MODEL,
    STAMP_SPEC,
    STAMP_VERSION,
    DeployRequest,
    Rollout,
    ServiceRecord,
)

if TYPE_CHECKING:
    from pipeline.context import Context
    from pipeline.records import Step


@dataclass(frozen=True)
class DeployOutput(Output):
    stage = "deploy"
    scoring_uri: str | None
    deployed_at: float


@dataclass(frozen=True)
class DeployLive:
    """The live side of the plan: the recorded service, what its probe saw, and the files it runs."""

    record: ServiceRecord | None
    live: Live | None
    old_files: dict[str, str] = field(default_factory=dict)
    new_files: dict[str, str] = field(default_factory=dict)
    rollout: str = ""  # how an update would reach the live service, in the target's words
    adopted: bool = False  # `record` was made from the live service's stamp: nothing of it is in the state


class Deploy(Stage):
    name = "deploy"
    needs_service = True

    def inputs(self, ctx: Context) -> dict[str, Any] | None:
        from pipeline.stages.evaluate import model_digest

        model = model_digest(ctx)
        if model is None:
            return None
        data = plain(ctx.spec.data)
        # only the chosen target's block counts: switching off aks settings on a local service changes nothing;
        # ready_timeout_s is how long we wait, not a property of the service: changing it redeploys nothing
        others = set(ctx.spec.deploy.blocks) - {ctx.spec.deploy.settings_key}
        deploy = {k: v for k, v in data["deploy"].items() if k not in others and k != "ready_timeout_s"}
        return {
            "name": ctx.spec.name,
            "description": ctx.spec.description,
            "tags": data["tags"],
            "target": ctx.spec.deploy.target,
            "deploy": deploy,
            "model": {"name": ctx.spec.model.name, "version": ctx.spec.model.version, "sha256": model},
            "files": {name: sha256_bytes(text.encode()) for name, text in ctx.rendered.items()},
        }

    def live(self, ctx: Context) -> DeployLive:
        record = ctx.service
        live = None
        adopted = False
        old_files: dict[str, str] = {}
        if record is not None:
            if record.target != ctx.spec.deploy.target:
                live = Live(
                    True,
                    False,
                    f"the service runs on target {record.target!r}; the spec now says {ctx.spec.deploy.target!r}",
                )
            else:
                live = ctx.target.probe(record, ctx.spec)
            shared = (ctx.state.get("deployed") or {}).get("files")
            if shared is not None:  # the live files as the state document records them, whoever deployed
                old_files = dict(shared)
            elif ctx.paths.deployed.is_dir():
                old_files = _read_tree(ctx.paths.deployed)
        elif ctx.target.capabilities.probe_unrecorded:
            # nothing recorded: ask the target whether it can be reached and whether a service of that name exists;
            # one that carries our stamp is adopted (a runner with no state plans against what is live)
            live = ctx.target.probe(None, ctx.spec)
            if live.stamp:
                record = ctx.target.adopt(live, ctx.spec)
                adopted = record is not None
        try:
            new_files = dict(ctx.rendered)
        except Exception:  # noqa: BLE001  a render error is reported by the render stage itself
            new_files = {}
        same_target = record if record is not None and record.target == ctx.target.name else None
        return DeployLive(
            record, live, old_files, new_files, ctx.target.describe_update(same_target, ctx.spec), adopted
        )

    def change(self, state: dict[str, Any], live: Any, inputs: Any) -> Change:
        """Pure: create / update / replace / no-op, with the field-level and file-level diff."""
        assert isinstance(live, DeployLive)
        record, probe = live.record, live.live
        refusal = probe.refusal if probe else None
        if record is None:
            new_files = tuple(
                (name, f"+ {name} ({len(text.splitlines())} lines; `render` writes it)\n")
                for name, text in sorted(live.new_files.items())
            )
            if probe is not None and probe.found:  # made by hand, as in the tutorial: deploy takes it over
                why = f"a service of this name exists without pipeline's stamp; deploy takes it over ({probe.detail})"
                return Change(DeployAction.ADOPT, why, _observed_fields(probe, inputs), new_files, refusal=refusal)
            why = "no service is recorded" + (f"; {probe.detail}" if probe else "")
            return Change(DeployAction.CREATE, why, _fields({}, inputs or {}), new_files, refusal=refusal)
        if live.adopted:  # no record here: compare what the live service shows of itself
            return _adopted_change(record, probe, live, inputs)
        fields = _fields(dict(record.inputs or {}), inputs or {})
        files = _files(live.old_files, live.new_files)
        probe = probe or Live(True, False, "not probed")
        drift = probe.drift
        same = inputs is not None and record.digest == digest(inputs)
        if not probe.reachable:
            action = DeployAction.NOOP if same else DeployAction.UPDATE
            return Change(
                action,
                f"cannot check the live service: {probe.detail}",
                fields,
                files,
                drift,
                checked=False,
                rollout=live.rollout,
            )
        if not probe.healthy:
            return Change(DeployAction.REPLACE, f"the recorded service is down: {probe.detail}", fields, files, drift)
        if drift:
            return Change(
                DeployAction.REPLACE,
                "the live service drifted from its record: " + "; ".join(drift),
                fields,
                files,
                drift,
            )
        if not same:
            return Change(
                DeployAction.UPDATE, probe.detail, fields, files, drift, rollout=live.rollout, refusal=refusal
            )
        return Change(DeployAction.NOOP, probe.detail or "the service matches the spec", (), (), drift)

    def run(self, ctx: Context, step: Step) -> Outcome:
        from pipeline import render
        from pipeline.stages.fetch import FetchOutput
        from pipeline.stages.render import RenderOutput

        fetched, build = ctx.output(FetchOutput), ctx.output(RenderOutput)
        if fetched is None or build is None:
            raise StageFailed("needs a fetched model and rendered files: run fetch and render first")
        new_inputs = self.inputs(ctx)
        build_dir = Path(build.dir)
        render.write_files(build_dir, ctx.rendered)  # ship exactly what was rendered, not a hand-edited build
        previous = ctx.service
        if previous is not None and previous.target != ctx.spec.deploy.target:
            services.remove(ctx)  # moving to another target: the old service must not keep running unseen
            previous = None
        request = DeployRequest(
            spec=ctx.spec,
            build_dir=build_dir,
            model_path=Path(fetched.path),
            model_dir=Path(fetched.model_dir),
            service_dir=ctx.paths.service,
            previous=previous,
            console=ctx.console,
            stamp=stamp_for(ctx, new_inputs, fetched.sha256),
        )
        ctx.paths.service.mkdir(parents=True, exist_ok=True)

        def stamp(record: ServiceRecord) -> ServiceRecord:
            return record.stamped(
                inputs=new_inputs,
                digest=digest(new_inputs),
                deployed_at=ctx.clock(),
                model_sha256=fetched.sha256,
                model=f"{ctx.spec.model.name}:{ctx.spec.model.version}",
            )

        record = rollout(ctx, request, stamp)
        _snapshot(ctx, build_dir)
        releases.keep(ctx, record, build_dir, Path(fetched.path))  # for `rollback`
        services.save(ctx)
        verb = {
            DeployAction.CREATE: "created",
            DeployAction.UPDATE: "updated",
            DeployAction.REPLACE: "replaced",
            DeployAction.ADOPT: "took over",
        }
        said = verb.get(step.change.action, "deployed") if step.change else "deployed"
        assert record.deployed_at is not None
        return Outcome(
            f"{said} {record.scoring_uri or ''}",
            DeployOutput(record.scoring_uri, record.deployed_at),
            inputs=new_inputs,
            digest=record.digest,
        )


def roll_back(ctx: Context, release: releases.Release, build: Path, model: Path) -> ServiceRecord:
    """Bring back a kept release (its files and model, as deployed) by the same gated procedure as a deploy."""
    previous = ctx.service
    target = release.record.get("target")
    if previous is not None and target != previous.target:
        raise StageFailed(
            f"release {release.n} ran on target {target!r}; the service now runs on {previous.target!r}: "
            "deploy that version of the spec instead"
        )
    from pipeline import __version__

    stamp = {
        STAMP_DIGEST: release.digest,
        STAMP_MODEL: release.model_sha256 or "",
        STAMP_SPEC: ctx.spec.name,
        STAMP_VERSION: __version__,
    }
    request = DeployRequest(
        spec=ctx.spec,
        build_dir=build,
        model_path=model,
        model_dir=model.parent,
        service_dir=ctx.paths.service,
        previous=previous,
        console=ctx.console,
        stamp=stamp,
    )
    ctx.paths.service.mkdir(parents=True, exist_ok=True)

    def stamped(record: ServiceRecord) -> ServiceRecord:
        return record.stamped(
            inputs=release.record.get("inputs"),
            digest=release.digest,
            deployed_at=ctx.clock(),
            model_sha256=release.model_sha256,
            model=release.model,
        )

    record = rollout(ctx, request, stamped)
    _snapshot(ctx, build)
    ctx.state["stages"].pop("smoke", None)  # the live service changed: smoke it again on the next run
    services.save(ctx)
    return record


def stamp_for(ctx: Context, inputs: Any, model_sha256: str | None) -> dict[str, str]:
    """What the target writes on the live service so that it can be told apart without any state."""
    from pipeline import __version__

    return {
        STAMP_DIGEST: digest(inputs),
        STAMP_MODEL: model_sha256 or "",
        STAMP_SPEC: ctx.spec.name,
        STAMP_VERSION: __version__,
    }


def rollout(ctx: Context, request: DeployRequest, stamp: Any) -> ServiceRecord:
    """Bring the new version in the way the target can; the record is saved the moment it serves.

    Side by side: the new version starts beside the old, is smoke-tested alone, then takes the traffic and
    the old one drains; any failure before the cutover discards the new version and leaves the old one
    serving, untouched. Other targets deploy in place (or stop, then start).
    """
    from pipeline.stages import smoke

    target, previous = ctx.target, request.previous
    if target.capabilities.rollout is not Rollout.SIDE_BY_SIDE:
        try:
            record = stamp(target.deploy(request))
        except BaseException:
            if previous is not None and target.capabilities.rollout is Rollout.STOP_START:
                ctx.service = None  # the old service was stopped before the new one failed to start
                services.save(ctx)
            raise
        _save_service(ctx, record)
        return record
    kept = "; the previous version is still serving, untouched" if previous is not None else ""
    try:
        candidate = target.stage(request)
    except PipelineError as exc:
        raise StageFailed(f"the new version did not start: {exc}{kept}") from None
    try:
        with interrupts.held():  # a run killed from here on still knows what it started
            ctx.state["candidate"] = candidate.to_dict()
            services.save(ctx)
        smoke.check_service(ctx, candidate, plot=False)
        record = stamp(target.promote(candidate, request))
    except BaseException as exc:
        detail = target.discard(candidate, request.service_dir)
        ctx.state["candidate"] = None
        services.save(ctx)
        if not isinstance(exc, PipelineError):
            raise
        raise StageFailed(f"the new version failed before it took any traffic: {exc}{kept} ({detail})") from None
    _save_service(ctx, record)  # the new version serves: from here on the record says so
    if previous is not None:
        request.console.progress("deploy: the previous version drains")
        target.retire(previous, request)
    return record


def _save_service(ctx: Context, record: ServiceRecord) -> None:
    """A service that runs is recorded before anything else can happen: hold Ctrl-C/SIGTERM until it is saved."""
    with interrupts.held():
        ctx.service = record
        ctx.state["candidate"] = None
        services.save(ctx)


def _adopted_change(record: ServiceRecord, probe: Live | None, live: DeployLive, inputs: Any) -> Change:
    """A service found by its stamp: no-op when it carries these inputs' digest, else update what can be compared."""
    assert probe is not None
    adopted = record.to_dict()
    if inputs is not None and record.digest == digest(inputs) and probe.healthy and not probe.drift:
        return Change(
            DeployAction.NOOP, f"the live service carries this spec's digest ({probe.detail})", adopted=adopted
        )
    if not probe.healthy:
        return Change(
            DeployAction.REPLACE,
            f"the stamped live service is down: {probe.detail}",
            (),
            (),
            probe.drift,
            adopted=adopted,
        )
    return Change(
        DeployAction.UPDATE,
        f"the live service carries another digest ({probe.detail})",
        _observed_fields(probe, inputs),
        (),
        probe.drift,
        rollout=live.rollout,
        refusal=probe.refusal,
        adopted=adopted,
    )


def _observed_fields(probe: Live, inputs: Any) -> tuple[tuple[str, Any, Any], ...]:
    """The fields the live service shows of itself (tags, resources) against the spec: all a stateless plan can diff."""
    new = {k: v for k, v in flatten(inputs or {}).items() if not k.startswith("files.")}
    out = []
    for key, old in sorted(probe.observed.items()):
        if key in new and digest(new[key]) != digest(old):
            out.append((key, old, new[key]))
    return tuple(out)


def _fields(old: dict[str, Any], new: dict[str, Any]) -> tuple[tuple[str, Any, Any], ...]:
    flat_old = {k: v for k, v in flatten(old).items() if not k.startswith("files.")}
    flat_new = {k: v for k, v in flatten(new).items() if not k.startswith("files.")}
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
            diff = difflib.unified_diff(
                a.splitlines(keepends=True), b.splitlines(keepends=True), f"deployed/{name}", f"rendered/{name}"
            )
            out.append((name, "".join(line if line.endswith("\n") else line + "\n" for line in diff)))
    return tuple(out)


def _snapshot(ctx: Context, build: Path) -> None:
    """Keep a copy of what is live: plan diffs the next render against it."""
    folder = ctx.paths.deployed
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(build, folder)
    # and in the state document, which may be shared: a runner that did not deploy diffs against what is live
    ctx.state["deployed"] = {"files": _read_tree(folder)}
    services.save(ctx)


def _read_tree(folder: Path) -> dict[str, str]:
    """Every file under folder by its relative path: a target may render into sub-folders (k8s/, image/)."""
    return {
        p.relative_to(folder).as_posix(): p.read_text(encoding="utf-8", errors="replace")
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
