"""Tests for pipeline.models: digests before unpickling, skops type audit, fetch into the store."""

from __future__ import annotations

import collections
import hashlib
import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import ModelError
from pipeline.models import (
    AZURE_EXTRA,
    AzureMLRegistrySource,
    LocalSource,
    fetch_model,
    load_model,
    sha256_file,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_MODEL = ROOT / "examples" / "mnist" / "sklearn_mnist_model.pkl"


class Plant:
    """Unpickling this runs os.mkdir(marker): proof that a file was (or was not) unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.marker),))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_sha256_file_streams_large_files(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)  # several 1 MiB chunks and a partial one
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == sha(data)


@pytest.mark.parametrize("fmt", ["joblib", "pickle"])
def test_one_changed_byte_stops_before_unpickling(tmp_path: Path, fmt: str) -> None:
    marker = tmp_path / "unpickled"
    reviewed = pickle.dumps(Plant(marker))
    tampered = bytearray(reviewed)
    at = reviewed.index(b"unpickled")
    tampered[at] ^= 0x01  # one byte: the marker path becomes "tnpickled"
    path = tmp_path / "model.pkl"
    path.write_bytes(bytes(tampered))
    with pytest.raises(ModelError) as err:
        load_model(path, fmt, sha(reviewed))
    assert str(err.value) == (
        f"{path}: sha256 mismatch: expected {sha(reviewed)}, got {sha(bytes(tampered))}; the file was not loaded"
    )
    assert not list(tmp_path.glob("*npickled"))  # neither payload ran
    # The payload is live: with the matching pin it does run, so the check above is meaningful.
    load_model(path, fmt, sha(bytes(tampered)))
    assert (tmp_path / "tnpickled").is_dir()


@pytest.mark.parametrize("fmt", ["joblib", "pickle"])
def test_unpinned_pickle_is_refused_with_the_line_to_pin(tmp_path: Path, fmt: str) -> None:
    marker = tmp_path / "unpickled"
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle.dumps(Plant(marker)))
    with pytest.raises(ModelError) as err:
        load_model(path, fmt, None)
    message = str(err.value)
    # the words validate and fetch use too (models.pin_problem), ending with the line to paste under model:
    assert message == (
        f"{path}: refusing to load: model.sha256: not pinned: loading a {fmt} file runs code stored in it, "
        f"so review the file and pin its digest in the spec: sha256: {sha256_file(path)}"
    )
    assert "\n" not in message and not marker.exists()


def test_pinned_example_model_loads_and_predicts() -> None:
    model = load_model(EXAMPLE_MODEL, "joblib", sha256_file(EXAMPLE_MODEL))
    assert list(model.classes_) == list(range(10)) and model.coef_.shape == (10, 784)


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"not a pickle at all", "cannot load as joblib: "),
        (pickle.dumps(Plant(Path("x")))[:-5], "cannot load as joblib: "),
        (
            b"cno_such_module_x\nModel\n.",  # protocol 0: GLOBAL no_such_module_x.Model, STOP
            "ModuleNotFoundError: No module named 'no_such_module_x'",
        ),
    ],
)
def test_load_failures_become_model_errors(tmp_path: Path, payload: bytes, needle: str) -> None:
    path = tmp_path / "model.pkl"
    path.write_bytes(payload)
    with pytest.raises(ModelError) as err:
        load_model(path, "joblib", sha(payload))
    assert str(err.value).startswith(f"{path}: ") and needle in str(err.value)


def test_missing_file_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"nope.pkl: cannot read model file: No such file"):
        load_model(tmp_path / "nope.pkl", "joblib", "0" * 64)
    with pytest.raises(ModelError, match=r"unknown model format 'onnx'"):
        load_model(EXAMPLE_MODEL, "onnx", None)


@pytest.fixture(scope="module")
def skops_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import joblib
    import skops.io as sio

    model = joblib.load(EXAMPLE_MODEL)
    model.notes_ = collections.Counter("abc")  # a type skops does not trust by default
    path = tmp_path_factory.mktemp("skops") / "model.skops"
    sio.dump(model, path)
    return path


def test_skops_untrusted_type_is_refused_and_named(skops_file: Path) -> None:
    with pytest.raises(ModelError) as err:
        load_model(skops_file, "skops", None)
    assert str(err.value) == (
        f"{skops_file}: untrusted types in model: ['collections.Counter']; "
        "review them and list them in model.trusted_types"
    )


def test_skops_trusted_type_is_accepted(skops_file: Path) -> None:
    model = load_model(skops_file, "skops", sha256_file(skops_file), trusted=["collections.Counter"])
    assert model.notes_ == collections.Counter("abc") and model.coef_.shape == (10, 784)
    with pytest.raises(ModelError, match="sha256 mismatch"):
        load_model(skops_file, "skops", "0" * 64, trusted=["collections.Counter"])


def test_skops_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "model.skops"
    path.write_bytes(b"PK\x03\x04 broken zip")
    with pytest.raises(ModelError, match=r"model.skops: cannot load as skops: BadZipFile"):
        load_model(path, "skops", None)


def test_fetch_local_lands_in_azure_layout(tmp_path: Path) -> None:
    store = tmp_path / "store"
    digest = sha256_file(EXAMPLE_MODEL)
    got = fetch_model(LocalSource(EXAMPLE_MODEL), store, "sklearn_mnist", 1, digest)
    assert got == store / "sklearn_mnist" / "1" / "sklearn_mnist_model.pkl"
    assert sha256_file(got) == digest
    assert os.listdir(got.parent) == ["sklearn_mnist_model.pkl"]  # no staging left behind
    # Fetching again replaces the file in place.
    assert fetch_model(LocalSource(EXAMPLE_MODEL), store, "sklearn_mnist", 1, None) == got


def test_fetch_mismatch_leaves_nothing_behind(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    source = tmp_path / "model.pkl"
    source.write_bytes(b"model bytes")
    pinned = sha(b"model bytez")
    with pytest.raises(ModelError) as err:
        fetch_model(LocalSource(source), store, "m", 3, pinned)
    assert str(err.value) == (
        f"local file {source}: sha256 mismatch: expected {pinned}, got {sha(b'model bytes')}; the model was not stored"
    )
    assert os.listdir(store) == []
    # A version folder that already held a good file keeps it, and gains no temp files.
    fetch_model(LocalSource(source), store, "m", 3, sha(b"model bytes"))
    source.write_bytes(b"model bytez!")
    with pytest.raises(ModelError):
        fetch_model(LocalSource(source), store, "m", 3, sha(b"model bytes"))
    assert os.listdir(store / "m" / "3") == ["model.pkl"]
    assert (store / "m" / "3" / "model.pkl").read_bytes() == b"model bytes"


def test_fetch_missing_local_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"gone.pkl: model file not found"):
        fetch_model(LocalSource(tmp_path / "gone.pkl"), tmp_path / "store", "m", 1, None)
    assert not (tmp_path / "store" / "m").exists()


@pytest.mark.parametrize("mode", [0o640, 0o600, 0o444])
def test_fetch_keeps_the_source_files_permissions(tmp_path: Path, mode: int) -> None:
    source = tmp_path / "model.pkl"
    source.write_bytes(EXAMPLE_MODEL.read_bytes())
    source.chmod(mode)
    got = fetch_model(LocalSource(source), tmp_path / "store", "m", 1, sha256_file(EXAMPLE_MODEL))
    assert stat.S_IMODE(got.stat().st_mode) == mode  # a 0640 model is not made world-readable by fetching it
    assert got.read_bytes() == EXAMPLE_MODEL.read_bytes()


def test_fetch_says_what_a_source_that_is_not_a_file_is(tmp_path: Path) -> None:
    (tmp_path / "folder.pkl").mkdir()
    os.symlink("/dev/zero", tmp_path / "zero.pkl")
    os.mkfifo(tmp_path / "pipe.pkl")
    cases = {
        tmp_path / "folder.pkl": "is a directory, not a regular file",
        tmp_path / "zero.pkl": "is a symlink to /dev/zero, which is a character device, not a regular file",
        Path("/dev/null"): "is a character device, not a regular file",
        tmp_path / "pipe.pkl": "is a named pipe (FIFO), not a regular file",
    }
    for path, words in cases.items():
        with pytest.raises(ModelError) as err:  # none of them is read: /dev/zero would never end, the FIFO would block
            fetch_model(LocalSource(path), tmp_path / "store", "m", 1, None)
        assert str(err.value) == f"{path}: {words}; a model must be a regular file"
    assert not (tmp_path / "store" / "m").exists()


def test_fetch_refuses_a_path_outside_the_download_folder(tmp_path: Path) -> None:
    class Stray:
        def describe(self) -> str:
            return "stray source"

        def fetch(self, dest_dir: Path) -> Path:
            return EXAMPLE_MODEL  # a buggy source must not get its own file moved into the store

    with pytest.raises(ModelError, match=r"stray source: the model source returned .* outside"):
        fetch_model(Stray(), tmp_path / "store", "m", 1, None)
    assert EXAMPLE_MODEL.is_file() and not (tmp_path / "store" / "m").exists()


def test_importing_the_modules_loads_no_heavy_libraries() -> None:
    code = (
        "import sys, pipeline.data, pipeline.models, pipeline.evaluate; print(sorted(m for m in "
        "('numpy', 'sklearn', 'matplotlib', 'azureml', 'joblib', 'skops') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"  # `validate` stays fast


class FakeModel:
    """Stands in for azureml.core.model.Model at the network boundary: download writes a file."""

    def __init__(self, content: bytes, calls: list[tuple[str, Any]]) -> None:
        self.content, self.calls = content, calls

    def download(self, target_dir: str = ".", exist_ok: bool = False) -> str:
        self.calls.append(("download", {"target_dir": target_dir, "exist_ok": exist_ok}))
        path = Path(target_dir) / "sklearn_mnist_model.pkl"
        path.write_bytes(self.content)
        return str(path)


def test_azureml_source_fake_workspace_download(tmp_path: Path) -> None:
    calls: list[tuple[str, Any]] = []
    workspace = object()
    content = EXAMPLE_MODEL.read_bytes()

    def workspace_factory(config: Path | None) -> object:
        calls.append(("workspace", config))
        return workspace

    def model_factory(ws: object, name: str, version: int) -> FakeModel:
        calls.append(("model", (ws, name, version)))
        return FakeModel(content, calls)

    config = tmp_path / "config.json"
    source = AzureMLRegistrySource(
        "sklearn_mnist", 1, config, workspace_factory=workspace_factory, model_factory=model_factory
    )
    assert source.describe() == f"azureml registry model sklearn_mnist:1 (workspace config {config})"
    got = fetch_model(source, tmp_path / "store", "sklearn_mnist", 1, sha(content))
    assert got == tmp_path / "store" / "sklearn_mnist" / "1" / "sklearn_mnist_model.pkl"
    assert got.read_bytes() == content
    (_, cfg), (_, model_args), (_, download_kwargs) = calls
    assert cfg == config and model_args == (workspace, "sklearn_mnist", 1)
    staging = Path(download_kwargs["target_dir"])
    assert staging.parent == got.parent and download_kwargs["exist_ok"] is True
    assert not staging.exists()


def test_azureml_source_fake_workspace_errors_are_model_errors(tmp_path: Path) -> None:
    def failing_model(ws: object, name: str, version: int) -> FakeModel:
        raise RuntimeError("ModelNotFound: sklearn_mnist:7")

    source = AzureMLRegistrySource(
        "sklearn_mnist", 7, None, workspace_factory=lambda cfg: object(), model_factory=failing_model
    )
    with pytest.raises(ModelError) as err:
        fetch_model(source, tmp_path / "store", "sklearn_mnist", 7, None)
    assert str(err.value) == ("azureml registry model sklearn_mnist:7: download failed: ModelNotFound: sklearn_mnist:7")
    assert not (tmp_path / "store" / "sklearn_mnist").exists()


def test_azureml_source_without_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "azureml", None)  # makes `import azureml.core` fail
    monkeypatch.setitem(sys.modules, "azureml.core", None)
    with pytest.raises(ModelError) as err:
        AzureMLRegistrySource("sklearn_mnist", 1, None).fetch(tmp_path)
    assert str(err.value) == AZURE_EXTRA
    assert AZURE_EXTRA == "model source 'azureml' needs the azure extra: pip install '.[azure]'"
