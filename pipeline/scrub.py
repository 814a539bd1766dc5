"""Text without the machine that wrote it: paths relative to the repository, no loopback addresses, no pids.

A report is read on a pull request, by people on other machines: `/home/ci/work/repo/.pipeline/x/build`
means nothing there, `.pipeline/x/build` does. The spec's project root, its local state folder and its
report folder are written relative to the repository; any other absolute path keeps only its last part.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# a loopback URL names a port on the machine that wrote it: say which service it is, and keep the route
LOOPBACK = re.compile(
    r"https?://(?:127(?:\.\d{1,3}){3}|localhost|\[::1\]|0\.0\.0\.0)(?::\d+)?(?P<route>/[^\s'\"`|,;)\]]*)?"
)
PIDS = re.compile(r"\s*\(pids? \d+(?:, \d+)*\)")
PID = re.compile(r"\b(pids?|process(?:es)?|process group) \d+(?:, \d+)*")
# an absolute path of two or more parts that no root above explained (a temporary file, a system folder)
ABSOLUTE = re.compile(r"(?<![\w.~:/@-])/(?:[^\s/'\"`|(),;<>\]]+/)+[^\s/'\"`|(),;<>\]:]*")


def _local(match: re.Match[str]) -> str:
    route = match.group("route")
    return f"the local service ({route})" if route and route != "/" else "the local service"


class Scrubber:
    """Rewrites text written on this machine for readers on any other."""

    def __init__(self, project: Path, folders: Iterable[tuple[Path, str]] = ()) -> None:
        """`project`: the repository root (paths under it become relative); `folders`: other roots and their names."""
        roots: list[tuple[str, str]] = []
        for folder, shown in [*folders, (project, "")]:
            for form in {str(folder), str(Path(folder).resolve())}:
                roots.append((form.rstrip(os.sep), shown))
        self.roots = sorted(roots, key=lambda r: len(r[0]), reverse=True)  # the deepest root first
        self.project = Path(project)

    def _path(self, text: str) -> str:
        for root, shown in self.roots:
            if text == root:
                return shown or "."
            if text.startswith(root + os.sep):
                rest = Path(text[len(root) + 1 :]).as_posix()
                return f"{shown}/{rest}" if shown else rest
        return text

    def text(self, text: str) -> str:
        text = LOOPBACK.sub(_local, text)
        text = PIDS.sub("", text)
        text = PID.sub(lambda m: m.group(1), text)
        for root, _ in self.roots:  # known roots, wherever they stand in the text
            text = re.sub(
                re.escape(root) + r"(?=[/\s'\"`),;:|\]]|$)(/[^\s'\"`|,;)\]]*)?", lambda m: self._path(m.group(0)), text
            )
        return ABSOLUTE.sub(lambda m: "…/" + m.group(0).rstrip("/").rsplit("/", 1)[-1], text)

    def data(self, value: Any) -> Any:
        """Every string in JSON-able data, scrubbed."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {k: self.data(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.data(v) for v in value]
        return value


def for_spec(spec_path: Path) -> Scrubber:
    """The scrubber of a spec's report: its project root, and the state and report folders wherever they are."""
    from pipeline import project

    root = project.root_of(spec_path)
    folders = []
    for folder, variable in (
        (project.home(spec_path), "$PIPELINE_HOME"),
        (project.reports_root(spec_path), "$PIPELINE_REPORTS"),
    ):
        try:
            folders.append((folder, folder.resolve().relative_to(root.resolve()).as_posix()))
        except ValueError:  # outside the repository: named by the variable that put it there
            folders.append((folder, variable))
    return Scrubber(root, folders)
