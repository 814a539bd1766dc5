"""The kubernetes target's cluster half: the official client, server-side apply, rollout status, pods' events, logs."""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.errors import TargetError, UsageError
from pipeline.targets.kubernetes_manifests import FIELD_MANAGER, INSTANCE_LABEL, MANAGED_LABEL

UNREACHABLE = "cannot reach the Kubernetes API server"
TIMEOUT = (5, 30)  # connect, read: plan and status never hang on a cluster that does not answer

# kind -> (the client's API class, the suffix of its generated methods): patch_/read_/delete_/list_<suffix>
KINDS: dict[str, tuple[str, str]] = {
    "Secret": ("CoreV1Api", "namespaced_secret"),
    "ConfigMap": ("CoreV1Api", "namespaced_config_map"),
    "Service": ("CoreV1Api", "namespaced_service"),
    "Deployment": ("AppsV1Api", "namespaced_deployment"),
    "HorizontalPodAutoscaler": ("AutoscalingV2Api", "namespaced_horizontal_pod_autoscaler"),
    "PodDisruptionBudget": ("PolicyV1Api", "namespaced_pod_disruption_budget"),
}


def owned_selector(name: str) -> str:
    """The label selector of every object a spec's service owns: what delete removes."""
    return f"{MANAGED_LABEL}=pipeline,{INSTANCE_LABEL}={name}"


def require() -> Any:
    try:
        import kubernetes
    except ImportError:
        raise UsageError("target 'kubernetes' needs the kubernetes extra: pip install '.[kubernetes]'") from None
    return kubernetes


@dataclass
class Cluster:
    """One API server, as a kubeconfig context (or the pod's service account) names it."""

    api: Any  # kubernetes.client.ApiClient
    context: str | None  # the kubeconfig context used; None in a pod
    server: str  # the API server's URL

    # -- objects -----------------------------------------------------------------------------
    def _method(self, verb: str, kind: str) -> Callable[..., Any]:
        from kubernetes import client

        if kind not in KINDS:
            raise TargetError(f"the kubernetes target cannot apply objects of kind {kind}")
        api_class, suffix = KINDS[kind]
        return getattr(getattr(client, api_class)(self.api), f"{verb}_{suffix}")

    def apply(self, obj: Mapping[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        """Server-side apply, field manager `pipeline`; the spec is the source of truth, so conflicts are forced."""
        meta = obj["metadata"]
        response = self._call(
            self._method("patch", obj["kind"]),
            meta["name"],
            meta["namespace"],
            dict(obj),
            field_manager=FIELD_MANAGER,
            force=True,
            dry_run="All" if dry_run else None,
            _content_type="application/apply-patch+yaml",
        )
        return response

    def read(self, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        try:
            return self._call(self._method("read", kind), name, namespace)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def owned(self, kind: str, namespace: str, name: str) -> list[dict[str, Any]]:
        """The objects of `kind` that carry our labels for the spec `name`; none when the server lacks the API."""
        try:
            found = self._call(self._method("list", kind), namespace, label_selector=owned_selector(name))
        except ApiError as exc:
            if exc.status == 404:  # e.g. autoscaling/v2 before Kubernetes 1.23: nothing of that kind can exist
                return []
            raise
        return list(found.get("items", []))

    def delete(self, kind: str, name: str, namespace: str) -> bool:
        """Delete one object (its dependents, e.g. ReplicaSets and pods, go in the background); False if it was gone."""
        try:
            self._call(self._method("delete", kind), name, namespace, propagation_policy="Background")
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    # -- pods --------------------------------------------------------------------------------
    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        from kubernetes import client

        return list(
            self._call(client.CoreV1Api(self.api).list_namespaced_pod, namespace, label_selector=selector).get(
                "items", []
            )
        )

    def events(self, namespace: str, involved: str) -> list[dict[str, Any]]:
        from kubernetes import client

        items = self._call(
            client.CoreV1Api(self.api).list_namespaced_event,
            namespace,
            field_selector=f"involvedObject.name={involved}",
        ).get("items", [])
        return sorted(items, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))

    def log(self, namespace: str, pod: str, tail: int) -> str:
        from kubernetes import client

        response: Any = client.CoreV1Api(self.api).read_namespaced_pod_log(  # raw: typed as str, it is not
            pod, namespace, tail_lines=tail, _preload_content=False, _request_timeout=TIMEOUT
        )
        return response.data.decode("utf-8", "replace")

    def proxy_post(
        self, namespace: str, service: str, path: str, body: bytes, timeout: float
    ) -> tuple[int, bytes, dict[str, str]]:
        """POST through the API server's service proxy, with the kubeconfig's credentials."""
        method, url, headers, _, _ = self.api.param_serialize(
            "POST",
            f"/api/v1/namespaces/{namespace}/services/{service}:http/proxy/{path}",
            header_params={"Content-Type": "application/json", "Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        import urllib3

        response = self.api.rest_client.pool_manager.request(
            method, url, body=body, headers=headers, timeout=urllib3.Timeout(connect=5, read=timeout), retries=False
        )
        return response.status, response.data, dict(response.headers)

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """One request through the generated client; the raw JSON as plain data (compared with what apply sent)."""
        from kubernetes.client.exceptions import ApiException

        try:
            response = method(*args, _preload_content=False, _request_timeout=TIMEOUT, **kwargs)
        except ApiException as exc:
            raise ApiError.from_exception(exc) from None
        except Exception as exc:  # noqa: BLE001  urllib3's MaxRetryError, SSL errors, refused connections
            raise TargetError(f"{UNREACHABLE} at {self.server}: {reason(exc)}") from None
        try:
            return json.loads(response.data or b"{}")
        except ValueError:
            raise TargetError(f"the API server at {self.server} answered something that is not JSON") from None


class ApiError(TargetError):
    """The API server answered with an error status: its own message, as kubectl shows it."""

    def __init__(self, status: int, message: str, reason_: str = "", causes: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.status, self.reason, self.causes = status, reason_, causes

    @classmethod
    def from_exception(cls, exc: Any) -> ApiError:
        status = int(getattr(exc, "status", 0) or 0)
        try:
            body = json.loads(exc.body or "{}")
        except (TypeError, ValueError):
            body = {}
        message = body.get("message") if isinstance(body, dict) else None
        causes = (
            tuple(
                f"{c.get('field', '')}: {c.get('message', '')}".strip(": ")
                for c in ((body.get("details") or {}).get("causes") or [])
                if isinstance(c, dict)
            )
            if isinstance(body, dict)
            else ()
        )
        return cls(
            status,
            f"{status} {message or getattr(exc, 'reason', '') or 'error'}",
            body.get("reason", "") if isinstance(body, dict) else "",
            causes,
        )


def secret_keys(cluster: Cluster, name: str, namespace: str) -> dict[str, str] | None:
    """The keys a live Secret holds (keys.json: primary, secondary), or None when there is no such Secret."""
    secret = cluster.read("Secret", name, namespace)
    if secret is None:
        return None
    try:
        data = json.loads(base64.b64decode((secret.get("data") or {})["keys.json"], validate=True))
        keys = {"primary": str(data["primary"]), "secondary": str(data.get("secondary") or "")}
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise TargetError(f"secret {name} in namespace {namespace} holds no keys.json with a primary key") from None
    return keys if keys["primary"] else None


def reason(exc: BaseException) -> str:
    """One line from urllib3's nested retry errors."""
    inner = getattr(exc, "reason", None) or exc
    text = str(inner)
    for marker in ("Failed to establish a new connection: ", "] "):
        if marker in text:
            text = text.split(marker, 1)[1]
    return text.strip(" )'\"")[:200] or type(exc).__name__


def kubeconfig_path() -> str:
    return os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")


def connect(context: str | None) -> Cluster:
    """The cluster of the kubeconfig context (absent: the current one), or of the pod's service account."""
    require()
    from kubernetes import client, config

    configuration = client.Configuration()
    path = kubeconfig_path()
    try:
        if not any(os.path.exists(p) for p in path.split(os.pathsep)) and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
            used = None
        else:
            config.load_kube_config(
                config_file=path, context=context, client_configuration=configuration, persist_config=False
            )
            used = context or config.list_kube_config_contexts(config_file=path)[1].get("name")
    except (config.ConfigException, OSError, TypeError, KeyError, ValueError) as exc:
        where = f"context {context!r} of " if context else ""
        raise TargetError(f"{UNREACHABLE}: no usable {where}kubeconfig {path} ({exc})") from None
    configuration.retries = 1  # an unreachable server fails in seconds, not after urllib3's three retries
    return Cluster(client.ApiClient(configuration), used, configuration.host)


# -- rollout status, as `kubectl rollout status` decides it ---------------------------------------
# A container waiting for one of these will not become ready by waiting longer.
HOPELESS = {
    "ImagePullBackOff": "the cluster cannot pull the image",
    "ErrImagePull": "the cluster cannot pull the image",
    "InvalidImageName": "the image name is invalid",
    "ErrImageNeverPull": "the image is not on the node",
    "CrashLoopBackOff": "the container keeps crashing",
    "CreateContainerConfigError": "the container config is invalid",
    "CreateContainerError": "the container cannot be created",
    "RunContainerError": "the container cannot start",
}


def rollout_state(deployment: Mapping[str, Any]) -> tuple[bool, str]:
    """(done, what is happening) for a Deployment."""
    meta, spec, status = deployment.get("metadata", {}), deployment.get("spec", {}), deployment.get("status") or {}
    if status.get("observedGeneration", 0) < meta.get("generation", 0):
        return False, "waiting for the deployment controller to see the new spec"
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == "ProgressDeadlineExceeded":
            return False, f"progress deadline exceeded: {condition.get('message', '')}"
    wanted = spec.get("replicas", 1)
    updated, current = status.get("updatedReplicas", 0), status.get("replicas", 0)
    available = status.get("availableReplicas", 0)
    if updated < wanted:
        return False, f"{updated} of {wanted} updated replicas are running"
    if current > updated:
        return False, f"{current - updated} old replicas are pending termination"
    if available < updated:
        return False, f"{available} of {updated} updated replicas are available"
    return True, f"{available} of {wanted} replicas available"


def pod_failure(pods: Sequence[Mapping[str, Any]], image: str) -> tuple[str, str] | None:
    """(pod name, why) for the first pod of the new version that cannot become ready, or None."""
    for pod in pods:
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            if container.get("image") not in (image, None) and not str(container.get("image", "")).endswith(image):
                continue
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in HOPELESS:
                message = waiting.get("message") or ""
                return pod["metadata"]["name"], (
                    f"{HOPELESS[waiting['reason']]} ({waiting['reason']}" + (f": {message}" if message else "") + ")"
                )
    return None


def diagnose(cluster: Cluster, namespace: str, selector: str, image: str, tail: int = 40) -> str:
    """The events and log tail of the new version's pods, for a failure message."""
    lines: list[str] = []
    try:
        pods = [
            p
            for p in cluster.pods(namespace, selector)
            if any(c.get("image") == image for c in (p.get("spec") or {}).get("containers") or [])
        ]
    except TargetError as exc:
        return f"\n(the pods could not be listed: {exc})"
    for pod in pods[:3]:
        name = pod["metadata"]["name"]
        phase = (pod.get("status") or {}).get("phase", "?")
        lines.append(f"pod {name} ({phase}):")
        try:
            events = cluster.events(namespace, name)
        except TargetError:
            events = []
        for event in events[-8:]:
            what = f"{event.get('type', '')} {event.get('reason', '')}: {event.get('message', '')}"
            lines.append(f"  event {what}".rstrip())
        try:
            text = cluster.log(namespace, name, tail)
        except Exception:  # noqa: BLE001  a container that never started has no log: the events say why
            text = ""
        rows = text.rstrip("\n").splitlines()[-tail:]
        if rows:
            lines.append(f"  last {len(rows)} lines of its log:")
            lines.extend("    | " + row for row in rows)
    return ("\n" + "\n".join(lines)) if lines else "\n(no pods of the new version were found)"
