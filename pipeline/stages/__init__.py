"""The seven stages, in their fixed order: one class each, behind one small protocol, listed in one dict."""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

if TYPE_CHECKING:
    from pipeline.context import Context
    from pipeline.records import Change, Step

# stage name -> "module:Class", in the order the stages run; imported when first used
REGISTRY: dict[str, str] = {
    "check": "pipeline.stages.check:Check",
    "fetch": "pipeline.stages.fetch:Fetch",
    "evaluate": "pipeline.stages.evaluate:Evaluate",
    "render": "pipeline.stages.render:Render",
    "deploy": "pipeline.stages.deploy:Deploy",
    "smoke": "pipeline.stages.smoke:Smoke",
    "report": "pipeline.stages.report:Report",
}
STAGES: tuple[str, ...] = tuple(REGISTRY)

OutputT = TypeVar("OutputT", bound="Output")


@dataclass(frozen=True)
class Output:
    """What a stage that succeeded leaves for the stages after it; kept in the state as a plain dict."""

    stage: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[OutputT], data: Any) -> OutputT | None:
        """The record back from the state, or None when it is missing or not of this shape (the stage reruns)."""
        if not isinstance(data, dict):
            return None
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except TypeError:
            return None


@dataclass(frozen=True)
class Outcome:
    """What a stage that ran returns: a one-line detail, its outputs, and (when only known now) its inputs."""

    detail: str
    outputs: Output | None = None
    inputs: Any = None
    digest: str | None = None


class Stage:
    """The stage protocol, with the defaults a stage overrides only when it needs them."""

    name: ClassVar[str]
    after: ClassVar[tuple[str, ...]] = ()  # a run of any of these makes this stage run too
    always: ClassVar[bool] = False  # runs even after an earlier stage failed (the report says why)
    needs_service: ClassVar[bool] = False  # its record means nothing once the service is deleted

    def inputs(self, ctx: Context) -> Any:
        """What the stage depends on, as JSON-able data; its digest decides run or skip. None: not known yet."""
        raise NotImplementedError

    def run(self, ctx: Context, step: Step) -> Outcome:
        raise NotImplementedError

    def stale(self, ctx: Context, record: dict[str, Any]) -> str:
        """Why the last success can no longer be trusted although the inputs match (its files are gone), or ''."""
        return ""

    def live(self, ctx: Context) -> Any:
        """What a stage that changes a live service needs to know of it before planning (probes the service)."""
        return None

    def change(self, state: dict[str, Any], live: Any, inputs: Any) -> Change | None:
        """Pure: what running the stage would do to the live service; None for stages that change none."""
        return None


def get(name: str) -> Stage:
    module_name, _, class_name = REGISTRY[name].partition(":")
    cls: type[Stage] = getattr(importlib.import_module(module_name), class_name)
    return cls()


def all_stages() -> list[Stage]:
    return [get(name) for name in STAGES]
