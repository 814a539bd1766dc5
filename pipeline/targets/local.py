"""The embedded default target: a detached scoring service on 127.0.0.1, started like `docker run -d`."""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pipeline import http, interrupts, openapi
from pipeline.errors import StateError, TargetError
from pipeline.files import atomic_write, sha256_path
from pipeline.targets import keys
from pipeline.targets.base import Auth, BaseTarget, Capabilities, DeployRequest, Live, Reply, Rollout, ServiceRecord

if TYPE_CHECKING:
    from pipeline.spec import Spec

APP_FILES = ("score.py", "myenv.yml")
DEPLOY_MARKER = "--- deploy"
SETTINGS_SCHEMA: dict[str, Any] = {
    "description": "Settings of the local target.",
    "type": "object",
    "additionalProperties": False,
    "default": {},
    "properties": {
        "port": {"description": "Port on 127.0.0.1; 0 = any free port.", "type": "integer", "minimum": 0,
                 "maximum": 65535, "default": 0},
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
    app_files: Mapping[str, str]
    model_file: str | None
    model_stamp: list[int] | None

    @classmethod
    def of(cls, record: ServiceRecord) -> LocalService:
        extra = record.extra
        try:
            values = {"pid": extra["pid"], "config": extra["config"], "health_uri": extra["health_uri"],
                      "log": extra.get("log") or str(Path(extra["config"]).parent / "service.log"),
                      "app_files": extra.get("app_files") or {}, "model_file": extra.get("model_file"),
                      "model_stamp": extra.get("model_stamp")}
        except (KeyError, TypeError) as exc:
            raise StateError(f"the local service record is damaged: {exc} is missing") from None
        kinds = {"pid": int, "config": str, "health_uri": str, "log": str, "app_files": dict}
        for key, kind in kinds.items():
            if not isinstance(values[key], kind) or isinstance(values[key], bool):
                raise StateError(f"the local service record is damaged: {key} is {values[key]!r}")
        return cls(**values)

    @property
    def folder(self) -> Path:
        return Path(self.config).parent


class LocalTarget(BaseTarget):
    name: ClassVar[str] = "local"
    summary: ClassVar[str] = "this machine, no cloud and no Docker"
    settings_key: ClassVar[str] = "local"
    settings_schema: ClassVar[Mapping[str, Any]] = SETTINGS_SCHEMA
    capabilities: ClassVar[Capabilities] = Capabilities(probe_unrecorded=False, rollout=Rollout.STOP_START,
                                                        auth=frozenset({Auth.KEY}))

    def render(self, spec: Spec, env: Any, values: Mapping[str, Any]) -> dict[str, str]:
        """local.json: the service settings a reviewer should see change (workers, memory, timeout, port)."""
        settings = {**resources(spec), "port": spec.deploy.block("local")["port"], "auth": spec.deploy.auth,
                    "tags": dict(spec.tags), "description": spec.description}
        return {"local.json": json.dumps(settings, indent=2, sort_keys=True) + "\n",
                "swagger.json": json.dumps(openapi.document(spec), indent=2, sort_keys=True) + "\n"}

    # -- deploy ---------------------------------------------------------------------------------
    def deploy(self, request: DeployRequest, *, port: int | None = None) -> ServiceRecord:
        """Stop the previous service, copy the app, start the host detached, wait until it is ready."""
        spec = request.spec
        if request.previous:
            self.stop(request.previous)
        service_dir = request.service_dir
        app_dir = service_dir / "app"
        if app_dir.exists():
            shutil.rmtree(app_dir)
        app_dir.mkdir(parents=True)
        for name in APP_FILES:
            shutil.copy2(request.build_dir / name, app_dir / name)
        model_dir = _isolate_model(request.model_path, service_dir / "model" / spec.model.name / str(spec.model.version))
        keys_file = keys.ensure(service_dir, spec.deploy.auth)
        ready_file = service_dir / "ready.json"
        ready_file.unlink(missing_ok=True)
        config = service_config(spec, app_dir, model_dir, keys_file, ready_file,
                                spec.deploy.block("local")["port"] if port is None else port)
        config_file = service_dir / "config.json"
        atomic_write(config_file, json.dumps(config, indent=2).encode())
        log_file = service_dir / "service.log"
        process = None
        try:
            # Ctrl-C or SIGTERM while the host starts must find it in `process` to stop it: hold both
            # until Popen has returned and `process` is set.
            with interrupts.held(), open(log_file, "ab") as log:
                log.write(f"{DEPLOY_MARKER} at {time.strftime('%Y-%m-%dT%H:%M:%S%z')} ---\n".encode())
                log.flush()
                process = subprocess.Popen(
                    [sys.executable, "-m", "pipeline.serve", str(config_file)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    cwd=app_dir, start_new_session=True, env=_child_env(),
                )
            ready = _wait_ready(process, ready_file, log_file, spec.deploy.ready_timeout_s, request)
        except BaseException:
            if process is not None and process.poll() is None:
                _stop(process)  # an interrupted or failed deploy leaves no half-started service behind
            raise
        base = f"http://127.0.0.1:{ready['port']}"
        return ServiceRecord(
            target=self.name,
            scoring_uri=f"{base}/score",
            auth=spec.deploy.auth,
            swagger_uri=f"{base}/swagger.json",
            extra={
                "pid": process.pid,
                "workers": ready.get("workers", []),
                "port": ready["port"],
                "health_uri": f"{base}/",
                "log": str(log_file),
                "config": str(config_file),
                "app_files": {name: sha256_path(app_dir / name) for name in APP_FILES},
                "model_file": str(model_dir / request.model_path.name),
                "model_stamp": _stamp(model_dir / request.model_path.name),
            },
        )

    # -- probe, invoke ---------------------------------------------------------------------------
    def probe(self, record: ServiceRecord | None, spec: Spec | None = None) -> Live:
        if record is None:
            return Live(False, False, "a local service is only known by its record")
        service = LocalService.of(record)
        if not _is_our_process(service.pid, service.config):
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
            return Live(True, False, f"process {service.pid} is running but {service.health_uri} does not answer "
                        f"({_reason(exc)})", tuple(drift))
        if body.strip() != b"Healthy":
            return Live(True, False, f"{service.health_uri} answered {body[:40]!r}, not Healthy", tuple(drift))
        return Live(True, True, f"healthy at {record.scoring_uri} (pid {service.pid}){_incidents(service.folder)}",
                    tuple(drift))

    def invoke(self, record: ServiceRecord, body: bytes, *, timeout: float, service_dir: Path) -> Reply:
        headers = {"Authorization": "Bearer " + keys.read_primary(service_dir)} if record.auth else {}
        assert record.scoring_uri is not None
        return http.post(record.scoring_uri, body, headers, timeout)

    # -- delete, logs ----------------------------------------------------------------------------
    def delete(self, record: ServiceRecord, service_dir: Path) -> str:
        """Stop the service and remove its keys: a deleted service's keys open nothing."""
        detail = self.stop(record)
        keys.remove(service_dir)
        return detail

    def stop(self, record: ServiceRecord) -> str:
        """SIGTERM the service's process group, wait, then SIGKILL what is left."""
        service = LocalService.of(record)
        pid = service.pid
        if not _is_our_process(pid, service.config):
            return f"service process {pid} was not running"
        _signal_group(pid, signal.SIGTERM)
        how = ""
        if not _wait_gone(pid, 10.0):
            _signal_group(pid, signal.SIGKILL)
            _wait_gone(pid, 5.0)
            how = " (forcefully, after 10 s)"
        return f"stopped service process {pid}{how}"

    def logs(self, record: ServiceRecord, service_dir: Path, *, tail: int) -> str:
        return tail_file(Path(LocalService.of(record).log), tail)


def resources(spec: Spec) -> dict[str, Any]:
    """The spec's resources as the host enforces them: cores -> worker processes, GB -> a hard limit in MB."""
    return {"workers": workers_for(spec.deploy.cpu_cores), "memory_limit_mb": int(spec.deploy.memory_gb * 1024),
            "request_timeout_ms": spec.deploy.request_timeout_ms}


def _isolate_model(model_path: Path, model_dir: Path) -> Path:
    """The service's own copy of the model (a hard link when possible): a later fetch that fails the
    evaluate gate replaces the store's file, and must not change what a restarted worker loads."""
    if model_dir.parent.parent.exists():
        shutil.rmtree(model_dir.parent.parent)
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


def service_config(spec: Spec, app_dir: Path, model_dir: Path, keys_file: Path | None, ready_file: Path | None,
                   port: int) -> dict[str, Any]:
    """The scoring host's settings from the spec's resources: cores -> workers, memory -> hard limit."""
    return {
        "entry_script": str(app_dir / "score.py"),
        "model_dir": str(model_dir),
        "app_root": str(app_dir),
        "host": "127.0.0.1",
        "port": port,
        **resources(spec),
        "keys_file": str(keys_file) if keys_file else None,
        "swagger": openapi.document(spec),
        "features": spec.scoring.features,  # lets the host answer 400, not 500, when a user's run() chokes on a short row
        "ready_file": str(ready_file) if ready_file else None,
        "service_name": spec.name,
    }


def _incidents(service_dir: Path) -> str:
    """What the supervisor had to do since deploy (out-of-memory kills, dead workers), from its events file."""
    try:
        counts = json.loads((service_dir / "ready.events.json").read_text()).get("counts", {})
    except (OSError, ValueError):
        return ""
    parts = []
    if counts.get("out_of_memory"):
        parts.append(f"{counts['out_of_memory']} worker(s) killed for exceeding deploy.memory_gb")
    exited = counts.get("worker_exited", 0)  # out-of-memory kills are counted apart
    if exited > 0:
        parts.append(f"{exited} worker(s) died and were replaced")
    return f"; {', '.join(parts)} (see `logs`)" if parts else ""


def _this_deploy(path: Path, lines: int) -> str:
    """The tail of the log written since the last deploy marker: earlier deploys' lines only mislead."""
    text = tail_file(path, 2000)
    marker = text.rfind(DEPLOY_MARKER)
    if marker >= 0:
        text = text[text.index("\n", marker) + 1:] if "\n" in text[marker:] else ""
    return "\n".join(text.splitlines()[-lines:])


def tail_file(path: Path, lines: int) -> str:
    """The last `lines` lines of a log file, read from its end."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 256 * 1024))
            data = f.read()
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:]) if lines > 0 else ""


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # the host must import this very pipeline package, even from a source checkout that is not installed
    root = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _wait_ready(process: subprocess.Popen[bytes], ready_file: Path, log_file: Path, timeout_s: float,
                request: DeployRequest) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    start = time.monotonic()
    while True:
        if ready_file.exists():
            try:
                return json.loads(ready_file.read_text())
            except ValueError:
                pass  # being written; the next poll sees it whole
        code = process.poll()
        if code is not None:
            raise TargetError(f"the service exited with code {code} before it was ready; "
                              f"last lines of {log_file}:\n{_indent(_this_deploy(log_file, 20))}")
        if time.monotonic() > deadline:
            raise TargetError(f"the service was not ready after {timeout_s} s (deploy.ready_timeout_s); "
                              f"last lines of {log_file}:\n{_indent(_this_deploy(log_file, 20))}")
        request.console.progress(f"deploy: waiting for the service to be ready ({time.monotonic() - start:.1f} s)")
        time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes]) -> None:
    _signal_group(process.pid, signal.SIGTERM)
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        _signal_group(process.pid, signal.SIGKILL)
        process.wait(5)


def _indent(text: str) -> str:
    return "\n".join("  | " + line for line in text.splitlines()) or "  | (the log is empty)"


def _is_our_process(pid: int, config: str) -> bool:
    """True when `pid` runs and is our host for this config (a reused pid is not our service)."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read().split(b"\0")
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True  # no /proc (macOS): trust the pid
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                return False  # a zombie has exited; only its parent has not reaped it yet
    except (OSError, IndexError):
        pass
    return b"pipeline.serve" in cmdline and config.encode() in cmdline


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)  # reap it if it is our child
            if done:
                return True
        except ChildProcessError:
            pass
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        try:
            os.kill(pid, 0)
            return True
        except OSError:
            return False


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", exc)
    return str(reason)
