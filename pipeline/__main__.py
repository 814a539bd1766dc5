"""`python -m pipeline`: the thin entry point; cli.main decides the exit code."""

from __future__ import annotations

import sys

from pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main())
