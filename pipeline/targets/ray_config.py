"""The ray target's Serve config: Ray's own schema check, the deployed overlay, the merge for shared clusters, drift."""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import RenderError
from pipeline.render import check_yaml

if TYPE_CHECKING:
    from pipeline.targets.ray_cluster import Cluster

RAY_VERSION = "2.60.0"  # the pinned extra; rayservice.yaml names the same version
STAMP_FIELD = "stamp"  # user_config.stamp of the scoring deployment: what deploy stamped on the application

# deploy.ray: the target's block of the spec, assembled into the schema by pipeline.spec.schema()
SETTINGS_SCHEMA: dict[str, Any] = {
    "description": "Settings of the ray target (Ray Serve).",
    "type": "object",
    "additionalProperties": False,
    "default": {},
    "properties": {
        "address": {
            "description": "Dashboard URL of an existing Ray cluster (http://head:8265), as `serve deploy --address` "
            "takes it; absent = a local single-node cluster on 127.0.0.1, started and owned by the service.",
            "type": "string",
            "maxLength": 2048,
            "pattern": "^https?://[^\\s/]+(/\\S*)?$",
            "errorMessage": "must be the Ray dashboard's http(s):// URL, e.g. http://head:8265 (Serve's REST API "
            "does not take ray:// client addresses)",
        },
        "replicas": {
            "description": "Fixed number of replicas (excludes autoscaling); 1 when neither is set.",
            "type": "integer",
            "minimum": 1,
            "maximum": 1000,
        },
        "autoscaling": {
            "description": "Serve's replica autoscaling (excludes replicas).",
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "min_replicas": {
                    "description": "Lowest replica count.",
                    "type": "integer",
                    "minimum": 1,
                    "maximum": 1000,
                    "default": 1,
                },
                "max_replicas": {
                    "description": "Highest replica count.",
                    "type": "integer",
                    "minimum": 1,
                    "maximum": 1000,
                    "default": 4,
                },
                "target_ongoing_requests": {
                    "description": "Requests in flight per replica that Serve scales towards.",
                    "type": "number",
                    "exclusiveMinimum": 0,
                    "maximum": 1000,
                    "default": 2,
                },
            },
        },
        "route_prefix": {
            "description": "HTTP route prefix of the application on Serve's proxy; default /<name>.",
            "type": "string",
            "maxLength": 256,
            "pattern": "^/[A-Za-z0-9._~/-]*$",
            "errorMessage": "must be a URL path starting with '/', e.g. /mnist",
        },
        "working_dir": {
            "description": "Rendered configs only (KubeRay, `serve deploy`): remote URI of a zip of the "
            "application folder with the model; `run` uploads the folder itself.",
            "type": "string",
            "maxLength": 4096,
            "pattern": "^(https?|s3|gs|azure|abfss)://\\S+$",
            "errorMessage": "must be a remote URI (https://, s3://, gs://, ...) of a .zip file",
        },
        "image": {
            "description": "rayservice.yaml: container image of the Ray pods; it must hold the model's "
            "libraries (myenv.yml).",
            "type": "string",
            "minLength": 1,
            "maxLength": 512,
            "default": f"rayproject/ray:{RAY_VERSION}-py311-cpu",
        },
    },
}


def check_app(text: str) -> None:
    """The rendered application module parses and defines the builder serve_config.yaml imports."""
    try:
        tree = ast.parse(text, filename="serve_app.py")
    except SyntaxError as exc:
        raise RenderError(f"rendered serve_app.py is not valid Python: line {exc.lineno}: {exc.msg}") from None
    if "build" not in {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}:
        raise RenderError("serve_app.py must define build(args), the import_path serve_config.yaml names")


def validate_serve_config(data: Any, name: str) -> Any:
    """Ray Serve's own schema (ray.serve.schema.ServeDeploySchema, what PUT /api/serve/applications/ checks)."""
    try:
        from pydantic import ValidationError
        from ray.serve.schema import ServeDeploySchema
    except ImportError:
        raise RenderError("target 'ray' needs the ray extra to check its Serve config: pip install '.[ray]'") from None
    try:
        return ServeDeploySchema.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise RenderError(f"rendered {name} is not accepted by Ray Serve: {problems}") from None


def check_rayservice(data: Any, serve_config: str) -> None:
    """The RayService's shape (no package ships KubeRay's CRD schema): kind, name, serveConfigV2 verbatim."""
    if not isinstance(data, dict) or data.get("apiVersion") != "ray.io/v1" or data.get("kind") != "RayService":
        raise RenderError("rendered rayservice.yaml is not a ray.io/v1 RayService")
    spec = data.get("spec") or {}
    if spec.get("serveConfigV2") != serve_config:
        raise RenderError("rendered rayservice.yaml: spec.serveConfigV2 differs from serve_config.yaml")
    groups = (spec.get("rayClusterConfig") or {}).get("workerGroupSpecs") or []
    if not (spec.get("rayClusterConfig") or {}).get("headGroupSpec") or not groups:
        raise RenderError("rendered rayservice.yaml: rayClusterConfig needs a headGroupSpec and a worker group")


def live_config(
    rendered: Path, package: str, cluster: Cluster, key_file: Path | None, stamp: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The rendered Serve config as deployed: our package as working_dir; loopback and a free port for our own
    cluster; the keys' sha256 digests for the replicas to check; deploy's stamp (STAMP_* keys), which the
    live application then shows to anyone who asks the dashboard."""
    config = check_yaml(rendered.read_text(encoding="utf-8"), rendered.name)
    app = config["applications"][0]
    app["runtime_env"] = {**(app.get("runtime_env") or {}), "working_dir": package}
    if cluster.owned:
        config["http_options"] = {**config["http_options"], "host": "127.0.0.1", "port": cluster.serve_port}
    user_config = dict(app["deployments"][0]["user_config"])
    if key_file is not None:
        stored = json.loads(key_file.read_text(encoding="utf-8"))
        user_config["auth_key_sha256"] = [
            hashlib.sha256(str(stored[k]).encode()).hexdigest() for k in ("primary", "secondary") if stored.get(k)
        ]
    if stamp:
        user_config[STAMP_FIELD] = dict(stamp)
    app["deployments"][0]["user_config"] = user_config
    return dict(config)


def stamp_of(app_config: Any) -> dict[str, str] | None:
    """The stamp a live application's config carries, or None (one made by hand, or by an older pipeline)."""
    try:
        stamp = app_config["deployments"][0]["user_config"][STAMP_FIELD]
    except (KeyError, IndexError, TypeError):
        return None
    return {str(k): str(v) for k, v in stamp.items()} if isinstance(stamp, dict) else None


def observed(app_config: Any) -> dict[str, Any]:
    """What a live application shows of the spec, as the deploy inputs' flat field paths (for a plan without state)."""
    try:
        deployment = app_config["deployments"][0]
    except (KeyError, IndexError, TypeError):
        return {}
    user, actor = deployment.get("user_config") or {}, deployment.get("ray_actor_options") or {}
    out: dict[str, Any] = {f"tags.{k}": v for k, v in (user.get("tags") or {}).items()}
    if "description" in user:
        out["description"] = user["description"]
    if "num_cpus" in actor:
        out["deploy.cpu_cores"] = actor["num_cpus"]
    if "memory" in actor:
        out["deploy.memory_gb"] = round(actor["memory"] / 1024**3, 6)
    if "request_timeout_ms" in (app_config.get("args") or {}):
        out["deploy.request_timeout_ms"] = app_config["args"]["request_timeout_ms"]
    if "num_replicas" in deployment:
        out["deploy.ray.replicas"] = deployment["num_replicas"]
    for key, value in (deployment.get("autoscaling_config") or {}).items():
        out[f"deploy.ray.autoscaling.{key}"] = value
    if "route_prefix" in app_config:
        out["deploy.ray.route_prefix"] = app_config["route_prefix"]
    return out


def merged(details: Mapping[str, Any], ours: Mapping[str, Any] | None, *, drop: str | None = None) -> dict[str, Any]:
    """The whole cluster's Serve config with our application in it (or dropped): a PUT replaces every application,
    so those of other services on a shared cluster are sent back as Serve reports them."""
    name = drop if ours is None else ours["applications"][0]["name"]
    others = [
        dict(app["deployed_app_config"])
        for key, app in sorted((details.get("applications") or {}).items())
        if key != name and app.get("deployed_app_config")
    ]
    top = {k: v for k, v in (ours or {}).items() if k != "applications"}
    if not top:
        live_http = details.get("http_options") or {}
        top = {"http_options": {k: live_http[k] for k in ("host", "port", "request_timeout_s") if k in live_http}}
    return {**top, "applications": others + (list(ours["applications"]) if ours else [])}


def canonical(value: Any) -> Any:
    """Serve reports 1 core as 1.0: integral floats are ints, for comparing configs."""
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def config_drift(live: Any, recorded: Any, path: str = "") -> list[str]:
    """Field paths where the live application's config differs from the recorded one."""
    live, recorded = canonical(live), canonical(recorded)
    if isinstance(live, dict) and isinstance(recorded, dict):
        out = []
        for key in sorted(set(live) | set(recorded)):
            out += config_drift(live.get(key), recorded.get(key), f"{path}.{key}" if path else key)
        return out
    if isinstance(live, list) and isinstance(recorded, list) and len(live) == len(recorded):
        return [line for i, (a, b) in enumerate(zip(live, recorded)) for line in config_drift(a, b, f"{path}[{i}]")]
    return [] if live == recorded else [f"{path}: live {json.dumps(live)}, recorded {json.dumps(recorded)}"]
