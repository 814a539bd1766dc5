"""Benchmark the evaluate stage's building blocks: Fashion-MNIST test set and a 1,000,000-row set.

Every step is a fresh child process (cold imports, as the stage runs), which reports its
timings and its own peak RSS (getrusage(RUSAGE_SELF).ru_maxrss, the counter RUSAGE_CHILDREN
sums up in the parent, but per child). The parent only launches children: Linux carries the
parent's RSS high-water mark into a child across fork/exec, so a parent that trained the model
would inflate every child's figure (it did: 304 MiB baseline instead of 149). A baseline child imports
the same libraries (numpy, sklearn, matplotlib's Agg) and loads the model without loading any data, so
data-dependent memory is the difference.

    python benchmarks/evaluate.py                     # both benchmarks, prints a table
    python benchmarks/evaluate.py --rows 200000       # a smaller generated set
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")
SHM = Path("/dev/shm")
DEFAULT_TMP = SHM if SHM.is_dir() and os.access(SHM, os.W_OK) else Path(tempfile.gettempdir())


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def child(mode: str, model_path: Path, images: Path | None, labels: Path | None, plot: Path | None) -> dict[str, float]:
    """The measured part, run in its own process: load data and model, evaluate, plot."""
    t0 = time.perf_counter()
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import sklearn.linear_model  # noqa: F401

    from pipeline.data import load_dataset
    from pipeline.evaluate import evaluate, plot_confusion
    from pipeline.models import load_model, sha256_file

    t1 = time.perf_counter()
    model = load_model(model_path, "joblib", sha256_file(model_path))
    t2 = time.perf_counter()
    out = {"imports_s": t1 - t0, "load_model_s": t2 - t1}
    if mode == "baseline":
        import matplotlib.backends.backend_agg
        import matplotlib.figure  # noqa: F401
        import numpy as np

        model.predict(np.zeros((1, 784)))  # warm BLAS and sklearn's validation paths
        return {**out, "peak_mb": _peak_mb()}
    assert images is not None and labels is not None and plot is not None
    ds = load_dataset(images, labels, scale=255)
    t3 = time.perf_counter()
    ev = evaluate(model, ds)
    t4 = time.perf_counter()
    plot_confusion(ev.confusion, plot, labels=ev.labels)
    t5 = time.perf_counter()
    return {
        **out,
        "load_data_s": t3 - t2,
        "evaluate_s": t4 - t3,
        "plot_s": t5 - t4,
        "total_s": t5 - t1,
        "rows": ds.n,
        "data_mb": ds.X.nbytes / 2**20,
        "accuracy": ev.accuracy,
        "peak_mb": _peak_mb(),
    }


def run_child(*args: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True, cwd=ROOT
    ).stdout
    return json.loads(out.splitlines()[-1])


def train_fashion(model_path: Path, slice_rows: int) -> dict[str, float]:
    """A quick multinomial model on a slice of Fashion-MNIST's train set (not timed)."""
    import warnings

    import joblib
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    sys.path.insert(0, str(ROOT))
    from pipeline.data import read_idx

    t = time.perf_counter()
    X = read_idx(FASHION / "train-images-idx3-ubyte.gz")[:slice_rows].reshape(slice_rows, -1) / 255.0
    y = read_idx(FASHION / "train-labels-idx1-ubyte.gz")[:slice_rows]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a benchmark model, not a product
        clf = LogisticRegression(C=1.0, max_iter=200, random_state=42).fit(X, y)
    joblib.dump(clf, model_path)
    return {"seconds": time.perf_counter() - t}


def write_raw_idx(images: Path, labels: Path, rows: int, features: int = 784) -> dict[str, float]:
    """A generated uint8 set as raw (uncompressed) IDX files, written in blocks and synced."""
    import numpy as np

    rng = np.random.default_rng(0)
    with open(images, "wb") as f:
        f.write(bytes([0, 0, 0x08, 2]) + struct.pack(">2I", rows, features))
        for start in range(0, rows, 50_000):
            f.write(rng.integers(0, 256, (min(50_000, rows - start), features), dtype=np.uint8))
        # Flush now: otherwise the plot's fsync in the measured run waits for these dirty pages.
        f.flush()
        os.fsync(f.fileno())
    with open(labels, "wb") as f:
        f.write(bytes([0, 0, 0x08, 1]) + struct.pack(">I", rows))
        f.write(rng.integers(0, 10, rows, dtype=np.uint8).tobytes())
        f.flush()
        os.fsync(f.fileno())
    return {"bytes": float(images.stat().st_size)}  # the set's size on disk, header included


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the generated set")
    parser.add_argument("--repeat", type=int, default=3, help="Fashion-MNIST runs (median shown)")
    parser.add_argument(
        "--train-rows", type=int, default=10_000, help="Fashion-MNIST training slice for the benchmark model"
    )
    parser.add_argument(
        "--tmp-dir",
        type=Path,
        default=DEFAULT_TMP,
        help="where the generated set is written (default: %(default)s; tmpfs "
        "when available, since syncing 750 MB to a slow disk takes minutes)",
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, *rest = args.child
        if mode == "train":
            result = train_fashion(Path(rest[0]), int(rest[1]))
        elif mode == "generate":
            result = write_raw_idx(Path(rest[0]), Path(rest[1]), int(rest[2]))
        else:
            paths = [Path(p) for p in rest[1:]] + [None] * (4 - len(rest))
            result = child(mode, Path(rest[0]), *paths)
        print(json.dumps(result))
        return 0

    with tempfile.TemporaryDirectory(prefix="bench-evaluate-", dir=args.tmp_dir) as tmp_dir:
        tmp = Path(tmp_dir)
        model = tmp / "fashion.pkl"
        trained = run_child("train", str(model), str(args.train_rows))
        print(
            f"trained the benchmark model on {args.train_rows} Fashion-MNIST images "
            f"in {trained['seconds']:.1f} s (not timed below)"
        )

        baseline = run_child("baseline", str(model))
        fashion = [
            run_child(
                "eval",
                str(model),
                str(FASHION / "t10k-images-idx3-ubyte.gz"),
                str(FASHION / "t10k-labels-idx1-ubyte.gz"),
                str(tmp / "f.png"),
            )
            for _ in range(args.repeat)
        ]

        images, labels = tmp / "big-images.idx", tmp / "big-labels.idx"
        generated = run_child("generate", str(images), str(labels), str(args.rows))
        print(f"generated {generated['bytes'] / 2**20:.0f} MiB of raw IDX in {tmp}")
        big = run_child("eval", str(model), str(images), str(labels), str(tmp / "big.png"))

    med = {k: statistics.median(r[k] for r in fashion) for k in fashion[0]}
    print(
        f"\nbaseline child (imports + model, no data): peak RSS {baseline['peak_mb']:.0f} MiB, "
        f"imports {baseline['imports_s']:.2f} s"
    )
    print(
        f"\n{'set':<22}{'rows':>10}{'imports':>9}{'model':>7}{'data':>7}{'evaluate':>10}"
        f"{'plot':>7}{'total':>7}{'accuracy':>9}{'data MiB':>9}{'peak MiB':>9}{'peak-base':>10}"
    )
    for name, r in (("fashion-mnist t10k", med), ("generated uint8 raw", big)):
        print(
            f"{name:<22}{int(r['rows']):>10,}{r['imports_s']:>8.2f}s{r['load_model_s']:>6.2f}s"
            f"{r['load_data_s']:>6.2f}s{r['evaluate_s']:>9.2f}s{r['plot_s']:>6.2f}s"
            f"{r['total_s']:>6.2f}s{r['accuracy']:>9.4f}{r['data_mb']:>9.0f}{r['peak_mb']:>9.0f}"
            f"{r['peak_mb'] - baseline['peak_mb']:>10.0f}"
        )
    over = big["peak_mb"] - baseline["peak_mb"] - big["data_mb"]
    print(
        f"\nfashion total (model + data + predict + metrics + plot, median of {args.repeat}): "
        f"{med['total_s']:.2f} s (goal < 2 s)"
    )
    print(f"generated set: peak - baseline - data = {over:.0f} MiB (goal <= 300 MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
