"""Target kubernetes against a fake API server on loopback (tests/k8s_fake.py): the official client's real HTTP calls.

The fake cluster's "pods" are the real scoring host, started from the image folder `render` wrote, so the smoke
test goes through the API server's service proxy to a real service.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

pytest.importorskip("kubernetes")

from pipeline import spec as specs
from pipeline.console import Console
from pipeline.targets import kubernetes_manifests as km
from pipeline.targets.base import DeployRequest
from pipeline.targets.kubernetes import KubernetesTarget
from pipeline.targets.kubernetes_rollout import applied_diff
from tests.k8s_fake import TOKEN, FakeCluster

pytestmark = pytest.mark.slow
NAME = "sklearn-mnist-svc"
OURS = [("ConfigMap", "default", f"{NAME}-serve"), ("Deployment", "default", NAME), ("Service", "default", NAME)]


@pytest.fixture(autouse=True)
def _offline(no_network):
    yield no_network


@pytest.fixture
def fake(tmp_path, monkeypatch):
    cluster = FakeCluster(tmp_path / "fake")
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig(tmp_path / "kubeconfig")))
    yield cluster
    cluster.close()


def to_kubernetes(project: Path, settings: str = "{}", replace: dict[str, str] | None = None) -> Path:
    path = project / "specs" / "mnist.yaml"
    text = path.read_text().replace("  target: local\n", "  target: kubernetes\n")
    text = text.replace("  local: {port: 0}\n", f"  kubernetes: {settings}\n")
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text)
    return path


def build_and_push(run_cli, fake: FakeCluster, spec: Path, out: Path) -> str:
    """What the CI does before `run`: render the build context and push it as the image the manifests name."""
    result = run_cli("render", spec, "-o", out)
    assert result.code == 0, result.err
    deployment = yaml.safe_load((out / "k8s" / "deployment.yaml").read_text())
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    fake.push(image, out / "image")
    return image


def kubectl_apply(fake: FakeCluster, obj: dict) -> None:
    """A server-side apply by another field manager, over HTTP, as `kubectl apply --server-side` sends it."""
    import urllib.request

    plural = {
        "ConfigMap": "api/v1/namespaces/default/configmaps",
        "Service": "api/v1/namespaces/default/services",
        "Deployment": "apis/apps/v1/namespaces/default/deployments",
    }[obj["kind"]]
    request = urllib.request.Request(
        f"{fake.url}/{plural}/{obj['metadata']['name']}?fieldManager=kubectl",
        json.dumps(obj).encode(),
        method="PATCH",
        headers={"Content-Type": "application/apply-patch+yaml", "Authorization": f"Bearer {TOKEN}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status in (200, 201)


def applies(fake: FakeCluster, since: int = 0) -> list[str]:
    return [r.path.rsplit("/", 2)[1] for r in fake.requests[since:] if r.method == "PATCH" and "dryRun" not in r.query]


def test_plan_and_run_create_then_no_op_then_update_only_the_changed_fields_then_delete(project, run_cli, fake):
    spec = to_kubernetes(project)
    fake.store[("ConfigMap", "default", "not-ours")] = {
        "kind": "ConfigMap",
        "metadata": {"name": "not-ours", "namespace": "default", "labels": {km.INSTANCE_LABEL: NAME}},
    }
    build_and_push(run_cli, fake, spec, project / "out")

    plan = run_cli("plan", spec, "--detailed-exitcode")
    assert plan.code == 2, plan.err
    assert "deploy    create" in plan.out and "namespace default has no deployment sklearn-mnist-svc yet" in plan.out
    assert applies(fake) == [] and fake.writes(dry_run=True), "plan dry-runs the objects and writes nothing"

    run = run_cli("run", spec)
    assert run.code == 0, run.out + run.err
    assert "deploy    ran" in run.out and "created http://127.0.0.1:" in run.out
    assert "30 images agree with the local model" in run.out  # through the API server's service proxy
    assert fake.objects() == sorted(OURS + [("ConfigMap", "default", "not-ours")])
    before = {key: fake.get(*key[:1], key[2]) for key in OURS}

    mark = len(fake.requests)
    assert run_cli("plan", spec, "--detailed-exitcode").code == 0
    again = run_cli("run", spec)
    assert again.code == 0 and "deploy    skipped" in again.out
    assert applies(fake, mark) == [], "a no-op run applies nothing"

    spec.write_text(spec.read_text().replace("  memory_gb: 1\n", "  memory_gb: 2\n"))
    build_and_push(run_cli, fake, spec, project / "out")
    plan = run_cli("plan", spec, "--detailed-exitcode")
    assert plan.code == 2
    assert "deploy    update" in plan.out and "~ deploy.memory_gb: 1 -> 2" in plan.out
    assert '-              memory: "1024Mi"' in plan.out and '+              memory: "2048Mi"' in plan.out
    mark = len(fake.requests)
    update = run_cli("run", spec)
    assert update.code == 0, update.out + update.err
    assert "deploy    ran" in update.out and "updated http://" in update.out and "agree" in update.out
    after = {key: fake.get(*key[:1], key[2]) for key in OURS}
    service = ("Service", "default", NAME)
    assert after[service]["metadata"]["resourceVersion"] == before[service]["metadata"]["resourceVersion"]
    deployment = ("Deployment", "default", NAME)
    assert after[deployment]["metadata"]["generation"] == 2
    changed = [d.split(":")[0] for d in applied_diff(_spec_part(after[deployment]), before[deployment])]
    assert sorted(changed) == [
        "metadata.annotations.ml-deploy-pipeline/inputs-digest",
        "metadata.annotations.ml-deploy-pipeline/pipeline-digest",  # the deploy's stamp
        "spec.template.metadata.annotations.ml-deploy-pipeline/config-digest",
        "spec.template.spec.containers[score].resources.limits.memory",
        "spec.template.spec.containers[score].resources.requests.memory",
    ]
    assert after[deployment]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] == "2Gi"
    assert sorted(applies(fake, mark)) == ["configmaps", "deployments", "services"]  # apply sends all; the server
    # changed only what differed (the Service kept its resourceVersion)

    deleted = run_cli("delete", spec)
    assert deleted.code == 0
    assert "deployment/sklearn-mnist-svc" in deleted.out and "configmap/sklearn-mnist-svc-serve" in deleted.out
    assert fake.objects() == [("ConfigMap", "default", "not-ours")], "delete removes exactly what pipeline created"
    assert run_cli("delete", spec).out.strip().endswith("nothing to delete")


def _spec_part(obj: dict) -> dict:
    return {"metadata": {"annotations": obj["metadata"]["annotations"]}, "spec": obj["spec"]}


def test_an_image_the_cluster_cannot_pull_fails_the_deploy_clearly_and_leaves_nothing(project, run_cli, fake):
    spec = to_kubernetes(project)  # nothing pushed
    result = run_cli("run", spec, "--to", "deploy")
    assert result.code == 1
    assert "deploy    failed" in result.out
    assert "the cluster cannot pull the image (ImagePullBackOff: Back-off pulling image" in result.out
    assert "build and push sklearn-mnist-svc:" in result.out
    assert 'event Warning Failed: Failed to pull image "sklearn-mnist-svc:' in result.out
    assert "removed what this deploy created" in result.out
    assert fake.objects() == []


def test_a_failed_update_applies_the_previous_version_again(project, run_cli, fake):
    spec = to_kubernetes(project)
    image = build_and_push(run_cli, fake, spec, project / "out")
    assert run_cli("run", spec, "--to", "deploy").code == 0
    to_kubernetes(project, replace={"  kubernetes: {}": "  kubernetes: {image: 'sklearn-mnist-svc:never-pushed'}"})
    result = run_cli("run", spec, "--to", "deploy")
    assert result.code == 1 and "ImagePullBackOff" in result.out
    assert "the previous version was applied again and keeps serving" in result.out
    live = fake.get("Deployment", NAME)
    assert live["spec"]["template"]["spec"]["containers"][0]["image"] == image
    status = run_cli("status", spec, "--json")
    assert json.loads(status.out)["state"] == "live"


def test_a_rollout_that_never_becomes_ready_times_out_with_the_pods_state(project, run_cli, fake):
    spec = to_kubernetes(
        project, replace={"  request_timeout_ms: 5000\n": "  request_timeout_ms: 5000\n  ready_timeout_s: 2\n"}
    )
    build_and_push(run_cli, fake, spec, project / "out")
    fake.run_pods = False  # scheduled, never started: no node has room
    result = run_cli("run", spec, "--to", "deploy")
    assert result.code == 1
    assert "was not available after 2 s (deploy.ready_timeout_s): 0 of 1 updated replicas are available" in result.out
    assert "pod sklearn-mnist-svc-" in result.out and "(Pending)" in result.out


def test_plan_shows_the_clusters_refusal_of_a_dry_run_as_an_error(project, run_cli, fake):
    spec = to_kubernetes(project, "{namespace: missing}")
    plan = run_cli("plan", spec, "--detailed-exitcode")
    assert plan.code == 1
    assert (
        "will fail: server-side dry run: the API server refused configmap/sklearn-mnist-svc-serve: "
        '404 namespaces "missing" not found'
    ) in plan.out
    assert "run would fail" in plan.err


def test_a_fresh_runner_finds_the_stamped_service_and_plans_no_op_then_an_update_of_what_changed(
    project, run_cli, fake
):
    spec = to_kubernetes(project)
    build_and_push(run_cli, fake, spec, project / "out")
    assert run_cli("run", spec, "--to", "deploy").code == 0
    stamp = fake.get("Deployment", NAME)["metadata"]["annotations"]
    assert stamp["ml-deploy-pipeline/pipeline-spec"] == NAME and len(stamp["ml-deploy-pipeline/pipeline-digest"]) == 64
    versions = {key: fake.get(key[0], key[2])["metadata"]["resourceVersion"] for key in OURS}
    shutil.rmtree(project / ".pipeline")  # a new CI runner: no local state at all
    plan = run_cli("plan", spec, "--to", "deploy", "--detailed-exitcode")  # the local stages only rebuild here
    assert plan.code == 0, plan.out + plan.err
    assert "deploy    no-op" in plan.out and "the live service carries this spec's digest" in plan.out
    assert "the server accepts a dry run of the spec and nothing would change" in plan.out
    assert run_cli("run", spec, "--to", "deploy").code == 0
    assert {key: fake.get(key[0], key[2])["metadata"]["resourceVersion"] for key in OURS} == versions
    assert json.loads(run_cli("status", spec, "--json").out)["state"] == "live"

    shutil.rmtree(project / ".pipeline")
    spec.write_text(spec.read_text().replace("  memory_gb: 1\n", "  memory_gb: 2\n"))
    build_and_push(run_cli, fake, spec, project / "out")
    plan = run_cli("plan", spec, "--to", "deploy", "--detailed-exitcode")
    assert plan.code == 2 and "deploy    update" in plan.out, plan.out
    assert "~ deploy.memory_gb: 1 -> 2" in plan.out and "deploy.cpu_cores" not in plan.out  # read from the live pods
    update = run_cli("run", spec, "--to", "deploy")
    assert update.code == 0, update.out + update.err
    assert fake.get("Deployment", NAME)["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {
        "cpu": "1",
        "memory": "2Gi",
    }


def test_a_deployment_of_that_name_made_by_hand_is_adopted_not_created(project, run_cli, fake):
    spec = to_kubernetes(project)
    build_and_push(run_cli, fake, spec, project / "out")
    for name in ("configmap.yaml", "deployment.yaml", "service.yaml"):  # `kubectl apply -k`: no stamp
        kubectl_apply(fake, yaml.safe_load((project / "out" / "k8s" / name).read_text()))
    plan = run_cli("plan", spec, "--to", "deploy")
    assert "deploy    adopt" in plan.out and "without pipeline's stamp; deploy takes it over" in plan.out, plan.out
    result = run_cli("run", spec, "--to", "deploy")
    assert result.code == 0, result.out + result.err
    assert "took over" in result.out
    assert "ml-deploy-pipeline/pipeline-digest" in fake.get("Deployment", NAME)["metadata"]["annotations"]


def test_status_reports_drift_from_the_applied_objects_and_logs_come_from_the_pods(project, run_cli, fake):
    spec = to_kubernetes(project)
    build_and_push(run_cli, fake, spec, project / "out")
    assert run_cli("run", spec, "--to", "deploy").code == 0
    logs = run_cli("logs", spec, "-n", "20")
    assert logs.code == 0 and "ready: 1 worker(s)" in logs.out
    with fake.lock:  # someone runs `kubectl set image` by hand
        fake.store[("Deployment", "default", NAME)]["spec"]["template"]["spec"]["containers"][0]["image"] = "other:1"
    status = json.loads(run_cli("status", spec, "--json").out)
    assert status["state"] in ("drifted", "down")
    assert any(
        d.startswith("deployment/sklearn-mnist-svc: spec.template.spec.containers[score].image: live 'other:1'")
        for d in status["drift"]
    )


def test_the_autoscaler_and_disruption_budget_come_and_go_with_the_settings(project, run_cli, fake):
    spec = to_kubernetes(project, "{replicas: 2, max_replicas: 4}")
    build_and_push(run_cli, fake, spec, project / "out")
    assert run_cli("run", spec, "--to", "deploy").code == 0
    assert ("HorizontalPodAutoscaler", "default", NAME) in fake.objects()
    assert ("PodDisruptionBudget", "default", NAME) in fake.objects()
    assert fake.get("Deployment", NAME)["spec"]["replicas"] == 2  # set by the autoscaler, not by the manifest
    to_kubernetes(project, replace={"  kubernetes: {replicas: 2, max_replicas: 4}": "  kubernetes: {}"})
    result = run_cli("run", spec, "--to", "deploy")
    assert result.code == 0, result.out
    assert fake.objects() == OURS
    assert fake.get("Deployment", NAME)["spec"]["replicas"] == 1


def test_an_unreachable_cluster_is_one_line_in_the_plan(project, run_cli, tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    closed = FakeCluster.__new__(FakeCluster)
    closed.url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("KUBECONFIG", str(FakeCluster.kubeconfig(closed, tmp_path / "closed")))
    spec = to_kubernetes(project)
    plan = run_cli("plan", spec)
    assert plan.code == 0
    line = next(row for row in plan.out.splitlines() if row.strip().startswith("deploy"))
    assert f"cannot reach the Kubernetes API server at http://127.0.0.1:{port}: " in line


def test_key_auth_keys_go_into_a_secret_the_record_never_holds(tmp_path, fake):
    from pipeline import render
    from tests.test_kubernetes import ROOT, k8s_spec

    spec = specs.load(
        k8s_spec(
            tmp_path / "specs",
            {"  auth: false\n": "  auth: true\n", "  kubernetes: {}": "  kubernetes: {url: 'http://127.0.0.1:9'}"},
        )
    )
    build = tmp_path / "build"
    render.write_files(build, render.render_all(spec))
    model = ROOT / "examples" / "mnist" / "sklearn_mnist_model.pkl"
    shutil.copy(model, build / "image" / model.name)
    deployment = yaml.safe_load((build / "k8s" / "deployment.yaml").read_text())
    fake.push(deployment["spec"]["template"]["spec"]["containers"][0]["image"], build / "image")
    request = DeployRequest(
        spec=spec,
        build_dir=build,
        model_path=model,
        model_dir=model.parent,
        service_dir=tmp_path / "service",
        previous=None,
        console=Console(quiet=True),
    )
    record = KubernetesTarget().deploy(request)
    keys = json.loads((tmp_path / "service" / "keys.json").read_text())
    secret_applies = [r for r in fake.requests if r.method == "PATCH" and "/secrets/" in r.path]
    assert json.loads(secret_applies[0].body["stringData"]["keys.json"]) == keys
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    assert {"name": "keys", "secret": {"secretName": "sklearn-mnist-svc-keys"}} in volumes
    assert keys["primary"] not in json.dumps(record.to_dict())
    assert record.scoring_uri == "http://127.0.0.1:9/score" and record.auth is True
    # the pod reads the mounted keys: the host asks for them (GET / stays open for the probes)
    pod = next(p for p in fake.hosts)
    rootfs = tmp_path / "fake" / "pods" / pod / "rootfs"
    assert json.loads((rootfs / "etc/pipeline/keys/keys.json").read_text()) == keys
    assert KubernetesTarget().delete(record, tmp_path / "service").startswith("deleted deployment/sklearn-mnist-svc, ")
    assert fake.objects() == [] and not (tmp_path / "service" / "keys.json").exists()


def test_rollback_applies_the_kept_release_again(project, run_cli, fake):
    spec = to_kubernetes(project)
    build_and_push(run_cli, fake, spec, project / "out")
    assert run_cli("run", spec, "--to", "deploy").code == 0
    first = fake.get("Deployment", NAME)["metadata"]["annotations"]["ml-deploy-pipeline/pipeline-digest"]
    spec.write_text(spec.read_text().replace("  memory_gb: 1\n", "  memory_gb: 2\n"))
    assert run_cli("run", spec, "--to", "deploy").code == 0
    assert (
        fake.get("Deployment", NAME)["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
        == "2Gi"
    )
    result = run_cli("rollback", spec)
    assert result.code == 0, result.out + result.err
    live = fake.get("Deployment", NAME)
    assert live["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] == "1Gi"
    assert live["metadata"]["annotations"]["ml-deploy-pipeline/pipeline-digest"] == first  # the release's stamp
    assert json.loads(run_cli("status", spec, "--json").out)["state"] == "live"
