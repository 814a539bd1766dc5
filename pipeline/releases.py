"""The last few good deployments of a service, kept for `rollback`: their rendered files, model and spec.

A release is written when a deploy succeeds: <home>/<name>/releases/<n>/ holds build/ (exactly the files
that were deployed), model/<file> (a hard link to the verified model, or a copy) and spec.yaml (the spec's
text at that moment); the state document lists them with the digest and record. The files are local: a
runner that did not make a release can list it but not roll back to it.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import StateError, UsageError
from pipeline.files import atomic_write

if TYPE_CHECKING:
    from pipeline.context import Context
    from pipeline.targets.base import ServiceRecord

KEEP = 5  # releases kept; older ones are removed with their files


@dataclass(frozen=True)
class Release:
    n: int
    at: float
    digest: str
    model: str
    model_sha256: str | None
    model_file: str
    record: dict[str, Any]

    def folder(self, ctx: Context) -> Path:
        return ctx.paths.root / "releases" / str(self.n)

    @classmethod
    def from_dict(cls, data: Any) -> Release:
        try:
            return cls(
                int(data["n"]),
                float(data["at"]),
                str(data["digest"]),
                str(data["model"]),
                data.get("model_sha256"),
                str(data["model_file"]),
                dict(data["record"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"a release in the state document is damaged ({exc})") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "at": self.at,
            "digest": self.digest,
            "model": self.model,
            "model_sha256": self.model_sha256,
            "model_file": self.model_file,
            "record": self.record,
        }


def listed(ctx: Context) -> list[Release]:
    """The kept releases, oldest first."""
    return [Release.from_dict(item) for item in ctx.state.get("releases") or []]


def keep(ctx: Context, record: ServiceRecord, build_dir: Path, model_path: Path) -> Release:
    """Keep what was just deployed; forget (and remove) releases beyond the last KEEP."""
    kept = listed(ctx)
    n = max((r.n for r in kept), default=0) + 1
    release = Release(
        n,
        record.deployed_at or ctx.clock(),
        record.digest or "",
        record.model or "",
        record.model_sha256,
        model_path.name,
        record.to_dict(),
    )
    folder = release.folder(ctx)
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(build_dir, folder / "build")
    (folder / "model").mkdir()
    try:
        os.link(model_path, folder / "model" / model_path.name)
    except OSError:
        shutil.copy2(model_path, folder / "model" / model_path.name)
    atomic_write(folder / "spec.yaml", ctx.spec.path.read_bytes())
    kept.append(release)
    for old in kept[:-KEEP]:
        shutil.rmtree(old.folder(ctx), ignore_errors=True)
    ctx.state["releases"] = [r.to_dict() for r in kept[-KEEP:]]
    return release


def choose(ctx: Context, number: int | None) -> Release:
    """The release to roll back to: `number`, else the newest one that is not what runs now."""
    kept = listed(ctx)
    if not kept:
        raise UsageError(f"{ctx.spec.name}: no release is kept yet; a successful deploy keeps one")
    if number is not None:
        found = next((r for r in kept if r.n == number), None)
        if found is None:
            raise UsageError(f"{ctx.spec.name}: no release {number}; kept: {', '.join(str(r.n) for r in kept)}")
        return found
    live = ctx.service.digest if ctx.service else None
    earlier = [r for r in kept if r.digest != live]
    if not earlier:
        raise UsageError(f"{ctx.spec.name}: no earlier release to roll back to (the live one is release {kept[-1].n})")
    return earlier[-1]


def files_of(ctx: Context, release: Release) -> tuple[Path, Path, str]:
    """(build folder, model file, spec text) of a release, or a clear error when they are not on this machine."""
    folder = release.folder(ctx)
    build, model, spec = folder / "build", folder / "model" / release.model_file, folder / "spec.yaml"
    missing = [p for p in (build, model, spec) if not p.exists()]
    if missing:
        raise UsageError(
            f"release {release.n}'s files are not on this machine ({missing[0]} is missing): roll back "
            "from the machine that deployed it, or deploy that version of the spec again"
        )
    return build, model, spec.read_text(encoding="utf-8")
