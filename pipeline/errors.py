"""The error hierarchy: every expected failure is one of these, turned into a message by cli."""

from __future__ import annotations

from typing import Any


class PipelineError(Exception):
    """An expected failure with a message written for the user; exit code 1 unless overridden."""

    exit_code = 1

    def _render_traceback_(self) -> list[str]:
        """In Jupyter, an expected error reads as the CLI prints it: its message, not a traceback."""
        first, *rest = str(self).splitlines() or [""]
        return [f"{type(self).__name__}: {first}", *rest]


class UsageError(PipelineError):
    """Bad command-line usage or arguments: nothing ran."""

    exit_code = 2


class SpecError(PipelineError):
    """One or more problems in a spec file, each already formatted as `file:line: path: message`."""

    exit_code = 2

    def __init__(self, messages: list[str]) -> None:
        self.messages = list(messages)
        super().__init__("\n".join(self.messages))


class DataError(PipelineError):
    """A test-data file is missing, malformed, truncated or inconsistent."""


class ModelError(PipelineError):
    """A model file is missing, does not match its pinned digest, or cannot be loaded safely."""


class RenderError(PipelineError):
    """A template could not be rendered, or what it rendered is not valid."""


class StateError(PipelineError):
    """The state document is damaged, cannot be read or written, or its backend cannot be reached."""


class StateLocked(StateError):
    """Another run holds the spec's lock; `holder` (a backends.base.Holder, or None if unknown) names it."""

    def __init__(self, message: str, holder: Any = None) -> None:
        super().__init__(message)
        self.holder = holder


class StateConflict(StateError):
    """The state document changed since it was read (its ETag moved): nothing was written."""


class StageFailed(PipelineError):
    """A stage ran and failed (a gate, a deployment, a smoke test); `outputs` tell the report what it saw."""

    def __init__(self, message: str, outputs: Any = None) -> None:
        super().__init__(message)
        self.outputs = outputs  # the stage's Output record, when it got far enough to have one


class RunFailed(StageFailed):
    """A run stopped at a failed stage (the Python API's run()); `result` holds what every stage did."""

    def __init__(self, message: str, result: Any) -> None:
        super().__init__(message)
        self.result = result


class TargetError(PipelineError):
    """A deployment target failed or could not be reached."""
