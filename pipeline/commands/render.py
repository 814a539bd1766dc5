"""`render SPEC [-o DIR]`: write the rendered files without deploying anything."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from pipeline import render
from pipeline.commands._common import load
from pipeline.console import Console


def main(args: argparse.Namespace, console: Console) -> int:
    p = load(args, console)
    loaded = p.spec
    files = p.render()
    folder = Path(args.output) if args.output else Path("build") / loaded.name
    for path in render.write_files(folder, files):
        console.print(f"wrote {path}")
    from pipeline import targets

    # files a rendered config names beside itself (the online deployment's model), so the folder is usable as is
    for name, source in targets.get(loaded.deploy.target).assets(loaded).items():
        shutil.copyfile(source, folder / name)
        console.print(f"copied {source} -> {folder / name}")
    return 0
