"""State backends without a cloud: the local backend's compare-and-swap and lock, the document, URLs, choosing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline import backends
from pipeline.backends import base, portable
from pipeline.backends.azureblob import AzureBlobBackend, parse
from pipeline.backends.document import StateDocument, empty
from pipeline.backends.local import LocalBackend
from pipeline.errors import StateConflict, StateError, StateLocked, UsageError
from tests.conftest import ROOT

NAME = "sklearn-mnist-svc"


def _doc(home: Path, reports: Path | None = None, project: Path | None = None) -> StateDocument:
    return StateDocument(
        LocalBackend(home), NAME, home / NAME, reports=reports, project=project, spec_arg="specs/mnist.yaml"
    )


# -- the document: version tokens, no lost update ------------------------------------------------


def test_a_second_writer_from_the_same_version_is_refused(tmp_path: Path) -> None:
    first, second = _doc(tmp_path), _doc(tmp_path)
    base_state = first.load()
    first.save(base_state | {"history": [{"at": 1.0, "command": "seed", "stages": [], "ok": True}]})
    a, b = first.load(), second.load()  # both read the same version
    first.save(a | {"service": {"target": "local", "scoring_uri": "http://a"}})
    with pytest.raises(StateConflict, match="changed by another writer since it was read"):
        second.save(b | {"service": {"target": "local", "scoring_uri": "http://b"}})
    assert json.loads((tmp_path / NAME / "state.json").read_text())["service"]["scoring_uri"] == "http://a"
    again = second.load()  # read again, then the write goes through
    second.save(again | {"service": {"target": "local", "scoring_uri": "http://b"}})
    assert first.load()["service"]["scoring_uri"] == "http://b"


def test_two_first_writes_cannot_both_create_the_document(tmp_path: Path) -> None:
    first, second = _doc(tmp_path), _doc(tmp_path)
    first.load(), second.load()
    first.save(empty())
    with pytest.raises(StateConflict):
        second.save(empty())


def test_stage_outputs_are_machine_independent_and_the_service_record_is_kept_verbatim(tmp_path: Path) -> None:
    home, reports = tmp_path / "a" / ".pipeline", tmp_path / "a" / "reports" / NAME
    doc = _doc(home, reports, tmp_path / "a")
    data = doc.load()
    model = str(home / NAME / "models" / "m" / "1" / "model.pkl")
    service = {
        "target": "local",
        "config": str(home / NAME / "service" / "config.json"),
        "pid": 7,
        "workspace_config": str(tmp_path / "a" / "azure" / "config.json"),
        "uri": "http://127.0.0.1:1/",
    }
    data["stages"] = {
        "fetch": {"digest": "d1", "outputs": {"path": model, "other": "/opt/elsewhere/x", "n": 3}},
        "report": {"digest": "d2", "outputs": {"dir": str(reports)}},
    }
    data["service"] = service
    data["files"] = {str(tmp_path / "x"): {"sha256": "ab"}}
    doc.save(data)
    raw = json.loads((home / NAME / "state.json").read_text())
    assert raw["stages"]["fetch"]["outputs"] == {
        "path": "@state/models/m/1/model.pkl",
        "other": "/opt/elsewhere/x",
        "n": 3,
    }
    assert raw["stages"]["report"]["outputs"] == {"dir": "@reports"}
    # the live service's own files stay where that service has them; a file of the checkout is the checkout's
    assert raw["service"] == service | {"workspace_config": "@project/azure/config.json"}
    assert "files" not in raw  # the digest cache is this machine's, beside the document
    assert json.loads((home / NAME / "files.json").read_text()) == data["files"]
    # another machine (another folder) reads its own paths back
    other_home = tmp_path / "b" / ".pipeline"
    (other_home / NAME).mkdir(parents=True)
    (other_home / NAME / "state.json").write_bytes((home / NAME / "state.json").read_bytes())
    there = _doc(other_home, tmp_path / "b" / "reports" / NAME, tmp_path / "b").load()
    assert there["stages"]["fetch"]["outputs"]["path"] == str(other_home / NAME / "models" / "m" / "1" / "model.pkl")
    assert there["stages"]["report"]["outputs"]["dir"] == str(tmp_path / "b" / "reports" / NAME)
    assert there["service"] == service | {"workspace_config": str(tmp_path / "b" / "azure" / "config.json")}
    assert there["files"] == {}


def test_portable_leaves_other_strings_alone() -> None:
    roots = {"@state": Path("/h/.pipeline/x")}
    value = {"a": ["/h/.pipeline/x", "/h/.pipeline/xy/z", "@other/q", "text /h/.pipeline/x/y"], "b": 1.5}
    assert portable.relativize(value, roots) == {
        "a": ["@state", "/h/.pipeline/xy/z", "@other/q", "text /h/.pipeline/x/y"],
        "b": 1.5,
    }
    assert portable.resolve(portable.relativize(value, roots), roots) == value
    assert portable.relativize(value, roots, keep=(Path("/h/.pipeline"),)) == value


def test_a_damaged_document_is_a_clear_error_and_is_not_written_over(tmp_path: Path) -> None:
    path = tmp_path / NAME / "state.json"
    path.parent.mkdir(parents=True)
    for text in ('{"version": 1, "stages": {', '{"version": 99, "stages": {}}', "[1, 2]"):
        path.write_text(text)
        with pytest.raises(StateError, match=f"state file {path} is damaged.*nothing was written to it"):
            _doc(tmp_path).load()
        assert path.read_text() == text


def test_a_pushed_local_document_points_at_its_backend(tmp_path: Path) -> None:
    path = tmp_path / NAME / "state.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"version": 1, "moved_to": "azureblob://acct/state/ci", "stages": {}}))
    with pytest.raises(StateError, match=r"moved to azureblob://acct/state/ci by `state push`; use it with --state"):
        _doc(tmp_path).load()


# -- the local lock ------------------------------------------------------------------------------


def test_the_lock_names_its_holder_and_frees_on_release(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    held = backend.try_lock(NAME, base.Holder.me("run specs/mnist.yaml"))
    try:
        with pytest.raises(
            StateLocked,
            match=rf"locked by another run \(pid {os.getpid()}, `run specs/mnist.yaml`, "
            r"on host .+ since",
        ) as err:
            backend.try_lock(NAME, base.Holder.me("run again"))
        assert err.value.holder.pid == os.getpid()
        info = backend.inspect(NAME)
        assert info.locked and info.holder.command == "run specs/mnist.yaml"
        with pytest.raises(StateError, match=rf"held by .*stop that process \(kill {os.getpid()}\)|running process"):
            backend.force_unlock(NAME)  # a local lock is the kernel's: it cannot be broken, only its holder stopped
    finally:
        held.release()
    assert backend.inspect(NAME).to_dict() == {"locked": False, "holder": None, "detail": "not locked"}
    backend.try_lock(NAME, base.Holder.me("run later")).release()


def test_a_killed_holder_frees_the_local_lock_and_is_named_as_the_last_one(tmp_path: Path) -> None:
    code = (
        "import sys, time; from pathlib import Path; from pipeline.backends.local import LocalBackend; "
        "from pipeline.backends.base import Holder\n"
        f"LocalBackend(Path({str(tmp_path)!r})).try_lock({NAME!r}, Holder.me('run specs/mnist.yaml'))\n"
        "print('locked', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=os.environ | {"PYTHONPATH": str(ROOT)}
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        assert LocalBackend(tmp_path).inspect(NAME).locked
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    info = LocalBackend(tmp_path).inspect(NAME)
    assert not info.locked and info.holder.pid == proc.pid and "ended without releasing it" in info.detail
    LocalBackend(tmp_path).try_lock(NAME, base.Holder.me("run")).release()


def test_waiting_for_a_lock_takes_it_when_the_holder_lets_go(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    held = backend.try_lock(NAME, base.Holder.me("run specs/mnist.yaml"))
    said, naps = [], []

    def nap(seconds: float) -> None:  # the holder finishes while we wait
        naps.append(seconds)
        if len(naps) == 2:
            held.release()

    lock = base.lock(backend, NAME, base.Holder.me("run"), timeout=300, notify=said.append, sleep=nap)
    lock.release()
    assert len(naps) == 2 and len(said) == 1  # said once, not at every poll
    assert said[0].startswith(
        f"waiting up to 5m for the lock held by pid {os.getpid()}, `run specs/mnist.yaml`, on host"
    )


def test_waiting_gives_up_at_the_timeout_naming_the_holder(tmp_path: Path) -> None:
    backend = LocalBackend(tmp_path)
    held = backend.try_lock(NAME, base.Holder.me("run specs/mnist.yaml"))
    now = [0.0]

    def nap(seconds: float) -> None:
        now[0] += seconds

    try:
        with pytest.raises(StateLocked, match=r"`run specs/mnist.yaml`.*still locked after waiting 30s"):
            base.lock(backend, NAME, base.Holder.me("run"), timeout=30, sleep=nap, clock=lambda: now[0])
    finally:
        held.release()
    assert now[0] == 30


@pytest.mark.parametrize("text,seconds", [("90", 90), ("90s", 90), ("5m", 300), ("1h30m", 5400), ("0.5s", 0.5)])
def test_durations(text: str, seconds: float) -> None:
    assert base.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "m", "5m3", "-1"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        base.parse_duration(text)


def test_a_bad_lock_timeout_is_a_usage_error(run_cli, project) -> None:
    result = run_cli("run", "specs/mnist.yaml", "--lock-timeout", "soon")
    assert result.code == 2 and "'soon' is not a duration such as 30s, 5m or 1h" in result.err


# -- URLs and choosing ---------------------------------------------------------------------------


def test_azureblob_urls() -> None:
    assert parse("azureblob://devstoreaccount1/state/ci") == ("devstoreaccount1", "state", "ci", None)
    assert parse("azureblob://acct123/my-state/a/b/?lease_seconds=15") == ("acct123", "my-state", "a/b", 15)
    assert parse("azureblob://acct123/my-state") == ("acct123", "my-state", "", None)
    backend = AzureBlobBackend.from_url("azureblob://acct123/my-state/a/b?lease_seconds=20", environ={})
    assert backend.where(NAME) == f"azureblob://acct123/my-state/a/b/{NAME}.json"
    assert backend.where(NAME, ".lock") == f"azureblob://acct123/my-state/a/b/{NAME}.lock"
    assert backend.url == "azureblob://acct123/my-state/a/b?lease_seconds=20" and backend.lease_seconds == 20


@pytest.mark.parametrize(
    "url,message",
    [
        ("azureblob://AB/state/ci", "storage account 'AB' must be 3-24 lowercase letters and digits"),
        ("azureblob://acct/st/ci", "container 'st' must be 3-63"),
        ("azureblob://acct/my--state/ci", "container 'my--state' must be"),
        ("azureblob://acct/state/a//b", "the prefix must be folder names"),
        (
            "azureblob://acct/state/ci?sv=2024&sig=abc",
            "a credential; the only parameter is lease_seconds, and credentials come from the environment",
        ),
        ("azureblob://acct/state/ci?lease_seconds=5", "lease_seconds must be 15-60, got '5'"),
        ("s3://bucket/x", "is not azureblob://"),
    ],
)
def test_bad_azureblob_urls(url: str, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace("?", r"\?")):
        parse(url)


def test_choosing_a_backend_flag_over_environment_over_spec() -> None:
    spec = SimpleNamespace(backend="azureblob", url="azureblob://acct/state/spec", lease_seconds=30)
    env = {"PIPELINE_STATE": "azureblob://acct/state/env"}
    assert backends.choose(spec, "azureblob://acct/state/flag", env) == backends.Choice(
        "azureblob", "azureblob://acct/state/flag", "--state", 30
    )
    assert backends.choose(spec, None, env).source == "PIPELINE_STATE"
    assert backends.choose(spec, None, {}) == backends.Choice(
        "azureblob", "azureblob://acct/state/spec", "the spec's state block", 30
    )
    assert backends.choose(None, None, {}) == backends.Choice("local", "local", "default")
    assert backends.choose(spec, "local", env).backend == "local"  # a CI job can still pin the local folder
    with pytest.raises(UsageError, match="--state: state URL 's3://bucket/x': expected `local` or azureblob://"):
        backends.choose(None, "s3://bucket/x", {})
    with pytest.raises(UsageError, match="PIPELINE_STATE: state URL 'azureblob:/x'"):
        backends.choose(None, None, {"PIPELINE_STATE": "azureblob:/x"})


def test_a_bad_state_url_from_the_environment_is_a_usage_error_naming_it(run_cli, project, monkeypatch) -> None:
    monkeypatch.setenv("PIPELINE_STATE", "azureblob://acct/st/ci")
    result = run_cli("plan", "specs/mnist.yaml")
    assert result.code == 2 and result.err == (
        "error: PIPELINE_STATE: state URL 'azureblob://acct/st/ci': container "
        "'st' must be 3-63 lowercase letters, digits and single '-' between "
        "them (azureblob://<account>/<container>/<prefix>)\n"
    )


def test_without_the_sdk_the_backend_names_the_extra(run_cli, project, monkeypatch) -> None:
    import sys as _sys

    monkeypatch.setitem(_sys.modules, "azure.storage.blob", None)  # as if the extra were not installed
    result = run_cli("status", "specs/mnist.yaml", "--state", "azureblob://acct/state/ci")
    assert result.code == 2
    assert result.err == "error: the azureblob state backend needs azure-storage-blob: pip install '.[azureblob]'\n"


def test_credentials_come_from_the_environment_only(no_network) -> None:
    from pipeline.backends.azure_client import service_client

    pytest.importorskip("azure.storage.blob")
    with pytest.raises(StateError, match="is for storage account 'devstoreaccount1', but the state URL names 'other'"):
        service_client("other", {"AZURE_STORAGE_CONNECTION_STRING": "UseDevelopmentStorage=true"})
    with pytest.raises(StateError, match="not a storage connection string"):
        service_client("acct", {"AZURE_STORAGE_CONNECTION_STRING": "nonsense"})
    client = service_client("acct", {})  # DefaultAzureCredential: built offline, nothing sent
    assert client.url == "https://acct.blob.core.windows.net/"
    assert type(client.credential).__name__ == "DefaultAzureCredential"


def test_no_credentials_fail_at_once_without_retries_fake_credential(no_network) -> None:
    """Azure AD is out of reach: a credential that has nothing to offer stands in for DefaultAzureCredential."""
    pytest.importorskip("azure.storage.blob")
    from azure.core.exceptions import ClientAuthenticationError

    from pipeline.backends.azure_client import service_client

    class NoCredential:
        calls = 0

        def get_token(self, *scopes, **kwargs):
            NoCredential.calls += 1
            raise ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token")

        get_token_info = get_token

    client = service_client("acct", {}, credential=NoCredential())
    backend = AzureBlobBackend("acct", "state", "ci", client_factory=lambda: client)
    with pytest.raises(
        StateError,
        match=r"no Azure credentials to read azureblob://acct/state/ci/sklearn-mnist-svc"
        r".json: set AZURE_STORAGE_CONNECTION_STRING, or sign in",
    ):
        backend.read(NAME)
    assert NoCredential.calls == 1  # a missing login is not retried


def test_a_spec_state_block_is_validated(tmp_path: Path) -> None:
    from pipeline import spec as specs
    from pipeline.errors import SpecError

    text = (ROOT / "specs" / "mnist.yaml").read_text().replace("../examples/", str(ROOT / "examples") + "/")
    for block, message in [
        ("state: {backend: azureblob}\n", "state.url: required with backend azureblob"),
        ("state: {url: 'azureblob://acct/state/ci'}\n", "state.url: only used with backend azureblob"),
        ("state: {backend: azureblob, url: 'azureblob://acct/my--state/ci'}\n", "state.url: container 'my--state'"),
        (
            "state: {backend: azureblob, url: 'azureblob://acct/state/ci?sig=x'}\n",
            "state.url: 'azureblob://acct/state/ci?sig=x' is not azureblob://",
        ),
        (
            "state: {backend: azureblob, url: 'azureblob://acct/state/ci', lease_seconds: 10}\n",
            "state.lease_seconds: must be >= 15, got 10",
        ),
        ("state: {backend: s3}\n", "state.backend: 's3' is not one of ['local', 'azureblob']"),
    ]:
        path = tmp_path / "spec.yaml"
        path.write_text(text + block)
        with pytest.raises(SpecError) as err:
            specs.load(path)
        assert any(message in m for m in err.value.messages), (block, err.value.messages)
    path.write_text(text + "state: {backend: azureblob, url: 'azureblob://acct/state/ci'}\n")
    loaded = specs.load(path)
    assert (loaded.state.backend, loaded.state.url, loaded.state.lease_seconds) == (
        "azureblob",
        "azureblob://acct/state/ci",
        60,
    )
    assert specs.load(ROOT / "specs" / "mnist.yaml").state is None


# -- the commands on the local backend -----------------------------------------------------------


def test_state_show_says_where_who_and_what(project, run_cli) -> None:
    assert run_cli("run", "specs/mnist.yaml", "--to", "fetch").code == 0
    shown = run_cli("state", "show", "specs/mnist.yaml")
    where = project / ".pipeline" / NAME / "state.json"
    assert shown.code == 0, shown.err
    assert shown.out.splitlines()[0] == f"{NAME}: state in {where} (local, chosen by default)"
    assert "  lock         not locked" in shown.out and "  service      (none recorded)" in shown.out
    assert [line.split()[0] for line in shown.out.splitlines()[3:5]] == ["check", "fetch"]
    doc = json.loads(run_cli("state", "show", "specs/mnist.yaml", "--json").out)
    assert doc["backend"] == "local" and doc["where"] == str(where) and list(doc["stages"]) == ["check", "fetch"]
    assert doc["version"] == __import__("hashlib").sha256(where.read_bytes()).hexdigest()
    assert doc["history"]["runs"] == 1 and doc["history"]["last"]["command"] == "run specs/mnist.yaml"


def test_force_unlock_on_a_free_local_lock_breaks_nothing(project, run_cli) -> None:
    result = run_cli("force-unlock", "specs/mnist.yaml")
    assert (result.code, result.out) == (0, f"{NAME}: not locked in local; nothing to break\n")
    doc = json.loads(run_cli("force-unlock", "specs/mnist.yaml", "--json").out)
    assert doc == {"spec": NAME, "url": "local", "broken": False, "holder": None}


def test_state_push_needs_something_to_push_and_a_shared_backend(project, run_cli, no_network) -> None:
    nothing = run_cli("state", "push", "specs/mnist.yaml", "--to", "azureblob://acct/state/ci")
    assert nothing.code == 1 and f"nothing is recorded for {NAME} in " in nothing.err
    local = run_cli("state", "push", "specs/mnist.yaml", "--to", "local")
    assert local.code == 2 and "--to names the local backend" in local.err


@pytest.mark.parametrize("command", [("state", "show"), ("state", "push"), ("force-unlock",)])
def test_the_state_commands_refuse_an_invalid_spec(run_cli, project, command) -> None:
    extra = ("--to", "azureblob://acct/state/ci") if command == ("state", "push") else ()
    result = run_cli(*command, ROOT / "tests/data/specs/invalid/bad-target.yaml", *extra)
    assert result.code == 2 and "deploy.target: 'azur' is not one of" in result.err and "Traceback" not in result.err
