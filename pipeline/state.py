"""Runtime state of one spec: its local folder <home>/<name>/ and its state document, in whichever backend holds it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import project
from pipeline.backends.document import HISTORY_LIMIT, STATE_VERSION, StateDocument, empty  # noqa: F401  (re-exported)


def home(spec_path: Path | None = None) -> Path:
    """The local state root: $PIPELINE_HOME, else .pipeline/ at the spec's project root."""
    return project.home(spec_path)


def reports_root(spec_path: Path | None = None) -> Path:
    return project.reports_root(spec_path)


@dataclass(frozen=True)
class Paths:
    """Where one spec's runtime files live (always local), and its state document (local or shared)."""

    root: Path
    document: StateDocument = field(default=None, compare=False, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.document is None:  # the local backend, in the folder above root
            from pipeline.backends.local import LocalBackend

            local = StateDocument(LocalBackend(self.root.parent), self.root.name, self.root)
            object.__setattr__(self, "document", local)

    @classmethod
    def for_name(cls, name: str, spec_path: Path | None = None) -> Paths:
        return cls(home(spec_path) / name)

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def lock_file(self) -> Path:
        return self.root / "lock"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def build(self) -> Path:
        return self.root / "build"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def service(self) -> Path:
        return self.root / "service"

    @property
    def deployed(self) -> Path:
        """A copy of the files the live service runs: plan diffs the next render against it."""
        return self.root / "deployed"


def load(paths: Paths) -> dict[str, Any]:
    """The recorded state, or an empty one; a damaged document is a clear error naming where it is."""
    return paths.document.load()


def save(paths: Paths, data: dict[str, Any]) -> None:
    """Write the whole state over the version last read: old or new after a crash, never half, never a lost update."""
    paths.document.save(data)


@contextlib.contextmanager
def locked(
    paths: Paths, command: str, *, timeout: float = 0.0, notify: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Hold the spec's lock; a second run fails at once naming the holder, or waits up to `timeout` seconds."""
    with paths.document.locked(command, timeout=timeout, notify=notify):
        yield
