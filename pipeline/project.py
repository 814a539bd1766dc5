"""Where a spec's project lives: its root folder, and the local state and report folders found there."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

MARKERS = (".git", ".pipeline")  # .git may be a file (a worktree, a submodule): existence is enough


def root_of(spec_path: Path | None, cwd: Path | None = None) -> Path:
    """The project root of a spec: the nearest folder at or above the spec's folder holding .git or .pipeline.

    Without a marker above the spec, the working directory when the spec lies inside it (the first run
    creates .pipeline/ there, which later runs from anywhere then find), else the spec's own folder.
    Without a spec (old callers), the working directory.
    """
    here = (cwd or Path.cwd()).absolute()
    if spec_path is None:
        return here
    start = Path(spec_path).absolute()
    start = start if start.is_dir() else start.parent
    for folder in (start, *start.parents):
        if any((folder / marker).exists() for marker in MARKERS):
            return folder
    return here if here == start or here in start.parents else start


def home(spec_path: Path | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """The local state root: $PIPELINE_HOME, else .pipeline/ at the spec's project root (like .terraform, .dvc)."""
    env = os.environ if environ is None else environ
    if env.get("PIPELINE_HOME"):
        return Path(env["PIPELINE_HOME"]).absolute()
    return root_of(spec_path) / ".pipeline"


def reports_root(spec_path: Path | None = None, environ: Mapping[str, str] | None = None) -> Path:
    """Where reports go: $PIPELINE_REPORTS, else reports/ at the spec's project root."""
    env = os.environ if environ is None else environ
    if env.get("PIPELINE_REPORTS"):
        return Path(env["PIPELINE_REPORTS"]).absolute()
    return root_of(spec_path) / "reports"
