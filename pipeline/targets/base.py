"""What a deployment target is: its settings, rules, capabilities, and the records it exchanges with the stages."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pipeline.errors import StateError
from pipeline.records import Live, Reply

if TYPE_CHECKING:
    from pipeline.console import Console
    from pipeline.spec import Spec

__all__ = ["AddProblem", "Capabilities", "DeployRequest", "Live", "Reply", "Rollout", "ServiceRecord", "Target"]

# rules() reports a problem as add(field path, message); the spec loader adds the file and line.
AddProblem = Callable[[tuple[Any, ...], str], None]

# What every target stamps on the live service (tags, annotations, a file of its own), so that a runner
# with no state at all can tell what runs there: the deploy inputs' digest, the model, the spec, the tool.
STAMP_DIGEST = "pipeline-digest"
STAMP_MODEL = "pipeline-model-sha256"
STAMP_SPEC = "pipeline-spec"
STAMP_VERSION = "pipeline-version"
STAMP_KEYS = (STAMP_DIGEST, STAMP_MODEL, STAMP_SPEC, STAMP_VERSION)


class Rollout(enum.StrEnum):
    """How a target replaces a running version with a new one."""

    STOP_START = "stop-start"  # the old one stops before the new one starts: a failed start leaves nothing
    IN_PLACE = "in-place"  # the service is updated where it runs, by the platform
    SIDE_BY_SIDE = "side-by-side"  # the new one starts beside the old, which stops only after the cutover


class Auth(enum.StrEnum):
    KEY = "key"  # deploy.auth: a Bearer key generated or fetched at deploy
    TOKEN = "token"  # a short-lived token fetched for each request


@dataclass(frozen=True)
class Capabilities:
    """What the stages may expect of a target, in place of comparing its name."""

    probe_unrecorded: bool  # can find a live service by name when nothing is recorded (plan before a first deploy)
    rollout: Rollout
    auth: frozenset[Auth] = frozenset({Auth.KEY})


@dataclass(frozen=True)
class ServiceRecord:
    """The recorded service: the fields every target has, the target's own `extra`, and the deploy stage's stamp."""

    target: str
    scoring_uri: str | None
    auth: bool = False
    swagger_uri: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # target-specific, JSON-able (pid, endpoint, ...)
    # set by the deploy stage once the target has deployed
    digest: str | None = None  # of the deploy stage's inputs: what plan compares
    inputs: Mapping[str, Any] | None = None
    deployed_at: float | None = None
    model: str | None = None  # name:version
    model_sha256: str | None = None

    def stamped(self, **values: Any) -> ServiceRecord:
        return replace(self, **values)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form kept in the state file: the common fields with the target's own beside them."""
        out: dict[str, Any] = dict(self.extra)
        for f in fields(self):
            if f.name != "extra":
                value = getattr(self, f.name)
                if value is not None or f.name in ("target", "scoring_uri", "auth"):
                    out[f.name] = dict(value) if isinstance(value, Mapping) else value
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = "service record") -> ServiceRecord:
        """Read a record back, checking the types of the common fields; a damaged record is a StateError."""
        if not isinstance(data, Mapping):
            raise StateError(f"{where} is damaged: expected a mapping, found {type(data).__name__}")
        kinds: dict[str, tuple[type, ...]] = {
            "target": (str,),
            "scoring_uri": (str, type(None)),
            "auth": (bool,),
            "swagger_uri": (str, type(None)),
            "digest": (str, type(None)),
            "inputs": (dict, type(None)),
            "deployed_at": (int, float, type(None)),
            "model": (str, type(None)),
            "model_sha256": (str, type(None)),
        }
        if "target" not in data:
            raise StateError(f"{where} is damaged: it names no target")
        values: dict[str, Any] = {}
        for key, allowed in kinds.items():
            value = data.get(key, False if key == "auth" else None)
            if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
                raise StateError(f"{where} is damaged: {key} is {value!r}")
            values[key] = value
        extra = {k: v for k, v in data.items() if k not in kinds}
        return cls(extra=extra, **values)


@dataclass(frozen=True)
class DeployRequest:
    """Everything a target needs to deploy: the spec, the rendered files and the fetched model."""

    spec: Spec
    build_dir: Path  # rendered files: score.py, myenv.yml and the target's own configs
    model_path: Path  # the fetched model file: <store>/<name>/<version>/<file>
    model_dir: Path  # <store>/<name>/<version>, what AZUREML_MODEL_DIR means in Azure
    service_dir: Path  # .pipeline/<name>/service: the target's own files (logs, keys, configs)
    previous: ServiceRecord | None  # the service record of the last deploy, if any
    console: Console
    stamp: Mapping[str, str] = field(default_factory=dict)  # STAMP_* -> value: put it on the live service


class Target(Protocol):
    """One deployment target: everything the spec, the stages and the commands need to know of it."""

    name: ClassVar[str]
    summary: ClassVar[str]  # a few words for the schema's description of deploy.target
    settings_key: ClassVar[str]  # its settings block: deploy.<settings_key>
    settings_schema: ClassVar[Mapping[str, Any]]  # the JSON Schema of that block
    extra: ClassVar[str | None]  # the pip extra that installs what it needs, if any
    packages: ClassVar[Mapping[str, str]]  # distribution -> module the check stage imports
    capabilities: ClassVar[Capabilities]
    template_dir: ClassVar[Path | None]  # its templates when they are not shipped in templates/<name>/
    registry_sdk: ClassVar[str]  # which Azure ML SDK fetches a registry model for it: "v1" or "v2"

    def rules(self, data: Mapping[str, Any], add: AddProblem, *, folder: Path | None) -> None:
        """Problems the schema cannot see, for a spec that chose this target (data has the defaults).

        `folder` is the spec's folder when files may be checked, else None.
        """

    def extra_pip_packages(self, spec: Spec) -> list[str]:
        """pip packages the target's runtime needs in myenv.yml (e.g. Azure's inference server)."""

    def render(self, spec: Spec, env: Any, values: Mapping[str, Any]) -> dict[str, str]:
        """The target's own config files, rendered from templates; nothing is written."""

    def assets(self, spec: Spec) -> dict[str, Path]:
        """Files the rendered folder needs beside it to be usable on its own (file name -> source)."""

    def describe_update(self, record: ServiceRecord | None, spec: Spec) -> str:
        """How an update reaches the live service, in a few words for plan (rolling, blue/green, downtime)."""

    def deploy(self, request: DeployRequest) -> ServiceRecord:
        """Create or update the service; wait until it is ready; return its record."""

    # A side-by-side target (capabilities.rollout) also splits deploy in four, so the deploy stage can test
    # the new version alone before it takes any traffic, and keep the old one serving if it fails:
    def stage(self, request: DeployRequest) -> ServiceRecord:
        """Start the new version beside the old one, ready, addressable alone; the live service is untouched."""

    def promote(self, candidate: ServiceRecord, request: DeployRequest) -> ServiceRecord:
        """Give the tested candidate the service's traffic (the old one may still serve beside it); its record."""

    def retire(self, previous: ServiceRecord, request: DeployRequest) -> str:
        """The old version, once the new one serves: stop it without cutting a request (drain)."""

    def discard(self, candidate: ServiceRecord, service_dir: Path) -> str:
        """Stop a staged candidate that failed; the live service never saw it."""

    def probe(self, record: ServiceRecord | None, spec: Spec | None = None) -> Live:
        """Is the recorded service alive, and does it still match its record? None: look for the spec's by name.

        Either way the Live carries the service's stamp when it has one (and, with no record, `found`).
        """

    def adopt(self, live: Live, spec: Spec) -> ServiceRecord | None:
        """A record for a live service found by name that carries our stamp (a runner without state)."""

    def orphans(self, service_dir: Path) -> list[str]:
        """What still runs from the service's folder without a record (a run killed mid-deploy), one line each."""

    def stop_orphans(self, service_dir: Path) -> list[str]:
        """Stop what orphans() finds, whatever the state says (it may be damaged); one line each."""

    def invoke(self, record: ServiceRecord, body: bytes, *, timeout: float, service_dir: Path) -> Reply:
        """POST one scoring request through the target's own path (HTTP, SDK, endpoint key)."""

    def delete(self, record: ServiceRecord, service_dir: Path) -> str:
        """Stop and remove the service; return one line saying what was removed."""

    def logs(self, record: ServiceRecord, service_dir: Path, *, tail: int) -> str:
        """The tail of the service's own log."""


class BaseTarget:
    """Defaults for the optional parts of the protocol; a target overrides what it has."""

    capabilities: ClassVar[Capabilities]

    extra: ClassVar[str | None] = None
    packages: ClassVar[Mapping[str, str]] = {}
    template_dir: ClassVar[Path | None] = None
    registry_sdk: ClassVar[str] = "v1"  # azureml-core's Model(ws, name, version), as in the tutorial

    def rules(self, data: Mapping[str, Any], add: AddProblem, *, folder: Path | None) -> None:
        return None

    def extra_pip_packages(self, spec: Spec) -> list[str]:
        return []

    def assets(self, spec: Spec) -> dict[str, Path]:
        return {}

    def adopt(self, live: Live, spec: Spec) -> ServiceRecord | None:
        return None

    def orphans(self, service_dir: Path) -> list[str]:
        return []

    def stop_orphans(self, service_dir: Path) -> list[str]:
        return []

    def describe_update(self, record: ServiceRecord | None, spec: Spec) -> str:
        return {
            Rollout.STOP_START: "stop-start: the old version stops before the new one starts (downtime)",
            Rollout.IN_PLACE: "in place: the platform updates the running service",
            Rollout.SIDE_BY_SIDE: "side by side: the new version is tested alone, then takes the traffic",
        }[self.capabilities.rollout]

    def invoke(self, record: ServiceRecord, body: bytes, *, timeout: float, service_dir: Path) -> Reply:
        """A plain HTTP POST to the scoring URI, with the stored primary key when the service has key auth."""
        from pipeline import http
        from pipeline.targets import keys

        headers = {"Authorization": "Bearer " + keys.read_primary(service_dir)} if record.auth else {}
        assert record.scoring_uri is not None
        return http.post(record.scoring_uri, body, headers, timeout)
