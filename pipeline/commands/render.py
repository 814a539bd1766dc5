"""`render SPEC [-o DIR]`: write the rendered files without deploying anything."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import render, spec as specs
from pipeline.console import Console


def main(args: argparse.Namespace, console: Console) -> int:
    loaded = specs.load(args.spec)
    files = render.render_all(loaded)
    folder = Path(args.output) if args.output else Path("build") / loaded.name
    for path in render.write_files(folder, files):
        console.print(f"wrote {path}")
    return 0
