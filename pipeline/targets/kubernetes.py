"""Target `kubernetes`: plain manifests and an image build context, applied with server-side apply when asked."""

from __future__ import annotations

import json
import re
import textwrap
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from pipeline import http, openapi
from pipeline.errors import RenderError, TargetError, UsageError
from pipeline.files import sha256_bytes
from pipeline.render import Escaped, render, render_template
from pipeline.spec import RegistrySource, Spec
from pipeline.targets import keys as keyfile
from pipeline.targets import kubernetes_api as kapi
from pipeline.targets import kubernetes_manifests as km
from pipeline.targets import kubernetes_rollout as rollout
from pipeline.targets.base import (
    STAMP_DIGEST,
    STAMP_MODEL,
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

ClusterFactory = Callable[[str | None], kapi.Cluster]
DEFAULT_BASE_IMAGE = "mambaorg/micromamba:1.5.10-bookworm-slim"

SETTINGS_SCHEMA: dict[str, Any] = {
    "description": "Settings of the kubernetes target.",
    "type": "object",
    "additionalProperties": False,
    "default": {},
    "properties": {
        "namespace": {
            "description": "Namespace of every object (it must exist).",
            "type": "string",
            "pattern": "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
            "errorMessage": "must be a DNS-1123 label (at most 63 lowercase letters, digits and '-', "
            "alphanumeric at both ends)",
            "default": "default",
        },
        "image": {
            "description": "Image repository the CI pushes image/ to; the tag is the digest of image/ unless "
            "given (repo:tag or repo@sha256:...). Default: the service name, an image loaded "
            "into the nodes.",
            "type": "string",
            "minLength": 1,
            "maxLength": 512,
        },
        "base_image": {
            "description": "Base image of the Dockerfile: it needs micromamba to build myenv.yml.",
            "type": "string",
            "minLength": 1,
            "maxLength": 512,
            "default": DEFAULT_BASE_IMAGE,
        },
        "replicas": {
            "description": "Fixed replica count, or the autoscaler's minimum.",
            "type": "integer",
            "minimum": 1,
            "maximum": 1000,
            "default": 1,
        },
        "max_replicas": {
            "description": "Autoscaler maximum: a HorizontalPodAutoscaler (autoscaling/v2) when set.",
            "type": "integer",
            "minimum": 1,
            "maximum": 1000,
        },
        "target_cpu_utilization": {
            "description": "The autoscaler's target CPU utilization in percent of the "
            "requested cores (used with max_replicas).",
            "type": "integer",
            "minimum": 1,
            "maximum": 100,
            "default": 70,
        },
        "context": {
            "description": "kubeconfig context of the cluster ($KUBECONFIG or ~/.kube/config); default: "
            "the current context.",
            "type": "string",
            "minLength": 1,
            "maxLength": 253,
        },
        "service_type": {
            "description": "Type of the Service.",
            "enum": ["ClusterIP", "NodePort", "LoadBalancer"],
            "default": "ClusterIP",
        },
        "url": {
            "description": "Base URL at which the Service is reached from outside (an Ingress or load "
            "balancer), e.g. https://mnist.example.com; default: the API server's service proxy.",
            "type": "string",
            "maxLength": 2048,
            "pattern": "^https?://[^\\s/?#]+(/[^\\s?#]*)?$",
            "errorMessage": "must be an http:// or https:// URL without query or fragment",
        },
    },
}


class KubernetesTarget(BaseTarget):
    """A Deployment, a Service and their friends in one namespace, named and labelled after the spec."""

    name: ClassVar[str] = "kubernetes"
    summary: ClassVar[str] = "plain manifests for any cluster, applied with server-side apply when one is configured"
    settings_key: ClassVar[str] = "kubernetes"
    settings_schema: ClassVar[Mapping[str, Any]] = SETTINGS_SCHEMA
    extra: ClassVar[str | None] = "kubernetes"
    packages: ClassVar[Mapping[str, str]] = {"kubernetes": "kubernetes", "kubernetes-validate": "kubernetes_validate"}
    # Kubernetes rolls the pods itself (maxUnavailable 0); the live Deployment carries the stamp, found by name
    capabilities: ClassVar[Capabilities] = Capabilities(
        probe_unrecorded=True, rollout=Rollout.IN_PLACE, auth=frozenset({Auth.KEY})
    )

    def __init__(
        self,
        cluster_factory: ClusterFactory | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cluster_factory = cluster_factory or kapi.connect
        self.sleep, self.clock = sleep, clock

    # -- validation beyond the schema ------------------------------------------------------------
    def rules(self, data: Mapping[str, Any], add: AddProblem, *, folder: Path | None) -> None:
        deploy = data["deploy"]
        k8s = deploy["kubernetes"]
        where = ("deploy", "kubernetes")
        if "max_replicas" in k8s and k8s["max_replicas"] < k8s["replicas"]:
            add(
                where + ("max_replicas",),
                f"must be >= replicas ({k8s['replicas']}): the autoscaler's maximum cannot be below its minimum",
            )
        for key in ("image", "base_image"):
            problem = km.image_problem(k8s[key]) if key in k8s else None
            if problem:
                add(where + (key,), problem)
        if round(deploy["cpu_cores"] * 1000) < 1:
            add(("deploy", "cpu_cores"), "Kubernetes counts CPU in millicores: at least 0.001")
        if int(deploy["memory_gb"] * 1024) < 16:
            add(("deploy", "memory_gb"), "the scoring host needs at least 16 MiB (0.016 GB)")
        if deploy["auth"] and "url" not in k8s:
            # the API server's proxy takes the Authorization header for itself: the key would never arrive
            add(
                ("deploy", "auth"),
                "key auth on kubernetes needs deploy.kubernetes.url (an Ingress or load "
                "balancer): through the API server's proxy the key cannot reach the service",
            )
        if isinstance(data["model"]["source"], Mapping) and not data["model"].get("sha256"):
            add(
                ("model", "sha256"),
                "required for target 'kubernetes' with a registry model: the image tag is "
                "the digest of the build context, model included",
            )

    # -- offline ---------------------------------------------------------------------------------
    def extra_pip_packages(self, spec: Spec) -> list[str]:
        """The scoring host's own needs inside the image (numpy comes with the model's conda packages)."""

        def project(requirement: str) -> str:
            return re.split(r"[\[<>=!~;@ ]", requirement.strip(), maxsplit=1)[0].lower()

        listed = {project(p) for p in spec.environment.pip_packages}  # the user's own pin wins
        return [p for p in ("orjson>=3.9", "uvicorn[standard]>=0.30", "psutil>=5.9") if project(p) not in listed]

    def assets(self, spec: Spec) -> dict[str, Path]:
        """The model file beside the Dockerfile, copied by the render command (render itself returns text)."""
        if isinstance(spec.model.source, RegistrySource):
            return {}
        return {f"{km.IMAGE_FILES}{spec.model.file_name}": spec.model.source}

    def render(self, spec: Spec, env: Any, values: Mapping[str, Any]) -> dict[str, str]:
        """k8s/ manifests (validated against Kubernetes' schemas) and image/, the build context of the image."""
        files = self._image_files(spec, env)
        settings = spec.deploy.settings()
        context = km.context_digest(files, spec.model.file_name, _model_sha256(spec))
        k8s = self.template_values(spec, context)
        config = files.pop("serve.json")  # a ConfigMap: resources change without a new image
        # ASCII-only JSON, every line indented: safe as a YAML literal block
        k8s["config_block"] = Escaped(textwrap.indent(config.rstrip("\n"), "    "))
        k8s["config_digest"] = sha256_bytes(config.encode())  # in the pod template: a new config rolls the pods
        names = ["configmap.yaml", "deployment.yaml", "service.yaml"]
        if "max_replicas" in settings:
            names.append("hpa.yaml")
        if settings["replicas"] > 1:
            names.append("pdb.yaml")
        k8s["files"] = sorted(names)
        view = {**values, "k8s": k8s}
        for name in [*names, "kustomization.yaml"]:
            files[f"k8s/{name}"] = render_template(env, f"kubernetes/{name}.j2", view)
        km.stamp(files)
        km.validate(files)
        return files

    def _image_files(self, spec: Spec, env: Any) -> dict[str, str]:
        base = render(spec, extra_pip=self.extra_pip_packages(spec), env=env)
        files = {f"{km.IMAGE_FILES}{name}": text for name, text in base.items()}
        files.update(km.host_sources())
        values = {
            "name": spec.name,
            "model": {"file": spec.model.file_name},
            "k8s": {
                "base_image_ref": Escaped(spec.deploy.settings()["base_image"]),
                "run_as": km.RUN_AS,
                "container_port": km.CONTAINER_PORT,
                "model_dir": _model_dir(spec),
            },
        }
        files[f"{km.IMAGE_FILES}Dockerfile"] = render_template(env, "kubernetes/Dockerfile.j2", values)
        files["serve.json"] = json.dumps(serve_config(spec), indent=2, sort_keys=True) + "\n"
        return files

    def template_values(self, spec: Spec, context: str) -> dict[str, Any]:
        settings = spec.deploy.settings()
        selector = {km.INSTANCE_LABEL: spec.name, km.NAME_LABEL: spec.name}
        annotations = {
            km.SPEC_KEY: spec.name,
            km.TAGS_KEY: json.dumps(dict(spec.tags), sort_keys=True),
            km.MODEL_KEY: f"{spec.model.name}:{spec.model.version} sha256:{_model_sha256(spec)}",
        }
        if spec.description:
            annotations[km.DESCRIPTION_KEY] = spec.description
        hpa = "max_replicas" in settings
        return {
            "name": spec.name,
            "namespace": settings["namespace"],
            "selector": selector,
            "labels": {**selector, km.MANAGED_LABEL: "pipeline", **km.tag_labels(spec.tags)},
            "pod_labels": {**selector, km.MANAGED_LABEL: "pipeline"},
            "annotations": annotations,
            # the digest of everything rendered, on the Deployment only: a change elsewhere leaves the Service alone
            "deployment_annotations": {**annotations, km.DIGEST_KEY: km.DIGEST_PLACEHOLDER},
            "image": km.image_reference(settings.get("image", spec.name), context),
            "replicas": None if hpa else settings["replicas"],
            "min_replicas": settings["replicas"],
            "max_replicas": settings.get("max_replicas"),
            "target_cpu_utilization": settings["target_cpu_utilization"],
            "cpu": km.cpu_quantity(spec.deploy.cpu_cores),
            "memory": km.memory_quantity(spec.deploy.memory_gb),
            "container_port": km.CONTAINER_PORT,
            "service_port": km.SERVICE_PORT,
            "run_as": km.RUN_AS,
            "service_type": settings["service_type"],
            "config_map": f"{spec.name}-serve",
            "keys_secret": f"{spec.name}-keys" if spec.deploy.auth else None,
            "keys_dir": km.KEYS_DIR,
            # the host drains in-flight requests (each at most request_timeout_ms) before it exits
            "termination_grace_s": spec.deploy.request_timeout_ms // 1000 + 10,
        }

    def describe_update(self, record: ServiceRecord | None, spec: Spec) -> str:
        namespace = spec.deploy.settings()["namespace"]
        old = record.extra.get("namespace") if record is not None else None
        moves = (
            (
                f"; the service moves from namespace {old} to {namespace} (the old objects are deleted once the "
                "new ones serve)"
            )
            if old and old != namespace
            else ""
        )
        return (
            "rolling: Kubernetes RollingUpdate with maxUnavailable 0; the old pods serve until the new ones are "
            f"ready, and a change of resources or tags alone keeps the image{moves}"
        )

    # -- deploy ----------------------------------------------------------------------------------
    def deploy(self, request: DeployRequest) -> ServiceRecord:
        try:
            return self._deploy(request)
        finally:
            request.console.clear_progress()

    def _deploy(self, request: DeployRequest) -> ServiceRecord:
        spec, console = request.spec, request.console
        objects = rollout.manifests(request.build_dir)
        settings = spec.deploy.settings()
        namespace = settings["namespace"]
        cluster = self._cluster(settings.get("context"))
        if spec.deploy.auth:
            rollout.keys(cluster, spec.name, namespace, request.service_dir, create=True)
            objects.insert(0, rollout.keys_secret(spec, namespace, request.service_dir))
        else:
            keyfile.remove(request.service_dir)
        deployment = next(o for o in objects if o["kind"] == "Deployment")
        # the stamp goes on the Deployment only, so an update that changes nothing else leaves the Service alone
        deployment["metadata"]["annotations"].update(km.stamp_annotations(request.stamp))
        image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        previous = request.previous.extra if request.previous and request.previous.target == self.name else None
        # live but not recorded here (a fresh CI runner, or made by hand): a failure must not delete it
        existed = cluster.read("Deployment", spec.name, namespace) is not None
        same_place = previous is not None and (previous.get("namespace"), previous.get("context")) == (
            namespace,
            cluster.context,
        )
        try:
            rollout.apply_all(cluster, objects, console, spec.name)
            state = rollout.wait(
                cluster, deployment, image, spec.deploy.ready_timeout_s, console, sleep=self.sleep, clock=self.clock
            )
        except TargetError as exc:  # a refused object half-way, or a rollout that failed
            undone = rollout.undo(cluster, previous if same_place else None, existed, spec.name, namespace)
            raise TargetError(str(exc) + undone) from None
        removed = rollout.prune(cluster, objects, spec.name, namespace)
        if previous is not None and previous.get("namespace") and not same_place:
            # moved to another namespace or cluster: the old objects must not keep running unseen
            removed += rollout.delete_owned(self._cluster(previous.get("context")), spec.name, previous["namespace"])
        return self._record(
            spec,
            cluster,
            {
                "image": image,
                "rendered_digest": deployment["metadata"]["annotations"][km.DIGEST_KEY],
                "applied": [rollout.secret_stub(o) if o["kind"] == "Secret" else o for o in objects],
                "pruned": removed,
                "state": state,
            },
        )

    def _record(self, spec: Spec, cluster: kapi.Cluster, extra: Mapping[str, Any], **values: Any) -> ServiceRecord:
        settings = spec.deploy.settings()
        url = settings.get("url")
        if url:
            uri = url.rstrip("/") + "/score"
        else:
            uri = (
                f"{cluster.server.rstrip('/')}/api/v1/namespaces/{settings['namespace']}/services/"
                f"{spec.name}:http/proxy/score"
            )
        return ServiceRecord(
            target=self.name,
            scoring_uri=uri,
            auth=spec.deploy.auth,
            swagger_uri=uri.removesuffix("/score") + "/swagger.json",
            extra={
                "namespace": settings["namespace"],
                "context": cluster.context,
                "server": cluster.server,
                "deployment": spec.name,
                "url": url,
                **extra,
                "tags": dict(spec.tags),
                "description": spec.description,
            },
            **values,
        )

    # -- the live objects ------------------------------------------------------------------------
    def probe(self, record: ServiceRecord | None, spec: Spec | None = None) -> Live:
        info = dict(record.extra) if record is not None else {}
        settings = spec.deploy.block(self.settings_key) if spec is not None else {}
        name = info.get("deployment") or (spec.name if spec is not None else "")
        namespace = info.get("namespace") or settings.get("namespace", "default")
        try:
            cluster = self._cluster(info.get("context") if record is not None else settings.get("context"))
            return rollout.probe(cluster, info, spec, name, namespace, recorded=record is not None)
        except (TargetError, UsageError) as exc:
            return Live(False, False, str(exc))

    def adopt(self, live: Live, spec: Spec) -> ServiceRecord | None:
        """The record of a live Deployment that carries our stamp: plan and run compare with what is live."""
        if not live.stamp or not live.stamp.get(STAMP_DIGEST):
            return None
        try:
            cluster = self._cluster(spec.deploy.settings().get("context"))
        except (TargetError, UsageError):
            return None
        return self._record(
            spec,
            cluster,
            {},
            digest=live.stamp[STAMP_DIGEST],
            model_sha256=live.stamp.get(STAMP_MODEL) or None,
            model=f"{spec.model.name}:{spec.model.version}",
        )

    def invoke(self, record: ServiceRecord, body: bytes, *, timeout: float, service_dir: Path) -> Reply:
        info = record.extra
        assert record.scoring_uri is not None
        if info.get("url"):
            headers = {}
            if record.auth:
                key = rollout.keys(
                    self._cluster(info.get("context")),
                    info.get("deployment", ""),
                    info.get("namespace", "default"),
                    service_dir,
                    create=False,
                )
                headers["Authorization"] = "Bearer " + key
            return http.post(record.scoring_uri, body, headers, timeout)
        cluster = self._cluster(info.get("context"))
        start = time.perf_counter()
        try:
            status, data, headers = cluster.proxy_post(info["namespace"], info["deployment"], "score", body, timeout)
        except Exception as exc:  # noqa: BLE001  urllib3's errors: the smoke stage retries connection failures
            from urllib3.exceptions import ReadTimeoutError

            if isinstance(exc, ReadTimeoutError):
                raise TimeoutError(f"no answer within {timeout} s") from None
            raise ConnectionError(f"{kapi.UNREACHABLE} at {cluster.server}: {kapi.reason(exc)}") from None
        return Reply(status, data, time.perf_counter() - start, headers)

    def delete(self, record: ServiceRecord, service_dir: Path) -> str:
        info = record.extra
        namespace = info.get("namespace", "default")
        cluster = self._cluster(info.get("context"))
        removed = rollout.delete_owned(cluster, info.get("deployment", ""), namespace)
        keyfile.remove(service_dir)
        if not removed:
            return f"no objects of {info.get('deployment')} were found in namespace {namespace} (already deleted)"
        return f"deleted {', '.join(removed)} from namespace {namespace}"

    def logs(self, record: ServiceRecord, service_dir: Path, *, tail: int) -> str:
        info = record.extra
        cluster = self._cluster(info.get("context"))
        namespace = info.get("namespace", "default")
        pods = cluster.pods(namespace, f"{km.INSTANCE_LABEL}={info.get('deployment')}")
        out = []
        for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
            try:
                text = cluster.log(namespace, pod["metadata"]["name"], tail)
            except Exception as exc:  # noqa: BLE001  a pod that never started has no log
                text = f"(no log: {kapi.reason(exc)})"
            rows = text.rstrip("\n").splitlines()[-tail:] if tail > 0 else []
            header = f"==> pod {pod['metadata']['name']} <==\n" if len(pods) > 1 else ""
            out.append(header + "\n".join(rows))
        return "\n".join(out)

    # -- helpers ---------------------------------------------------------------------------------
    def _cluster(self, context: str | None) -> kapi.Cluster:
        return self.cluster_factory(context)


def _model_sha256(spec: Spec) -> str:
    if spec.model.sha256:
        return spec.model.sha256
    if isinstance(spec.model.source, RegistrySource):  # the target's rules require the pin
        raise RenderError("target 'kubernetes' needs model.sha256 for a registry model")
    from pipeline.files import sha256_path

    try:
        return sha256_path(spec.model.source)
    except OSError as exc:
        raise RenderError(f"model.source {spec.model.source}: {exc.strerror}") from None


def _model_dir(spec: Spec) -> str:
    return f"{km.APP_DIR}/model/{spec.model.name}/{spec.model.version}"


def serve_config(spec: Spec) -> dict[str, Any]:
    """The scoring host's settings inside the container (a ConfigMap): the local target's, at the image's paths."""
    memory_mb = int(spec.deploy.memory_gb * 1024)
    return {
        "entry_script": f"{km.APP_DIR}/score.py",
        "model_dir": _model_dir(spec),
        "app_root": km.APP_DIR,
        "host": "0.0.0.0",
        "port": km.CONTAINER_PORT,
        "workers": km.workers(spec.deploy.cpu_cores),
        # a little under the container's limit: the host replaces its biggest worker before the kernel kills them all
        "memory_limit_mb": max(1, memory_mb * 95 // 100),
        "request_timeout_ms": spec.deploy.request_timeout_ms,
        "keys_file": f"{km.KEYS_DIR}/{keyfile.KEYS_FILE}" if spec.deploy.auth else None,
        "swagger": openapi.document(spec),
        "features": spec.scoring.features,
        "ready_file": "/tmp/ready.json",
        "service_name": spec.name,
    }
