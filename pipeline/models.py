"""Model retrieval (local file or Azure ML registry) into a pinned store, and safe loading."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from pipeline import regular
from pipeline.errors import ModelError, PipelineError

CHUNK = 1 << 20
FORMATS = ("joblib", "pickle", "skops")
PICKLE_FORMATS = ("joblib", "pickle")  # loading them runs code stored in the file: never without a pin
AZURE_EXTRA = "model source 'azureml' needs the azure extra: pip install '.[azure]'"
AZURE_V2_EXTRA = "model source 'azureml' for target azureml-online needs the azure-v2 extra: pip install '.[azure-v2]'"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks so a large model never sits in memory twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def source_packages(spec: Any) -> dict[str, tuple[str, str | None]]:
    """What loading the spec's model needs beyond the core: distribution -> (module, extra that installs it)."""
    from pipeline.spec import RegistrySource

    needed: dict[str, tuple[str, str | None]] = {}
    if spec.model.format == "skops":
        needed["skops"] = ("skops", "skops")
    if isinstance(spec.model.source, RegistrySource):
        from pipeline import targets

        if targets.target_class(spec.deploy.target).registry_sdk == "v2":
            needed["azure-ai-ml"] = ("azure.ai.ml", "azure-v2")
        else:
            needed["azureml-core"] = ("azureml.core", "azure")
    return needed


class ModelSource(Protocol):
    """Where a model comes from: one file, put into a folder on request."""

    def describe(self) -> str:
        """A short human description for plans and reports."""
        ...

    def fetch(self, dest_dir: Path) -> Path:
        """Put the model file into dest_dir and return its path there."""
        ...


class LocalSource:
    """A model file on this machine (the spec's `model.source: path`)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def describe(self) -> str:
        return f"local file {self.path}"

    def fetch(self, dest_dir: Path) -> Path:
        dest = Path(dest_dir) / self.path.name
        try:
            fd, st = regular.open_regular(self.path)
        except FileNotFoundError:
            raise ModelError(f"{self.path}: model file not found") from None
        except OSError as exc:  # a directory or a device says so, rather than "not found"
            raise ModelError(
                f"{self.path}: {regular.problem(self.path) or exc.strerror}; a model must be a regular file"
            ) from None
        try:
            with os.fdopen(fd, "rb") as src, open(dest, "xb") as out:
                shutil.copyfileobj(src, out, CHUNK)
                os.fchmod(
                    out.fileno(), stat.S_IMODE(st.st_mode)
                )  # 0640 stays 0640: the store is no wider than the source
        except OSError as exc:
            raise ModelError(f"{self.path}: cannot copy model file: {exc.strerror or exc}") from None
        return dest


WorkspaceFactory = Callable[[Path | None], Any]
ModelFactory = Callable[[Any, str, int], Any]


def _default_workspace(config: Path | None) -> Any:
    """The deploy targets' Workspace.from_config(): the same credentials check, never an interactive login."""
    from pipeline.targets.azureml_v1_api import default_workspace

    return default_workspace(config)


def _default_model(ws: Any, name: str, version: int) -> Any:
    from azureml.core.model import Model

    return Model(ws, name=name, version=version)


def _download_v2(config: Path | None, name: str, version: int, dest_dir: Path) -> Path:
    """azure-ai-ml's models.download(): the model's files under dest_dir/<name>/, as the workspace stores them."""
    from pipeline.targets.azureml_online import default_client

    client = default_client(config)
    client.models.download(name=name, version=str(version), download_path=str(dest_dir))
    return dest_dir / name


class AzureMLRegistrySource:
    """A model registered in an Azure ML workspace: the tutorial's Model(ws, name), or azure-ai-ml's models.download."""

    def __init__(
        self,
        name: str,
        version: int,
        workspace_config: Path | None = None,
        workspace_factory: WorkspaceFactory | None = None,
        model_factory: ModelFactory | None = None,
        sdk: str = "v1",
    ) -> None:
        self.name = name
        self.version = version
        self.sdk = sdk  # "v1": azureml-core (aci, aks, local); "v2": azure-ai-ml, so azureml-online needs no v1 SDK
        self.workspace_config = Path(workspace_config) if workspace_config else None
        # Both factories are the network boundary: Workspace.from_config authenticates and
        # Model(...) queries the registry in its constructor, so tests hand in fakes here.
        self.workspace_factory = workspace_factory
        self.model_factory = model_factory

    def describe(self) -> str:
        where = f" (workspace config {self.workspace_config})" if self.workspace_config else ""
        return f"azureml registry model {self.name}:{self.version}{where}"

    def fetch(self, dest_dir: Path) -> Path:
        from pipeline.targets import azureml_common as common

        try:
            with common.sdk_output(None):  # the SDKs' prints and prompts never reach stdout
                got = Path(self._download(Path(dest_dir)))
        except ModelError:
            raise
        except PipelineError as exc:  # no credentials, no config.json, the SDK not installed
            raise ModelError(f"{self.describe()}: {exc}") from None
        except Exception as exc:  # noqa: BLE001  the SDK raises many unrelated types; say where
            raise ModelError(f"{self.describe()}: download failed: {common.reason(exc)}") from None
        if got.is_dir():  # a model registered from a folder: accept it only if it holds one file
            files = [p for p in got.rglob("*") if p.is_file()]
            if len(files) != 1:
                raise ModelError(
                    f"{self.describe()}: expected one model file, the registry "
                    f"holds {len(files)}: {sorted(p.name for p in files)[:5]}"
                )
            got = files[0]
        return got

    def _download(self, dest_dir: Path) -> Any:
        if self.sdk == "v2" and self.workspace_factory is None:
            try:
                import azure.ai.ml  # noqa: F401  (only to give the install hint early)
            except ImportError:
                raise ModelError(AZURE_V2_EXTRA) from None
            return _download_v2(self.workspace_config, self.name, self.version, dest_dir)
        workspace_factory = self.workspace_factory or _default_workspace
        model_factory = self.model_factory or _default_model
        if self.workspace_factory is None or self.model_factory is None:
            try:
                import azureml.core  # noqa: F401  (only to give the install hint early)
            except ImportError:
                raise ModelError(AZURE_EXTRA) from None
        ws = workspace_factory(self.workspace_config)
        return model_factory(ws, self.name, self.version).download(target_dir=str(dest_dir), exist_ok=True)


def fetch_model(source: ModelSource, store: Path, name: str, version: int, sha256: str | None) -> Path:
    """Fetch the model into store/<name>/<version>/<file>, verified and renamed atomically.

    The layout is Azure's azureml-models/<name>/<version>/<file>: for a deployment with one
    model Azure sets AZUREML_MODEL_DIR to azureml-models/<name>/<version>, so the tutorial's
    score.py (os.path.join(AZUREML_MODEL_DIR, 'sklearn_mnist_model.pkl')) works unchanged
    when AZUREML_MODEL_DIR is store/<name>/<version>.
    """
    final_dir = Path(store) / name / str(version)
    created = not final_dir.exists()
    final_dir.mkdir(parents=True, exist_ok=True)
    # Staging inside the final folder keeps the last step a same-filesystem os.replace.
    staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=final_dir))
    try:
        fetched = Path(source.fetch(staging))
        if staging.resolve() not in fetched.resolve().parents:  # never move the source itself
            raise ModelError(
                f"{source.describe()}: the model source returned {fetched}, outside its download folder {staging}"
            )
        _fsync(fetched)  # the bytes reach the disk before the final name can point at them
        actual = sha256_file(fetched)  # the copied bytes, not the source: what will be loaded
        if sha256 is not None and actual != sha256.lower():
            raise ModelError(
                f"{source.describe()}: sha256 mismatch: expected {sha256}, got {actual}; the model was not stored"
            )
        dest = final_dir / fetched.name
        os.replace(fetched, dest)
        _fsync(final_dir)  # and the rename itself survives a crash
        return dest
    except BaseException:
        if created:
            shutil.rmtree(final_dir, ignore_errors=True)
            _remove_empty_parents(final_dir.parent, stop=Path(store))
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _fsync(path: Path) -> None:
    """fsync a file or a folder; a read-only descriptor is enough on Linux and macOS."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_empty_parents(path: Path, stop: Path) -> None:
    """Remove store/<name> if this fetch created it and left it empty."""
    while path != stop and path.is_dir() and not any(path.iterdir()):
        path.rmdir()
        path = path.parent


def pin_problem(format: str, sha256: str | None, actual: str | None) -> str | None:
    """The one pin rule, in the words validate, fetch and load all use: a pickle-based model needs model.sha256.

    `actual` is the file's digest when it is known (it ends the message as the line to paste into the spec).
    """
    if sha256 is not None or format not in PICKLE_FORMATS:
        return None
    detail = f": sha256: {actual}" if actual else ""
    return (
        f"not pinned: loading a {format} file runs code stored in it, so review the file and pin its digest "
        f"in the spec{detail}"
    )


def load_model(path: Path, format: str, sha256: str | None, trusted: list[str] | None = None) -> Any:
    """Load a model file after checking its pinned digest (joblib/pickle) or its types (skops)."""
    path = Path(path)
    if format not in FORMATS:
        raise ModelError(f"{path}: unknown model format {format!r}; expected one of {list(FORMATS)}")
    try:
        # Read once and load from memory: the bytes that are hashed are the bytes unpickled,
        # so a file swapped between the check and the load cannot slip through (nor a FIFO or a device).
        fd, _ = regular.open_regular(path)
        with os.fdopen(fd, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read model file: {exc.strerror or exc}") from None
    actual = hashlib.sha256(data).hexdigest()
    if sha256 is not None and actual != sha256.lower():
        raise ModelError(f"{path}: sha256 mismatch: expected {sha256}, got {actual}; the file was not loaded")
    if format == "skops":
        return _load_skops(path, data, trusted or [])
    unpinned = pin_problem(format, sha256, actual)
    if unpinned:
        raise ModelError(f"{path}: refusing to load: model.sha256: {unpinned}")
    try:
        if format == "joblib":
            import joblib

            return joblib.load(io.BytesIO(data))
        import pickle

        return pickle.loads(data)
    except Exception as exc:
        raise ModelError(f"{path}: cannot load as {format}: {type(exc).__name__}: {exc}") from exc


def _load_skops(path: Path, data: bytes, trusted: list[str]) -> Any:
    try:
        import skops.io as sio
    except ImportError:
        raise ModelError(f"{path}: model format 'skops' needs the skops package: pip install skops") from None
    try:
        untrusted = [t for t in sio.get_untrusted_types(data=data) if t not in trusted]
        if untrusted:
            raise ModelError(
                f"{path}: untrusted types in model: {untrusted}; review them and list them in model.trusted_types"
            )
        return sio.loads(data, trusted=trusted)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{path}: cannot load as skops: {type(exc).__name__}: {exc}") from exc
