"""The pipeline's records: what plan decides (Step, Change, Plan), what a run did (Result), what a service said
(Live, Reply)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class StepAction(enum.StrEnum):
    """What plan decided for a stage."""

    RUN = "run"
    SKIP = "skip"
    NOT_SELECTED = "not selected"


class Status(enum.StrEnum):
    """What happened to a stage in a run."""

    RAN = "ran"
    SKIPPED = "skipped"
    FAILED = "failed"
    NOT_RUN = "not run"


class DeployAction(enum.StrEnum):
    """What deploy does to the service."""

    CREATE = "create"
    UPDATE = "update"
    REPLACE = "replace"
    ADOPT = "adopt"  # a service of that name exists, made by hand (no stamp): deploy takes it over
    NOOP = "no-op"


# One colour per word, wherever a command prints it (plan, run, status).
COLOURS: dict[str, str] = {
    StepAction.RUN: "yellow",
    StepAction.SKIP: "dim",
    StepAction.NOT_SELECTED: "dim",
    Status.RAN: "green",
    Status.SKIPPED: "dim",
    Status.FAILED: "red",
    Status.NOT_RUN: "dim",
    "live": "green",
    "drifted": "yellow",
    "down": "red",
    "unknown": "yellow",
    "orphaned": "red",
}


@dataclass(frozen=True)
class Live:
    """What a probe of the deployed service found."""

    reachable: bool  # False: could not ask (e.g. no network to the cloud)
    healthy: bool  # the service answers its health route
    detail: str  # one line for the user
    drift: tuple[str, ...] = field(default=())  # how the live service differs from its record
    refusal: str | None = None  # the platform already refused what deploy would send (a server-side dry run)
    # What the service itself says, for a runner with no record of it (a fresh CI machine):
    found: bool | None = None  # a service of the spec's name exists (None: not asked, or could not tell)
    stamp: Mapping[str, str] | None = None  # what deploy stamped on it (STAMP_* keys), if it carries a stamp
    observed: Mapping[str, Any] = field(default_factory=dict)  # flat field -> live value, for plan's diff

    @property
    def state(self) -> str:
        """One word for status: live, drifted, down or unknown."""
        if not self.reachable:
            return "unknown"
        if not self.healthy:
            return "down"
        return "drifted" if self.drift else "live"


@dataclass(frozen=True)
class Reply:
    """One scoring answer, as the smoke test sees it."""

    status: int
    body: bytes
    seconds: float
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Change:
    """For a stage that changes a live service: the action, and the field-level and file-level differences."""

    action: DeployAction
    live: str  # one line from the probe
    fields: tuple[tuple[str, Any, Any], ...] = ()  # (path, old, new); old/new None = added/removed
    files: tuple[tuple[str, str], ...] = ()  # (file name, unified diff)
    drift: tuple[str, ...] = ()
    checked: bool = True  # False: the live service could not be asked, so the action is the record's guess
    rollout: str = ""  # for an update: how it reaches the live service (rolling, blue/green, downtime)
    refusal: str | None = None  # the platform refused it in a dry run: the stage is known to fail
    adopted: Mapping[str, Any] | None = None  # a record made from the live service's stamp, to keep on run


@dataclass(frozen=True)
class Step:
    stage: str
    action: StepAction
    reason: str
    digest: str | None
    inputs: Any = None
    change: Change | None = None
    error: str | None = None  # the stage is already known to fail, and why
    rebuild: bool = False  # runs only to make again local files missing here (a fresh runner): nothing changes
    # the stage's record in the state the plan compared with (its inputs and outputs at its last success), so a
    # report written after the run can still say what changed: by then the run has replaced the record
    recorded: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    @property
    def label(self) -> str:
        """The word plan shows: the deploy action for a stage that changes the service, else the step's action."""
        if self.rebuild:
            return "rebuild"
        if self.change is not None and self.action is StepAction.RUN:
            return "redeploy" if self.change.action is DeployAction.NOOP else str(self.change.action)
        if self.change is not None and self.action is StepAction.SKIP and self.change.action is DeployAction.NOOP:
            return "no-op"
        return str(self.action)


@dataclass(frozen=True)
class Plan:
    spec_name: str
    steps: tuple[Step, ...]

    @property
    def changes(self) -> bool:
        """True when run would change anything (for --detailed-exitcode); rebuilding local files is no change."""
        return any(s.action is StepAction.RUN and not s.rebuild for s in self.steps)

    @property
    def failures(self) -> list[str]:
        """Stages already known to fail: plan cannot be applied as it stands."""
        return [f"{s.stage}: {s.reason}" for s in self.steps if s.action is StepAction.RUN and s.error is not None]

    def to_dict(self) -> dict[str, Any]:
        out = []
        for s in self.steps:
            item: dict[str, Any] = {"stage": s.stage, "action": str(s.action), "reason": s.reason, "rebuild": s.rebuild}
            if s.change:
                item["deploy"] = {
                    "action": str(s.change.action),
                    "live": s.change.live,
                    "rollout": s.change.rollout,
                    "drift": list(s.change.drift),
                    "fields": [{"path": p, "old": o, "new": n} for p, o, n in s.change.fields],
                    "files": dict(s.change.files),
                }
            out.append(item)
        return {"spec": self.spec_name, "changes": self.changes, "steps": out}

    def _repr_markdown_(self) -> str:
        """Jupyter shows a Plan as the CLI prints it, as Markdown (see pipeline.planview)."""
        from pipeline import planview

        return planview.markdown(self)

    def _repr_html_(self) -> str:
        from pipeline import planview

        return planview.html(self)


@dataclass(frozen=True)
class Result:
    stage: str
    status: Status
    seconds: float
    detail: str
    outputs: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "status": str(self.status),
            "seconds": round(self.seconds, 3),
            "detail": self.detail,
        }


@dataclass
class Facts:
    """Everything plan() needs that touches the world, gathered once: per-stage input digests and live probes."""

    inputs: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    stale: dict[str, str] = field(default_factory=dict)
    live: dict[str, Any] = field(default_factory=dict)  # per stage that changes a service: what its probe saw
