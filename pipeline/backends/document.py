"""One spec's state document in its backend: loaded with its version token, saved only over that version, locked."""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pipeline.backends import base, portable
from pipeline.errors import StateError, StateLocked
from pipeline.files import atomic_write

STATE_VERSION = 1
HISTORY_LIMIT = 100
CACHE_FILE = "files.json"  # the file-digest cache: keyed by this machine's paths and inodes, so never shared


def empty() -> dict[str, Any]:
    return {"version": STATE_VERSION, "stages": {}, "service": None, "history": []}


def is_empty(data: dict[str, Any]) -> bool:
    return not data.get("stages") and not data.get("service") and not data.get("history")


class StateDocument:
    """The state of spec `name`: JSON in `backend`; the local files it names live under `root` (and `reports`)."""

    def __init__(
        self,
        backend: base.Backend,
        name: str,
        root: Path,
        *,
        reports: Path | None = None,
        project: Path | None = None,
        spec_arg: str = "SPEC",
    ) -> None:
        self.backend = backend
        self.name = name
        self.root = root
        # nearest first: the spec's local folder and its reports lie inside the project, usually
        self.roots = {
            portable.STATE_ROOT: root,
            **({portable.REPORTS_ROOT: reports} if reports else {}),
            **({portable.PROJECT_ROOT: project} if project else {}),
        }
        self.project = {portable.PROJECT_ROOT: project} if project else {}
        self.spec_arg = spec_arg  # how the user named the spec, for the commands a message suggests
        self.etag: str | None = None
        self.lock: base.Lock | None = None

    @property
    def where(self) -> str:
        return self.backend.where(self.name)

    @property
    def noun(self) -> str:
        return "state file" if self.backend.scheme == "local" else "state blob"

    # -- read ------------------------------------------------------------------------------------
    def load(self) -> dict[str, Any]:
        """The recorded state, or an empty one; remembers its version for the next save."""
        raw, etag = self.backend.read(self.name)
        self.etag = etag
        data = empty() if raw is None else self.parse(raw)
        data["stages"] = portable.resolve(data["stages"], self.roots)
        data["service"] = portable.resolve(data["service"], self.project)
        cache = self._read_cache()
        data["files"] = cache if cache is not None else data.get("files") or {}  # older documents carried it
        return data

    def parse(self, raw: bytes) -> dict[str, Any]:
        """Checked whole before anything is used; a damaged document is never written over."""
        afresh = "move it away to start afresh (the service, if any, must then be stopped by hand)"
        try:
            data = json.loads(raw.decode("utf-8"))
        except ValueError as exc:
            raise StateError(
                f"{self.noun} {self.where} is damaged ({exc}); nothing was written to it; {afresh}"
            ) from None
        if isinstance(data, dict) and data.get("moved_to"):
            url = data["moved_to"]
            raise StateError(
                f"the state of {self.name} was moved to {url} by `state push`; use it with --state {url}, "
                f"PIPELINE_STATE={url}, or a `state:` block in the spec"
            )
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("stages"), dict)
            or data.get("version") != STATE_VERSION
            or not isinstance(data.get("history", []), list)
            or not isinstance(data.get("service"), (dict, type(None)))
        ):
            raise StateError(
                f"{self.noun} {self.where} is damaged or from another version of pipeline; nothing was "
                f"written to it; {afresh}"
            )
        for stage, record in data["stages"].items():  # every later read of a stage record may trust these types
            if (
                not isinstance(record, dict)
                or not isinstance(record.get("digest"), str)
                or not isinstance(record.get("outputs", {}), dict)
                or not isinstance(record.get("at", 0), (int, float))
                or isinstance(record.get("at", 0), bool)
            ):
                raise StateError(
                    f"{self.noun} {self.where} is damaged: the record of stage {stage!r} is not what "
                    f"pipeline writes; nothing was written to it; {afresh}"
                )
        if not all(isinstance(entry, dict) for entry in data["history"]):
            raise StateError(
                f"{self.noun} {self.where} is damaged: its history holds something that is not a run; "
                f"nothing was written to it; {afresh}"
            )
        data.setdefault("history", [])
        return data

    # -- write -----------------------------------------------------------------------------------
    def serialize(self, data: dict[str, Any]) -> bytes:
        doc = copy.deepcopy(data)
        doc.pop("files", None)
        doc["history"] = doc.get("history", [])[-HISTORY_LIMIT:]
        doc["stages"] = portable.relativize(doc.get("stages", {}), self.roots)
        # the live service's own files (under the local state folder) stay where that service has them
        doc["service"] = portable.relativize(doc.get("service"), self.project, keep=(self.root.parent,))
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()

    def save(self, data: dict[str, Any]) -> None:
        """Write the whole document over the version last read or written; after a crash, old or new, never half."""
        try:
            self.etag = self.backend.write(self.name, self.serialize(data), self.etag, self.lock)
            self._write_cache(data.get("files") or {})
        except OSError as exc:  # a full disk, a read-only folder: the previous state is still whole
            where = f"{exc.filename}" if exc.filename else self.where
            raise StateError(
                f"cannot save the state to {where}: {exc.strerror or exc}; the previous state is kept "
                "as it was (nothing was half-written)"
            ) from None

    def _read_cache(self) -> dict[str, Any] | None:
        try:
            value = json.loads((self.root / CACHE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def _write_cache(self, files: dict[str, Any]) -> None:
        atomic_write(self.root / CACHE_FILE, json.dumps(files, sort_keys=True).encode())

    # -- lock ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(
        self, command: str, *, timeout: float = 0.0, notify: Callable[[str], None] | None = None
    ) -> Iterator[base.Lock]:
        """Hold the spec's lock for the block: a second run fails at once naming the holder, or waits `timeout`."""
        try:
            lock = base.lock(self.backend, self.name, base.Holder.me(command), timeout=timeout, notify=notify)
        except StateLocked as exc:
            if self.backend.scheme == "local":
                raise
            raise StateLocked(
                f"{exc}; if that run died, its lease expires by itself, or "
                f"`python -m pipeline force-unlock {self.spec_arg}` breaks it now",
                exc.holder,
            ) from None
        self.lock = lock
        try:
            yield lock
        finally:
            self.lock = None
            lock.release()
