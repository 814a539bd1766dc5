"""`serve SPEC`: fetch the model, render the files and host the service in the foreground until Ctrl-C."""

from __future__ import annotations

import argparse

from pipeline import models, render
from pipeline.commands._common import context
from pipeline.console import Console
from pipeline.errors import TargetError
from pipeline.stages import fetch
from pipeline.targets import keys as auth_keys
from pipeline.targets import local


def main(args: argparse.Namespace, console: Console) -> int:
    ctx = context(args, console)
    spec = ctx.spec.model
    path = models.fetch_model(fetch.source_for(ctx.spec), ctx.paths.models, spec.name, spec.version, spec.sha256)
    app_dir = ctx.paths.root / "serve"
    render.write_files(app_dir, render.render(ctx.spec))
    port = ctx.spec.deploy.block("local")["port"] if args.port is None else args.port
    keys = auth_keys.ensure(ctx.paths.root / "serve-keys", ctx.spec.deploy.auth)
    config = local.service_config(ctx.spec, app_dir, path.parent, keys, None, port)
    from pipeline.serve.config import ServeConfig
    from pipeline.serve.supervisor import serve

    auth = f"; Authorization: Bearer <key> from {keys} is required" if keys else ""
    console.error(f"serving {ctx.spec.name} on 127.0.0.1 (Ctrl-C stops it){auth}")
    try:
        return serve(ServeConfig.from_dict(config))
    except OSError as exc:  # the port is taken, or not ours to bind
        where = f"127.0.0.1:{port}" if port else "127.0.0.1"
        raise TargetError(
            f"cannot serve on {where}: {exc.strerror or exc}"
            + (" (another service holds the port; choose one with --port)" if exc.errno == 98 else "")
        ) from None
