"""The target conformance suite: every target in TARGETS, and a test-only one, honour the same protocol.

A new target gets these tests by adding one line to HARNESSES. The local and threaded targets run for
real (real processes or threads, real HTTP on 127.0.0.1); so does ray, on a real local Ray cluster per
deploy, inside a loopback-only network namespace (tests/netns.py): Ray binds some ports on every interface.
The Azure targets run their real SDKs against Azure faked at the network boundary (tests/fake_azure.py),
which runs what was uploaded, so invoke scores. kubernetes runs the official client against a Kubernetes
API server faked at HTTP on loopback (tests/k8s_fake.py), whose pods are the real scoring host.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from pipeline import render, targets
from pipeline import spec as specs
from pipeline.console import Console
from pipeline.records import Live
from pipeline.targets.base import Auth, DeployRequest, Rollout, ServiceRecord, Target
from tests import k8s_fake, netns
from tests.conftest import EXAMPLE_MODEL, ROOT

THREADED = "tests.targets.threaded:ThreadedTarget"
# the cloud SDKs' own deprecation notices (their vendored ruamel.yaml, marshmallow 4 to come): not ours to fix
pytestmark = [
    pytest.mark.filterwarnings("ignore:::azureml"),
    pytest.mark.filterwarnings("ignore:::marshmallow"),
    pytest.mark.filterwarnings("ignore:::azure.ai.ml"),
]


@pytest.fixture
def threaded_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test-only target, registered the one way a target is: a line in TARGETS."""
    monkeypatch.setitem(targets.TARGETS, "threaded", THREADED)


def spec_for(folder: Path, target: str, *, auth: bool = False, extra: str = "") -> Path:
    """specs/mnist.yaml for `target`, with its example paths made absolute and `extra` as its deploy settings."""
    text = (ROOT / "specs" / "mnist.yaml").read_text(encoding="utf-8").replace("../examples/", f"{ROOT}/examples/")
    text = text.replace("target: local", f"target: {target}").replace("  local: {port: 0}\n", extra)
    if auth:
        text = text.replace("auth: false", "auth: true")
    path = folder / "spec.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@dataclass(frozen=True)
class Harness:
    """How the suite meets one target: its name, how to build the target object, and what its specs need."""

    name: str
    make: Callable[[], Target]
    registered: bool = True  # False: a test-only target that the suite registers itself
    needs: tuple[str, ...] = ()  # fixtures it runs under (a cloud faked at its network boundary)
    settings: Callable[[Mapping[str, Any], bool], str] | None = None  # (those fixtures, auth) -> its deploy block
    skips: Mapping[str, str] = field(default_factory=dict)  # conformance test -> why it cannot pass honestly here
    requires: str | None = None  # a module of the target's extra: its cases are skipped without it
    netns: bool = False  # its services listen beyond loopback: deploys run only in a loopback-only namespace
    # what the CI does between render and deploy (build and push an image): (fixtures, the request) -> None
    before_deploy: Callable[[Mapping[str, Any], DeployRequest], None] | None = None


@dataclass
class Bound:
    """A harness in one test: its fixtures resolved, so it can write the target's spec."""

    harness: Harness
    fixtures: dict[str, Any]

    @property
    def name(self) -> str:
        return self.harness.name

    @property
    def netns(self) -> bool:
        return self.harness.netns

    def make(self) -> Target:
        return self.harness.make()

    def spec(self, folder: Path, *, auth: bool = False) -> Path:
        block = self.harness.settings(self.fixtures, auth) if self.harness.settings else ""
        return spec_for(folder, self.name, auth=auth, extra=block)


@pytest.fixture
def azure_at_the_wire(fake_azure: Any, tmp_path: Path) -> Any:
    """Azure faked at the HTTP boundary (tests/fake_azure.py), whose services really run what was uploaded."""
    fake_azure.containers = tmp_path / "containers"
    return fake_azure


def _azureml(extra: str = "", *, token_without_key: bool = False) -> Callable[[Mapping[str, Any], bool], str]:
    """deploy.azureml naming the fake workspace's config.json; `token_without_key`: a target that always
    authenticates (managed endpoints) uses Azure ML tokens where the test asks for no key."""

    def settings(fixtures: Mapping[str, Any], auth: bool) -> str:
        token = "" if auth or not token_without_key else ", token_auth: true"
        return f"  azureml: {{workspace_config: {fixtures['azure_at_the_wire'].config_file}{extra}{token}}}\n"

    return settings


@pytest.fixture
def k8s_at_the_wire(no_network: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A Kubernetes API server faked at HTTP on loopback (tests/k8s_fake.py), in $KUBECONFIG; its pods run
    the image folder pushed to it with the real scoring host."""
    yield from k8s_fake.at_the_wire(tmp_path / "cluster", monkeypatch)


def _kubernetes(fixtures: Mapping[str, Any], auth: bool) -> str:
    """deploy.kubernetes: with key auth, the Service behind a load balancer (the API server's proxy keeps the key)."""
    cluster = fixtures["k8s_at_the_wire"]
    return f"  kubernetes: {{url: '{cluster.ingress('sklearn-mnist-svc')}'}}\n" if auth else "  kubernetes: {}\n"


AZURE = ("azure_at_the_wire",)
HARNESSES = [
    Harness("local", lambda: targets.get("local")),
    Harness("threaded", lambda: targets.get("threaded"), registered=False),
    Harness("aci", lambda: targets.get("aci"), needs=AZURE, settings=_azureml()),
    Harness("aks", lambda: targets.get("aks"), needs=AZURE, settings=_azureml(", compute_target: aks-mnist")),
    Harness(
        "azureml-online", lambda: targets.get("azureml-online"), needs=AZURE, settings=_azureml(token_without_key=True)
    ),
    Harness("ray", lambda: targets.get("ray"), requires="ray.serve", netns=True),
    Harness(
        "kubernetes",
        lambda: targets.get("kubernetes"),
        needs=("k8s_at_the_wire",),
        settings=_kubernetes,
        requires="kubernetes_validate",
        before_deploy=lambda f, r: f["k8s_at_the_wire"].push_build(r),
    ),
]


@pytest.fixture(params=HARNESSES, ids=lambda h: h.name)
def harness(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Bound:
    h: Harness = request.param
    if not h.registered:
        monkeypatch.setitem(targets.TARGETS, "threaded", THREADED)
    if h.requires:
        pytest.importorskip(h.requires, reason=f"needs the {h.name} extra: pip install '.[{h.name}]'")
    why = h.skips.get(request.node.originalname)
    if why:
        pytest.skip(f"{h.name}: {why}")
    return Bound(h, {name: request.getfixturevalue(name) for name in h.needs})


@dataclass
class Deployed:
    target: Target
    record: ServiceRecord
    request: DeployRequest


@pytest.fixture
def deployed(harness: Bound, tmp_path: Path) -> Iterator[Callable[..., Deployed]]:
    """Deploy the example model to the harness's target; every service made is deleted at the end."""
    made: list[Deployed] = []
    if harness.netns and not netns.INSIDE:
        pytest.skip(
            f"{harness.name} deploys run in a loopback-only network namespace, started by "
            f"test_{harness.name}_deploys_in_a_loopback_only_network_namespace"
        )

    def deploy(*, auth: bool = False) -> Deployed:
        folder = tmp_path / f"d{len(made)}"
        folder.mkdir()
        spec = specs.load(harness.spec(folder, auth=auth))
        build = folder / "build"
        render.write_files(build, render.render_all(spec))
        model_dir = folder / "models" / spec.model.name / str(spec.model.version)
        model_dir.mkdir(parents=True)
        shutil.copy(EXAMPLE_MODEL, model_dir / EXAMPLE_MODEL.name)
        request = DeployRequest(
            spec=spec,
            build_dir=build,
            model_path=model_dir / EXAMPLE_MODEL.name,
            model_dir=model_dir,
            service_dir=folder / "service",
            previous=None,
            console=Console(),
        )
        request.service_dir.mkdir()
        if harness.harness.before_deploy:
            harness.harness.before_deploy(harness.fixtures, request)
        target = harness.make()
        done = Deployed(target, target.deploy(request), request)
        made.append(done)
        return done

    yield deploy
    for done in made:
        done.target.delete(done.record, done.request.service_dir)


def one_image() -> bytes:
    """examples/mnist/sample.json: a 2, a 5 and a 1, as the README's curl sends them."""
    return (ROOT / "examples" / "mnist" / "sample.json").read_bytes()


def test_the_class_declares_the_whole_protocol(harness: Bound) -> None:
    cls = targets.target_class(harness.name)
    assert cls.name == harness.name and cls.summary
    schema = cls.settings_schema
    assert schema["type"] == "object" and schema["additionalProperties"] is False and "default" in schema
    assert all("description" in field for field in schema["properties"].values())
    assert isinstance(cls.capabilities.rollout, Rollout) and cls.capabilities.auth <= set(Auth)
    assert all(isinstance(dist, str) and isinstance(module, str) for dist, module in cls.packages.items())
    block = specs.schema()["properties"]["deploy"]["properties"][cls.settings_key]
    assert block == dict(schema)  # the schema is assembled from the target, not written beside it


def test_render_is_deterministic(harness: Bound, tmp_path: Path) -> None:
    spec = specs.load(harness.spec(tmp_path))
    first, second = render.render_all(spec), render.render_all(specs.load(harness.spec(tmp_path)))
    assert first == second and {"score.py", "myenv.yml"} <= set(first)
    assert all(text.endswith("\n") for text in first.values())


def test_deploy_returns_a_valid_record_that_survives_the_state_file(
    deployed: Callable[..., Deployed], harness: Bound
) -> None:
    done = deployed()
    assert isinstance(done.record, ServiceRecord) and done.record.target == harness.name
    assert done.record.scoring_uri and done.record.scoring_uri.startswith("http")
    again = ServiceRecord.from_dict(json.loads(json.dumps(done.record.to_dict())))
    assert again == done.record
    live = done.target.probe(again, done.request.spec)
    assert (live.reachable, live.healthy, live.drift) == (True, True, ()), live.detail


def test_invoke_scores_the_way_the_local_model_does(deployed: Callable[..., Deployed]) -> None:
    done = deployed()
    reply = done.target.invoke(done.record, one_image(), timeout=10, service_dir=done.request.service_dir)
    assert reply.status == 200, reply.body
    assert json.loads(reply.body) == [2, 5, 1]  # the three images of examples/mnist/sample.json
    bad = done.target.invoke(done.record, b'{"data": [[1, 2]]}', timeout=10, service_dir=done.request.service_dir)
    assert bad.status == 400 and "data[0] has 2 values, expected 784" in json.loads(bad.body)["error"]


def test_delete_twice_then_probe_says_the_service_is_gone(deployed: Callable[..., Deployed]) -> None:
    done = deployed()
    first = done.target.delete(done.record, done.request.service_dir)
    second = done.target.delete(done.record, done.request.service_dir)
    assert first != second and isinstance(second, str)  # the second says there was nothing left to stop
    live = done.target.probe(done.record, done.request.spec)
    assert not live.healthy and live.reachable


def test_logs_are_text(deployed: Callable[..., Deployed]) -> None:
    done = deployed()
    assert isinstance(done.target.logs(done.record, done.request.service_dir, tail=20), str)


def test_key_auth_when_the_target_supports_it(deployed: Callable[..., Deployed], harness: Bound) -> None:
    if Auth.KEY not in targets.target_class(harness.name).capabilities.auth:
        pytest.skip(f"{harness.name} has no key auth")
    done = deployed(auth=True)
    assert done.record.auth
    ok = done.target.invoke(done.record, one_image(), timeout=10, service_dir=done.request.service_dir)
    assert ok.status == 200
    from pipeline import http

    assert done.record.scoring_uri is not None
    assert http.post(done.record.scoring_uri, one_image(), {}, 10).status == 401


def test_a_side_by_side_update_is_tested_alone_then_discarded_or_promoted(
    deployed: Callable[..., Deployed], harness: Bound
) -> None:
    rollout = targets.target_class(harness.name).capabilities.rollout
    if rollout is not Rollout.SIDE_BY_SIDE:
        pytest.skip(f"{harness.name} updates {rollout}: there is no new version beside the old to test alone")
    done = deployed(auth=True)
    target, folder = done.target, done.request.service_dir
    request = replace(done.request, previous=done.record)

    def answers(record: ServiceRecord) -> object:
        try:
            reply = target.invoke(record, one_image(), timeout=10, service_dir=folder)
        except OSError as exc:  # a version that was stopped may refuse the connection
            return type(exc).__name__
        return json.loads(reply.body) if reply.status == 200 else reply.status

    candidate = target.stage(request)
    assert answers(candidate) == [2, 5, 1] and answers(done.record) == [2, 5, 1]  # both, each addressed alone
    assert isinstance(target.discard(candidate, folder), str)
    assert answers(done.record) == [2, 5, 1] and answers(candidate) != [2, 5, 1]  # the live one never saw it
    promoted = target.promote(target.stage(request), request)
    assert isinstance(target.retire(done.record, request), str)
    assert answers(promoted) == [2, 5, 1]
    live = target.probe(promoted, done.request.spec)
    assert (live.healthy, live.drift) == (True, ()), live.detail


def test_probe_without_a_record_only_where_the_target_can(harness: Bound, tmp_path: Path) -> None:
    target = harness.make()
    live = target.probe(None, specs.load(harness.spec(tmp_path)))
    assert isinstance(live, Live)
    if not target.capabilities.probe_unrecorded:
        assert not live.reachable  # it cannot look a service up by name, and says so


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.skipif(netns.INSIDE, reason="the outer half: runs only outside the namespace")
def test_ray_deploys_in_a_loopback_only_network_namespace() -> None:
    """The ray harness's cases, re-run in a loopback-only network namespace where its deploys may run."""
    # (ray updates in place: the side-by-side case has nothing to test for it)
    netns.rerun_inside(__file__, "ray and not loopback_only_network_namespace and not side_by_side")


# -- a target is one module: the test-only target through the whole CLI, no other file edited ---------
def test_a_new_target_passes_validate_plan_run_status_and_delete(project: Path, run_cli, threaded_registered) -> None:
    spec = project / "specs" / "threaded.yaml"
    text = (project / "specs" / "mnist.yaml").read_text().replace("target: local", "target: threaded")
    spec.write_text(text.replace("  local: {port: 0}\n", "  threaded: {greeting: Healthy}\n"))
    assert run_cli("validate", spec).code == 0
    bad = project / "specs" / "bad.yaml"
    bad.write_text(spec.read_text().replace("greeting: Healthy", "greeting: ' '"))
    refused = run_cli("validate", bad)
    assert refused.code == 2 and "deploy.threaded.greeting: must not be blank" in refused.err
    plan = run_cli("plan", spec, "--detailed-exitcode")
    assert plan.code == 2 and "deploy    create" in plan.out
    first = run_cli("run", spec)
    assert first.code == 0, first.out + first.err
    assert "smoke     ran" in first.out and "images agree with the local model" in first.out
    assert run_cli("plan", spec, "--detailed-exitcode").code == 0
    status = run_cli("status", spec)
    assert status.code == 0 and ": live - answered" in status.out
    deleted = run_cli("delete", spec)
    assert deleted.code == 0 and "stopped the server on port" in deleted.out
    assert "nothing to delete" in run_cli("delete", spec).out
