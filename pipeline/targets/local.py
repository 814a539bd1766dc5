"""The embedded default target: a detached scoring service on 127.0.0.1, started like `docker run -d`.

Updates roll: the new version starts beside the old one on a staging port of its own, is tested there
alone, then joins the service's port (SO_REUSEPORT) and the old version drains and exits. The port
chosen by the first deploy is kept for the life of the service, so the scoring URI never moves.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pipeline import http, interrupts, openapi
from pipeline.errors import StateError, TargetError
from pipeline.files import atomic_write, sha256_path
from pipeline.targets import keys
from pipeline.targets import local_host as host
from pipeline.targets.base import Auth, BaseTarget, Capabilities, DeployRequest, Live, Rollout, ServiceRecord

if TYPE_CHECKING:
    from pipeline.spec import Spec

APP_FILES = ("score.py", "myenv.yml")
STAMP_FILE = "stamp.json"  # in the version's folder: what deploy stamped on it (inputs digest, model, spec)
RELEASES = "releases"  # service_dir/releases/<n>/: one folder per version (app, model copy, config, ready file)
KEEP_ALIVE_S = 5  # the host's keep-alive timeout: a draining version waits this long for idle connections
SETTINGS_SCHEMA: dict[str, Any] = {
    "description": "Settings of the local target.",
    "type": "object",
    "additionalProperties": False,
    "default": {},
    "properties": {
        "port": {
            "description": "Port on 127.0.0.1; 0 = any free port, chosen by the first deploy and kept for the "
            "life of the service.",
            "type": "integer",
            "minimum": 0,
            "maximum": 65535,
            "default": 0,
        },
        "header_timeout_s": {
            "description": "Seconds a client has to send a request's line and headers, from the "
            "connection's start or the request's first byte; then 408 and the connection is closed.",
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 300,
            "default": 10,
        },
        "body_timeout_s": {
            "description": "Seconds a client has to send a request's body once its headers are in; "
            "then 408 and the connection is closed.",
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 3600,
            "default": 30,
        },
        "keep_alive_s": {
            "description": "Seconds an idle keep-alive connection stays open between two requests.",
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 300,
            "default": 5,
        },
        "max_connections": {
            "description": "Open connections per worker; past it the longest-idle one is closed, or "
            "the new one answered 503 when none is idle.",
            "type": "integer",
            "minimum": 1,
            "maximum": 100000,
            "default": 1024,
        },
    },
}


def workers_for(cpu_cores: float) -> int:
    """One worker process per core the spec asks for; a fraction of a core still needs one worker."""
    return max(1, math.ceil(cpu_cores))


@dataclass(frozen=True)
class LocalService:
    """The local target's part of a service record, read back with its types checked."""

    pid: int
    config: str
    health_uri: str
    log: str
    port: int | None
    app_files: Mapping[str, str]
    model_file: str | None
    model_stamp: list[int] | None

    @classmethod
    def of(cls, record: ServiceRecord) -> LocalService:
        extra = record.extra
        try:
            values = {
                "pid": extra["pid"],
                "config": extra["config"],
                "health_uri": extra["health_uri"],
                "log": extra.get("log") or str(Path(extra["config"]).parent / "service.log"),
                "port": extra.get("port"),
                "app_files": extra.get("app_files") or {},
                "model_file": extra.get("model_file"),
                "model_stamp": extra.get("model_stamp"),
            }
        except (KeyError, TypeError) as exc:
            raise StateError(f"the local service record is damaged: {exc} is missing") from None
        kinds: dict[str, tuple[type, ...]] = {
            "pid": (int,),
            "config": (str,),
            "health_uri": (str,),
            "log": (str,),
            "port": (int, type(None)),
            "app_files": (dict,),
        }
        for key, kind in kinds.items():
            if not isinstance(values[key], kind) or isinstance(values[key], bool):
                raise StateError(f"the local service record is damaged: {key} is {values[key]!r}")
        return cls(**values)

    @property
    def folder(self) -> Path:
        """The version's own folder (its config, ready file and events)."""
        return Path(self.config).parent

    def running(self) -> bool:
        return host.is_our_process(self.pid, self.config)


class LocalTarget(BaseTarget):
    name: ClassVar[str] = "local"
    summary: ClassVar[str] = "this machine, no cloud and no Docker"
    settings_key: ClassVar[str] = "local"
    settings_schema: ClassVar[Mapping[str, Any]] = SETTINGS_SCHEMA
    capabilities: ClassVar[Capabilities] = Capabilities(
        probe_unrecorded=False, rollout=Rollout.SIDE_BY_SIDE, auth=frozenset({Auth.KEY})
    )

    def render(self, spec: Spec, env: Any, values: Mapping[str, Any]) -> dict[str, str]:
        """local.json: the service settings a reviewer should see change (workers, memory, timeout, port)."""
        settings = {
            **resources(spec),
            "port": spec.deploy.block("local")["port"],
            "auth": spec.deploy.auth,
            "tags": dict(spec.tags),
            "description": spec.description,
        }
        return {
            "local.json": json.dumps(settings, indent=2, sort_keys=True) + "\n",
            "swagger.json": json.dumps(openapi.document(spec), indent=2, sort_keys=True) + "\n",
        }

    def describe_update(self, record: ServiceRecord | None, spec: Spec) -> str:
        port = _port_for(spec, _running(record))
        old = LocalService.of(record).port if record is not None else None
        where = "address unchanged" if old in (None, port) or not port else f"the address moves to 127.0.0.1:{port}"
        return f"rolling: new workers beside the old, then cutover; {where}"

    # -- deploy: stage beside the old version, then promote ---------------------------------------
    def stage(self, request: DeployRequest) -> ServiceRecord:
        """Start the new version on a staging port of its own, ready and addressable alone; nothing else changes."""
        spec = request.spec
        previous = _running(request.previous)
        for pid in host.hosts_under(request.service_dir):  # a deploy that never finished (even one killed -9)
            if previous is None or pid != previous.pid:
                host.stop_group(pid, grace_s=5.0)
        port = _port_for(spec, previous)
        join = previous is not None and port != 0 and port == previous.port
        release = _new_release(request.service_dir)
        app_dir = release / "app"
        app_dir.mkdir(parents=True)
        for name in APP_FILES:
            shutil.copy2(request.build_dir / name, app_dir / name)
        model_dir = _isolate_model(request.model_path, release / "model" / spec.model.name / str(spec.model.version))
        keys_file = keys.ensure(request.service_dir, spec.deploy.auth)
        ready_file = release / "ready.json"
        config = service_config(spec, app_dir, model_dir, keys_file, ready_file, port) | {"staged": True, "join": join}
        config_file = release / "config.json"
        atomic_write(config_file, json.dumps(config, indent=2).encode())
        atomic_write(release / STAMP_FILE, json.dumps(dict(request.stamp), indent=2).encode())  # the service's own
        log_file = request.service_dir / "service.log"
        process = None
        try:
            with interrupts.held():  # an interrupt during the start is raised once `process` is known
                process = host.start(config_file, log_file, app_dir)
            ready = host.wait_for(
                process,
                ready_file,
                log_file,
                spec.deploy.ready_timeout_s,
                lambda r: bool(r.get("staging_uri")),
                request.console.progress,
                "ready",
            )
            staging = f"http://127.0.0.1:{ready['staging_port']}"
            return ServiceRecord(
                target=self.name,
                scoring_uri=f"{staging}/score",
                auth=spec.deploy.auth,
                swagger_uri=f"{staging}/swagger.json",
                extra={
                    "pid": process.pid,
                    "release": release.name,
                    "workers": ready.get("workers", []),
                    "port": ready["port"],
                    "staging": True,
                    "health_uri": f"{staging}/",
                    "log": str(log_file),
                    "config": str(config_file),
                    "app_files": {name: sha256_path(app_dir / name) for name in APP_FILES},
                    "model_file": str(model_dir / request.model_path.name),
                    "model_stamp": _stamp(model_dir / request.model_path.name),
                    "timeout_s": spec.deploy.request_timeout_ms / 1000,
                },
            )
        except BaseException:
            if process is not None and process.poll() is None:
                host.stop_group(process.pid, grace_s=5.0)  # a failed or interrupted start leaves nothing behind
            shutil.rmtree(release, ignore_errors=True)
            raise

    def promote(self, candidate: ServiceRecord, request: DeployRequest) -> ServiceRecord:
        """The new version joins the service's port, beside the old one until that one retires."""
        new = LocalService.of(candidate)
        log_file = Path(new.log)
        host.signal_group(new.pid, signal.SIGUSR1)
        ready_file = new.folder / "ready.json"
        ready = _wait_ready_file(
            new, ready_file, log_file, request.spec.deploy.ready_timeout_s, lambda r: bool(r.get("live")), request
        )
        base = f"http://127.0.0.1:{ready['port']}"
        extra = {k: v for k, v in candidate.extra.items() if k != "staging"} | {
            "health_uri": f"{base}/",
            "port": ready["port"],
            "workers": ready.get("workers", []),
        }
        return ServiceRecord(self.name, f"{base}/score", candidate.auth, f"{base}/swagger.json", extra)

    def retire(self, previous: ServiceRecord, request: DeployRequest) -> str:
        """The old version stops accepting, answers what it holds (Connection: close), and exits."""
        old = _running(previous)
        if old is None:
            return "the previous version had already stopped"
        return _retire(old, previous)

    def discard(self, candidate: ServiceRecord, service_dir: Path) -> str:
        """Stop a staged version that failed its tests; the live one never saw it."""
        new = LocalService.of(candidate)
        detail = host.stop_group(new.pid, grace_s=5.0) if new.running() else f"process {new.pid} had exited"
        if new.folder.parent.name == RELEASES:
            shutil.rmtree(new.folder, ignore_errors=True)
        return detail

    def deploy(self, request: DeployRequest) -> ServiceRecord:
        """Stage, promote and retire without a test in between (the deploy stage tests the staged version first)."""
        record = self.promote(self.stage(request), request)
        if request.previous is not None and LocalService.of(request.previous).pid != LocalService.of(record).pid:
            self.retire(request.previous, request)
        return record

    # -- probe, invoke ---------------------------------------------------------------------------
    def probe(self, record: ServiceRecord | None, spec: Spec | None = None) -> Live:
        if record is None:
            return Live(False, False, "a local service is only known by its record")
        service = LocalService.of(record)
        if not service.running():
            return Live(True, False, f"service process {service.pid} is not running")
        drift = []
        app_dir = service.folder / "app"
        if service.model_file and _stamp(Path(service.model_file)) != service.model_stamp:
            drift.append(f"the served model file {service.model_file} was changed or removed after deploy")
        for name, digest in service.app_files.items():
            path = app_dir / name
            if not path.is_file():
                drift.append(f"{name} was removed from {app_dir}")
            elif sha256_path(path) != digest:
                drift.append(f"{name} in {app_dir} was edited after deploy")
        try:
            body = http.get(service.health_uri, timeout=2, limit=200).body
        except OSError as exc:
            return Live(
                True,
                False,
                f"process {service.pid} is running but {service.health_uri} does not answer "
                f"({getattr(exc, 'reason', exc)})",
                tuple(drift),
            )
        if body.strip() != b"Healthy":
            return Live(True, False, f"{service.health_uri} answered {body[:40]!r}, not Healthy", tuple(drift))
        strays = [pid for pid in host.hosts_under(service.folder.parent.parent) if pid != service.pid]
        stray = (
            (
                f"; {len(strays)} process(es) of an unfinished deploy still run (pid {', '.join(map(str, strays))}): "
                "`run` or `delete` stops them"
            )
            if strays
            else ""
        )
        return Live(
            True,
            True,
            f"healthy at {record.scoring_uri} (pid {service.pid}){_incidents(service.folder)}{stray}",
            tuple(drift),
            stamp=_read_stamp(service.folder),
        )

    # -- delete, logs ----------------------------------------------------------------------------
    def delete(self, record: ServiceRecord, service_dir: Path) -> str:
        """Stop the service, and anything else started from its folder; remove its keys and its versions."""
        detail = self.stop(record)
        for pid in host.hosts_under(service_dir):
            host.stop_group(pid)
            detail += f"; stopped process {pid} of an unfinished deploy"
        keys.remove(service_dir)
        shutil.rmtree(service_dir / RELEASES, ignore_errors=True)
        return detail

    def orphans(self, service_dir: Path) -> list[str]:
        return [f"scoring host pid {pid} (from {service_dir})" for pid in host.hosts_under(service_dir)]

    def stop_orphans(self, service_dir: Path) -> list[str]:
        return [host.stop_group(pid) for pid in host.hosts_under(service_dir)]

    def stop(self, record: ServiceRecord) -> str:
        """SIGTERM the service's process group, wait, then SIGKILL what is left."""
        service = LocalService.of(record)
        if not service.running():
            return f"service process {service.pid} was not running"
        return host.stop_group(service.pid)

    def logs(self, record: ServiceRecord, service_dir: Path, *, tail: int) -> str:
        return host.tail_file(Path(LocalService.of(record).log), tail)


def _read_stamp(folder: Path) -> dict[str, str] | None:
    try:
        data = json.loads((folder / STAMP_FILE).read_text())
    except (OSError, ValueError):
        return None
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else None


def _running(record: ServiceRecord | None) -> LocalService | None:
    service = LocalService.of(record) if record is not None else None
    return service if service is not None and service.running() else None


def _port_for(spec: Spec, previous: LocalService | None) -> int:
    """The spec's port when it names one; else the port the running service was given, kept for its life."""
    wanted = int(spec.deploy.block("local")["port"])
    if wanted:
        return wanted
    return previous.port if previous is not None and previous.port else 0


def _new_release(service_dir: Path) -> Path:
    """A fresh folder for the new version: releases/<n>, one past the highest there."""
    folder = service_dir / RELEASES
    folder.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name) for p in folder.iterdir() if p.name.isdigit()]
    release = folder / str(max(taken, default=0) + 1)
    release.mkdir()
    return release


def _wait_ready_file(
    service: LocalService, ready_file: Path, log_file: Path, timeout_s: float, done: Any, request: DeployRequest
) -> dict[str, Any]:
    """Poll a host we did not start in this process (no Popen handle): by its pid."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ready = json.loads(ready_file.read_text())
            if done(ready):
                return ready
        except (OSError, ValueError):
            pass
        if not service.running():
            raise TargetError(
                f"the new version (pid {service.pid}) exited before it took over the port; "
                f"last lines of {log_file}:\n{host.indent(host.this_deploy(log_file, 20))}"
            )
        if time.monotonic() > deadline:
            raise TargetError(
                f"the new version did not take over the port within {timeout_s:g} s; "
                f"last lines of {log_file}:\n{host.indent(host.this_deploy(log_file, 20))}"
            )
        request.console.progress("deploy: the new version joins the service's port")
        time.sleep(0.02)


def _retire(old: LocalService, record: ServiceRecord | None) -> str:
    """The old version drains: it stops accepting, answers what it holds, and exits; forced only if it hangs."""
    try:
        drains = bool(json.loads((old.folder / "ready.json").read_text()).get("drains"))
    except (OSError, ValueError):
        drains = False
    timeout_s = float((record.extra.get("timeout_s") if record else None) or 60)
    if drains:
        host.signal_group(old.pid, signal.SIGUSR2)
        detail = f"drained the previous version (pid {old.pid})"
        if not host.wait_gone(old.pid, KEEP_ALIVE_S + timeout_s + 10):
            detail = host.stop_group(old.pid) + " that did not drain in time"
    else:  # a host from before rolling updates: its graceful stop also finishes what is in flight
        detail = host.stop_group(old.pid, grace_s=timeout_s + 10)
    if old.folder.parent.name == RELEASES:
        shutil.rmtree(old.folder, ignore_errors=True)
    return detail


def resources(spec: Spec) -> dict[str, Any]:
    """The spec's resources as the host enforces them: cores -> worker processes, GB -> a hard limit in MB."""
    return {
        "workers": workers_for(spec.deploy.cpu_cores),
        "memory_limit_mb": int(spec.deploy.memory_gb * 1024),
        "request_timeout_ms": spec.deploy.request_timeout_ms,
    }


def _isolate_model(model_path: Path, model_dir: Path) -> Path:
    """The version's own copy of the model (a hard link when possible): a later fetch that fails the
    evaluate gate replaces the store's file, and must not change what a restarted worker loads."""
    model_dir.mkdir(parents=True)
    try:
        os.link(model_path, model_dir / model_path.name)
    except OSError:
        shutil.copy2(model_path, model_dir / model_path.name)
    return model_dir


def _stamp(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def service_config(
    spec: Spec, app_dir: Path, model_dir: Path, keys_file: Path | None, ready_file: Path | None, port: int
) -> dict[str, Any]:
    """The scoring host's settings from the spec's resources: cores -> workers, memory -> hard limit."""
    # the access log goes beside service.log: the service's folder, above the version's releases/<n>/
    version = ready_file.parent if ready_file else None
    folder = version.parent.parent if version and version.parent.name == RELEASES else version
    return {
        "entry_script": str(app_dir / "score.py"),
        "model_dir": str(model_dir),
        "app_root": str(app_dir),
        "host": "127.0.0.1",
        "port": port,
        **resources(spec),
        "keys_file": str(keys_file) if keys_file else None,
        "swagger": openapi.document(spec),
        # lets the host answer 400, not 500, when a user's run() chokes on a short row
        "features": spec.scoring.features,
        "ready_file": str(ready_file) if ready_file else None,
        "service_name": spec.name,
        # slow and abusive clients: deadlines and the connection cap (the body limit follows memory_limit_mb)
        **{
            key: spec.deploy.block("local")[key]
            for key in ("header_timeout_s", "body_timeout_s", "keep_alive_s", "max_connections")
        },
        "access_log": str(folder / "access.log") if folder else None,
    }


def _incidents(folder: Path) -> str:
    """What the supervisor had to do since deploy (out-of-memory kills, dead workers), from its events file."""
    try:
        counts = json.loads((folder / "ready.events.json").read_text()).get("counts", {})
    except (OSError, ValueError):
        return ""
    parts = []
    if counts.get("out_of_memory"):
        parts.append(f"{counts['out_of_memory']} worker(s) killed for exceeding deploy.memory_gb")
    exited = counts.get("worker_exited", 0)  # out-of-memory kills are counted apart
    if exited > 0:
        parts.append(f"{exited} worker(s) died and were replaced")
    return f"; {', '.join(parts)} (see `logs`)" if parts else ""
