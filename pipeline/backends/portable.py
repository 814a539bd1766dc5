"""Stage outputs naming local files, machine-independent: `@state/models/...`, not `/home/a/.pipeline/...`.

The state document is shared between machines; the files it names (the fetched model, the build, the plots,
the report) stay on the machine that made them. Written relative to the spec's local folders and resolved
against this machine's on reading, a fresh runner finds them missing where it would keep them, and the stage
that makes them runs again (see each stage's `stale()`), instead of trusting another machine's path.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

STATE_ROOT = "@state"       # the spec's local folder, <home>/<name>
REPORTS_ROOT = "@reports"   # the spec's report folder, <reports>/<name>


def relativize(value: Any, roots: Mapping[str, Path]) -> Any:
    """Every string that is a path under one of `roots` as `<token>/<relative path>`."""
    if isinstance(value, dict):
        return {k: relativize(v, roots) for k, v in value.items()}
    if isinstance(value, list):
        return [relativize(v, roots) for v in value]
    if isinstance(value, str) and value.startswith(os.sep):
        for token, root in roots.items():
            base = str(root)
            if value == base:
                return token
            if value.startswith(base + os.sep):
                return token + "/" + Path(value[len(base) + 1:]).as_posix()
    return value


def resolve(value: Any, roots: Mapping[str, Path]) -> Any:
    """The inverse of relativize against this machine's roots; other strings (old absolute paths) unchanged."""
    if isinstance(value, dict):
        return {k: resolve(v, roots) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, roots) for v in value]
    if isinstance(value, str) and value.startswith("@"):
        token, _, rest = value.partition("/")
        if token in roots:
            return str(roots[token].joinpath(*rest.split("/"))) if rest else str(roots[token])
    return value
