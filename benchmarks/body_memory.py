"""What parsing a request body costs in memory, as a multiple of its size: the factor behind the body limit.

    python benchmarks/body_memory.py [--mb 50]

Each shape of body is built, cut into the 64 KiB chunks the host receives, joined and parsed with the
rendered score.py's parse_body (pipeline.contract: simdjson where it takes the body, else orjson) in a fresh
process, which reports its peak RSS (VmHWM, what the supervisor's memory limit reads) over its RSS before
the join. pipeline/serve/budget.py's PARSE_FACTOR is the worst of these, rounded up.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SHAPES = {
    "rows of MNIST floats": "mnist",
    "rows of 0": "zeros_int",
    "rows of 0.0": "zeros_float",
    "rows of 1e1": "e_floats",
    "[[], [], ...]": "empty_lists",
    "[{}, {}, ...]": "empty_objects",
    '["", "", ...]': "short_strings",
    "[[1], [1], ...]": "ragged_ints",
}

CHILD = r"""
import sys
sys.path.insert(0, sys.argv[3])
import numpy as np, orjson
from pipeline import contract

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

shape, size = sys.argv[1], int(float(sys.argv[2]))
rows = lambda item: b'{"data": [' + b",".join([item] * max(1, size // (len(item) + 1))) + b"]}"
if shape == "mnist":
    rng = np.random.default_rng(0)
    row = rng.integers(0, 256, 784) / 255.0
    row[rng.random(784) < 0.8] = 0
    body = rows(orjson.dumps(row.tolist()))
else:
    item = {"zeros_int": b"0", "zeros_float": b"0.0", "e_floats": b"1e1"}.get(shape)
    body = rows(b"[" + b",".join([item] * 784) + b"]") if item else rows(
        {"empty_lists": b"[]", "empty_objects": b"{}", "short_strings": b'""', "ragged_ints": b"[1]"}[shape])
chunks = [body[i:i + 65536] for i in range(0, len(body), 65536)]
size = len(body)
del body
base = status("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")
joined = b"".join(chunks)
del chunks
try:
    outcome = "array %s" % (contract.parse_body(joined, 784, orjson.loads).shape,)
except contract.InputError as error:
    outcome = "400: " + str(error)[:48]
peak = status("VmHWM:")
print("%.1f\t%.1f\t%s" % (size / 2**20, (peak - base) / size, outcome))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=50, help="body size in MB (default 50)")
    args = parser.parse_args()
    print("| body | MiB | peak RSS / body size | parsed |")
    print("|---|---:|---:|---|")
    for label, shape in SHAPES.items():
        out = subprocess.run(
            [sys.executable, "-c", CHILD, shape, str(args.mb * 1e6), str(ROOT)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        size, factor, outcome = out.split("\t")
        print(f"| {label} | {size} | {factor}x | {outcome} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
