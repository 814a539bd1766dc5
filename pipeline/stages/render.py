"""Stage render: write score.py, myenv.yml and the target's configs into the build folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.files import sha256_bytes, sha256_path
from pipeline.stages import Outcome, Output, Stage

if TYPE_CHECKING:
    from pipeline.context import Context
    from pipeline.records import Step


@dataclass(frozen=True)
class RenderOutput(Output):
    stage = "render"
    dir: str
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256 of what was written
    # the spec values the templates saw (and the target's settings block): the report names the fields that changed
    values: dict[str, Any] = field(default_factory=dict)


def digests(files: dict[str, str]) -> dict[str, str]:
    return {name: sha256_bytes(text.encode()) for name, text in files.items()}


class Render(Stage):
    name = "render"

    def inputs(self, ctx: Context) -> dict[str, Any]:
        # rendering is pure and cheap, so the rendered bytes themselves are the inputs: templates, spec
        # fields and the target's settings all count exactly as far as they change the output
        return {"files": digests(ctx.rendered)}

    def stale(self, ctx: Context, record: dict[str, Any]) -> str:
        out = RenderOutput.from_dict(record.get("outputs"))
        for name, digest in (out.files if out else {}).items():
            path = ctx.paths.build / name
            if not path.is_file() or sha256_path(path) != digest:
                return f"{path} was changed or removed since it was rendered"
        return "" if out else "its recorded outputs are unreadable"

    def run(self, ctx: Context, step: Step) -> Outcome:
        from pipeline import render

        files = ctx.rendered
        build = ctx.paths.build
        if build.is_dir():  # sub-folders too: a stale k8s/hpa.yaml must never be shipped
            for old in sorted(build.rglob("*"), reverse=True):
                if old.is_file() and old.relative_to(build).as_posix() not in files:
                    old.unlink()
                elif old.is_dir() and not any(old.iterdir()):
                    old.rmdir()
        render.write_files(build, files)
        return Outcome(
            f"{', '.join(sorted(files))} -> {build}", RenderOutput(str(build), digests(files), template_values(ctx))
        )


def template_values(ctx: Context) -> dict[str, Any]:
    """What rendering read of the spec: the templates' values, and the chosen target's settings block."""
    from pipeline import render
    from pipeline.context import plain

    values = render.context(ctx.spec)
    values["model"]["source"] = plain(ctx.spec.data["model"]["source"])  # as the spec says it, not resolved here
    values["deploy"][ctx.spec.deploy.settings_key] = plain(ctx.spec.deploy.settings())
    return values


def build_dir(ctx: Context) -> Path | None:
    out = ctx.output(RenderOutput)
    return Path(out.dir) if out else None
