"""The ray target's service: its record, and the live Serve application (ready, healthy, drifted, removed)."""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline import http
from pipeline.errors import StateError, TargetError
from pipeline.targets import ray_cluster as clusters
from pipeline.targets.base import Live, ServiceRecord
from pipeline.targets.ray_cluster import Cluster, Rest
from pipeline.targets.ray_config import canonical, config_drift, merged, observed, stamp_of

if TYPE_CHECKING:
    from pipeline.console import Console

DEPLOYMENT = "scoring"
UP_STATES = ("RUNNING",)
HTTP_KEYS = ("host", "port", "request_timeout_s")  # the HTTP options the deployed config sets


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
        return {
            "cluster": self.cluster.to_dict(),
            "app": self.app,
            "health_uri": self.health_uri,
            "config": json.loads(json.dumps(self.config)),
            "previous_config": json.loads(json.dumps(self.previous_config)),
            "package": self.package,
            "replicas": list(self.replicas),
            "fixed_replicas": self.fixed_replicas,
        }

    @classmethod
    def of(cls, record: ServiceRecord) -> RayService:
        extra = record.extra
        missing = [k for k in ("cluster", "app", "health_uri", "config") if k not in extra]
        if missing:
            raise StateError(f"the ray service record is damaged: {', '.join(missing)} missing")
        kinds: dict[str, tuple[type, ...]] = {
            "app": (str,),
            "health_uri": (str,),
            "config": (dict,),
            "previous_config": (dict, type(None)),
            "package": (str,),
            "replicas": (list,),
            "fixed_replicas": (bool,),
        }
        values: dict[str, Any] = {"previous_config": None, "package": "", "replicas": [], "fixed_replicas": False}
        values |= {k: extra[k] for k in kinds if k in extra}
        for key, kind in kinds.items():
            if not isinstance(values[key], kind):
                raise StateError(f"the ray service record is damaged: {key} is {values[key]!r:.100}")
        apps = values["config"].get("applications")
        if not isinstance(apps, list) or not apps or not isinstance(apps[0], dict):
            raise StateError("the ray service record is damaged: its Serve config has no application")
        return cls(
            Cluster.of(extra["cluster"]),
            values["app"],
            values["health_uri"],
            values["config"],
            values["previous_config"],
            values["package"],
            tuple(map(str, values["replicas"])),
            values["fixed_replicas"],
        )

    @property
    def app_config(self) -> Mapping[str, Any]:
        return dict(self.config["applications"][0])


def wait_ready(rest: Rest, name: str, ours: Mapping[str, Any], timeout_s: float, console: Console) -> dict[str, Any]:
    """Poll Serve until our config is the application's and every replica of it runs; fail on DEPLOY_FAILED."""
    wanted = canonical(ours["applications"][0])
    started = time.monotonic()
    while True:
        try:
            details = rest.details()
            status, message = "NOT_STARTED", ""
        except TargetError as exc:  # Serve's controller, busy starting or replacing, may miss a call: ask again
            details, status, message = {}, "no answer", str(exc)
        app = (details.get("applications") or {}).get(name)
        if app is not None and canonical(app.get("deployed_app_config")) == wanted:
            status, message = app.get("status", "?"), app.get("message") or ""
            deployment = (app.get("deployments") or {}).get(DEPLOYMENT) or {}
            replicas = replicas_of(app)
            if status == "DEPLOY_FAILED":
                raise TargetError(
                    f"Serve could not deploy application {name}: {_first_lines(message)}" + _replica_logs(rest, app)
                )
            running = [r for r in replicas if r["state"] in UP_STATES]
            if (
                status == "RUNNING"
                and deployment.get("status") == "HEALTHY"
                and len(running) == len(replicas)
                and len(running) >= int(deployment.get("target_num_replicas", 1))
            ):
                return details
            message = deployment.get("message") or message
            status = f"{status}, {len(running)}/{deployment.get('target_num_replicas', '?')} replicas running"
        if time.monotonic() - started > timeout_s:
            raise TargetError(
                f"application {name} was not ready after {timeout_s} s (deploy.ready_timeout_s): "
                f"{status}; {_first_lines(message) or 'no message from Serve'}"
                + (_replica_logs(rest, app) if app else "")
            )
        console.progress(f"deploy: Serve application {name}: {status} ({time.monotonic() - started:.0f} s)")
        time.sleep(0.5)


def http_divergence(live: Mapping[str, Any] | None, wanted: Mapping[str, Any]) -> list[str]:
    """The HTTP options of a running Serve that differ from a config's: Serve ignores a change to them (the
    dashboard only logs a warning) until it is restarted. None: Serve is not running."""
    if not live:
        return []
    return [
        f"http_options.{key}: live {json.dumps(canonical(live.get(key)))}, "
        f"deployed {json.dumps(canonical(wanted[key]))}"
        for key in HTTP_KEYS
        if key in wanted and canonical(live.get(key)) != canonical(wanted[key])
    ]


def restart_serve(rest: Rest, console: Console, timeout_s: float = 60.0) -> None:
    """Shut Serve down (serve.shutdown(), every application with it), so the next PUT starts it anew."""
    console.progress("deploy: restarting Serve: it takes new HTTP options only when it starts")
    rest.shutdown()
    deadline = time.monotonic() + timeout_s
    while rest.details().get("http_options") is not None:
        if time.monotonic() > deadline:
            raise TargetError(f"Serve on {rest.address} was still running {timeout_s:g} s after its shutdown")
        time.sleep(0.5)


def probe_unrecorded(address: str | None, name: str) -> Live:
    """No record (a first deploy, a fresh runner): a cluster of the service's own exists only through its record;
    one elsewhere is asked for the application by name, and what it shows of itself (its stamp, its settings)."""
    if not address:
        return Live(True, False, "no local Ray cluster runs for this service yet; deploy starts one")
    try:
        app = (Rest(address).details().get("applications") or {}).get(name)
    except TargetError as exc:
        return Live(False, False, str(exc))
    if app is None:
        return Live(
            True,
            False,
            f"the Ray cluster at {address} is reachable; application {name} does not exist yet",
            found=False,
        )
    config = app.get("deployed_app_config")
    stamp = stamp_of(config)
    deployment = (app.get("deployments") or {}).get(DEPLOYMENT) or {}
    healthy = app.get("status") == "RUNNING" and deployment.get("status") == "HEALTHY"
    made = "deployed by pipeline" if stamp else "not made by pipeline (no stamp)"
    return Live(
        True,
        healthy,
        f"application {name} is {app.get('status')} on {address}, {made}",
        found=True,
        stamp=stamp,
        observed=observed(config),
    )


def judge(record: ServiceRecord, service: RayService, details: Mapping[str, Any]) -> Live:
    """Health and drift of the live application against its record: config, replica states, replaced replicas,
    and on a cluster of the service's own Serve's HTTP options."""
    cluster = service.cluster
    app = details["applications"][service.app]
    drift = [f"serve config: {line}" for line in config_drift(app.get("deployed_app_config"), service.app_config)]
    if cluster.owned:
        drift += [
            f"serve {line}"
            for line in http_divergence(details.get("http_options"), service.config.get("http_options") or {})
        ]
    deployment = (app.get("deployments") or {}).get(DEPLOYMENT) or {}
    replicas = replicas_of(app)
    dead = [r for r in replicas if cluster.owned and r.get("pid") and not clusters.pid_alive(int(r["pid"]))]
    if service.fixed_replicas:
        gone = sorted(set(service.replicas) - {r["replica_id"] for r in replicas})
        if gone:
            drift.append(
                f"replicas: {', '.join(gone)} recorded at deploy {'is' if len(gone) == 1 else 'are'} gone "
                "(died or replaced)"
            )
    for r in dead:
        drift.append(f"replica {r['replica_id']}: its process {r['pid']} is not running")
    states = (
        ", ".join(
            f"{r['replica_id']} {'DEAD' if r in dead else r['state']}" + (f" (pid {r['pid']})" if r.get("pid") else "")
            for r in replicas
        )
        or "none"
    )
    healthy = (
        app.get("status") == "RUNNING"
        and deployment.get("status") == "HEALTHY"
        and not dead
        and bool(replicas)
        and all(r["state"] in UP_STATES for r in replicas)
        and _answers(service.health_uri)
    )
    detail = (
        f"Serve application {service.app} {app.get('status')} at {record.scoring_uri}; deployment {DEPLOYMENT} "
        f"{deployment.get('status')}, {len(replicas)}/{deployment.get('target_num_replicas', '?')} replicas: "
        f"{states}"
    )
    return Live(True, healthy, detail, tuple(drift), stamp=stamp_of(app.get("deployed_app_config")))


def remove_app(rest: Rest, name: str, timeout_s: float = 60.0) -> str:
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


def rollback(rest: Rest, previous_config: Mapping[str, Any]) -> str:
    try:
        rest.put(merged(rest.details(), previous_config))
    except TargetError as exc:
        return f"rolling back to the previous Serve config failed too: {exc}"
    return "rolled back: the previous Serve config was deployed again (Serve replaces the replicas in turn)"


def serve_base(cluster: Cluster, http_options: Mapping[str, Any]) -> str:
    """http://host:port of Serve's proxy: ours on loopback, another cluster's on its dashboard's host."""
    if cluster.owned:
        return f"http://127.0.0.1:{cluster.serve_port}"
    host = urllib.parse.urlsplit(cluster.dashboard).hostname or "127.0.0.1"
    return f"http://{host}:{http_options.get('port', 8000)}"


def replicas_of(app: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(((app.get("deployments") or {}).get(DEPLOYMENT) or {}).get("replicas") or [])


def _answers(uri: str) -> bool:
    try:
        reply = http.get(uri, timeout=3, limit=100)
    except OSError:
        return False
    return reply.status == 200 and reply.body.strip() == b"Healthy"


def _replica_logs(rest: Rest, app: Mapping[str, Any], lines: int = 20) -> str:
    out = []
    for replica in replicas_of(app)[:2]:
        if replica.get("node_id") and replica.get("log_file_path"):
            text = "\n".join(rest.log(replica["node_id"], replica["log_file_path"], lines).splitlines()[-lines:])
            out.append(
                f"\nlast lines of replica {replica['replica_id']}'s log:\n"
                + "\n".join("  | " + row for row in text.splitlines())
            )
    return "".join(out)


def _first_lines(text: str, lines: int = 12) -> str:
    rows = [row.rstrip() for row in (text or "").splitlines() if row.strip()]
    return "\n".join(rows[-lines:])
