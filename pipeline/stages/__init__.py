"""The seven stages, in their fixed order; each is a module with inputs(ctx) and run(ctx, step)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

STAGES = ("check", "fetch", "evaluate", "render", "deploy", "smoke", "report")


@dataclass(frozen=True)
class Outcome:
    """What a stage that ran returns: a one-line detail, its outputs, and (when only known now) its inputs."""

    detail: str
    outputs: dict[str, Any] = field(default_factory=dict)
    inputs: Any = None
    digest: str | None = None
