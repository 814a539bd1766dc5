"""Stamps at the wire: every Azure target marks what it deployed, and a runner with no state plans against it.

The real SDKs run against tests/fake_azure.py; the services really score (the fake runs what was uploaded).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("azureml.core")
pytest.importorskip("azure.ai.ml")
pytestmark = [
    pytest.mark.filterwarnings("ignore::PendingDeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The `context` parameter is deprecated"),
]

from pipeline.targets.base import STAMP_DIGEST, STAMP_KEYS, STAMP_MODEL, STAMP_SPEC, STAMP_VERSION  # noqa: E402
from tests import fake_azure as fake  # noqa: E402
from tests.conftest import ROOT  # noqa: E402

SPECS = {"aci": "mnist-aci.yaml", "aks": "mnist-aks.yaml", "azureml-online": "mnist-online.yaml"}
NAMES = {"aci": "sklearn-mnist-aci", "aks": "sklearn-mnist-aks", "azureml-online": "sklearn-mnist-online"}


@pytest.fixture(autouse=True)
def _offline(no_network):
    yield no_network


@pytest.fixture(params=list(SPECS))
def wired(request, fake_azure, project, tmp_path) -> tuple[str, Path]:
    """The target's example spec in the project, its workspace the fake one, whose services really score."""
    target = request.param
    fake_azure.containers = tmp_path / "containers"
    path = project / "specs" / SPECS[target]
    text = (ROOT / "specs" / SPECS[target]).read_text()
    if target == "aci":
        text = text.replace(
            "  ready_timeout_s: 1200",
            f"  ready_timeout_s: 1200\n  azureml: {{workspace_config: {fake_azure.config_file}}}",
        )
    else:
        text = text.replace("  azureml:\n", f"  azureml:\n    workspace_config: {fake_azure.config_file}\n")
    path.write_text(text)
    return target, path


def live_tags(azure: fake.FakeAzure, target: str) -> dict:
    """The tags of the live service: the v1 service's kvTags, or the serving v2 deployment's."""
    if target != "azureml-online":
        return azure.services[NAMES[target]]["kvTags"]
    endpoint = f"{fake.WS_PATH}/onlineEndpoints/{NAMES[target]}".lower()
    [serving] = [k for k, v in azure.resources[endpoint]["properties"]["traffic"].items() if v]
    return azure.resources[f"{endpoint}/deployments/{serving}"]["tags"]


def strip_stamp(azure: fake.FakeAzure, target: str) -> None:
    """As if the service had been made by hand, as in the tutorial: the same service, no stamp."""
    everywhere = [live_tags(azure, target)]
    if target == "azureml-online":
        everywhere.append(azure.resources[f"{fake.WS_PATH}/onlineEndpoints/{NAMES[target]}".lower()]["tags"])
    for tags in everywhere:
        for key in STAMP_KEYS:
            tags.pop(key, None)


def deploy_step(plan_json: dict) -> dict:
    [step] = [s for s in plan_json["steps"] if s["stage"] == "deploy"]
    return step


def test_a_runner_with_no_state_plans_against_the_stamp_and_never_says_create(
    wired, fake_azure, run_cli, project, monkeypatch, tmp_path
):
    """Deploy from one runner; then fresh runners (no state at all) plan no-op, update, adopt: never create."""
    target, spec = wired
    result = run_cli("run", spec)
    assert result.code == 0, result.out + result.err
    from pipeline import __version__

    # the live service carries the stamp of what deployed it, beside the spec's own tags
    state = json.loads((project / ".pipeline" / NAMES[target] / "state.json").read_text())
    tags = live_tags(fake_azure, target)
    assert {k: tags[k] for k in STAMP_KEYS} == {
        STAMP_DIGEST: state["service"]["digest"],
        STAMP_MODEL: state["service"]["model_sha256"],
        STAMP_SPEC: NAMES[target],
        STAMP_VERSION: __version__,
    }
    assert {k: v for k, v in tags.items() if k not in STAMP_KEYS} == {"data": "MNIST", "method": "sklearn"}
    assert state["service"]["tags"] == {"data": "MNIST", "method": "sklearn"}  # the record keeps the spec's own
    assert run_cli("plan", spec, "--detailed-exitcode").code == 0  # and the stamp is no drift
    deploys = changes(fake_azure)

    # a fresh runner: the same spec is a no-op against the stamped service
    fresh(monkeypatch, tmp_path, "plan-same")
    step = deploy_step(json.loads(run_cli("plan", spec, "--detailed-exitcode", "--json").out))
    assert (step["action"], step["deploy"]["action"]) == ("skip", "no-op"), step
    assert "carries this spec's digest" in step["deploy"]["live"]

    # a fresh runner's run adopts the service as it is, smoke-tests it (its key fetched from Azure), and records it
    fresh(monkeypatch, tmp_path, "run")
    again = run_cli("run", spec)
    assert again.code == 0, again.out + again.err
    assert "deploy    skipped" in again.out and "smoke     ran" in again.out
    state = json.loads((tmp_path / "run" / NAMES[target] / "state.json").read_text())
    assert state["service"]["digest"] == tags[STAMP_DIGEST] and state["service"]["target"] == target
    assert run_cli("plan", spec, "--detailed-exitcode").code == 0  # from now on it knows the service

    # a tag changed in the spec: update, with exactly that field (what the live service shows of itself)
    fresh(monkeypatch, tmp_path, "plan-changed")
    spec.write_text(spec.read_text().replace("method: sklearn", "method: svm"))
    changed = run_cli("plan", spec, "--detailed-exitcode", "--json")
    assert changed.code == 2
    step = deploy_step(json.loads(changed.out))
    assert step["deploy"]["action"] == "update"
    assert step["deploy"]["fields"] == [{"path": "tags.method", "old": "sklearn", "new": "svm"}]

    # the same service as if made by hand (no stamp): adopt
    strip_stamp(fake_azure, target)
    fresh(monkeypatch, tmp_path, "plan-by-hand")
    by_hand = run_cli("plan", spec, "--detailed-exitcode", "--json")
    assert by_hand.code == 2
    step = deploy_step(json.loads(by_hand.out))
    assert step["deploy"]["action"] == "adopt", step
    assert "without pipeline's stamp" in step["deploy"]["live"]
    assert changes(fake_azure) == deploys  # no plan and no adopting run changed anything in Azure


def changes(azure: fake.FakeAzure) -> list[fake.Call]:
    """The requests that change something in Azure: ARM writes, v1 model registrations and service deployments."""
    return [
        c
        for c in azure.calls
        if c.method in ("PUT", "PATCH", "DELETE") or (c.method == "POST" and c.path.endswith(("/services", "/models")))
    ]


def fresh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str) -> None:
    """A runner with no state at all: an empty state home."""
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path / name))


@pytest.mark.parametrize("wired", ["azureml-online"], indirect=True)
def test_a_runner_with_no_state_exits_0_when_the_live_service_matches(
    wired, fake_azure, run_cli, monkeypatch, tmp_path
):
    _, spec = wired
    assert run_cli("run", spec).code == 0
    fresh(monkeypatch, tmp_path, "fresh-runner")
    assert run_cli("plan", spec, "--detailed-exitcode").code == 0


def test_probe_without_a_record_shows_what_the_service_shows_of_itself(wired, fake_azure, tmp_path):
    from pipeline import render, targets
    from pipeline import spec as specs
    from pipeline.console import Console
    from pipeline.targets.base import DeployRequest

    target, spec_path = wired
    spec = specs.load(spec_path)
    build = tmp_path / "build"
    render.write_files(build, render.render_all(spec))
    model = ROOT / "examples" / "mnist" / "sklearn_mnist_model.pkl"
    stamp = {STAMP_DIGEST: "d" * 64, STAMP_MODEL: spec.model.sha256 or "", STAMP_SPEC: spec.name, STAMP_VERSION: "1"}
    targets.get(target).deploy(
        DeployRequest(
            spec=spec,
            build_dir=build,
            model_path=model,
            model_dir=model.parent,
            service_dir=tmp_path / "service",
            previous=None,
            console=Console(quiet=True),
            stamp=stamp,
        )
    )
    live = targets.get(target).probe(None, spec)
    assert (live.found, live.healthy) == (True, True) and live.stamp is not None
    assert live.observed["tags.data"] == "MNIST" and live.observed["description"] == "Predict MNIST with sklearn"
    expected = {
        "aci": {"deploy.cpu_cores": 1, "deploy.memory_gb": 1, "deploy.auth": False},
        "aks": {
            "deploy.cpu_cores": 1,
            "deploy.memory_gb": 1,
            "deploy.auth": True,
            "deploy.azureml.compute_target": "aks-mnist",
            "deploy.request_timeout_ms": 5000,
            "deploy.azureml.autoscale.max_replicas": 3,
        },
        "azureml-online": {
            "deploy.auth": True,
            "deploy.azureml.instance_type": "Standard_DS1_v2",
            "deploy.azureml.replicas": 1,
            "deploy.request_timeout_ms": 5000,
        },
    }[target]
    assert {k: live.observed[k] for k in expected} == expected
    assert live.observed["model.sha256"] == spec.model.sha256
    assert not any(key in live.observed for key in (f"tags.{k}" for k in STAMP_KEYS))
    assert live.stamp == stamp
    record = targets.get(target).adopt(live, spec)
    assert record is not None and record.digest == "d" * 64
    assert record.model_sha256 == spec.model.sha256 and (record.scoring_uri or "").startswith("http://127.0.0.1:")
    assert targets.get(target).probe(record, spec).drift == ()  # the adopted record matches what is live


@pytest.mark.parametrize("target", list(SPECS))
def test_the_stamps_tag_names_are_not_the_specs(target, tmp_path):
    from pipeline import spec as specs
    from pipeline.errors import SpecError

    path = tmp_path / "spec.yaml"
    text = (ROOT / "specs" / SPECS[target]).read_text().replace("../examples/", f"{ROOT}/examples/")
    path.write_text(text.replace("tags: {data: MNIST, method: sklearn}", "tags: {data: MNIST, pipeline-digest: mine}"))
    with pytest.raises(SpecError) as caught:
        specs.load(path)
    assert [m.split(": ", 1)[1] for m in caught.value.messages] == [
        "tags.pipeline-digest: pipeline-digest is the name of a tag deploy writes itself (pipeline's stamp): "
        "choose another"
    ]


def test_an_endpoint_takes_46_tags_of_the_spec_beside_the_stamp(tmp_path):
    from pipeline import spec as specs
    from pipeline.errors import SpecError

    text = (ROOT / "specs" / SPECS["azureml-online"]).read_text().replace("../examples/", f"{ROOT}/examples/")
    for count, ok in ((46, True), (47, False)):
        tags = ", ".join(f"t{i}: v" for i in range(count))
        path = tmp_path / f"spec{count}.yaml"
        path.write_text(text.replace("tags: {data: MNIST, method: sklearn}", f"tags: {{{tags}}}"))
        if ok:
            assert len(specs.load(path).tags) == 46
            continue
        with pytest.raises(SpecError) as caught:
            specs.load(path)
        assert [m.split(": ", 1)[1] for m in caught.value.messages] == [
            "tags: Azure resources allow at most 50 tags and pipeline's stamp takes 4: at most 46 remain for the "
            "spec, got 47"
        ]
