"""The one small protocol every deployment target satisfies, and the records it exchanges."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol

from pipeline.console import Console
from pipeline.spec import Spec


@dataclass(frozen=True)
class DeployRequest:
    """Everything a target needs to deploy: the spec, the rendered files and the fetched model."""

    spec: Spec
    build_dir: Path          # rendered files: score.py, myenv.yml and the target's own configs
    model_path: Path         # the fetched model file: <store>/<name>/<version>/<file>
    model_dir: Path          # <store>/<name>/<version>, what AZUREML_MODEL_DIR means in Azure
    service_dir: Path        # .pipeline/<name>/service: the target's own files (logs, keys, configs)
    previous: Mapping[str, Any] | None  # the service record of the last deploy, if any
    console: Console


@dataclass(frozen=True)
class Live:
    """What a probe of the deployed service found."""

    reachable: bool                       # False: could not ask (e.g. no network to the cloud)
    healthy: bool                         # the service answers its health route
    detail: str                           # one line for the user
    drift: tuple[str, ...] = field(default=())  # how the live service differs from its record


@dataclass(frozen=True)
class Reply:
    """One scoring answer, as the smoke test sees it."""

    status: int
    body: bytes
    seconds: float
    headers: Mapping[str, str] = field(default_factory=dict)


class Target(Protocol):
    name: str

    def extra_pip_packages(self, spec: Spec) -> list[str]:
        """pip packages the target's runtime needs in myenv.yml (e.g. Azure's inference server)."""

    def render(self, spec: Spec, env: Any, values: Mapping[str, Any]) -> dict[str, str]:
        """The target's own config files, rendered from templates; nothing is written."""

    def deploy(self, request: DeployRequest) -> dict[str, Any]:
        """Create or update the service; wait until it is ready; return its JSON-able record."""

    def probe(self, record: Mapping[str, Any], spec: Spec | None = None) -> Live:
        """Is the recorded service alive, and does it still match its record?"""

    def invoke(self, record: Mapping[str, Any], body: bytes, *, timeout: float, service_dir: Path) -> Reply:
        """POST one scoring request through the target's own path (HTTP, SDK, endpoint key)."""

    def delete(self, record: Mapping[str, Any], service_dir: Path) -> str:
        """Stop and remove the service; return one line saying what was removed."""

    def logs(self, record: Mapping[str, Any], service_dir: Path, *, tail: int) -> str:
        """The tail of the service's own log."""
