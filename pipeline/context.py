"""What a stage sees while it plans or runs: the spec, its paths, the recorded state, the target."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pipeline import state as states
from pipeline.console import Console
from pipeline.files import sha256_path
from pipeline.spec import Spec

if TYPE_CHECKING:
    from pipeline.records import Plan, Result
    from pipeline.stages import Output
    from pipeline.targets.base import ServiceRecord, Target

OutputT = TypeVar("OutputT", bound="Output")


def plain(value: Any) -> Any:
    """Frozen spec data (mapping proxies, tuples) as plain JSON-able dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def _canonical(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)  # YAML's 1 and 1.0 are the same setting
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def digest(value: Any) -> str:
    """A canonical digest of JSON-able data: key order, whitespace, tuples vs lists, 1 vs 1.0 do not matter."""
    text = json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Context:
    spec: Spec
    paths: states.Paths
    state: dict[str, Any]
    console: Console
    clock: Callable[[], float] = time.time
    outputs: dict[str, Output] = field(default_factory=dict)  # this run's stage outputs
    plan: Plan | None = None  # the plan being executed, for the report
    results: list[Result] = field(default_factory=list)  # this run's stage results so far

    @functools.cached_property
    def target(self) -> Target:
        from pipeline import targets

        return targets.get(self.spec.deploy.target)

    @property
    def service(self) -> ServiceRecord | None:
        """The recorded service, its types checked (a damaged record is a StateError naming the file)."""
        from pipeline.targets.base import ServiceRecord

        data = self.state.get("service")
        return None if data is None else ServiceRecord.from_dict(data, f"{self.paths.state_file}: service")

    @service.setter
    def service(self, record: ServiceRecord | None) -> None:
        self.state["service"] = None if record is None else record.to_dict()

    @functools.cached_property
    def rendered(self) -> dict[str, str]:
        """The files render would write now, computed once (plan diffs them, deploy ships them)."""
        from pipeline import render

        return render.render_all(self.spec)

    def output(self, kind: type[OutputT]) -> OutputT | None:
        """A stage's outputs: from this run if it ran, else from its last recorded success, else None."""
        mine = self.outputs.get(kind.stage)
        if isinstance(mine, kind):
            return mine
        record = self.state["stages"].get(kind.stage)
        return kind.from_dict(record.get("outputs")) if isinstance(record, dict) else None

    def file_digest(self, path: Path) -> str:
        """SHA-256 of a file, cached by (size, mtime, ctime, inode), as git's index does.

        A file modified within a second of being hashed may keep its stamp (timestamp granularity),
        so such "racy" entries are never trusted and are hashed again, as git does.
        """
        st = os.stat(path)
        key = str(path)
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        cache = self.state.setdefault("files", {})
        hit = cache.get(key)
        if (
            hit
            and hit.get("stamp") == stamp
            and hit.get("hashed_ns", 0) - max(st.st_mtime_ns, st.st_ctime_ns) > 1_000_000_000
        ):
            return hit["sha256"]
        hashed_ns = time.time_ns()
        value = sha256_path(path)
        cache[key] = {"stamp": stamp, "sha256": value, "hashed_ns": hashed_ns}
        return value
