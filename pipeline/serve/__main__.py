"""`python -m pipeline.serve CONFIG_JSON`: run the scoring service in the foreground."""

from __future__ import annotations

import sys

from pipeline.serve.supervisor import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
