"""Stage render: write score.py, myenv.yml and the target's configs into the build folder."""
from __future__ import annotations

from typing import Any

from pipeline.context import Context
from pipeline.files import sha256_bytes, sha256_path


def inputs(ctx: Context) -> dict[str, Any]:
    # rendering is pure and cheap, so the rendered bytes themselves are the inputs: templates, spec
    # fields and the target's settings all count exactly as far as they change the output
    return {"files": {name: sha256_bytes(text.encode()) for name, text in ctx.rendered.items()}}


def stale(ctx: Context, record: dict[str, Any]) -> str:
    for name, digest in record["outputs"].get("files", {}).items():
        path = ctx.paths.build / name
        if not path.is_file() or sha256_path(path) != digest:
            return f"{path} was changed or removed since it was rendered"
    return ""


def run(ctx: Context, step: Any) -> Any:
    from pipeline import render
    from pipeline.stages import Outcome

    files = ctx.rendered
    build = ctx.paths.build
    if build.is_dir():
        for old in build.iterdir():
            if old.is_file() and old.name not in files:
                old.unlink()
    render.write_files(build, files)
    digests = {name: sha256_bytes(text.encode()) for name, text in files.items()}
    return Outcome(f"{', '.join(sorted(files))} -> {build}", {"files": digests, "dir": str(build)})
