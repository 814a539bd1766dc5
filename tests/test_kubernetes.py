"""Target kubernetes offline: golden manifests, Kubernetes' own schemas, the rules of validate, names and labels."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")

from pipeline import render  # noqa: E402
from pipeline import spec as specs  # noqa: E402
from pipeline.errors import RenderError, SpecError  # noqa: E402
from pipeline.targets import kubernetes_manifests as km  # noqa: E402
from pipeline.targets.kubernetes import KubernetesTarget  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "data" / "kubernetes"
MODEL_SHA = "f2ff0eb82e268bed56f626ba0d3a7862e0c9e0653ffab40c46fe8b75454592e4"
SCALED = {
    "name: sklearn-mnist-svc": "name: mnist-scaled",
    "tags: {data: MNIST, method: sklearn}": "tags: {data: MNIST, 'cost center': 'R&D / 42', '-': x}",
    "  cpu_cores: 1\n": "  cpu_cores: 0.5\n",
    "  memory_gb: 1\n": "  memory_gb: 1.5\n",
    "  auth: false\n": "  auth: true\n",
    "  kubernetes: {}": "  kubernetes: {namespace: ml, image: registry.example.com/team/mnist, replicas: 2,\n"
    "               max_replicas: 6, target_cpu_utilization: 60, service_type: LoadBalancer,\n"
    "               url: 'https://mnist.example.com/'}",
}


def k8s_spec(folder: Path, replace: dict[str, str] | None = None, name: str = "spec.yaml") -> Path:
    """A copy of specs/mnist.yaml with deploy.target kubernetes, its ../examples paths made absolute."""
    text = (ROOT / "specs" / "mnist.yaml").read_text(encoding="utf-8").replace("../examples/", f"{ROOT}/examples/")
    text = text.replace("  target: local\n", "  target: kubernetes\n")
    text = text.replace("  local: {port: 0}\n", "  kubernetes: {}\n")
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text, encoding="utf-8")
    return folder / name


def rendered(tmp_path: Path, replace: dict[str, str] | None = None) -> dict[str, str]:
    return render.render_all(specs.load(k8s_spec(tmp_path / "specs", replace)))


def normalized(files: dict[str, str]) -> dict[str, str]:
    """The golden view: the image tag and the inputs digest change with every edit of pipeline/serve, so they are
    checked apart (test_image_tag_is_the_digest_of_the_build_context) and replaced by names here."""
    deployment = yaml.safe_load(files["k8s/deployment.yaml"])
    tag = deployment["spec"]["template"]["spec"]["containers"][0]["image"].rpartition(":")[2]
    digest = deployment["metadata"]["annotations"][km.DIGEST_KEY]
    return {
        name: text.replace(digest, "<inputs-digest>").replace(tag, "<context-digest>")
        for name, text in files.items()
        if name.startswith("k8s/") or name == "image/Dockerfile"
    }


@pytest.mark.parametrize("case, replace", [("mnist", None), ("scaled", SCALED)])
def test_rendered_manifests_match_the_golden_files(tmp_path, case, replace):
    files = normalized(rendered(tmp_path, replace))
    folder = GOLDEN / case
    if os.environ.get("PIPELINE_UPDATE_GOLDEN"):
        shutil.rmtree(folder, ignore_errors=True)
        render.write_files(folder, files)
    golden = {p.relative_to(folder).as_posix(): p.read_text(encoding="utf-8") for p in folder.rglob("*") if p.is_file()}
    assert sorted(files) == sorted(golden)
    for name in files:
        assert files[name] == golden[name], (
            f"{name} differs from tests/data/kubernetes/{case}/{name} "
            "(PIPELINE_UPDATE_GOLDEN=1 rewrites the golden files after review)"
        )


@pytest.mark.parametrize("replace", [None, SCALED], ids=["mnist", "scaled"])
@pytest.mark.parametrize("version", ["1.30", "1.37"])
def test_every_rendered_manifest_passes_kubernetes_validate_strict(tmp_path, replace, version):
    files = rendered(tmp_path, replace)
    manifests = [n for n in files if n.startswith("k8s/") and n != "k8s/kustomization.yaml"]
    assert len(manifests) == (5 if replace else 3)
    for name in manifests:
        for obj in yaml.safe_load_all(files[name]):
            assert kubernetes_validate.validate(obj, version, strict=True) == version, name


def test_the_done_when_render_command_writes_the_folder_kubectl_apply_k_takes(tmp_path, run_cli):
    spec = k8s_spec(tmp_path / "specs")
    out = tmp_path / "out"
    result = run_cli("render", spec, "-o", out)
    assert result.code == 0, result.err
    listed = yaml.safe_load((out / "k8s" / "kustomization.yaml").read_text())["resources"]
    assert listed == ["configmap.yaml", "deployment.yaml", "service.yaml"]
    assert sorted(p.name for p in (out / "k8s").iterdir()) == sorted(listed + ["kustomization.yaml"])
    for name in listed:
        for version in km.VALIDATE_VERSIONS:
            assert (
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "kubernetes_validate",
                        "--strict",
                        "-k",
                        f"{version}.0",
                        "--quiet",
                        str(out / "k8s" / name),
                    ],
                    capture_output=True,
                ).returncode
                == 0
            ), name
    # the image folder is a complete build context: the Dockerfile's COPY sources all exist
    model = ROOT / "examples" / "mnist" / "sklearn_mnist_model.pkl"
    assert (out / "image" / model.name).read_bytes() == model.read_bytes()
    for line in (out / "image" / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY "):
            *sources, _ = json.loads(line[line.index("[") :])
            assert all((out / "image" / s).exists() for s in sources), line


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_kustomize_builds_the_rendered_folder(tmp_path):
    files = rendered(tmp_path, SCALED)
    render.write_files(tmp_path / "out", files)
    result = subprocess.run(["kubectl", "kustomize", str(tmp_path / "out" / "k8s")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    kinds = sorted(doc["kind"] for doc in yaml.safe_load_all(result.stdout))
    assert kinds == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"]


def test_render_is_deterministic_and_the_deployment_carries_what_the_issue_asks(tmp_path):
    first, second = rendered(tmp_path / "a", SCALED), rendered(tmp_path / "b", SCALED)
    assert first == second
    deployment = yaml.safe_load(first["k8s/deployment.yaml"])
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["requests"] == container["resources"]["limits"] == {"cpu": "500m", "memory": "1536Mi"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/", "port": "http"}
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert "replicas" not in deployment["spec"]  # the autoscaler owns the count
    meta = deployment["metadata"]
    assert meta["annotations"][km.SPEC_KEY] == "mnist-scaled"
    assert json.loads(meta["annotations"][km.TAGS_KEY]) == {"data": "MNIST", "cost center": "R&D / 42", "-": "x"}
    assert len(meta["annotations"][km.DIGEST_KEY]) == 64
    # labels carry the tags Kubernetes accepts, cleaned up; '-' has nothing left and is only in the annotation
    assert {k: v for k, v in meta["labels"].items() if k.startswith(km.TAG_LABEL_PREFIX)} == {
        f"{km.TAG_LABEL_PREFIX}data": "MNIST",
        f"{km.TAG_LABEL_PREFIX}cost-center": "R-D-42",
    }
    hpa = yaml.safe_load(first["k8s/hpa.yaml"])
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 60
    config = json.loads(yaml.safe_load(first["k8s/configmap.yaml"])["data"]["serve.json"])
    assert (config["workers"], config["keys_file"], config["port"]) == (1, "/etc/pipeline/keys/keys.json", 8080)


def test_image_tag_is_the_digest_of_the_build_context(tmp_path):
    files = rendered(tmp_path)
    image = yaml.safe_load(files["k8s/deployment.yaml"])["spec"]["template"]["spec"]["containers"][0]["image"]
    expected = km.context_digest(files, "sklearn_mnist_model.pkl", MODEL_SHA)[:20]
    assert image == f"sklearn-mnist-svc:{expected}"
    # a resource change is a ConfigMap change: the image (and so its tag) stays the same
    bigger = rendered(tmp_path / "bigger", {"  memory_gb: 1\n": "  memory_gb: 2\n"})
    assert yaml.safe_load(bigger["k8s/deployment.yaml"])["spec"]["template"]["spec"]["containers"][0]["image"] == image
    assert {n for n in files if files[n] != bigger[n]} == {"k8s/configmap.yaml", "k8s/deployment.yaml"}
    # a given tag is used as is
    tagged = rendered(tmp_path / "tagged", {"  kubernetes: {}": "  kubernetes: {image: 'ghcr.io/team/mnist:v3'}"})
    assert 'image: "ghcr.io/team/mnist:v3"' in tagged["k8s/deployment.yaml"]


def test_a_template_that_renders_an_invalid_manifest_is_a_render_error_naming_file_and_field(tmp_path):
    templates = tmp_path / "specs" / "tpl" / "kubernetes"
    templates.mkdir(parents=True)
    text = (ROOT / "templates" / "kubernetes" / "service.yaml.j2").read_text()
    (templates / "service.yaml.j2").write_text(text.replace("port: {{ k8s.service_port }}", 'port: "eighty"'))
    spec = specs.load(k8s_spec(tmp_path / "specs", {"description:": "templates: tpl\ndescription:"}))
    with pytest.raises(RenderError) as info:
        render.render_all(spec)
    assert str(info.value).startswith(
        "rendered k8s/service.yaml (Service sklearn-mnist-svc) is not valid for "
        "Kubernetes 1.30: spec.ports.0.port: 'eighty' is not of type 'integer'"
    )


def test_metadata_the_schemas_do_not_check_is_checked_too():
    problem = km.metadata_problem({"metadata": {"name": "Bad_Name"}})
    assert problem.startswith("metadata.name: 'Bad_Name' is not a DNS-1123")
    assert "label value" in km.metadata_problem({"metadata": {"name": "ok", "labels": {"a": "has space"}}})
    assert "annotation key" in km.metadata_problem({"metadata": {"name": "ok", "annotations": {"bad key": "x"}}})
    assert km.metadata_problem({"metadata": {"name": "ok", "labels": {"example.com/a": "b"}}}) is None


@pytest.mark.parametrize(
    "tags, labels",
    [
        ({"team": "ml"}, {"team": "ml"}),
        ({"Cost Center": "R&D"}, {"Cost-Center": "R-D"}),
        ({"x" * 80: "y" * 80}, {"x" * 63: "y" * 63}),
        ({"a b": "1", "a-b": "2"}, {"a-b": "1"}),  # the second collides once cleaned up: the first wins
        ({"!!!": "value"}, {}),
        ({"empty": "!!"}, {"empty": ""}),
    ],
)
def test_tags_become_valid_labels(tags, labels):
    got = km.tag_labels(tags)
    assert got == {km.TAG_LABEL_PREFIX + k: v for k, v in labels.items()}
    assert all(km.is_label_key(k) and km.is_label_value(v) for k, v in got.items())


@pytest.mark.parametrize("cores, quantity", [(1, "1"), (2.0, "2"), (0.5, "500m"), (1.25, "1250m"), (0.001, "1m")])
def test_cpu_quantities(cores, quantity):
    assert km.cpu_quantity(cores) == quantity


@pytest.mark.parametrize(
    "replace, message",
    [
        (
            {"  kubernetes: {}": "  kubernetes: {replicas: 4, max_replicas: 2}"},
            "deploy.kubernetes.max_replicas: must be >= replicas (4): the autoscaler's maximum cannot be below its minimum",
        ),
        (
            {"  kubernetes: {}": "  kubernetes: {image: 'Registry.example.com/Team/mnist'}"},
            "deploy.kubernetes.image: 'Registry.example.com/Team/mnist' is not an image reference such as "
            "registry.example.com/team/mnist[:tag]",
        ),
        (
            {"  kubernetes: {}": "  kubernetes: {namespace: ML_Team}"},
            "deploy.kubernetes.namespace: 'ML_Team' must be a DNS-1123 label (at most 63 lowercase letters, digits and '-', "
            "alphanumeric at both ends)",
        ),
        (
            {"  auth: false\n": "  auth: true\n"},
            "deploy.auth: key auth on kubernetes needs deploy.kubernetes.url (an Ingress or load balancer): through the API "
            "server's proxy the key cannot reach the service",
        ),
        (
            {"  cpu_cores: 1\n": "  cpu_cores: 0.0001\n"},
            "deploy.cpu_cores: Kubernetes counts CPU in millicores: at least 0.001",
        ),
        (
            {"  kubernetes: {}": "  kubernetes: {service_type: ExternalName}"},
            "deploy.kubernetes.service_type: 'ExternalName' is not one of ['ClusterIP', 'NodePort', 'LoadBalancer']",
        ),
    ],
)
def test_validate_catches_what_kubernetes_would_refuse(tmp_path, run_cli, replace, message):
    spec = k8s_spec(tmp_path / "specs", replace)
    result = run_cli("validate", spec)
    assert result.code == 2
    line = result.err.strip().splitlines()[0]
    assert line.split(": ", 1)[1] == message, line
    with pytest.raises(SpecError):
        specs.load(spec)


def test_pip_packages_the_host_needs_are_added_once(tmp_path):
    spec = specs.load(k8s_spec(tmp_path / "specs"))  # the spec lists orjson already
    assert KubernetesTarget().extra_pip_packages(spec) == ["uvicorn[standard]>=0.30", "psutil>=5.9"]
    env = yaml.safe_load(render.render_all(spec)["image/myenv.yml"])
    assert env["dependencies"][-1] == {"pip": ["orjson", "uvicorn[standard]>=0.30", "psutil>=5.9"]}


def test_rollout_state_follows_kubectl_rollout_status():
    from pipeline.targets.kubernetes_api import pod_failure, rollout_state

    def deployment(generation=2, observed=2, wanted=2, **status):
        return {
            "metadata": {"generation": generation},
            "spec": {"replicas": wanted},
            "status": {"observedGeneration": observed, **status},
        }

    assert rollout_state(deployment(observed=1)) == (False, "waiting for the deployment controller to see the new spec")
    assert rollout_state(deployment(updatedReplicas=1)) == (False, "1 of 2 updated replicas are running")
    assert (
        rollout_state(deployment(updatedReplicas=2, replicas=3, availableReplicas=2))[1]
        == "1 old replicas are pending termination"
    )
    assert rollout_state(deployment(updatedReplicas=2, availableReplicas=1)) == (
        False,
        "1 of 2 updated replicas are available",
    )
    assert rollout_state(deployment(updatedReplicas=2, availableReplicas=2)) == (True, "2 of 2 replicas available")
    stuck = deployment(conditions=[{"type": "Progressing", "reason": "ProgressDeadlineExceeded", "message": "slow"}])
    assert rollout_state(stuck) == (False, "progress deadline exceeded: slow")
    crashing = {
        "metadata": {"name": "p-1"},
        "status": {
            "containerStatuses": [
                {"image": "repo:tag", "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}}}
            ]
        },
    }
    assert pod_failure([crashing], "repo:tag") == (
        "p-1",
        "the container keeps crashing (CrashLoopBackOff: back-off 10s)",
    )
    assert pod_failure([crashing], "repo:other") is None  # an old version's pod is not the new rollout's failure
