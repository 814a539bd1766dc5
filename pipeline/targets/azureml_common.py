"""What the Azure ML targets share: the SDK import guard, workspace config, keys file, HTTP scoring, VM sizes."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from pipeline.errors import UsageError
from pipeline.targets.base import STAMP_DIGEST, STAMP_KEYS, AddProblem

EXTRA_V1 = "azure"
EXTRA_V2 = "azure-v2"
UNREACHABLE = "cannot reach the Azure ML workspace"
LOG_LINES = 40  # lines of the service's own log shown with a failed deployment

# Managed online endpoint VM sizes (name, vCPUs, memory GB), cheapest first: the first one with at
# least the spec's cpu_cores and memory_gb is chosen unless deploy.azureml.instance_type names one.
INSTANCE_TYPES: tuple[tuple[str, int, float], ...] = (
    ("Standard_DS1_v2", 1, 3.5),
    ("Standard_F2s_v2", 2, 4),
    ("Standard_DS2_v2", 2, 7),
    ("Standard_E2s_v3", 2, 16),
    ("Standard_F4s_v2", 4, 8),
    ("Standard_DS3_v2", 4, 14),
    ("Standard_E4s_v3", 4, 32),
    ("Standard_F8s_v2", 8, 16),
    ("Standard_DS4_v2", 8, 28),
    ("Standard_E8s_v3", 8, 64),
    ("Standard_F16s_v2", 16, 32),
    ("Standard_DS5_v2", 16, 56),
    ("Standard_E16s_v3", 16, 128),
    ("Standard_F32s_v2", 32, 64),
    ("Standard_E32s_v3", 32, 256),
    ("Standard_F48s_v2", 48, 96),
    ("Standard_E48s_v3", 48, 384),
    ("Standard_F64s_v2", 64, 128),
    ("Standard_E64s_v3", 64, 432),
)

# The environment variables azureml-core reads for a service principal (azureml.core.authentication).
SP_ENV = ("AZUREML_SERVICE_PRINCIPAL_ID", "AZUREML_SERVICE_PRINCIPAL_PASSWORD", "AZUREML_SERVICE_PRINCIPAL_TENANT_ID")


# The settings block the three Azure ML targets share: deploy.azureml.
SETTINGS_SCHEMA: dict[str, Any] = {
    "description": "Settings of the Azure ML targets (aci, aks, azureml-online).",
    "type": "object",
    "additionalProperties": False,
    "default": {},
    "properties": {
        "workspace_config": {
            "description": "Path, relative to the spec, of the workspace config.json; default: the "
            "SDK's search (./config.json, .azureml/config.json).",
            "type": "string",
            "minLength": 1,
            "maxLength": 4096,
        },
        "compute_target": {
            "description": "aks: name of the attached AKS compute target.",
            "type": "string",
            "minLength": 2,
            "maxLength": 16,
        },
        "replicas": {
            "description": "aks / azureml-online: fixed number of replicas (instances).",
            "type": "integer",
            "minimum": 1,
            "maximum": 100,
        },
        "autoscale": {
            "description": "aks: autoscaling (excludes replicas).",
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "min_replicas": {
                    "description": "Lowest replica count.",
                    "type": "integer",
                    "minimum": 1,
                    "maximum": 1000,
                    "default": 1,
                },
                "max_replicas": {
                    "description": "Highest replica count.",
                    "type": "integer",
                    "minimum": 1,
                    "maximum": 1000,
                    "default": 10,
                },
                "target_utilization": {
                    "description": "Target utilization in percent.",
                    "type": "integer",
                    "minimum": 1,
                    "maximum": 100,
                    "default": 70,
                },
            },
        },
        "token_auth": {
            "description": "aks: Azure AD token authentication (excludes deploy.auth key auth).",
            "type": "boolean",
            "default": False,
        },
        "instance_type": {
            "description": "azureml-online: VM size; default chosen from cpu_cores and memory_gb (see README).",
            "type": "string",
            "maxLength": 64,
            "pattern": "^Standard_[A-Za-z0-9_]+$",
            "errorMessage": "must be an Azure VM size such as Standard_DS3_v2",
        },
        "base_image": {
            "description": "azureml-online: base image of the environment.",
            "type": "string",
            "minLength": 1,
            "maxLength": 512,
            "default": "mcr.microsoft.com/azureml/openmpi4.1.0-ubuntu22.04:latest",
        },
    },
}
# Azure Resource Manager tags: at most 50 per resource, and these characters are rejected in names.
ARM_MAX_TAGS = 50
ARM_TAG_FORBIDDEN = "<>%&\\?/"


def check_workspace_config(data: Mapping[str, Any], add: AddProblem, folder: Path | None) -> None:
    """deploy.azureml.workspace_config must name a file, when files are checked."""
    from pipeline import rules

    workspace = data["deploy"]["azureml"].get("workspace_config")
    if workspace is not None and folder is not None:
        rules.exists(folder, workspace, add, ("deploy", "azureml", "workspace_config"))


def check_arm_tags(data: Mapping[str, Any], add: AddProblem) -> None:
    """An Azure Resource Manager resource takes at most 50 tags, without some characters in their names."""
    room = ARM_MAX_TAGS - len(STAMP_KEYS)  # deploy adds its stamp to the spec's tags
    if len(data["tags"]) > room:
        add(
            ("tags",),
            f"Azure resources allow at most {ARM_MAX_TAGS} tags and pipeline's stamp takes {len(STAMP_KEYS)}: "
            f"at most {room} remain for the spec, got {len(data['tags'])}",
        )
    for key in data["tags"]:
        bad = sorted(set(key) & set(ARM_TAG_FORBIDDEN))
        if bad:
            add(("tags", key), f"Azure rejects tag names containing {' '.join(bad)}")
    check_stamp_tags(data, add)


def check_stamp_tags(data: Mapping[str, Any], add: AddProblem) -> None:
    """The stamp's tag names are pipeline's own: a spec tag of that name would be overwritten on the service."""
    for key in data["tags"]:
        if key in STAMP_KEYS:
            add(("tags", key), f"{key} is the name of a tag deploy writes itself (pipeline's stamp): choose another")


# -- the stamp: tags on the live service that say what pipeline deployed there ---------------------------------
def stamp_of(tags: Mapping[str, Any] | None) -> dict[str, str] | None:
    """The stamp among a live service's tags, or None when it carries none (made by hand, or before stamps)."""
    tags = tags or {}
    if not tags.get(STAMP_DIGEST):
        return None
    return {key: str(tags[key]) for key in STAMP_KEYS if key in tags}


def user_tags(tags: Mapping[str, Any] | None) -> dict[str, Any]:
    """A live service's tags as the spec says them: without the stamp."""
    return {key: value for key, value in (tags or {}).items() if key not in STAMP_KEYS}


def stamped_tags(tags: Mapping[str, Any] | None, stamp: Mapping[str, str]) -> dict[str, Any]:
    """The spec's tags with the deploy's stamp beside them: what goes on the live service."""
    return {**user_tags(tags), **dict(stamp)}


def observed_tags(live_tags: Mapping[str, Any] | None, spec_tags: Mapping[str, Any]) -> dict[str, Any]:
    """tags.<name> -> the live value, and None for a tag the spec has and the service lacks (plan shows it added)."""
    live = user_tags(live_tags)
    out: dict[str, Any] = {f"tags.{key}": value for key, value in live.items()}
    out.update({f"tags.{key}": None for key in spec_tags if key not in live})
    return out


def as_spec_number(live: Any, wanted: Any) -> Any:
    """A live number in the spec's own type when they are equal (Azure answers 1.0 for the spec's 1): no false diff."""
    numbers = (int, float)
    if (
        isinstance(live, numbers)
        and isinstance(wanted, numbers)
        and not isinstance(live, bool)
        and not isinstance(wanted, bool)
        and float(live) == float(wanted)
    ):
        return wanted
    return live


def choose_instance_type(cpu_cores: float, memory_gb: float) -> str | None:
    """The cheapest VM size in INSTANCE_TYPES with enough cores and memory; None when none is big enough."""
    for name, cores, memory in INSTANCE_TYPES:
        if cores >= cpu_cores and memory >= memory_gb:
            return name
    return None


def require(module: str, target: str, extra: str) -> None:
    """Import an optional SDK or say which extra installs it."""
    try:
        __import__(module)
    except ImportError:
        raise UsageError(f"target {target!r} needs the {extra} extra: pip install '.[{extra}]'") from None


def workspace_config(settings: Mapping[str, Any], spec_folder: Path, model_source: Any = None) -> Path | None:
    """deploy.azureml.workspace_config, else the registry model's, else None (the SDK searches for config.json)."""
    if settings.get("workspace_config"):
        return (spec_folder / settings["workspace_config"]).resolve()
    return getattr(model_source, "workspace_config", None)


def recorded_config(record: Mapping[str, Any], spec: Any = None) -> Path | None:
    """The workspace config.json a deployed service was made with, else the one the spec points at."""
    if record.get("workspace_config"):
        return Path(record["workspace_config"])
    if spec is None:
        return None
    return workspace_config(spec.deploy.block("azureml"), spec.folder, spec.model.source)


def tags_drift(live_tags: Mapping[str, Any] | None, record: Mapping[str, Any]) -> list[str]:
    """The tags line of a drift report: the live service's tags (without the stamp) against the recorded ones."""
    live = user_tags(live_tags)
    if "tags" in record and live != dict(record["tags"]):
        return [f"tags: live {live}, recorded {dict(record['tags'])}"]
    return []


def credentials_problem(environ: Mapping[str, str] | None = None, home: Path | None = None) -> str | None:
    """Why azureml-core would have to prompt for a login, decided offline; None when credentials exist.

    Without any, Workspace.from_config() starts an interactive device login and blocks, which
    plan and status must never do.
    """
    environ = os.environ if environ is None else environ
    home = Path(environ.get("HOME", "~")).expanduser() if home is None else home
    if all(environ.get(name) for name in SP_ENV) or environ.get("MSI_ENDPOINT") or Path("/mnt/azmnt/.nbvm").is_file():
        return None
    profiles = [
        Path(environ.get("AZUREML_AUTH_CONFIG_DIR") or home / ".azureml" / "auth") / "azureProfile.json",
        Path(environ.get("AZURE_CONFIG_DIR") or home / ".azure") / "azureProfile.json",
    ]
    if any(_logged_in(p) for p in profiles):
        return None
    return "no Azure credentials: run `az login`, or set " + ", ".join(SP_ENV) + " for a service principal"


def _logged_in(profile: Path) -> bool:
    """`az logout` leaves azureProfile.json behind with no subscriptions: that is no login."""
    try:
        data = json.loads(profile.read_text(encoding="utf-8-sig"))  # the az CLI writes a BOM
    except (OSError, ValueError):
        return False
    return bool(isinstance(data, dict) and data.get("subscriptions"))


def reason(exc: BaseException) -> str:
    """One line for the user from an SDK exception, whose messages run to pages."""
    if type(exc).__name__ in ("ClientAuthenticationError", "CredentialUnavailableError"):
        return (
            "no usable Azure credentials (DefaultAzureCredential found none): run `az login`, "
            "or set AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET for a service principal"
        )
    if type(exc).__name__ == "ServiceRequestError":
        return f"no connection to Azure ({str(exc).splitlines()[0][:160] if str(exc) else 'network error'})"
    text = str(getattr(exc, "message", None) or exc).strip()
    if any(
        sign in text for sign in ("NameResolutionError", "Max retries exceeded", "ensure you have network connection")
    ):
        host = re.search(r"host='([^']+)'", text)
        return f"no network connection to Azure ({host.group(1) if host else 'connection failed'})"
    if "config.json" in text and ("could not be found" in text or "could not find" in text.lower()):
        return (
            "no workspace config.json found in the working folder or its parents (set deploy.azureml.workspace_config)"
        )
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0] if lines else type(exc).__name__
    return first if len(first) <= 240 else first[:237] + "..."


def is_not_found(exc: BaseException) -> bool:
    """The service or endpoint does not exist (as opposed to: could not ask)."""
    if type(exc).__name__ == "ResourceNotFoundError":  # azure-core's 404
        return True
    # azureml-core: WebserviceException("WebserviceNotFound: Webservice with name ... not found ...")
    return "WebserviceNotFound" in str(getattr(exc, "message", None) or exc)


def excerpt(exc: BaseException, lines: int = 12) -> str:
    """The first lines of an SDK error: the state, the operation id and Azure's own error message."""
    text = str(getattr(exc, "message", None) or exc).strip() or type(exc).__name__
    rows = []
    for row in (row.rstrip() for row in text.splitlines() if row.strip()):
        if row.startswith("Headers: "):
            continue  # azureml-core dumps every response header: request ids, dates, nothing for the user
        if row.startswith("Content: "):
            row = "Azure said: " + azure_error(row[len("Content: ") :])
        rows.append(row)
    return "\n".join(rows[:lines]) + ("\n..." if len(rows) > lines else "")


def azure_error(content: str) -> str:
    """Azure's error body, as azureml-core quotes it (`b'{"error": ...}'`), as `code: message` lines."""
    import ast

    text = content.strip()
    if text[:2] in ("b'", 'b"'):
        try:
            text = ast.literal_eval(text).decode("utf-8", "replace")
        except (ValueError, SyntaxError):
            pass
    try:
        body = json.loads(text)
    except ValueError:
        return text[:300]
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("message"), str):
                found.append(f"{node.get('code') or 'Error'}: {node['message']}")
            for value in node.values():
                if isinstance(value, (dict, list)):
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(body)
    return "; ".join(dict.fromkeys(found)) or text[:300]


def logs_section(read: Callable[[int], str | None], what: str) -> str:
    """The tail of the service's own log for a failure message, or why there is none."""
    try:
        text = log_tail(read(LOG_LINES), LOG_LINES)
    except Exception as exc:  # noqa: BLE001  the log is a courtesy: its absence must not hide the failure
        return f"\n(the {what} log could not be read: {reason(exc)})"
    if not text.strip():
        return f"\n(the {what} log is empty)"
    return f"\nlast {LOG_LINES} lines of the {what} log:\n" + "\n".join("  " + row for row in text.splitlines())


def log_tail(text: str | None, lines: int) -> str:
    rows = (text or "").rstrip("\n").splitlines()
    return "\n".join(rows[-lines:]) if lines > 0 else ""


SDK_LOG = "sdk.log"  # in the service folder: everything the SDKs printed while they worked for us
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class _SdkWriter(io.TextIOBase):
    """Where the SDKs' prints go: appended to the log file, the last line shown as progress on a terminal.

    Both SDKs print to stdout (azureml-core: 'Registering model ...', its polling dots; azure-ai-ml: the LRO
    poller's dots) and to stderr (tqdm upload bars, warnings); stdout belongs to the CLI (`--json` is one document).
    """

    def __init__(self, log: io.TextIOBase | None, console: Any, prefix: str) -> None:
        self.log = log
        self.console = console
        self.prefix = prefix
        self.line = ""
        self.last = "\n"

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self.log is not None:
            self.log.write(text)
        self.last = text[-1:] or self.last
        for char in _ANSI.sub("", text):
            if char in "\r\n":
                self._show()
                self.line = ""
            else:
                self.line += char
        self._show()
        return len(text)

    def _show(self) -> None:
        if self.console is not None and self.line.strip():
            self.console.progress(f"{self.prefix}: {self.line.strip()}")

    def flush(self) -> None:
        if self.log is not None:
            self.log.flush()


@contextlib.contextmanager
def sdk_output(log_path: Path | None, console: Any = None, prefix: str = "azure") -> Iterator[None]:
    """Capture what the SDKs print (stdout and stderr, warnings included) into log_path, with a header line.

    Without a log path (status and plan probe before any service folder exists) the output goes to stderr, so
    stdout still carries only the CLI's own results.
    """
    if log_path is None:
        with contextlib.redirect_stdout(sys.stderr):
            yield
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {prefix}\n")
        writer = _SdkWriter(log, console, prefix)
        try:
            with contextlib.redirect_stdout(writer), contextlib.redirect_stderr(writer):
                yield
        finally:
            if writer.last != "\n":
                log.write("\n")
            if console is not None:
                console.clear_progress()
