"""The deployed service, as the tutorial's `service` object: scoring_uri, run(input_data), get_keys, get_logs, delete.

Every call goes through the target's own path (an HTTP POST on the local target, the endpoint's key in
Azure), so the same code scores the local service and a cloud one.
"""

from __future__ import annotations

import json
import urllib.error
from typing import TYPE_CHECKING, Any

from pipeline import releases
from pipeline import state as states
from pipeline.errors import StageFailed, TargetError, UsageError

if TYPE_CHECKING:
    from pipeline.api import Pipeline
    from pipeline.records import Live
    from pipeline.targets.base import ServiceRecord


class Service:
    """One deployed service of a spec, as recorded when it was looked up."""

    def __init__(self, pipeline: Pipeline, record: ServiceRecord) -> None:
        self.pipeline = pipeline
        self.record = record
        self.deleted = False

    @property
    def name(self) -> str:
        return self.pipeline.spec.name

    @property
    def target(self) -> str:
        return self.record.target

    @property
    def scoring_uri(self) -> str | None:
        """Where to POST {"data": [...]} (the tutorial's service.scoring_uri)."""
        return self.record.scoring_uri

    @property
    def swagger_uri(self) -> str | None:
        return self.record.swagger_uri

    @property
    def auth(self) -> bool:
        """Key authentication: requests need `Authorization: Bearer <key>` (get_keys)."""
        return self.record.auth

    def __repr__(self) -> str:
        return f"<Service {self.name} on {self.target} at {self.scoring_uri}{' (deleted)' if self.deleted else ''}>"

    def _alive(self) -> None:
        if self.deleted:
            raise UsageError(f"{self.name}: this service was deleted; run the spec again to deploy a new one")

    def run(self, input_data: bytes | str) -> Any:
        """Score one request, as the tutorial's service.run: the JSON body in, the service's decoded answer out.

        An answer other than 200, or one that is not JSON, is a TargetError naming the URI and what it said.
        """
        self._alive()
        if isinstance(input_data, str):
            body = input_data.encode("utf-8")
        elif isinstance(input_data, (bytes, bytearray, memoryview)):
            body = bytes(input_data)
        else:
            raise UsageError(
                f'input_data must be bytes or str, the JSON text of {{"data": [...]}}; got '
                f"{type(input_data).__name__} (json.dumps it first)"
            )
        from pipeline import targets

        uri = self.scoring_uri or "the service"
        timeout = max(5.0, self.pipeline.spec.deploy.request_timeout_ms / 1000 + 5)
        try:
            reply = targets.get(self.record.target).invoke(
                self.record, body, timeout=timeout, service_dir=self.pipeline.paths.service
            )
        except TimeoutError:
            raise TargetError(f"{uri} did not answer within {timeout:g} s") from None
        except (ConnectionError, urllib.error.URLError) as exc:
            raise TargetError(f"cannot reach {uri}: {getattr(exc, 'reason', exc)}") from None
        if reply.status != 200:
            raise TargetError(f"{uri} answered HTTP {reply.status}: {reply.body[:300].decode('utf-8', 'replace')}")
        try:
            return json.loads(reply.body)
        except ValueError:
            raise TargetError(f"{uri} answered something that is not JSON: {reply.body[:200]!r}") from None

    def get_keys(self) -> tuple[str, str | None]:
        """The service's (primary, secondary) keys, as the tutorial's service.get_keys()."""
        from pipeline.targets import keys

        self._alive()
        if not self.auth:
            raise UsageError(f"{self.name}: the service does not use key authentication (deploy.auth is false)")
        found = keys.read(self.pipeline.paths.service)
        if not found.get("primary"):
            raise TargetError(
                f"{self.name}: no keys are stored in {self.pipeline.paths.service}; deploy again to fetch them"
            )
        return found["primary"], found.get("secondary")

    def get_logs(self, num_lines: int = 5000) -> str:
        """The tail of the service's own log, as the tutorial's service.get_logs()."""
        from pipeline import targets

        self._alive()
        return targets.get(self.record.target).logs(self.record, self.pipeline.paths.service, tail=num_lines)

    def probe(self) -> Live:
        """Ask the service now: reachable, healthy, drifted from its record."""
        from pipeline import targets

        self._alive()
        return targets.get(self.record.target).probe(self.record, self.pipeline.spec)

    @property
    def state(self) -> str:
        """live, drifted, down or unknown (could not ask), as `status` says."""
        return "deleted" if self.deleted else self.probe().state

    def delete(self) -> str:
        """Stop and remove the service, as the tutorial's service.delete(); the history is kept."""
        self._alive()
        detail = self.pipeline.delete()
        self.deleted = True
        return detail or "no service was deployed; nothing to delete"

    def _repr_markdown_(self) -> str:
        return (
            f"service **{self.name}** on `{self.target}` at `{self.scoring_uri}`"
            + (" (deleted)" if self.deleted else "")
            + "\n"
        )


def delete(pipeline: Pipeline, *, lock_timeout: float = 0.0, adopt: bool = False) -> str | None:
    """Remove the recorded service under the spec's lock; the run history notes it. None: nothing was deployed.

    What still runs from the service's folder without a record (a run killed mid-deploy) is stopped too.
    """
    from pipeline import service as services

    ctx = pipeline.context(check_files=False, adopt=adopt)
    command = f"delete {pipeline.shown}"
    with states.locked(ctx.paths, command, timeout=lock_timeout, notify=ctx.console.error):
        ctx.state = states.load(ctx.paths)
        services.check_owner(ctx, adopt=adopt)
        if ctx.service is None:
            stopped = ctx.target.stop_orphans(ctx.paths.service)
            if not stopped:
                return None
            detail = "; ".join(stopped) + " (an unfinished deploy's, not in the record)"
        else:
            detail = services.remove(ctx)
        ctx.state.setdefault("history", []).append(
            {"at": ctx.clock(), "command": command, "stages": [], "ok": True, "detail": detail}
        )
        states.save(ctx.paths, ctx.state)
    return detail


def _mask(key: str) -> str:
    return key[:4] + "…" + f" ({len(key)} characters; --show-keys prints it)"


def status(pipeline: Pipeline, *, show_keys: bool = False) -> dict[str, Any]:
    """The live probe, the record, the last smoke test and run; `state`: live, drifted, down, unknown, not deployed."""
    from pipeline.targets import keys as keyfile

    ctx = pipeline.context(check_files=False)
    record = ctx.service
    out: dict[str, Any] = {
        "spec": ctx.spec.name,
        "target": ctx.spec.deploy.target,
        "deployed": record is not None,
        "state": "not deployed",
    }
    if record is None:
        orphans = ctx.target.orphans(ctx.paths.service)
        if orphans:  # a run killed before it recorded what it started: say so, delete stops it
            out |= {"state": "orphaned", "orphans": orphans}
    if record is not None:
        from pipeline import targets
        from pipeline.stages.smoke import SmokeOutput

        live = targets.get(record.target).probe(record, ctx.spec)
        out |= {
            "state": live.state,
            "detail": live.detail,
            "drift": list(live.drift),
            "scoring_uri": record.scoring_uri,
            "swagger_uri": record.swagger_uri,
            "model": record.model,
            "model_sha256": record.model_sha256,
            "deployed_at": record.deployed_at,
        }
        smoke = ctx.output(SmokeOutput)
        if smoke is not None:
            out["last_smoke"] = {
                "at": ctx.state["stages"]["smoke"].get("at"),
                "agree": smoke.agree,
                "sample_accuracy": smoke.sample_accuracy,
                "latency_ms": smoke.latency_ms,
            }
        if record.auth:
            keys = keyfile.read(ctx.paths.service)
            out["keys"] = keys if show_keys else {k: _mask(v) for k, v in keys.items()}
    kept = releases.listed(ctx)
    if kept:
        live_digest = record.digest if record else None
        out["releases"] = [
            {"n": r.n, "at": r.at, "model": r.model, "model_sha256": r.model_sha256, "live": r.digest == live_digest}
            for r in reversed(kept)
        ]
    history = ctx.state.get("history") or []
    if history:
        out["last_run"] = {"at": history[-1]["at"], "command": history[-1]["command"], "ok": history[-1]["ok"]}
    out["ok"] = out["state"] == "live"  # for scripts: only a healthy service that matches its record
    return out


def scoring_uri(pipeline: Pipeline) -> str:
    """The recorded scoring URI, for scripts (`status --uri`); StageFailed when nothing is deployed."""
    svc = pipeline.service
    if svc is None or not svc.scoring_uri:
        raise StageFailed(f"{pipeline.spec.name} is not deployed; `python -m pipeline run {pipeline.shown}` deploys it")
    return svc.scoring_uri
