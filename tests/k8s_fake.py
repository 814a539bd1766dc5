"""A recording fake of the Kubernetes API server on loopback, for the paths the kubernetes target uses.

It stands in for a cluster we cannot run here: server-side apply (one field manager, dry runs, immutable
selectors, canonical quantities), a deployment controller and a kubelet whose "containers" are the real
scoring host started from the pushed image folder as its Dockerfile lays it out, pod logs and events, and
the API server's service proxy. Every request is recorded for the tests' assertions.
"""

from __future__ import annotations

import base64
import copy
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

TOKEN = "fake-cluster-token"
# (api prefix, plural) -> kind; everything namespaced
RESOURCES = {
    ("/api/v1", "configmaps"): "ConfigMap",
    ("/api/v1", "services"): "Service",
    ("/api/v1", "secrets"): "Secret",
    ("/api/v1", "pods"): "Pod",
    ("/api/v1", "events"): "Event",
    ("/apis/apps/v1", "deployments"): "Deployment",
    ("/apis/autoscaling/v2", "horizontalpodautoscalers"): "HorizontalPodAutoscaler",
    ("/apis/policy/v1", "poddisruptionbudgets"): "PodDisruptionBudget",
}
PATH = re.compile(
    r"^(?P<prefix>/api/v1|/apis/[^/]+/[^/]+)/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/]+)"
    r"(?:/(?P<name>[^/]+)(?:/(?P<sub>log|proxy)(?P<rest>/.*)?)?)?$"
)
INGRESS = re.compile(r"^/ingress/(?P<ns>[^/]+)/(?P<service>[^/]+)(?P<rest>/.*)?$")  # see FakeCluster.ingress
GENERATED = ("Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget")  # objects whose spec has a generation


class Request:
    def __init__(self, method: str, path: str, query: dict[str, list[str]], content_type: str, body: Any) -> None:
        self.method, self.path, self.query, self.content_type, self.body = method, path, query, content_type, body

    def __repr__(self) -> str:
        return f"{self.method} {self.path}"


class FakeCluster:
    """The API server, its store and a tiny controller; `push(image, folder)` is the registry."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.store: dict[tuple[str, str, str], dict[str, Any]] = {}  # (kind, ns, name) -> object
        self.applied: dict[tuple[str, str, str], dict[str, Any]] = {}  # what the manager last applied
        self.namespaces = {"default"}
        self.images: dict[str, Path] = {}
        self.requests: list[Request] = []
        self.hosts: dict[str, subprocess.Popen[bytes]] = {}  # pod name -> the scoring host serving it
        self.ports: dict[str, int] = {}
        self.version = 100
        self.lock = threading.RLock()
        self.stop = threading.Event()
        self.run_pods = True
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake._handle(self, "GET")

            def do_PATCH(self) -> None:
                fake._handle(self, "PATCH")

            def do_DELETE(self) -> None:
                fake._handle(self, "DELETE")

            def do_POST(self) -> None:
                fake._handle(self, "POST")

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.controller = threading.Thread(target=self._control, daemon=True)
        self.controller.start()

    # -- the test's side -------------------------------------------------------------------------
    def kubeconfig(self, path: Path, context: str = "fake") -> Path:
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": context,
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "ci", "user": {"token": TOKEN}}],
                    "contexts": [{"name": context, "context": {"cluster": "fake", "user": "ci"}}],
                }
            )
        )
        return path

    def ingress(self, service: str, namespace: str = "default") -> str:
        """The base URL of a load balancer in front of a Service (deploy.kubernetes.url): headers pass unchanged."""
        return f"{self.url}/ingress/{namespace}/{service}"

    def push(self, image: str, folder: Path) -> None:
        """`docker build` + `docker push`: what the pod runs is this folder, laid out by its Dockerfile."""
        self.images[image] = folder

    def push_build(self, request: Any) -> str:
        """What the CI does between render and deploy: the model beside the Dockerfile (as `render -o` copies it),
        then the image/ folder pushed as the image deployment.yaml names; returns that image."""
        image = request.build_dir / "image"
        shutil.copy(request.model_path, image / request.model_path.name)
        deployment = yaml.safe_load((request.build_dir / "k8s" / "deployment.yaml").read_text())
        name = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        self.push(name, image)
        return name

    def writes(self, kind: str | None = None, dry_run: bool | None = None) -> list[Request]:
        out = [r for r in self.requests if r.method in ("PATCH", "DELETE")]
        if kind:
            out = [r for r in out if f"/{_plural(kind)}/" in r.path]
        if dry_run is not None:
            out = [r for r in out if ("dryRun" in r.query) == dry_run]
        return out

    def get(self, kind: str, name: str, namespace: str = "default") -> dict[str, Any] | None:
        with self.lock:
            return copy.deepcopy(self.store.get((kind, namespace, name)))

    def objects(self) -> list[tuple[str, str, str]]:
        with self.lock:
            return sorted(k for k in self.store if k[0] not in ("Pod", "Event"))

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()
        self.controller.join(5)
        for pod in list(self.hosts):
            self._stop_host(pod)

    # -- HTTP ------------------------------------------------------------------------------------
    def _handle(self, h: http.server.BaseHTTPRequestHandler, method: str) -> None:
        url = urllib.parse.urlsplit(h.path)
        query = urllib.parse.parse_qs(url.query)
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        content_type = h.headers.get("Content-Type", "")
        match = PATH.match(url.path)
        headers = {k.lower(): v for k, v in h.headers.items()}
        if match and match["sub"] == "proxy":
            self.requests.append(Request(method, url.path, query, content_type, None))
            return self._proxy(h, method, match, raw, headers)
        ingress = INGRESS.match(url.path)
        if ingress:  # a load balancer in front of the Service: the request arrives as the client sent it
            self.requests.append(Request(method, url.path, query, content_type, None))
            return self._forward(h, method, ingress["ns"], ingress["service"], ingress["rest"], raw, headers, True)
        try:
            body = yaml.safe_load(raw) if raw else None  # JSON is YAML
        except yaml.YAMLError:
            return self._status(h, 400, "BadRequest", "the body is not YAML")
        self.requests.append(Request(method, url.path, query, content_type, body))
        if h.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._status(h, 401, "Unauthorized", "Unauthorized")
        if not match or (match["prefix"], match["plural"]) not in RESOURCES:
            return self._status(h, 404, "NotFound", f"the server could not find the requested resource {url.path}")
        kind, ns, name = RESOURCES[(match["prefix"], match["plural"])], match["ns"], match["name"]
        with self.lock:
            if ns not in self.namespaces:
                return self._status(h, 404, "NotFound", f'namespaces "{ns}" not found')
            if match["sub"] == "log":
                return self._log(h, ns, name, query)
            if method == "GET" and name:
                obj = self.store.get((kind, ns, name))
                if obj is None:
                    return self._status(h, 404, "NotFound", f'{match["plural"]} "{name}" not found')
                return self._json(h, 200, obj)
            if method == "GET":
                items = [
                    o
                    for (k, n, _), o in sorted(self.store.items())
                    if k == kind
                    and n == ns
                    and _selected(o, query.get("labelSelector", [""])[0], query.get("fieldSelector", [""])[0])
                ]
                return self._json(
                    h,
                    200,
                    {
                        "kind": f"{kind}List",
                        "apiVersion": "v1",
                        "items": items,
                        "metadata": {"resourceVersion": str(self.version)},
                    },
                )
            if method == "DELETE" and name:
                if self.store.pop((kind, ns, name), None) is None:
                    return self._status(h, 404, "NotFound", f'{match["plural"]} "{name}" not found')
                self.applied.pop((kind, ns, name), None)
                if kind == "Deployment":
                    for pod in [k for k, o in self.store.items() if k[0] == "Pod" and k[1] == ns and _owner(o) == name]:
                        self._delete_pod(pod)
                return self._status(h, 200, "Success", "deleted")
            if method == "PATCH" and name:
                return self._apply(h, kind, ns, name, query, content_type, body)
        return self._status(h, 405, "MethodNotAllowed", f"{method} is not supported here")

    def _apply(
        self, h: Any, kind: str, ns: str, name: str, query: dict[str, list[str]], content_type: str, body: Any
    ) -> None:
        if content_type != "application/apply-patch+yaml":
            return self._status(h, 415, "UnsupportedMediaType", f"only server-side apply is faked, got {content_type}")
        if not query.get("fieldManager"):
            return self._status(
                h,
                400,
                "BadRequest",
                'PatchOptions.meta.k8s.io "" is invalid: fieldManager: Required value: is required for apply patch',
            )
        if not isinstance(body, dict) or body.get("kind") != kind or (body.get("metadata") or {}).get("name") != name:
            return self._status(h, 400, "BadRequest", "the body's kind and name must match the path")
        if (body["metadata"].get("namespace") or ns) != ns:
            return self._status(h, 400, "BadRequest", "the namespace of the object does not match the request")
        key = (kind, ns, name)
        live = self.store.get(key)
        applied = _canonical(copy.deepcopy(body))
        if live and kind == "Deployment" and live["spec"]["selector"] != applied["spec"]["selector"]:
            return self._status(
                h,
                422,
                "Invalid",
                f'Deployment.apps "{name}" is invalid: spec.selector: '
                f"Invalid value: {json.dumps(applied['spec']['selector'])}: field is immutable",
                [{"field": "spec.selector", "message": "field is immutable"}],
            )
        if live and self.applied.get(key) == applied:
            return self._json(h, 200, live)  # nothing changed: same resourceVersion, as the real server answers
        new = copy.deepcopy(applied)
        meta = new["metadata"]
        meta["namespace"] = ns
        self.version += 1
        meta["resourceVersion"] = str(self.version)
        meta["uid"] = (live or {}).get("metadata", {}).get("uid") or str(uuid.uuid4())
        meta["creationTimestamp"] = (live or {}).get("metadata", {}).get("creationTimestamp") or _now()
        meta["managedFields"] = [{"manager": query["fieldManager"][0], "operation": "Apply"}]
        if kind == "Deployment":  # a count the manager does not apply stays as it is (the autoscaler's)
            new["spec"].setdefault("replicas", (live or {}).get("spec", {}).get("replicas", 1))
            new["status"] = (live or {}).get("status", {"observedGeneration": 0})
        if kind == "Secret" and "stringData" in new:  # stringData is write-only: stored base64-encoded in data
            new["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in new.pop("stringData").items()}
        if kind in GENERATED:
            old_generation = (live or {}).get("metadata", {}).get("generation", 0)
            changed = live is None or live.get("spec") != new.get("spec")
            meta["generation"] = old_generation + 1 if changed else old_generation
        if query.get("dryRun"):
            return self._json(h, 200, new)
        self.store[key] = new
        self.applied[key] = applied
        return self._json(h, 201 if live is None else 200, new)

    def _log(self, h: Any, ns: str, name: str, query: dict[str, list[str]]) -> None:
        pod = self.store.get(("Pod", ns, name))
        if pod is None:
            return self._status(h, 404, "NotFound", f'pods "{name}" not found')
        log = self.root / "pods" / name / "log.txt"
        if not log.is_file():
            return self._status(h, 400, "BadRequest", f'container "score" in pod "{name}" is waiting to start')
        lines = log.read_text(errors="replace").splitlines()
        tail = int(query.get("tailLines", ["0"])[0] or 0)
        data = ("\n".join(lines[-tail:] if tail else lines) + "\n").encode()
        h.send_response(200)
        h.send_header("Content-Type", "text/plain")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _proxy(self, h: Any, method: str, match: Any, raw: bytes, headers: dict[str, str]) -> None:
        """/services/NAME:PORT/proxy/PATH, to a ready pod; the API server keeps the Authorization header."""
        if headers.get("authorization") != f"Bearer {TOKEN}":
            return self._status(h, 401, "Unauthorized", "Unauthorized")
        self._forward(h, method, match["ns"], match["name"].split(":")[0], match["rest"], raw, headers, False)

    def _forward(
        self,
        h: Any,
        method: str,
        ns: str,
        service_name: str,
        rest: str | None,
        raw: bytes,
        headers: dict[str, str],
        keep_auth: bool,
    ) -> None:
        with self.lock:
            service = self.store.get(("Service", ns, service_name))
            selector = ",".join(f"{a}={b}" for a, b in service["spec"]["selector"].items()) if service else ""
            ready = [
                self.ports[k[2]]
                for k, pod in self.store.items()
                if k[0] == "Pod"
                and k[1] == ns
                and service
                and _selected(pod, selector, "")
                and k[2] in self.ports
                and _ready(pod)
            ]
        if not service:
            return self._status(h, 404, "NotFound", f'services "{service_name}" not found')
        if not ready:
            return self._status(h, 503, "ServiceUnavailable", f'no endpoints available for service "{service_name}"')
        dropped = ("host", "content-length") if keep_auth else ("authorization", "host", "content-length")
        forward = {k: v for k, v in headers.items() if k not in dropped}
        request = urllib.request.Request(
            f"http://127.0.0.1:{ready[0]}{rest or '/'}", data=raw or None, headers=forward, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, data, ctype = response.status, response.read(), response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            status, data, ctype = exc.code, exc.read(), exc.headers.get("Content-Type", "")
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _json(self, h: Any, status: int, obj: Any) -> None:
        data = json.dumps(obj).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _status(self, h: Any, code: int, reason: str, message: str, causes: list[dict[str, str]] | None = None) -> None:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure" if code >= 400 else "Success",
            "message": message,
            "reason": reason,
            "code": code,
        }
        if causes:
            body["details"] = {"causes": causes}
        self._json(h, code, body)

    # -- the deployment controller and the kubelet -----------------------------------------------------
    def _control(self) -> None:
        while not self.stop.wait(0.05):
            with self.lock:
                deployments = [(k, o) for k, o in self.store.items() if k[0] == "Deployment"]
            for key, deployment in deployments:
                try:
                    self._reconcile(key, deployment)
                except Exception as exc:  # noqa: BLE001  a broken controller shows in the test, not silently
                    print(f"fake controller: {exc!r}", file=sys.stderr)

    def _reconcile(self, key: tuple[str, str, str], deployment: dict[str, Any]) -> None:
        _, ns, name = key
        generation = deployment["metadata"]["generation"]
        template = deployment["spec"]["template"]
        revision = _short(json.dumps(template, sort_keys=True))
        wanted = deployment["spec"].get("replicas", 1)
        with self.lock:
            hpa = next(
                (
                    o
                    for k, o in self.store.items()
                    if k[0] == "HorizontalPodAutoscaler" and k[1] == ns and o["spec"]["scaleTargetRef"]["name"] == name
                ),
                None,
            )
            if hpa and "replicas" not in self.applied.get(key, {}).get("spec", {}):
                wanted = hpa["spec"].get("minReplicas", 1)  # the autoscaler owns the count
                deployment["spec"]["replicas"] = wanted
            pods = {
                k[2]: o
                for k, o in self.store.items()
                if k[0] == "Pod"
                and k[1] == ns
                and o["metadata"]["labels"].get("pod-template-hash") is not None
                and _owner(o) == name
            }
            new = {n: p for n, p in pods.items() if p["metadata"]["labels"]["pod-template-hash"] == revision}
            for index in range(len(new), wanted):
                pod_name = f"{name}-{revision}-{index}"
                pod = {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": pod_name,
                        "namespace": ns,  # owned directly, no ReplicaSet in between
                        "ownerReferences": [
                            {
                                "apiVersion": "apps/v1",
                                "kind": "Deployment",
                                "name": name,
                                "uid": deployment["metadata"]["uid"],
                            }
                        ],
                        "labels": {**template["metadata"]["labels"], "pod-template-hash": revision},
                    },
                    "spec": copy.deepcopy(template["spec"]),
                    "status": {"phase": "Pending"},
                }
                self.store[("Pod", ns, pod_name)] = pod
                new[pod_name] = pod
                self._start(pod, ns)
            for pod in new.values():
                self._kubelet(pod, ns)
            ready_new = sum(_ready(p) for p in new.values())
            old = [n for n in pods if n not in new]
            if ready_new >= wanted:
                for pod_name in old:  # maxUnavailable 0: the old pods go only once the new ones are ready
                    self._delete_pod(("Pod", ns, pod_name))
                old = []
            available = ready_new + len(old)
            progress = "NewReplicaSetAvailable" if ready_new >= wanted else "ReplicaSetUpdated"
            status = {
                "observedGeneration": generation,
                "replicas": len(new) + len(old),
                "updatedReplicas": len(new),
                "readyReplicas": available,
                "availableReplicas": available,
                "conditions": [
                    {"type": "Available", "status": "True" if available >= wanted else "False"},
                    {"type": "Progressing", "status": "True", "reason": progress},
                ],
            }
            live = self.store.get(key)
            if live is not None and live.get("status") != status:
                live["status"] = status
                self.version += 1
                live["metadata"]["resourceVersion"] = str(self.version)

    def _start(self, pod: dict[str, Any], ns: str) -> None:
        image = pod["spec"]["containers"][0]["image"]
        folder = self.images.get(image)
        name = pod["metadata"]["name"]
        if folder is None or not self.run_pods:
            return
        rootfs = self.root / "pods" / name / "rootfs"
        _build(folder, rootfs)
        for volume, mount in _mounts(pod):
            target = rootfs / mount.lstrip("/")
            target.mkdir(parents=True, exist_ok=True)
            source = volume.get("configMap") or volume.get("secret")
            if source:
                kind = "ConfigMap" if "configMap" in volume else "Secret"
                obj = self.store.get((kind, ns, source.get("name") or source.get("secretName")))
                for file, text in ((obj or {}).get("data") or {}).items():
                    (target / file).write_bytes(base64.b64decode(text) if kind == "Secret" else text.encode())
        config = json.loads((rootfs / "etc/pipeline/serve/serve.json").read_text())
        for field in ("entry_script", "model_dir", "app_root", "keys_file", "ready_file"):
            if config.get(field):
                config[field] = str(rootfs / config[field].lstrip("/"))
        config.update(host="127.0.0.1", port=0)  # every pod has its own address in a cluster: here, a free port
        run = rootfs / "run.json"
        run.write_text(json.dumps(config))
        log = open(self.root / "pods" / name / "log.txt", "wb")  # noqa: SIM115  the child keeps it; closed below
        env = {**os.environ, "PYTHONPATH": str(rootfs / "app"), "PYTHONDONTWRITEBYTECODE": "1"}
        self.hosts[name] = subprocess.Popen(
            [sys.executable, "-m", "pipeline.serve", str(run)],
            cwd=rootfs / "app",
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()

    def _kubelet(self, pod: dict[str, Any], ns: str) -> None:
        name, image = pod["metadata"]["name"], pod["spec"]["containers"][0]["image"]
        if image not in self.images:
            message = f'Back-off pulling image "{image}"'
            pod["status"] = {
                "phase": "Pending",
                "containerStatuses": [
                    {
                        "name": "score",
                        "image": image,
                        "ready": False,
                        "state": {"waiting": {"reason": "ImagePullBackOff", "message": message}},
                    }
                ],
            }
            event = ("Event", ns, f"{name}.pull")
            if event not in self.store:
                self.store[event] = {
                    "kind": "Event",
                    "metadata": {"name": event[2], "namespace": ns},
                    "involvedObject": {"kind": "Pod", "name": name},
                    "type": "Warning",
                    "reason": "Failed",
                    "lastTimestamp": _now(),
                    "message": f'Failed to pull image "{image}": not found',
                }
            return
        host = self.hosts.get(name)
        if host is None or name in self.ports:
            return
        if host.poll() is not None:
            pod["status"] = {
                "phase": "Running",
                "containerStatuses": [
                    {
                        "name": "score",
                        "image": image,
                        "ready": False,
                        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off restarting"}},
                    }
                ],
            }
            return
        ready = self.root / "pods" / name / "rootfs" / "tmp" / "ready.json"
        try:
            port = json.loads(ready.read_text())["port"]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:  # the readiness probe
                healthy = response.read().strip() == b"Healthy"
        except (OSError, ValueError, KeyError):
            healthy = False
        if healthy:
            self.ports[name] = port
            pod["status"] = {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [
                    {"name": "score", "image": image, "ready": True, "state": {"running": {"startedAt": _now()}}}
                ],
            }

    def _delete_pod(self, key: tuple[str, str, str]) -> None:
        self.store.pop(key, None)
        self._stop_host(key[2])
        self.ports.pop(key[2], None)

    def _stop_host(self, pod: str) -> None:
        host = self.hosts.pop(pod, None)
        if host is None or host.poll() is not None:
            return
        os.killpg(host.pid, signal.SIGTERM)
        try:
            host.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(host.pid, signal.SIGKILL)
            host.wait(5)


def at_the_wire(root: Path, monkeypatch: Any) -> Iterator[FakeCluster]:
    """A fake cluster in $KUBECONFIG for one test (the target conformance suite's fixture), closed after it."""
    root.mkdir(parents=True, exist_ok=True)
    cluster = FakeCluster(root)
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig(root / "kubeconfig")))
    try:
        yield cluster
    finally:
        cluster.close()


def _build(folder: Path, rootfs: Path) -> None:
    """The COPY instructions of the folder's Dockerfile (JSON form), into a root file system."""
    if rootfs.exists():
        shutil.rmtree(rootfs)
    for line in (folder / "Dockerfile").read_text().splitlines():
        if not line.startswith("COPY "):
            continue
        args = json.loads(line[line.index("[") :])
        *sources, dest = args
        for source in sources:
            src = folder / source
            target = rootfs / dest.lstrip("/")
            if src.is_dir():
                shutil.copytree(src, target, dirs_exist_ok=True)
            elif dest.endswith("/"):
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, target / src.name)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, target)
    (rootfs / "tmp").mkdir(parents=True, exist_ok=True)


def _owner(pod: dict[str, Any]) -> str | None:
    owners = pod["metadata"].get("ownerReferences", [])
    return next((ref["name"] for ref in owners if ref["kind"] == "Deployment"), None)


def _mounts(pod: dict[str, Any]) -> list[tuple[dict[str, Any], str]]:
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    return [(volumes[m["name"]], m["mountPath"]) for m in pod["spec"]["containers"][0].get("volumeMounts", [])]


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions", [])
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _selected(obj: dict[str, Any], labels: str, fields: str) -> bool:
    have = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, labels.split(",")):
        key, _, value = term.partition("=")
        if have.get(key) != value:
            return False
    for term in filter(None, fields.split(",")):
        key, _, value = term.partition("=")
        node: Any = obj
        for part in key.split("."):
            node = (node or {}).get(part) if isinstance(node, dict) else None
        if node != value:
            return False
    return True


def _canonical(obj: Any, path: str = "") -> Any:
    """Quantities as the API server stores them: 1024Mi is 1Gi."""
    if isinstance(obj, dict):
        return {k: _canonical(v, f"{path}.{k}") for k, v in obj.items()}
    if isinstance(obj, list):
        return [_canonical(v, path) for v in obj]
    if isinstance(obj, str) and path.endswith(".memory") and ".resources." in path:
        match = re.fullmatch(r"(\d+)Mi", obj)
        if match and int(match[1]) % 1024 == 0:
            return f"{int(match[1]) // 1024}Gi"
    return obj


def _plural(kind: str) -> str:
    return next(p for (_, p), k in RESOURCES.items() if k == kind)


def _short(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:10]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
