"""Target kubernetes against a real kube-apiserver and etcd on loopback (marker k8s_api), and a real cluster (k8s_live).

.ci/kube-apiserver builds kube-apiserver v1.20.2 from Debian's source package into ~/.cache/pipeline-k8s; etcd is
Debian's etcd-server. Without nodes and a controller manager no pod runs, so the test stands in for the deployment
controller (it writes the Deployment's status) and selects `--to deploy`. Kubernetes 1.20 serves neither
autoscaling/v2 nor policy/v1, so the autoscaler and the disruption budget are covered by the fake API server only.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

pytest.importorskip("kubernetes")

from pipeline.targets import kubernetes_api as kapi
from pipeline.targets import kubernetes_manifests as km

CACHE = Path(os.environ.get("PIPELINE_K8S_CACHE", Path.home() / ".cache" / "pipeline-k8s"))
APISERVER = CACHE / "bin" / "kube-apiserver"
NAME = "sklearn-mnist-svc"
TOKEN = "k8s-api-test-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.fixture(scope="module")
def api_server(tmp_path_factory):
    """etcd and kube-apiserver on loopback ports, token auth, RBAC; a kubeconfig for them. Stopped by PID."""
    if not APISERVER.is_file() or shutil.which("etcd") is None or shutil.which("openssl") is None:
        pytest.skip("no kube-apiserver (run .ci/kube-apiserver) or no etcd (apt-get install etcd-server)")
    root = tmp_path_factory.mktemp("apiserver")
    subprocess.run(["openssl", "genrsa", "-out", str(root / "sa.key"), "2048"], check=True, capture_output=True)
    (root / "tokens.csv").write_text(f"{TOKEN},admin,admin-uid,system:masters\n")
    etcd_port, peer_port, port = _free_port(), _free_port(), _free_port()
    # the processes' output files stay open for as long as they run; closed in the finally below
    logs = {"etcd": open(root / "etcd.log", "wb"), "apiserver": open(root / "apiserver.log", "wb")}  # noqa: SIM115
    etcd = subprocess.Popen(
        [
            "etcd",
            "--data-dir",
            str(root / "etcd"),
            "--listen-client-urls",
            f"http://127.0.0.1:{etcd_port}",
            "--advertise-client-urls",
            f"http://127.0.0.1:{etcd_port}",
            "--listen-peer-urls",
            f"http://127.0.0.1:{peer_port}",
        ],
        stdout=logs["etcd"],
        stderr=subprocess.STDOUT,
    )
    apiserver = subprocess.Popen(
        [
            str(APISERVER),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            "--insecure-port=0",
            f"--cert-dir={root / 'certs'}",
            f"--token-auth-file={root / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={root / 'sa.key'}",
            f"--service-account-signing-key-file={root / 'sa.key'}",
            "--disable-admission-plugins=ServiceAccount",
        ],
        stdout=logs["apiserver"],
        stderr=subprocess.STDOUT,
    )
    previous = os.environ.get("KUBECONFIG")
    try:
        kubeconfig = root / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "real",
                    "clusters": [
                        {
                            "name": "real",
                            "cluster": {
                                "server": f"https://127.0.0.1:{port}",
                                "certificate-authority": str(root / "certs" / "apiserver.crt"),
                            },
                        }
                    ],
                    "users": [{"name": "admin", "user": {"token": TOKEN}}],
                    "contexts": [{"name": "real", "context": {"cluster": "real", "user": "admin"}}],
                }
            )
        )
        deadline = time.monotonic() + 60
        while True:
            if apiserver.poll() is not None or time.monotonic() > deadline:
                pytest.fail("kube-apiserver did not start:\n" + (root / "apiserver.log").read_text()[-3000:])
            try:
                os.environ["KUBECONFIG"] = str(kubeconfig)
                from kubernetes import client

                client.CoreV1Api(kapi.connect(None).api).read_namespace("default", _request_timeout=2)
                break  # the bootstrap controller has created the default namespace: ready
            except Exception:  # noqa: BLE001  not listening yet, or still bootstrapping
                pass
            time.sleep(0.3)
        yield kubeconfig
    finally:
        if previous is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = previous
        _stop(apiserver)
        _stop(etcd)
        for log in logs.values():
            log.close()


class ControllerStandIn:
    """What kube-controller-manager and the kubelets would report: the Deployment's pods are all available."""

    def __init__(self, cluster: kapi.Cluster, namespace: str = "default") -> None:
        self.cluster, self.namespace, self.stop = cluster, namespace, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        from kubernetes import client

        apps = client.AppsV1Api(self.cluster.api)
        while not self.stop.wait(0.2):
            try:
                live = self.cluster.read("Deployment", NAME, self.namespace)
            except Exception:  # noqa: BLE001
                continue
            if not live or (live.get("status") or {}).get("observedGeneration") == live["metadata"]["generation"]:
                continue
            replicas = live["spec"].get("replicas", 1)
            apps.patch_namespaced_deployment_status(
                NAME,
                self.namespace,
                {
                    "status": {
                        "observedGeneration": live["metadata"]["generation"],
                        "replicas": replicas,
                        "updatedReplicas": replicas,
                        "readyReplicas": replicas,
                        "availableReplicas": replicas,
                        "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"}],
                    }
                },
            )

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


@pytest.fixture
def cluster(api_server, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(api_server))
    live = kapi.connect(None)
    controller = ControllerStandIn(live)
    yield live
    controller.close()
    from pipeline.targets.kubernetes_rollout import delete_owned

    delete_owned(live, NAME, "default")
    for extra in ("not-ours",):
        live.delete("ConfigMap", extra, "default")


def to_kubernetes(project: Path, settings: str = "{}") -> Path:
    path = project / "specs" / "mnist.yaml"
    path.write_text(
        path.read_text()
        .replace("  target: local\n", "  target: kubernetes\n")
        .replace("  local: {port: 0}\n", f"  kubernetes: {settings}\n")
    )
    return path


def versions(cluster: kapi.Cluster) -> dict[str, str]:
    return {
        kind: cluster.read(kind, name, "default")["metadata"]["resourceVersion"]
        for kind, name in (("ConfigMap", f"{NAME}-serve"), ("Deployment", NAME), ("Service", NAME))
    }


@pytest.mark.k8s_api
def test_create_no_op_update_delete_with_server_side_apply_on_a_real_api_server(project, run_cli, cluster):
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "not-ours", "namespace": "default", "labels": {km.INSTANCE_LABEL: NAME}},
            "data": {"a": "b"},
        }
    )
    spec = to_kubernetes(project)
    plan = run_cli("plan", spec, "--to", "deploy", "--detailed-exitcode")
    assert plan.code == 2 and "deploy    create" in plan.out, plan.out + plan.err
    assert cluster.read("Deployment", NAME, "default") is None, "plan's dry run persists nothing"

    run = run_cli("run", spec, "--to", "deploy")
    assert run.code == 0, run.out + run.err
    deployment = cluster.read("Deployment", NAME, "default")
    assert [
        (f["manager"], f["operation"]) for f in deployment["metadata"]["managedFields"] if f["manager"] == "pipeline"
    ] == [("pipeline", "Apply")]
    limits = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["memory"] == "1Gi"  # stored canonically
    status = json.loads(run_cli("status", spec, "--json").out)
    assert status["state"] == "live", status  # 1024Mi applied, 1Gi stored: the same quantity, no drift
    first = versions(cluster)

    assert run_cli("plan", spec, "--to", "deploy", "--detailed-exitcode").code == 0
    again = run_cli("run", spec, "--to", "deploy")
    assert again.code == 0 and "deploy    skipped" in again.out
    assert versions(cluster) == first
    shutil.rmtree(project / ".pipeline")  # a fresh runner: the stamp on the live Deployment is all it has
    fresh = run_cli("plan", spec, "--to", "deploy")
    assert "deploy    no-op" in fresh.out and "the live service carries this spec's digest" in fresh.out, fresh.out
    assert run_cli("run", spec, "--to", "deploy").code == 0 and versions(cluster) == first
    # a forced re-apply of the same objects changes no spec (1.20 still refreshes the timestamp of our
    # managedFields entry on the Deployment, whose status another manager wrote, hence its new resourceVersion)
    assert run_cli("run", spec, "--to", "deploy", "--force").code == 0
    forced = versions(cluster)
    assert (forced["ConfigMap"], forced["Service"]) == (first["ConfigMap"], first["Service"])
    assert cluster.read("Deployment", NAME, "default")["metadata"]["generation"] == 1

    spec.write_text(spec.read_text().replace("  memory_gb: 1\n", "  memory_gb: 2\n"))
    plan = run_cli("plan", spec, "--to", "deploy", "--detailed-exitcode")
    assert plan.code == 2 and "~ deploy.memory_gb: 1 -> 2" in plan.out
    assert run_cli("run", spec, "--to", "deploy").code == 0
    second = versions(cluster)
    assert second["Service"] == first["Service"]
    assert second["ConfigMap"] != first["ConfigMap"] and second["Deployment"] != first["Deployment"]
    deployment = cluster.read("Deployment", NAME, "default")
    assert deployment["metadata"]["generation"] == 2
    assert deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] == "2Gi"

    deleted = run_cli("delete", spec)
    assert deleted.code == 0, deleted.err
    for kind in kapi.KINDS:
        assert cluster.owned(kind, "default", NAME) == []
    assert cluster.read("ConfigMap", "not-ours", "default") is not None


@pytest.mark.k8s_api
def test_a_real_api_servers_refusal_is_the_plans_error(project, run_cli, cluster):
    spec = to_kubernetes(project)
    # someone else's Deployment of the same name with another selector: an apply would change an immutable field
    cluster.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": NAME, "namespace": "default"},
            "spec": {
                "selector": {"matchLabels": {"app": "other"}},
                "template": {
                    "metadata": {"labels": {"app": "other"}},
                    "spec": {"containers": [{"name": "c", "image": "other:1"}]},
                },
            },
        }
    )
    try:
        plan = run_cli("plan", spec, "--to", "deploy", "--detailed-exitcode")
        assert plan.code == 1
        assert "will fail: server-side dry run: the API server refused deployment/sklearn-mnist-svc: 422 " in plan.out
        assert "field is immutable" in plan.out
    finally:
        cluster.delete("Deployment", NAME, "default")
    spec.write_text(spec.read_text().replace("  kubernetes: {}\n", "  kubernetes: {namespace: missing}\n"))
    plan = run_cli("plan", spec, "--to", "deploy", "--detailed-exitcode")
    assert plan.code == 1 and '404 namespaces "missing" not found' in plan.out


@pytest.mark.k8s_live
def test_the_whole_tutorial_on_a_real_cluster(project, run_cli, monkeypatch):
    """Build and push the image with docker, run every stage (smoke through the service proxy), delete."""
    kubeconfig = os.environ.get("PIPELINE_K8S_LIVE_KUBECONFIG")
    repository = os.environ.get("PIPELINE_K8S_LIVE_IMAGE")  # a repository the cluster can pull from and we can push to
    if not kubeconfig or not repository or shutil.which("docker") is None:
        pytest.skip("set PIPELINE_K8S_LIVE_KUBECONFIG and PIPELINE_K8S_LIVE_IMAGE, with docker installed")
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    name = f"mnist-live-{uuid.uuid4().hex[:8]}"
    spec = to_kubernetes(project, json.dumps({"image": repository}))
    spec.write_text(spec.read_text().replace(f"name: {NAME}", f"name: {name}"))
    out = project / "out"
    assert run_cli("render", spec, "-o", out).code == 0
    deployment = yaml.safe_load((out / "k8s" / "deployment.yaml").read_text())
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    subprocess.run(["docker", "build", "-t", image, str(out / "image")], check=True)
    subprocess.run(["docker", "push", image], check=True)
    try:
        result = run_cli("run", spec)
        assert result.code == 0, result.out + result.err
        assert json.loads(run_cli("status", spec, "--json").out)["state"] == "live"
    finally:
        assert run_cli("delete", spec).code == 0
