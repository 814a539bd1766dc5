"""Target `ray`: a Ray Serve application on a Ray cluster (a local one of its own, or one at deploy.ray.address).

A deploy is a declarative config update through the dashboard's REST API, and Serve rolls the replicas
itself. Ray is imported only where it is needed (render's schema check, the package upload), so the schema,
which imports every target class, and `validate` stay light.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pipeline import __version__, http, openapi
from pipeline.errors import StateError, TargetError
from pipeline.render import Escaped, check_yaml, render_template
from pipeline.spec import RegistrySource, Spec
from pipeline.targets import keys as keyfile
from pipeline.targets import ray_cluster as clusters
from pipeline.targets.base import (
    AddProblem,
    Auth,
    BaseTarget,
    Capabilities,
    DeployRequest,
    Live,
    Reply,
    Rollout,
    ServiceRecord,
)
from pipeline.targets.ray_cluster import Cluster, Rest
from pipeline.targets.ray_config import (
    RAY_VERSION,
    SETTINGS_SCHEMA,
    canonical,
    check_app,
    check_rayservice,
    config_drift,
    live_config,
    merged,
    validate_serve_config,
)

if TYPE_CHECKING:
    from pipeline.console import Console

APP_FILES = ("serve_app.py", "score.py", "swagger.json")  # the folder the cluster runs, with the model beside them
DEPLOYMENT = "scoring"
TIMEOUT_MARGIN_S = 1.0
UP_STATES = ("RUNNING",)


@dataclass(frozen=True)
class RayService:
    """The ray target's part of a service record (its `extra`), read back with its types checked."""

    cluster: Cluster
    app: str  # the Serve application's name: the service's
    health_uri: str
    config: Mapping[str, Any]  # the Serve config as deployed: what probe compares the live application with
    previous_config: Mapping[str, Any] | None  # the one before, on the same cluster: put back if a deploy fails
    package: str  # gcs:// URI of the uploaded application folder
    replicas: tuple[str, ...]  # replica ids at deploy
    fixed_replicas: bool  # no autoscaling: a replica id gone since deploy is a replica that died

    def extra(self) -> dict[str, Any]:
        """JSON-native values only: the record must read back equal from the state file."""
        return {"cluster": self.cluster.to_dict(), "app": self.app, "health_uri": self.health_uri,
                "config": json.loads(json.dumps(self.config)),
                "previous_config": json.loads(json.dumps(self.previous_config)), "package": self.package,
                "replicas": list(self.replicas), "fixed_replicas": self.fixed_replicas}

    @classmethod
    def of(cls, record: ServiceRecord) -> RayService:
        extra = record.extra
        missing = [k for k in ("cluster", "app", "health_uri", "config") if k not in extra]
        if missing:
            raise StateError(f"the ray service record is damaged: {', '.join(missing)} missing")
        kinds: dict[str, tuple[type, ...]] = {"app": (str,), "health_uri": (str,), "config": (dict,),
                                              "previous_config": (dict, type(None)), "package": (str,),
                                              "replicas": (list,), "fixed_replicas": (bool,)}
        values: dict[str, Any] = {"previous_config": None, "package": "", "replicas": [], "fixed_replicas": False}
        values |= {k: extra[k] for k in kinds if k in extra}
        for key, kind in kinds.items():
            if not isinstance(values[key], kind):
                raise StateError(f"the ray service record is damaged: {key} is {values[key]!r:.100}")
        apps = values["config"].get("applications")
        if not isinstance(apps, list) or not apps or not isinstance(apps[0], dict):
            raise StateError("the ray service record is damaged: its Serve config has no application")
        return cls(Cluster.of(extra["cluster"]), values["app"], values["health_uri"], values["config"],
                   values["previous_config"], values["package"], tuple(map(str, values["replicas"])),
                   values["fixed_replicas"])

    @property
    def app_config(self) -> Mapping[str, Any]:
        return dict(self.config["applications"][0])


def route_prefix(spec: Spec) -> str:
    return str(spec.deploy.settings().get("route_prefix") or f"/{spec.name}")


class RayTarget(BaseTarget):
    """One Serve application per service, deployed as a declarative config update (Serve rolls the replicas)."""

    name: ClassVar[str] = "ray"
    summary: ClassVar[str] = "a Ray Serve application on a local or remote Ray cluster"
    settings_key: ClassVar[str] = "ray"
    settings_schema: ClassVar[Mapping[str, Any]] = SETTINGS_SCHEMA
    extra: ClassVar[str | None] = "ray"
    packages: ClassVar[Mapping[str, str]] = {"ray": "ray.serve"}
    capabilities: ClassVar[Capabilities] = Capabilities(probe_unrecorded=True, rollout=Rollout.IN_PLACE,
                                                        auth=frozenset({Auth.KEY}))

    # -- offline ---------------------------------------------------------------------------------
    def rules(self, data: Mapping[str, Any], add: AddProblem, *, folder: Path | None) -> None:
        settings = data["deploy"]["ray"]
        if "replicas" in settings and "autoscaling" in settings:
            add(("deploy", "ray", "autoscaling"),
                "cannot be combined with deploy.ray.replicas (a fixed count disables autoscaling)")
        scale = settings.get("autoscaling")
        if scale is not None and scale["min_replicas"] > scale["max_replicas"]:
            add(("deploy", "ray", "autoscaling", "min_replicas"),
                f"must not exceed max_replicas ({scale['max_replicas']})")
        prefix = settings.get("route_prefix")
        if prefix is not None and prefix != "/" and (prefix.endswith("/") or "//" in prefix):
            add(("deploy", "ray", "route_prefix"), f"{prefix!r}: Serve takes no '//' and no trailing '/' "
                "(except for '/' itself)")

    def extra_pip_packages(self, spec: Spec) -> list[str]:
        return [f"ray[serve]=={RAY_VERSION}"]  # the replicas' image needs Serve itself

    def assets(self, spec: Spec) -> dict[str, Path]:
        """The model beside serve_app.py: a rendered folder is then the application folder, ready to zip for
        deploy.ray.working_dir (KubeRay, `serve deploy`)."""
        if isinstance(spec.model.source, RegistrySource):
            return {}
        return {spec.model.file_name: spec.model.source}

    def template_values(self, spec: Spec) -> dict[str, Any]:
        settings = spec.deploy.settings()
        scale = settings.get("autoscaling")
        low, high = (scale["min_replicas"], scale["max_replicas"]) if scale else (settings.get("replicas") or 1,) * 2
        return {
            "route_prefix": route_prefix(spec),
            "working_dir": settings.get("working_dir"),
            "model_dir": ".",  # AZUREML_MODEL_DIR, relative to the application folder: the model lies beside score.py
            "model": f"{spec.model.name}:{spec.model.version}",
            "max_body_bytes": 100 * 1024 * 1024,
            "max_batch_size": 64,
            "batch_wait_timeout_s": 0.0,  # batch what queued while the last predict ran; wait for no one
            "max_ongoing_requests": 64,
            "timeout_margin_s": TIMEOUT_MARGIN_S,
            "request_timeout_s": spec.deploy.request_timeout_ms / 1000 + TIMEOUT_MARGIN_S,
            "replicas": low,
            "autoscaling": dict(scale) if scale else None,
            "memory_bytes": int(spec.deploy.memory_gb * 1024**3),
            "pipeline_version": __version__,
            "ray_version": RAY_VERSION,
            "image": settings["image"],
            "pods": {"replicas": low, "min": low, "max": high, "cpu": _k8s_cpu(spec.deploy.cpu_cores),
                     "memory": f"{math.ceil(spec.deploy.memory_gb * 1024) + 1024}Mi"},
        }

    def render(self, spec: Spec, env: Any, values: Mapping[str, Any]) -> dict[str, str]:
        """serve_app.py, serve_config.yaml (checked by Ray Serve's own schema) and rayservice.yaml embedding it."""
        ray = self.template_values(spec)
        values = {**values, "ray": ray}
        app = render_template(env, "ray/serve_app.py.j2", values)
        check_app(app)
        config = render_template(env, "ray/serve_config.yaml.j2", values)
        validate_serve_config(check_yaml(config, "serve_config.yaml"), "serve_config.yaml")
        ray["serve_config_block"] = Escaped("\n".join("    " + line if line else ""
                                                      for line in config.rstrip("\n").split("\n")))
        service = render_template(env, "ray/rayservice.yaml.j2", values)
        check_rayservice(check_yaml(service, "rayservice.yaml"), config)
        return {"serve_app.py": app, "serve_config.yaml": config, "rayservice.yaml": service,
                "swagger.json": json.dumps(openapi.document(spec), indent=2, sort_keys=True) + "\n"}

    def describe_update(self, record: ServiceRecord | None, spec: Spec) -> str:
        address = spec.deploy.settings().get("address")
        old = RayService.of(record).cluster if record is not None else None
        if old is not None and (old.owned != (not address) or (address and old.dashboard != address.rstrip("/"))):
            where = f"the cluster at {address}" if address else "a local cluster of its own"
            return f"moves to {where}: deployed there, then removed from the old cluster (downtime)"
        return ("rolling: Ray Serve replaces replicas one at a time (a new replica count or tags only scale or "
                "reconfigure the running ones); with one replica, the old one stops before its successor is up, "
                "and requests wait in Serve's proxy meanwhile")

    # -- deploy ----------------------------------------------------------------------------------
    def deploy(self, request: DeployRequest) -> ServiceRecord:
        try:
            return self._deploy(request)
        finally:
            request.console.clear_progress()

    def _deploy(self, request: DeployRequest) -> ServiceRecord:
        spec, console = request.spec, request.console
        previous = RayService.of(request.previous) if request.previous is not None else None
        app_dir = _package_folder(request)
        key_file = keyfile.ensure(request.service_dir, spec.deploy.auth)
        cluster, started = self._cluster(spec, previous, request)
        same = previous is not None and previous.cluster.dashboard == cluster.dashboard
        rest = Rest(cluster.dashboard)
        try:
            console.progress("deploy: uploading the application folder to the Ray cluster")
            package = rest.upload(app_dir)
            ours = live_config(request.build_dir / "serve_config.yaml", package, cluster, key_file)
            rest.put(merged(rest.details(), ours))
            details = wait_ready(rest, spec.name, ours, spec.deploy.ready_timeout_s, console)
        except BaseException as exc:
            if started:
                clusters.stop(cluster)  # a cluster this deploy started leaves nothing behind when it fails
            elif isinstance(exc, TargetError) and previous is not None and same:
                raise TargetError(f"{exc}\n{_rollback(rest, previous.config)}") from None
            raise
        if previous is not None and not same and not previous.cluster.owned:
            _forget_elsewhere(previous, console)
        app = details["applications"][spec.name]
        base = _serve_base(cluster, details.get("http_options") or {}) + route_prefix(spec).rstrip("/")
        service = RayService(cluster, spec.name, f"{base}/", ours, previous.config if previous and same else None,
                             package, tuple(sorted(r["replica_id"] for r in _replicas(app))),
                             spec.deploy.settings().get("autoscaling") is None)
        return ServiceRecord(self.name, f"{base}/score", spec.deploy.auth, f"{base}/swagger.json", service.extra())

    def _cluster(self, spec: Spec, previous: RayService | None, request: DeployRequest) -> tuple[Cluster, bool]:
        """The cluster to deploy to, and whether this deploy started it."""
        address = spec.deploy.settings().get("address")
        old = previous.cluster if previous is not None else None
        stray = clusters.recorded(request.service_dir)
        if stray is not None and stray.head_pid != (old.head_pid if old else 0) and clusters.processes(stray):
            clusters.stop(stray)  # started by a deploy that never finished (killed before its record was saved)
        if address:
            if old is not None and old.owned:
                clusters.stop(old)  # moving to a cluster elsewhere: ours must not keep running unseen
            return Cluster(dashboard=address.rstrip("/")), False
        if old is not None and old.owned and clusters.head_alive(old):
            try:
                Rest(old.dashboard).details()
                return old, False  # keep it: Serve rolls the replicas over on the same cluster
            except TargetError:
                pass
        if old is not None and old.owned:
            clusters.stop(old)  # what is left of a dead or unanswering cluster of ours
        return clusters.start(request.service_dir, request.console, spec.deploy.ready_timeout_s), True

    # -- the live application --------------------------------------------------------------------
    def probe(self, record: ServiceRecord | None, spec: Spec | None = None) -> Live:
        if record is None:
            return _probe_unrecorded(spec)
        service = RayService.of(record)
        cluster = service.cluster
        if cluster.owned and not clusters.head_alive(cluster):
            return Live(True, False, f"the local Ray cluster (head pid {cluster.head_pid}) is not running")
        try:
            details = Rest(cluster.dashboard).details()
        except TargetError as exc:
            return Live(cluster.owned, False, str(exc))  # ours is down when it does not answer; another, unreachable
        app = (details.get("applications") or {}).get(service.app)
        if app is None:
            return Live(True, False, f"application {service.app} is not on the Ray cluster at {cluster.dashboard}",
                        ("application: recorded, but missing from the cluster",))
        return _judge(record, service, app)

    def invoke(self, record: ServiceRecord, body: bytes, *, timeout: float, service_dir: Path) -> Reply:
        headers = {"Authorization": "Bearer " + keyfile.read_primary(service_dir)} if record.auth else {}
        assert record.scoring_uri is not None
        return http.post(record.scoring_uri, body, headers, timeout)

    def delete(self, record: ServiceRecord, service_dir: Path) -> str:
        """Remove the application; stop the local cluster only if the service started it (by PID)."""
        service = RayService.of(record)
        cluster = service.cluster
        parts = []
        if cluster.owned:
            parts.append(clusters.stop(cluster))  # Serve is shut down first, then the session, by PID
        else:
            parts.append(_remove_app(Rest(cluster.dashboard), service.app))
        stray = clusters.recorded(service_dir)
        if stray is not None and stray.head_pid != cluster.head_pid and clusters.processes(stray):
            parts.append(f"{clusters.stop(stray)}, of a deploy that never finished")
        keyfile.remove(service_dir)
        shutil.rmtree(service_dir / "app", ignore_errors=True)
        return "; ".join(parts)

    def logs(self, record: ServiceRecord, service_dir: Path, *, tail: int) -> str:
        service = RayService.of(record)
        rest = Rest(service.cluster.dashboard)
        try:
            app = (rest.details().get("applications") or {}).get(service.app)
        except TargetError as exc:
            return f"(cannot read the replicas' logs: {exc})"
        if app is None:
            return f"(application {service.app} is not on the cluster)"
        parts = []
        for replica in _replicas(app):
            text = rest.log(replica["node_id"], replica["log_file_path"], tail)
            parts.append(f"--- replica {replica['replica_id']} ({replica['state']}) {replica['log_file_path']} ---\n"
                         + "\n".join(text.splitlines()[-tail:]))
        return "\n".join(parts) or "(no replicas)"


def wait_ready(rest: Rest, name: str, ours: Mapping[str, Any], timeout_s: float, console: Console) -> dict[str, Any]:
    """Poll Serve until our config is the application's and every replica of it runs; fail on DEPLOY_FAILED."""
    wanted = canonical(ours["applications"][0])
    started = time.monotonic()
    while True:
        details = rest.details()
        app = (details.get("applications") or {}).get(name)
        status, message = "NOT_STARTED", ""
        if app is not None and canonical(app.get("deployed_app_config")) == wanted:
            status, message = app.get("status", "?"), app.get("message") or ""
            deployment = (app.get("deployments") or {}).get(DEPLOYMENT) or {}
            replicas = _replicas(app)
            if status == "DEPLOY_FAILED":
                raise TargetError(f"Serve could not deploy application {name}: {_first_lines(message)}"
                                  + _replica_logs(rest, app))
            running = [r for r in replicas if r["state"] in UP_STATES]
            if (status == "RUNNING" and deployment.get("status") == "HEALTHY" and len(running) == len(replicas)
                    and len(running) >= int(deployment.get("target_num_replicas", 1))):
                return details
            message = deployment.get("message") or message
            status = f"{status}, {len(running)}/{deployment.get('target_num_replicas', '?')} replicas running"
        if time.monotonic() - started > timeout_s:
            raise TargetError(f"application {name} was not ready after {timeout_s} s (deploy.ready_timeout_s): "
                              f"{status}; {_first_lines(message) or 'no message from Serve'}"
                              + (_replica_logs(rest, app) if app else ""))
        console.progress(f"deploy: Serve application {name}: {status} ({time.monotonic() - started:.0f} s)")
        time.sleep(0.5)


def _probe_unrecorded(spec: Spec | None) -> Live:
    """Plan before a first deploy: a cluster of the service's own cannot exist yet; one elsewhere is asked by name."""
    address = spec.deploy.settings().get("address") if spec is not None else None
    if spec is None or not address:
        return Live(True, False, "no local Ray cluster runs for this service yet; deploy starts one")
    try:
        app = (Rest(address).details().get("applications") or {}).get(spec.name)
    except TargetError as exc:
        return Live(False, False, str(exc))
    if app is None:
        return Live(True, False, f"the Ray cluster at {address} is reachable; application {spec.name} does not "
                    "exist yet")
    return Live(True, app.get("status") == "RUNNING", f"application {spec.name} is {app.get('status')} on {address} "
                "but is not recorded here; deploy will update it")


def _judge(record: ServiceRecord, service: RayService, app: Mapping[str, Any]) -> Live:
    """Health and drift of the live application against its record: config, replica states, replaced replicas."""
    cluster = service.cluster
    drift = [f"serve config: {line}" for line in config_drift(app.get("deployed_app_config"), service.app_config)]
    deployment = (app.get("deployments") or {}).get(DEPLOYMENT) or {}
    replicas = _replicas(app)
    dead = [r for r in replicas if cluster.owned and r.get("pid") and not clusters.pid_alive(int(r["pid"]))]
    if service.fixed_replicas:
        gone = sorted(set(service.replicas) - {r["replica_id"] for r in replicas})
        if gone:
            drift.append(f"replicas: {', '.join(gone)} recorded at deploy {'is' if len(gone) == 1 else 'are'} gone "
                         "(died or replaced)")
    for r in dead:
        drift.append(f"replica {r['replica_id']}: its process {r['pid']} is not running")
    states = ", ".join(f"{r['replica_id']} {'DEAD' if r in dead else r['state']}"
                       + (f" (pid {r['pid']})" if r.get("pid") else "") for r in replicas) or "none"
    healthy = (app.get("status") == "RUNNING" and deployment.get("status") == "HEALTHY" and not dead
               and bool(replicas) and all(r["state"] in UP_STATES for r in replicas) and _answers(service.health_uri))
    detail = (f"Serve application {service.app} {app.get('status')} at {record.scoring_uri}; deployment {DEPLOYMENT} "
              f"{deployment.get('status')}, {len(replicas)}/{deployment.get('target_num_replicas', '?')} replicas: "
              f"{states}")
    return Live(True, healthy, detail, tuple(drift))


def _answers(uri: str) -> bool:
    try:
        reply = http.get(uri, timeout=3, limit=100)
    except OSError:
        return False
    return reply.status == 200 and reply.body.strip() == b"Healthy"


def _remove_app(rest: Rest, name: str, timeout_s: float = 60.0) -> str:
    """Take one application off a shared cluster (a PUT of all the others), and wait until Serve has removed it."""
    details = rest.details()
    if name not in (details.get("applications") or {}):
        return f"Serve application {name} was not on the cluster at {rest.address}"
    rest.put(merged(details, None, drop=name))
    deadline = time.monotonic() + timeout_s
    while (app := (rest.details().get("applications") or {}).get(name)) is not None:
        if time.monotonic() > deadline:
            return f"asked Serve to remove application {name}; it is still {app.get('status')} after {timeout_s:g} s"
        time.sleep(0.5)
    return f"removed Serve application {name} from the cluster at {rest.address}"


def _forget_elsewhere(previous: RayService, console: Console) -> None:
    """The application has moved to another cluster: take it off the one it was on, if that one still answers."""
    try:
        _remove_app(Rest(previous.cluster.dashboard), previous.app)
    except TargetError as exc:
        console.error(f"warning: application {previous.app} may still run on {previous.cluster.dashboard}: {exc}")


def _rollback(rest: Rest, previous_config: Mapping[str, Any]) -> str:
    try:
        rest.put(merged(rest.details(), previous_config))
    except TargetError as exc:
        return f"rolling back to the previous Serve config failed too: {exc}"
    return "rolled back: the previous Serve config was deployed again (Serve replaces the replicas in turn)"


def _replicas(app: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(((app.get("deployments") or {}).get(DEPLOYMENT) or {}).get("replicas") or [])


def _replica_logs(rest: Rest, app: Mapping[str, Any], lines: int = 20) -> str:
    out = []
    for replica in _replicas(app)[:2]:
        if replica.get("node_id") and replica.get("log_file_path"):
            text = "\n".join(rest.log(replica["node_id"], replica["log_file_path"], lines).splitlines()[-lines:])
            out.append(f"\nlast lines of replica {replica['replica_id']}'s log:\n"
                       + "\n".join("  | " + row for row in text.splitlines()))
    return "".join(out)


def _first_lines(text: str, lines: int = 12) -> str:
    rows = [row.rstrip() for row in (text or "").splitlines() if row.strip()]
    return "\n".join(rows[-lines:])


def _serve_base(cluster: Cluster, http_options: Mapping[str, Any]) -> str:
    if cluster.owned:
        return f"http://127.0.0.1:{cluster.serve_port}"
    host = urllib.parse.urlsplit(cluster.dashboard).hostname or "127.0.0.1"
    return f"http://{host}:{http_options.get('port', 8000)}"


def _package_folder(request: DeployRequest) -> Path:
    """service_dir/app: what the replicas run (serve_app.py, score.py, swagger.json) and the model, hard-linked."""
    app_dir = request.service_dir / "app"
    if app_dir.exists():
        shutil.rmtree(app_dir)
    app_dir.mkdir(parents=True)
    for name in APP_FILES:
        shutil.copyfile(request.build_dir / name, app_dir / name)
    try:
        os.link(request.model_path, app_dir / request.model_path.name)
    except OSError:
        shutil.copyfile(request.model_path, app_dir / request.model_path.name)
    return app_dir


def _k8s_cpu(cores: float) -> str:
    return str(int(cores)) if float(cores).is_integer() else f"{math.ceil(cores * 1000)}m"
