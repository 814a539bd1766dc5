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
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pipeline import __version__, openapi
from pipeline.errors import TargetError
from pipeline.render import Escaped, check_yaml, render_template
from pipeline.spec import RegistrySource, Spec
from pipeline.targets import keys as keyfile
from pipeline.targets import ray_cluster as clusters
from pipeline.targets.base import (
    STAMP_DIGEST,
    STAMP_MODEL,
    AddProblem,
    Auth,
    BaseTarget,
    Capabilities,
    DeployRequest,
    Live,
    Rollout,
    ServiceRecord,
)
from pipeline.targets.ray_cluster import Cluster, Rest
from pipeline.targets.ray_config import (
    RAY_VERSION,
    SETTINGS_SCHEMA,
    check_app,
    check_rayservice,
    live_config,
    merged,
    validate_serve_config,
)
from pipeline.targets.ray_service import (
    HTTP_KEYS,
    RayService,
    http_divergence,
    judge,
    probe_unrecorded,
    remove_app,
    replicas_of,
    restart_serve,
    rollback,
    serve_base,
    wait_ready,
)

if TYPE_CHECKING:
    from pipeline.console import Console

APP_FILES = ("serve_app.py", "score.py", "swagger.json")  # the folder the cluster runs, with the model beside them
TIMEOUT_MARGIN_S = 1.0
# a dashboard starting Serve (its first call connects it to Ray) can take tens of seconds on a busy machine;
# deploy and delete wait that long for an answer, probe (status, plan) does not
SLOW_CALL_S = 60.0


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
    capabilities: ClassVar[Capabilities] = Capabilities(
        probe_unrecorded=True, rollout=Rollout.IN_PLACE, auth=frozenset({Auth.KEY})
    )

    # -- offline ---------------------------------------------------------------------------------
    def rules(self, data: Mapping[str, Any], add: AddProblem, *, folder: Path | None) -> None:
        settings = data["deploy"]["ray"]
        if "replicas" in settings and "autoscaling" in settings:
            add(
                ("deploy", "ray", "autoscaling"),
                "cannot be combined with deploy.ray.replicas (a fixed count disables autoscaling)",
            )
        scale = settings.get("autoscaling")
        if scale is not None and scale["min_replicas"] > scale["max_replicas"]:
            add(
                ("deploy", "ray", "autoscaling", "min_replicas"),
                f"must not exceed max_replicas ({scale['max_replicas']})",
            )
        prefix = settings.get("route_prefix")
        if prefix is not None and prefix != "/" and (prefix.endswith("/") or "//" in prefix):
            add(
                ("deploy", "ray", "route_prefix"),
                f"{prefix!r}: Serve takes no '//' and no trailing '/' (except for '/' itself)",
            )

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
            "pods": {
                "replicas": low,
                "min": low,
                "max": high,
                "cpu": _k8s_cpu(spec.deploy.cpu_cores),
                "memory": f"{math.ceil(spec.deploy.memory_gb * 1024) + 1024}Mi",
            },
        }

    def render(self, spec: Spec, env: Any, values: Mapping[str, Any]) -> dict[str, str]:
        """serve_app.py, serve_config.yaml (checked by Ray Serve's own schema) and rayservice.yaml embedding it."""
        ray = self.template_values(spec)
        values = {**values, "ray": ray}
        app = render_template(env, "ray/serve_app.py.j2", values)
        check_app(app)
        config = render_template(env, "ray/serve_config.yaml.j2", values)
        validate_serve_config(check_yaml(config, "serve_config.yaml"), "serve_config.yaml")
        ray["serve_config_block"] = Escaped(
            "\n".join("    " + line if line else "" for line in config.rstrip("\n").split("\n"))
        )
        service = render_template(env, "ray/rayservice.yaml.j2", values)
        check_rayservice(check_yaml(service, "rayservice.yaml"), config)
        return {
            "serve_app.py": app,
            "serve_config.yaml": config,
            "rayservice.yaml": service,
            "swagger.json": json.dumps(openapi.document(spec), indent=2, sort_keys=True) + "\n",
        }

    def describe_update(self, record: ServiceRecord | None, spec: Spec) -> str:
        address = spec.deploy.settings().get("address")
        old = RayService.of(record) if record is not None else None
        if old is not None and (
            old.cluster.owned != (not address) or (address and old.cluster.dashboard != address.rstrip("/"))
        ):
            where = f"the cluster at {address}" if address else "a local cluster of its own"
            return f"moves to {where}: deployed there, then removed from the old cluster (downtime)"
        timeout_s = spec.deploy.request_timeout_ms / 1000 + TIMEOUT_MARGIN_S
        recorded = (old.config.get("http_options") or {}).get("request_timeout_s") if old is not None else None
        if old is not None and old.cluster.owned and recorded is not None and recorded != timeout_s:
            return (
                f"restart: Serve takes its new request timeout ({recorded:g} s -> {timeout_s:g} s) only when it "
                "starts, so it is shut down and started again (downtime of a few seconds)"
            )
        return (
            "rolling: Ray Serve replaces replicas one at a time (a new replica count or tags only scale or "
            "reconfigure the running ones); with one replica, the old one stops before its successor is up, "
            "and requests wait in Serve's proxy meanwhile"
        )

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
        rest = Rest(cluster.dashboard, timeout=SLOW_CALL_S)
        try:
            console.progress("deploy: uploading the application folder to the Ray cluster")
            package = rest.upload(app_dir)
            ours = live_config(request.build_dir / "serve_config.yaml", package, cluster, key_file, request.stamp)
            details = rest.details()
            diverging = http_divergence(details.get("http_options"), ours["http_options"])
            if diverging and cluster.owned:  # a new request timeout: Serve takes it only when it starts
                restart_serve(rest, console)
                details = rest.details()
            elif diverging:
                console.error(
                    f"warning: Serve on {cluster.dashboard} keeps {'; '.join(diverging)}: it changes "
                    "HTTP options only when it restarts, which is for the cluster's owner to do"
                )
            rest.put(merged(details, ours))
            details = wait_ready(rest, spec.name, ours, spec.deploy.ready_timeout_s, console)
        except BaseException as exc:
            if started:
                clusters.stop(cluster)  # a cluster this deploy started leaves nothing behind when it fails
            elif isinstance(exc, TargetError) and previous is not None and same:
                raise TargetError(f"{exc}\n{rollback(rest, previous.config)}") from None
            raise
        if previous is not None and not same and not previous.cluster.owned:
            _forget_elsewhere(previous, console)
        app = details["applications"][spec.name]
        base = serve_base(cluster, details.get("http_options") or {}) + route_prefix(spec).rstrip("/")
        service = RayService(
            cluster,
            spec.name,
            f"{base}/",
            ours,
            previous.config if previous and same else None,
            package,
            tuple(sorted(r["replica_id"] for r in replicas_of(app))),
            spec.deploy.settings().get("autoscaling") is None,
        )
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
            return probe_unrecorded(spec.deploy.settings().get("address") if spec else None, spec.name if spec else "")
        service = RayService.of(record)
        cluster = service.cluster
        if cluster.owned and not clusters.head_alive(cluster):
            return Live(True, False, f"the local Ray cluster (head pid {cluster.head_pid}) is not running")
        try:
            details = Rest(cluster.dashboard).details()
        except TargetError as exc:
            return Live(cluster.owned, False, str(exc))  # ours is down when it does not answer; another, unreachable
        if service.app not in (details.get("applications") or {}):
            return Live(
                True,
                False,
                f"application {service.app} is not on the Ray cluster at {cluster.dashboard}",
                ("application: recorded, but missing from the cluster",),
            )
        return judge(record, service, details)

    def adopt(self, live: Live, spec: Spec) -> ServiceRecord | None:
        """A record for the stamped application of the spec's name on the cluster at deploy.ray.address."""
        address = spec.deploy.settings().get("address")
        if not address or not live.stamp:
            return None
        cluster = Cluster(dashboard=address.rstrip("/"))
        try:
            details = Rest(cluster.dashboard).details()
        except TargetError:
            return None
        app = (details.get("applications") or {}).get(spec.name) or {}
        config = app.get("deployed_app_config")
        if not isinstance(config, dict):
            return None
        http_options = details.get("http_options") or {}
        base = serve_base(cluster, http_options) + str(config.get("route_prefix") or route_prefix(spec)).rstrip("/")
        deployment = (config.get("deployments") or [{}])[0]
        service = RayService(
            cluster,
            spec.name,
            f"{base}/",
            {"http_options": {k: http_options[k] for k in HTTP_KEYS if k in http_options}, "applications": [config]},
            None,
            str((config.get("runtime_env") or {}).get("working_dir") or ""),
            tuple(sorted(r["replica_id"] for r in replicas_of(app))),
            "autoscaling_config" not in deployment,
        )
        stamp = dict(live.stamp)
        auth = bool((deployment.get("user_config") or {}).get("auth_key_sha256"))
        return ServiceRecord(
            self.name,
            f"{base}/score",
            auth,
            f"{base}/swagger.json",
            service.extra(),
            digest=stamp.get(STAMP_DIGEST) or None,
            model_sha256=stamp.get(STAMP_MODEL) or None,
        )

    def orphans(self, service_dir: Path) -> list[str]:
        """A local cluster named only by cluster.json: started by a deploy killed before its record was saved."""
        stray = clusters.recorded(service_dir)
        pids = clusters.processes(stray) if stray is not None else []
        return (
            [f"local Ray cluster, head pid {stray.head_pid} ({len(pids)} processes, from {service_dir})"]
            if stray is not None and pids
            else []
        )

    def stop_orphans(self, service_dir: Path) -> list[str]:
        stray = clusters.recorded(service_dir)
        return [clusters.stop(stray)] if stray is not None and clusters.processes(stray) else []

    def delete(self, record: ServiceRecord, service_dir: Path) -> str:
        """Remove the application; stop the local cluster only if the service started it (by PID)."""
        service = RayService.of(record)
        cluster = service.cluster
        parts = []
        if cluster.owned:
            parts.append(clusters.stop(cluster))  # Serve is shut down first, then the session, by PID
        else:
            parts.append(remove_app(Rest(cluster.dashboard, timeout=SLOW_CALL_S), service.app))
        stray = clusters.recorded(service_dir)
        if stray is not None and stray.head_pid != cluster.head_pid and clusters.processes(stray):
            parts.append(f"{clusters.stop(stray)}, of a deploy that never finished")
        keyfile.remove(service_dir)
        shutil.rmtree(service_dir / "app", ignore_errors=True)
        if not clusters.processes(cluster) and (stray is None or not clusters.processes(stray)):
            (service_dir / clusters.CLUSTER_FILE).unlink(missing_ok=True)
            shutil.rmtree(service_dir / "ray", ignore_errors=True)  # the stopped sessions' sockets and logs
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
        for replica in replicas_of(app):
            text = rest.log(replica["node_id"], replica["log_file_path"], tail)
            parts.append(
                f"--- replica {replica['replica_id']} ({replica['state']}) {replica['log_file_path']} ---\n"
                + "\n".join(text.splitlines()[-tail:])
            )
        return "\n".join(parts) or "(no replicas)"


def _forget_elsewhere(previous: RayService, console: Console) -> None:
    """The application has moved to another cluster: take it off the one it was on, if that one still answers."""
    try:
        remove_app(Rest(previous.cluster.dashboard, timeout=SLOW_CALL_S), previous.app)
    except TargetError as exc:
        console.error(f"warning: application {previous.app} may still run on {previous.cluster.dashboard}: {exc}")


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
