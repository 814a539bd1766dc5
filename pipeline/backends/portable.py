"""Paths in the state document, machine-independent: `@state/models/...`, not `/home/a/repo/.pipeline/...`.

The state document is shared between machines, and each has its own checkout and its own local folder:
- stage outputs name local files (the fetched model, the build, the plots, the report), which stay on the
  machine that made them. Written relative to the spec's local folders and resolved against this machine's
  on reading, a fresh runner finds them missing where it would keep them, and the stage that makes them
  runs again (see each stage's `stale()`) instead of trusting another machine's path;
- the service record may name a file of the repository (the workspace config.json it was deployed with):
  written relative to the project root, each checkout reads its own copy;
- but what the service record says about the live service itself (a local service's pid, its config and
  log under the deploying machine's .pipeline/) is left as written: it is where that service is.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

STATE_ROOT = "@state"  # the spec's local folder, <home>/<name>
REPORTS_ROOT = "@reports"  # the spec's report folder, <reports>/<name>
PROJECT_ROOT = "@project"  # the checkout: the spec's project root


def relativize(value: Any, roots: Mapping[str, Path], keep: Iterable[Path] = ()) -> Any:
    """Every string that is a path under one of `roots` (the first that holds it, so list the nearest first)
    as `<token>/<relative path>`; paths under a `keep` folder stay as they are."""
    keep = tuple(keep)
    if isinstance(value, dict):
        return {k: relativize(v, roots, keep) for k, v in value.items()}
    if isinstance(value, list):
        return [relativize(v, roots, keep) for v in value]
    if isinstance(value, str) and value.startswith(os.sep) and not any(_under(value, k) for k in keep):
        for token, root in roots.items():
            base = str(root)
            if value == base:
                return token
            if _under(value, root):
                return token + "/" + Path(value[len(base) + 1 :]).as_posix()
    return value


def _under(value: str, folder: Path) -> bool:
    return value == str(folder) or value.startswith(str(folder).rstrip(os.sep) + os.sep)


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
