"""ServeConfig: the one JSON file that tells the scoring host what to serve and how."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any

from pipeline.errors import UsageError

# Azure caps a request body at about 100 MB on ACI; the same cap here means a body that
# fails in the cloud fails locally first (and the memory limit catches what it costs to parse).
DEFAULT_MAX_BODY_BYTES = 100 * 1024 * 1024
# Azure ML's own default scoring timeout (SCORING_TIMEOUT_MS).
DEFAULT_REQUEST_TIMEOUT_MS = 60_000
# What a client gets to send its request line and headers, its body, and how long an idle keep-alive
# connection stays open (seconds); the spec's deploy.local block sets them for a deployed service.
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_BODY_TIMEOUT_S = 30.0
DEFAULT_KEEP_ALIVE_S = 5.0
# Open connections per worker; past it the oldest idle one is closed, or the new one refused with 503.
DEFAULT_MAX_CONNECTIONS = 1024
DEFAULT_ACCESS_LOG_MAX_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class ServeConfig:
    """What one scoring service runs; every path is used as given (make it absolute)."""

    entry_script: str  # the score.py: init(), run(raw_data), optionally parse_rows()/predict_rows()
    model_dir: str  # exported as AZUREML_MODEL_DIR before score.py is imported
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port, picked once and held for the life of the service
    workers: int = 1  # worker processes, one per core; each runs init() once
    app_root: str | None = None  # on sys.path and AML_APP_ROOT; default: entry_script's folder
    # A hard limit over the whole service's RSS (supervisor + workers + their children), as a
    # container's limit is; when passed, the biggest worker is SIGKILLed and replaced.
    memory_limit_mb: int | None = None
    # run(): its execution time (like Azure's); batching: arrival to answer; over it -> 504.
    request_timeout_ms: int = DEFAULT_REQUEST_TIMEOUT_MS
    # Larger bodies -> 413. With memory_limit_mb, each worker lowers it to what its share of the limit can
    # parse (pipeline.serve.budget): the largest accepted body must not push the service over its limit.
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S  # from a connection's start or a request's first byte
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S  # from the end of the headers to the end of the body
    keep_alive_s: float = DEFAULT_KEEP_ALIVE_S  # an idle connection between two requests
    max_connections: int = DEFAULT_MAX_CONNECTIONS  # per worker
    access_log: str | None = None  # one line per request, appended by every worker; rotated by size
    access_log_max_bytes: int = DEFAULT_ACCESS_LOG_MAX_BYTES  # then access.log -> access.log.1 (3 kept)
    keys_file: str | None = None  # JSON {"primary": ..., "secondary": ...}: Bearer auth on /score and /swagger.json
    swagger: dict[str, Any] | None = None  # served at GET /swagger.json; null -> 404
    ready_file: str | None = None  # written once every worker is serving; removed on a clean stop
    events_file: str | None = None  # default: next to ready_file as <name>.events.json
    service_name: str = "scoring-service"
    # Numbers per row, when known (the spec's scoring.features): lets the host answer 400, not 500,
    # when a score.py without parse_rows (the tutorial's) raises on rows of the wrong length.
    features: int | None = None
    # A rolling update: the workers first serve on a private staging port of their own, so the new
    # version can be tested alone, and join `port` only when told (SIGUSR1 to the supervisor).
    staged: bool = False
    # `port` is held by the version this one replaces: share it (SO_REUSEPORT) instead of claiming it.
    join: bool = False

    def __post_init__(self) -> None:
        problems = list(_problems(self))
        if problems:
            raise UsageError("invalid scoring-service config: " + "; ".join(problems))

    @property
    def resolved_app_root(self) -> str:
        """The directory put on sys.path and exported as AML_APP_ROOT."""
        return self.app_root or os.path.dirname(os.path.abspath(self.entry_script))

    @property
    def resolved_events_file(self) -> str | None:
        """Where counted events go: explicit, else `<ready_file minus .json>.events.json`."""
        if self.events_file:
            return self.events_file
        if not self.ready_file:
            return None
        stem = self.ready_file[:-5] if self.ready_file.endswith(".json") else self.ready_file
        return stem + ".events.json"

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> ServeConfig:
        if not isinstance(data, dict):
            raise UsageError(f"{source}: expected a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"{source}: unknown keys {unknown}; expected some of {sorted(known)}")
        missing = [name for name in ("entry_script", "model_dir") if name not in data]
        if missing:
            raise UsageError(f"{source}: missing required keys {missing}")
        return cls(**data)

    @classmethod
    def from_json(cls, path: str) -> ServeConfig:
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except OSError as exc:
            raise UsageError(f"cannot read scoring-service config {path}: {exc.strerror}") from None
        except ValueError as exc:
            raise UsageError(f"{path}: not valid JSON: {exc}") from None
        return cls.from_dict(data, source=path)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"


def _problems(config: ServeConfig) -> list[str]:
    """Every problem at once, so a bad config is fixed in one round."""
    found: list[str] = []

    def is_int(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    for name in ("entry_script", "model_dir", "host", "service_name"):
        if not isinstance(getattr(config, name), str) or not getattr(config, name):
            found.append(f"{name} must be a non-empty string")
    for name in ("app_root", "keys_file", "ready_file", "events_file", "access_log"):
        value = getattr(config, name)
        if value is not None and (not isinstance(value, str) or not value):
            found.append(f"{name} must be a non-empty string or null")
    if not is_int(config.port) or not 0 <= config.port <= 65535:
        found.append("port must be an integer from 0 to 65535 (0 = any free port)")
    if not is_int(config.workers) or config.workers < 1:
        found.append("workers must be an integer >= 1")
    if config.memory_limit_mb is not None and (not is_int(config.memory_limit_mb) or config.memory_limit_mb < 1):
        found.append("memory_limit_mb must be an integer >= 1 or null")
    if config.features is not None and (not is_int(config.features) or config.features < 1):
        found.append("features must be an integer >= 1 or null")
    if not is_int(config.request_timeout_ms) or config.request_timeout_ms < 1:
        found.append("request_timeout_ms must be an integer >= 1")
    if not is_int(config.max_body_bytes) or config.max_body_bytes < 1:
        found.append("max_body_bytes must be an integer >= 1")
    for name in ("header_timeout_s", "body_timeout_s", "keep_alive_s"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 3600:
            found.append(f"{name} must be a number of seconds above 0, at most 3600")
    if not is_int(config.max_connections) or not 1 <= config.max_connections <= 1_000_000:
        found.append("max_connections must be an integer from 1 to 1000000")
    if not is_int(config.access_log_max_bytes) or config.access_log_max_bytes < 1024:
        found.append("access_log_max_bytes must be an integer >= 1024")
    for name in ("staged", "join"):
        if not isinstance(getattr(config, name), bool):
            found.append(f"{name} must be true or false")
    if config.join and not config.port:
        found.append("join needs the port of the service to join")
    if config.swagger is not None and not isinstance(config.swagger, dict):
        found.append("swagger must be a JSON object or null")
    return found
