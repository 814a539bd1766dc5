"""The azureblob backend against Azurite, the real Azure Storage emulator: ETags, leases, damage, errors."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from pipeline.backends import base
from pipeline.backends.azureblob import AzureBlobBackend
from pipeline.backends.document import StateDocument, empty
from pipeline.errors import StateConflict, StateError, StateLocked

NAME = "sklearn-mnist-svc"
SPEC = "specs/mnist.yaml"


def _backend(url: str) -> AzureBlobBackend:
    return AzureBlobBackend.from_url(url)


def _doc(url: str, tmp_path: Path, folder: str = "a") -> StateDocument:
    return StateDocument(_backend(url), NAME, tmp_path / folder / NAME, spec_arg=SPEC)


def _blob(url: str, suffix: str = ".json"):
    backend = _backend(url)
    return backend._blob(NAME, suffix)


def test_first_write_creates_the_container_and_the_blob(shared_state: str, tmp_path: Path) -> None:
    backend = _backend(shared_state)
    assert backend.read(NAME) == (None, None)
    doc = _doc(shared_state, tmp_path)
    assert doc.load() == empty() | {"files": {}}
    with doc.locked("run specs/mnist.yaml"):
        doc.save(empty() | {"history": [{"at": 1.0, "command": "run", "stages": [], "ok": True}]})
    raw, etag = backend.read(NAME)
    assert json.loads(raw)["history"][0]["command"] == "run" and etag == doc.etag
    assert _blob(shared_state).get_blob_properties().content_settings.content_type == "application/json"


def test_an_etag_conflict_loses_no_update(shared_state: str, tmp_path: Path) -> None:
    """Two writers read the same version; the second write is refused, even without the lock between them."""
    first, second = _doc(shared_state, tmp_path, "a"), _doc(shared_state, tmp_path, "b")
    with first.locked("seed"):
        first.load()
        first.save(empty())
    a, b = first.load(), second.load()
    assert first.etag == second.etag
    with first.locked("run in a"):
        first.save(a | {"service": {"target": "local", "scoring_uri": "http://a"}})
    with second.locked("run in b"), pytest.raises(StateConflict, match=f"{NAME}.json was changed by another writer"):
        second.save(b | {"service": {"target": "local", "scoring_uri": "http://b"}})
    assert json.loads(_backend(shared_state).read(NAME)[0])["service"]["scoring_uri"] == "http://a"


def test_two_first_writes_cannot_both_create_the_blob(shared_state: str, tmp_path: Path) -> None:
    first, second = _doc(shared_state, tmp_path, "a"), _doc(shared_state, tmp_path, "b")
    first.load(), second.load()
    with first.locked("a"):
        first.save(empty())
    with second.locked("b"), pytest.raises(StateConflict, match="created by another writer"):
        second.save(empty())


def test_writes_need_the_lock(shared_state: str, tmp_path: Path) -> None:
    doc = _doc(shared_state, tmp_path)
    doc.load()
    with pytest.raises(StateError, match="written only under its lock"):
        doc.save(empty())
    assert _backend(shared_state).read(NAME) == (None, None)


def test_the_lease_names_its_holder_and_is_released(shared_state: str, tmp_path: Path) -> None:
    backend = _backend(shared_state)
    lock = backend.try_lock(NAME, base.Holder.me("run specs/mnist.yaml"))
    try:
        with pytest.raises(
            StateLocked,
            match=rf"locked by another run \(pid {os.getpid()}, `run specs/mnist.yaml`, "
            rf"on host {socket.gethostname()} since .*\) in azureblob://",
        ) as err:
            _backend(shared_state).try_lock(NAME, base.Holder.me("run again"))
        assert err.value.holder.command == "run specs/mnist.yaml"
        info = backend.inspect(NAME)
        assert info.locked and info.holder.pid == os.getpid() and "a 15 s lease" in info.detail
        props = _blob(shared_state, ".lock").get_blob_properties()
        assert (props.lease.status, props.lease.state, props.lease.duration) == ("locked", "leased", "fixed")
    finally:
        lock.release()
    assert backend.inspect(NAME).to_dict() == {"locked": False, "holder": None, "detail": "not locked"}
    assert _blob(shared_state, ".lock").download_blob().readall() == b""  # a free lock names nobody
    backend.try_lock(NAME, base.Holder.me("next run")).release()


def test_the_document_suggests_force_unlock_with_the_spec(shared_state: str, tmp_path: Path) -> None:
    holder = _doc(shared_state, tmp_path, "a")
    with (
        holder.locked("run specs/mnist.yaml"),
        pytest.raises(
            StateLocked,
            match=r"its lease expires by itself, or `python -m pipeline force-unlock "
            r"specs/mnist.yaml` breaks it now",
        ),
        _doc(shared_state, tmp_path, "b").locked("run specs/mnist.yaml"),
    ):
        pass


def test_force_unlock_breaks_the_lease_and_the_old_holder_can_no_longer_write(
    shared_state: str, tmp_path: Path
) -> None:
    doc = _doc(shared_state, tmp_path)
    doc.load()
    with doc.locked("run specs/mnist.yaml"):
        doc.save(empty())
        broken = _backend(shared_state).force_unlock(NAME)
        assert broken is not None and broken.pid == os.getpid() and broken.command == "run specs/mnist.yaml"
        info = _backend(shared_state).inspect(NAME)
        assert not info.locked and "was broken" in info.detail
        with pytest.raises(
            StateError, match=r"the lock on .*sklearn-mnist-svc\.lock was lost .*nothing more is written"
        ):
            doc.save(empty() | {"history": [{"at": 2.0, "command": "late", "stages": [], "ok": True}]})
    assert json.loads(_backend(shared_state).read(NAME)[0])["history"] == []
    assert _backend(shared_state).force_unlock(NAME) is None  # nothing to break now
    _backend(shared_state).try_lock(NAME, base.Holder.me("after")).release()


@pytest.mark.slow
def test_the_lease_is_renewed_while_the_run_lasts(shared_state: str, tmp_path: Path) -> None:
    """A 15 s lease held for 20 s is still ours: the background renewal keeps it, and a write goes through."""
    doc = _doc(shared_state, tmp_path)
    doc.load()
    with doc.locked("a long run"):
        time.sleep(20)
        with pytest.raises(StateLocked):
            _backend(shared_state).try_lock(NAME, base.Holder.me("impatient"))
        doc.save(empty())
    assert _backend(shared_state).read(NAME)[0] is not None


def test_a_damaged_blob_is_a_clear_error_and_nothing_is_overwritten(shared_state: str, project, run_cli) -> None:
    doc = _doc(shared_state, project)
    with doc.locked("seed"):
        doc.save(empty())
    damaged = b'{"version": 1, "stages": {"fetch": '
    blob = _blob(shared_state)
    etag = blob.upload_blob(damaged, overwrite=True)["etag"]
    where = _backend(shared_state).where(NAME)
    for command in (("plan", SPEC), ("run", SPEC), ("status", SPEC), ("delete", SPEC), ("state", "show", SPEC)):
        result = run_cli(*command, "--state", shared_state)
        assert result.code == 1, (command, result.out, result.err)
        # delete still stops what runs from the service's folder (nothing here), and warns instead
        said = "warning" if command[0] == "delete" else "error"
        assert f"{said}: state blob {where} is damaged" in result.err and "nothing was written to it" in result.err
        assert "Traceback" not in result.err
    props = blob.get_blob_properties()
    assert props.etag == etag and blob.download_blob().readall() == damaged
    assert _backend(shared_state).inspect(NAME).locked is False  # run and delete released the lock they took


def test_cli_errors_name_the_backend(run_cli, project, azurite, monkeypatch) -> None:
    connection = azurite.connection_string
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", connection.replace("devstoreaccount1", "other1"))
    wrong = run_cli("plan", SPEC, "--state", "azureblob://devstoreaccount1/state/ci")
    assert wrong.code == 1
    assert "is for storage account 'other1', but the state URL names 'devstoreaccount1'" in wrong.err
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", connection.replace("Eby8", "Xby8"))  # a wrong key
    denied = run_cli("status", SPEC, "--state", "azureblob://devstoreaccount1/state/ci")
    assert (
        denied.code == 1
        and "not allowed to read azureblob://devstoreaccount1/state/ci/sklearn-mnist-svc.json: HTTP 403" in denied.err
    )
    bad = run_cli("plan", SPEC, "--state", "azureblob://devstoreaccount1/st/ci")
    assert bad.code == 2 and "container 'st' must be 3-63" in bad.err
    for result in (wrong, denied, bad):
        assert "Traceback" not in result.err


@pytest.mark.slow
def test_an_unreachable_backend_is_named_in_seconds(run_cli, project, azurite, monkeypatch) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(
        "AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string.replace(str(azurite.port), str(port))
    )
    result = run_cli("plan", SPEC, "--state", "azureblob://devstoreaccount1/state/ci")
    assert (
        result.code == 1
        and "cannot reach the state backend to read azureblob://devstoreaccount1/state/ci/"
        "sklearn-mnist-svc.json: [Errno 111] Connection refused"
        in result.err
    )
