"""`force-unlock SPEC`: break the lock of a run that died, and say whose it was (as terraform force-unlock does)."""

from __future__ import annotations

import argparse
import json

from pipeline import spec as specs
from pipeline.commands._common import paths_for
from pipeline.console import Console


def main(args: argparse.Namespace, console: Console) -> int:
    loaded = specs.load(args.spec, check_files=False)
    document = paths_for(loaded, args.state_url, args.spec).document
    holder = document.backend.force_unlock(loaded.name)
    where = document.backend.url
    if args.json:
        console.always(
            json.dumps(
                {
                    "spec": loaded.name,
                    "url": where,
                    "broken": holder is not None,
                    "holder": holder.to_dict() if holder else None,
                },
                indent=2,
            )
        )
    elif holder is None:
        console.print(f"{loaded.name}: not locked in {where}; nothing to break")
    else:
        console.print(
            f"{loaded.name}: broke the lock held by {holder.describe()} in {where}; if that run is still "
            f"going, its next write is refused"
        )
    return 0
