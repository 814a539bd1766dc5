"""azureml-online blue/green at the wire: the real azure-ai-ml against tests/fake_azure.py, whose deployments score."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("azure.ai.ml")
pytestmark = pytest.mark.filterwarnings("ignore:The `context` parameter is deprecated")

from pipeline.console import Console  # noqa: E402
from pipeline.errors import TargetError  # noqa: E402
from pipeline.targets.azureml_online import OnlineTarget  # noqa: E402
from pipeline.targets.base import STAMP_DIGEST, STAMP_KEYS, DeployRequest, ServiceRecord  # noqa: E402
from tests import fake_azure as fake  # noqa: E402
from tests.test_azureml_online import ENDPOINT, MODEL, ROOT, build, puts, wired  # noqa: E402

BLUE, GREEN = f"{ENDPOINT}/deployments/blue", f"{ENDPOINT}/deployments/green"
SAMPLE = (ROOT / "examples" / "mnist" / "sample.json").read_bytes()  # a 2, a 5 and a 1


@pytest.fixture(autouse=True)
def _offline(no_network):
    yield no_network


@pytest.fixture
def azure(fake_azure, tmp_path):
    """The fake with containers: a deployment that succeeds runs the uploaded score.py and model on loopback."""
    fake_azure.containers = tmp_path / "containers"
    return fake_azure


def stamp(digest: str) -> dict[str, str]:
    return {
        STAMP_DIGEST: digest,
        "pipeline-model-sha256": "f2ff",
        "pipeline-spec": "sklearn-mnist-online",
        "pipeline-version": "0.1.0",
    }


def request(spec, tmp_path: Path, previous: ServiceRecord | None = None, digest: str = "d1") -> DeployRequest:
    return DeployRequest(
        spec=spec,
        build_dir=build(spec, tmp_path),
        model_path=MODEL,
        model_dir=MODEL.parent,
        service_dir=tmp_path / "service",
        previous=previous,
        console=Console(quiet=True),
        stamp=stamp(digest),
    )


def traffic(azure) -> dict:
    return azure.resources[ENDPOINT.lower()]["properties"]["traffic"]


def score(target: OnlineTarget, record: ServiceRecord, req: DeployRequest):
    return target.invoke(record, SAMPLE, timeout=10, service_dir=req.service_dir)


def first_deploy(azure, tmp_path):
    spec = wired(tmp_path, azure)
    req = request(spec, tmp_path)
    return OnlineTarget().deploy(req), spec


def test_the_first_deploy_is_blue_taking_all_the_traffic_and_stamped(azure, tmp_path):
    record, _ = first_deploy(azure, tmp_path)
    assert (record.extra["deployment"], record.extra["traffic"]) == ("blue", {"blue": 100})
    [created, routed] = puts(azure, ENDPOINT)
    assert created["properties"]["traffic"] == {} and set(created["tags"]) == {"data", "method"}  # no stamp yet
    assert routed["properties"]["traffic"] == {"blue": 100}
    assert routed["tags"] == {"data": "MNIST", "method": "sklearn", **stamp("d1")}  # stamped as it takes the traffic
    [blue] = puts(azure, BLUE)
    assert blue["tags"] == {"data": "MNIST", "method": "sklearn", **stamp("d1")}
    assert not azure.requests_to("PUT", GREEN + "$")


def test_update_at_the_wire_green_beside_blue_tested_alone_then_all_traffic_then_blue_deleted(azure, tmp_path):
    record, _ = first_deploy(azure, tmp_path)
    spec = wired(
        tmp_path / "v2",
        azure,
        {"tags: {data: MNIST, method: sklearn}": "tags: {data: MNIST, method: svm}", "replicas: 1\n": "replicas: 2\n"},
    )
    req = request(spec, tmp_path / "v2", previous=record, digest="d2")
    target = OnlineTarget()
    assert target.describe_update(record, spec) == (
        "blue/green: green beside blue, tested alone, then 100% of the traffic"
    )

    candidate = target.stage(req)
    # green: the second deployment's payload, beside blue, with no traffic yet
    [green] = puts(azure, GREEN)
    assert green["sku"]["capacity"] == 2 and green["properties"]["instanceType"] == "Standard_DS1_v2"
    assert green["tags"] == {"data": "MNIST", "method": "svm", **stamp("d2")}
    assert len(puts(azure, BLUE)) == 1  # blue is not touched
    assert traffic(azure) == {"blue": 100}
    assert candidate.extra["deployment"] == "green" and candidate.extra["traffic"] == {}
    assert candidate.scoring_uri == record.scoring_uri  # one endpoint: the header picks the deployment
    # the candidate answers alone, through the endpoint, pinned by the azureml-model-deployment header
    reply = score(target, candidate, req)
    assert (reply.status, json.loads(reply.body)) == (200, [2, 5, 1])
    assert reply.headers["azureml-model-deployment"] == "green"
    unpinned = score(target, record.stamped(extra={**record.extra, "deployment": ""}), req)
    assert unpinned.headers["azureml-model-deployment"] == "blue"  # everyone else still gets blue

    promoted = target.promote(candidate, req)
    assert traffic(azure) == {"green": 100}
    assert (promoted.extra["deployment"], promoted.extra["traffic"]) == ("green", {"green": 100})
    assert puts(azure, ENDPOINT)[-1]["tags"] == {"data": "MNIST", "method": "svm", **stamp("d2")}
    assert target.retire(record, req) == "deleted deployment blue"
    assert BLUE.lower() not in azure.resources and GREEN.lower() in azure.resources
    # the order on the wire: green created, traffic moved, only then blue deleted
    order = [
        (c.method, c.path.rsplit("/", 1)[-1])
        for c in azure.calls
        if c.method in ("PUT", "DELETE") and c.path.lower().startswith(ENDPOINT.lower())
    ]
    assert order[-3:] == [("PUT", "green"), ("PUT", "sklearn-mnist-online"), ("DELETE", "blue")]
    assert [b["properties"]["traffic"] for b in puts(azure, ENDPOINT)] == [{}, {"blue": 100}, {"green": 100}]
    live = target.probe(promoted, spec)
    assert (live.healthy, live.drift, live.stamp) == (True, (), stamp("d2"))
    assert target.describe_update(promoted, spec) == (
        "blue/green: blue beside green, tested alone, then 100% of the traffic"
    )


def test_the_names_alternate_and_every_deploy_leaves_one_deployment(azure, tmp_path):
    target = OnlineTarget()
    record, spec = first_deploy(azure, tmp_path)
    names = [record.extra["deployment"]]
    for n in range(3):
        record = target.deploy(request(spec, tmp_path, previous=record, digest=f"d{n + 2}"))
        names.append(record.extra["deployment"])
        deployments = [
            k.rsplit("/", 1)[-1] for k in azure.resources if k.startswith(ENDPOINT.lower() + "/deployments/")
        ]
        assert deployments == [record.extra["deployment"]] and traffic(azure) == {record.extra["deployment"]: 100}
    assert names == ["blue", "green", "blue", "green"]


def test_a_failed_green_leaves_blue_at_100_percent_untouched(azure, tmp_path):
    record, spec = first_deploy(azure, tmp_path)
    azure.outcomes.append(
        fake.Outcome(
            state="Failed",
            logs="ModuleNotFoundError: No module named 'sklearn'\n",
            error={"code": "BadArgument", "message": "the container crashed on startup"},
        )
    )
    req = request(spec, tmp_path, previous=record, digest="d2")
    with pytest.raises(TargetError) as caught:
        OnlineTarget().stage(req)
    message = str(caught.value)
    assert message.startswith("deployment green of endpoint sklearn-mnist-online failed: ")
    assert "ModuleNotFoundError" in message
    assert "(deleted deployment green; the live deployment was not touched)" in message
    assert traffic(azure) == {"blue": 100}
    assert [b["properties"]["traffic"] for b in puts(azure, ENDPOINT)] == [{}, {"blue": 100}]  # never routed
    assert len(puts(azure, BLUE)) == 1 and not azure.requests_to("DELETE", BLUE + "$")
    assert GREEN.lower() not in azure.resources  # a failed deployment holds no quota
    reply = score(OnlineTarget(), record, req)
    assert (reply.status, reply.headers["azureml-model-deployment"]) == (200, "blue")


def test_discard_deletes_green_and_leaves_blue_taking_all_the_traffic(azure, tmp_path):
    record, spec = first_deploy(azure, tmp_path)
    req = request(spec, tmp_path, previous=record, digest="d2")
    target = OnlineTarget()
    candidate = target.stage(req)
    assert target.discard(candidate, req.service_dir) == "deleted deployment green; blue still takes all the traffic"
    assert traffic(azure) == {"blue": 100} and GREEN.lower() not in azure.resources
    assert [b["properties"]["traffic"] for b in puts(azure, ENDPOINT)] == [{}, {"blue": 100}]
    assert len(puts(azure, BLUE)) == 1
    pinned = score(target, candidate, req)
    assert pinned.status == 404  # green is gone: the header finds nothing to route to


def test_discard_after_a_promotion_cut_short_gives_blue_its_traffic_back(azure, tmp_path):
    record, spec = first_deploy(azure, tmp_path)
    req = request(spec, tmp_path, previous=record, digest="d2")
    target = OnlineTarget()
    candidate = target.stage(req)
    azure.fail("GET", GREEN + "$", 503, {"error": {"code": "ServiceUnavailable", "message": "down"}}, times=100)
    with pytest.raises(TargetError):
        target.promote(candidate, req)  # the traffic moved, then reading green back failed
    assert traffic(azure) == {"green": 100}
    azure.failures.clear()
    assert target.discard(candidate, req.service_dir) == "deleted deployment green; blue still takes all the traffic"
    assert traffic(azure) == {"blue": 100} and GREEN.lower() not in azure.resources


def test_discard_of_a_first_deploy_deletes_the_endpoint_made_for_it(azure, tmp_path):
    spec = wired(tmp_path, azure)
    req = request(spec, tmp_path)
    target = OnlineTarget()
    candidate = target.stage(req)
    assert candidate.extra["created_endpoint"] is True and traffic(azure) == {}
    said = target.discard(candidate, req.service_dir)
    assert said == "deleted endpoint sklearn-mnist-online, made for the new version"
    assert not [k for k in azure.resources if k.startswith(ENDPOINT.lower())]
    assert not (req.service_dir / "keys.json").exists()


def test_a_deploy_killed_after_staging_leaves_green_idle_and_the_next_one_replaces_it(azure, tmp_path):
    record, spec = first_deploy(azure, tmp_path)
    target = OnlineTarget()
    target.stage(request(spec, tmp_path, previous=record, digest="d2"))  # then the run was killed
    live = target.probe(record, spec)
    assert (live.healthy, live.drift) == (True, ())  # blue still serves all of it
    assert live.detail.endswith("; green also deployed there, taking no traffic")
    again = target.deploy(request(spec, tmp_path, previous=record, digest="d3"))
    assert again.extra["deployment"] == "green" and traffic(azure) == {"green": 100}
    assert puts(azure, GREEN)[-1]["tags"]["pipeline-digest"] == "d3" and BLUE.lower() not in azure.resources
    assert target.probe(again, spec).detail.endswith(f"at {again.scoring_uri}")


def test_stage_refuses_an_endpoint_whose_traffic_is_split(azure, tmp_path):
    record, spec = first_deploy(azure, tmp_path)
    azure.resources[GREEN.lower()] = {**azure.resources[BLUE.lower()], "name": "green"}
    azure.resources[ENDPOINT.lower()]["properties"]["traffic"] = {"blue": 50, "green": 50}
    with pytest.raises(TargetError, match=r"splits its traffic \{'blue': 50, 'green': 50\}"):
        OnlineTarget().stage(request(spec, tmp_path, previous=record, digest="d2"))
    assert len(puts(azure, GREEN)) == 0  # nothing that takes traffic was touched


def test_a_hand_made_deployment_is_left_beside_ours(azure, tmp_path):
    """An endpoint made by hand with a deployment named 'default': ours goes beside it as blue, takes the traffic."""
    _, spec = first_deploy(azure, tmp_path)
    default = f"{ENDPOINT}/deployments/default".lower()
    azure.resources[default] = {**azure.resources.pop(BLUE.lower()), "name": "default"}
    azure.apps[ENDPOINT.lower()]["default"] = azure.apps[ENDPOINT.lower()].pop("blue")
    azure.resources[ENDPOINT.lower()]["properties"]["traffic"] = {"default": 100}
    target = OnlineTarget()
    assert target.deploy(request(spec, tmp_path, digest="d2")).extra["deployment"] == "blue"
    assert traffic(azure) == {"blue": 100} and default in azure.resources  # not ours to delete
    live = target.probe(None, spec)
    assert "; default also deployed there, taking no traffic" in live.detail and live.stamp == stamp("d2")


def test_invoke_fetches_the_key_on_a_machine_that_has_none(azure, tmp_path):
    record, _ = first_deploy(azure, tmp_path)
    fresh = tmp_path / "fresh-runner"
    fresh.mkdir()
    reply = OnlineTarget().invoke(record, SAMPLE, timeout=10, service_dir=fresh)
    assert reply.status == 200 and json.loads((fresh / "keys.json").read_text())["primary"].startswith("primary-")


def test_a_model_error_is_the_models_own_status(azure, tmp_path):
    """Azure answers 424 for a container's non-200, with the container's status in a header: invoke shows that."""
    record, _ = first_deploy(azure, tmp_path)
    reply = OnlineTarget().invoke(record, b'{"data": [[1, 2]]}', timeout=10, service_dir=tmp_path / "service")
    assert reply.status == 400 and reply.headers["ms-azureml-model-error-statuscode"] == "400"
    assert "data[0] has 2 values, expected 784" in json.loads(reply.body)["error"]


# -- the whole pipeline, at the wire: run, an update, a bad update -----------------------------------
def test_run_at_the_wire_updates_blue_green_and_a_bad_update_leaves_the_live_one(azure, project, run_cli, tmp_path):
    shutil.copy(ROOT / "specs" / "mnist-online.yaml", project / "specs" / "mnist-online.yaml")
    path = project / "specs" / "mnist-online.yaml"
    config = f"    replicas: 1\n    workspace_config: {azure.config_file}"
    path.write_text(path.read_text().replace("    replicas: 1", config))
    first = run_cli("run", path)
    assert first.code == 0, first.out + first.err
    assert traffic(azure) == {"blue": 100}

    path.write_text(path.read_text().replace("method: sklearn", "method: svm"))
    plan = run_cli("plan", path)
    assert "deploy    update        (blue/green: green beside blue, tested alone, then 100% of the traffic)" in plan.out
    assert "~ tags.method: 'sklearn' -> 'svm'" in plan.out
    assert not azure.requests_to("PUT", GREEN + "$")  # plan changed nothing
    second = run_cli("run", path)
    assert second.code == 0, second.out + second.err
    assert traffic(azure) == {"green": 100} and BLUE.lower() not in azure.resources
    assert "smoke     ran" in second.out

    # a version whose score.py answers wrongly: it starts, is healthy, and fails its smoke test, alone
    liar = project / "liar_score.py"
    liar.write_text(
        (ROOT / "tests/data/score_tutorial.py")
        .read_text()
        .replace("return json.dumps(y_hat.tolist())", "return json.dumps(((y_hat + 1) % 10).tolist())")
    )
    path.write_text(path.read_text().replace("  output: labels", "  output: labels\n  entry_script: ../liar_score.py"))
    bad = run_cli("run", path)
    assert bad.code == 1
    assert "answers differ from the local model's" in bad.out and "failed before it took any traffic" in bad.out
    assert "deleted deployment blue; green still takes all the traffic" in bad.out + bad.err
    assert traffic(azure) == {"green": 100} and BLUE.lower() not in azure.resources
    state = json.loads((project / ".pipeline" / "sklearn-mnist-online" / "state.json").read_text())
    assert state["service"]["deployment"] == "green" and state.get("candidate") is None
    live = azure.resources[GREEN.lower()]["tags"]
    assert set(STAMP_KEYS) <= set(live) and live[STAMP_DIGEST] == state["service"]["digest"]

    # rollback: the first release comes back the same way, as blue beside green
    back = run_cli("rollback", path)
    assert back.code == 0, back.out + back.err
    assert traffic(azure) == {"blue": 100} and GREEN.lower() not in azure.resources
    assert azure.resources[BLUE.lower()]["tags"]["method"] == "sklearn"  # the first release's tags
