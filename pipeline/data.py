"""Test-data loading: MNIST IDX files (gzip or raw), npz and CSV into one Dataset record."""

from __future__ import annotations

import csv
import gzip
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from pipeline.errors import DataError

# numpy is imported inside the functions that need it: `validate` only calls idx_count,
# which reads a header with the standard library and should not pay numpy's import time.
if TYPE_CHECKING:
    import numpy as np

GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGIC = b"PK\x03\x04"
# IDX type code -> (numpy dtype, big-endian as the format stores it; item size in bytes)
IDX_TYPES: dict[int, tuple[str, int]] = {
    0x08: (">u1", 1),
    0x09: (">i1", 1),
    0x0B: (">i2", 2),
    0x0C: (">i4", 4),
    0x0D: (">f4", 4),
    0x0E: (">f8", 8),
}
FORMATS = ("auto", "idx", "npz", "csv")
READ_BLOCK = 16 << 20


def _open(path: Path) -> BinaryIO:
    """Open an IDX file, transparently gunzipping it; gzip is detected by content, not name."""
    try:
        with open(path, "rb") as f:
            is_gzip = f.read(2) == GZIP_MAGIC
        # gzip.open owns its file and closes it; GzipFile(fileobj=...) would leak the handle.
        return gzip.open(path, "rb") if is_gzip else open(path, "rb")  # type: ignore[return-value]
    except OSError as exc:
        raise DataError(f"{path}: cannot open test data: {exc.strerror or exc}") from None


def _read_header(path: Path, stream: BinaryIO) -> tuple[int, tuple[int, ...]]:
    """Return (type code, dims) from an IDX header, with a clear error for anything else."""
    magic = stream.read(4)
    if len(magic) < 4 or magic[:2] != b"\x00\x00" or magic[2] not in IDX_TYPES or magic[3] == 0:
        shown = magic.hex(" ") or "nothing"
        raise DataError(
            f"{path}: not an IDX file: it starts with {shown}, an IDX file starts "
            f"with 00 00, a type code (08 09 0b 0c 0d 0e) and a dimension count"
        )
    ndim = magic[3]
    packed = stream.read(4 * ndim)
    if len(packed) < 4 * ndim:
        raise DataError(
            f"{path}: truncated IDX file: the header declares {ndim} dimensions but ends after {len(packed) // 4}"
        )
    return magic[2], struct.unpack(f">{ndim}I", packed)


def _unreadable(path: Path, exc: Exception) -> DataError:
    """One message for a stream that fails mid-read: a damaged gzip member or an I/O error."""
    if isinstance(exc, (EOFError, zlib.error, gzip.BadGzipFile)):
        return DataError(f"{path}: corrupt gzip file: {exc}")
    return DataError(f"{path}: cannot read test data: {exc}")


# What reading a damaged gzip stream (or a failing disk) raises; anything else is a bug.
READ_ERRORS = (OSError, EOFError, zlib.error)


def idx_count(path: Path) -> int:
    """The number of items in an IDX file, read from its header only (standard library only)."""
    try:
        with _open(path) as stream:
            _, dims = _read_header(path, stream)
    except READ_ERRORS as exc:
        raise _unreadable(path, exc) from None
    return dims[0]


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file into an array of its own dtype (native byte order) and shape."""
    import numpy as np

    try:
        with _open(path) as stream:
            code, dims = _read_header(path, stream)
            dtype, size = IDX_TYPES[code]
            count = 1
            for d in dims:
                count *= d
            expected = count * size
            try:
                # Read straight into the final array: no second copy of a payload that may be GBs.
                arr = np.empty(count, dtype=dtype)
            except (MemoryError, ValueError):
                raise DataError(
                    f"{path}: the IDX header declares {expected} bytes of data, more than can be allocated"
                ) from None
            view = memoryview(arr).cast("B")  # type: ignore[arg-type]  # an ndarray is a buffer
            found = 0
            while found < expected:
                # Bounded reads: GzipFile.readinto builds a temporary bytes object as large as
                # the request, so one big read would briefly hold the payload twice.
                got = stream.readinto(view[found : found + READ_BLOCK])  # type: ignore[attr-defined]
                if not got:
                    break
                found += got
            if found < expected:
                raise DataError(f"{path}: truncated IDX file: expected {expected} bytes of data, found {found}")
            extra = len(stream.read(1 << 20))
            if extra:
                raise DataError(
                    f"{path}: IDX file has trailing bytes after its {expected} bytes "
                    f"of data (shape {'x'.join(map(str, dims))})"
                )
    except READ_ERRORS as exc:
        raise _unreadable(path, exc) from None
    if size > 1:  # swap in place to native order so downstream code never sees '>' dtypes
        arr = arr.byteswap(inplace=True).view(arr.dtype.newbyteorder("="))
    return arr.reshape(dims)


@dataclass(frozen=True, eq=False)
class Dataset:
    """A test set: X kept in its stored dtype (uint8 for MNIST), scaled to float64 per chunk."""

    X: np.ndarray  # (n, features), stored dtype; converting 1M x 784 up front would cost 6 GB
    y: np.ndarray  # (n,) int64 labels
    scale: float
    source: str

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @property
    def features(self) -> int:
        return int(self.X.shape[1])

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as float64 divided by scale, as the tutorial's load_data(...)/255.0."""
        import numpy as np

        chunk = self.X[start:stop]
        return np.true_divide(chunk.reshape(chunk.shape[0], -1), self.scale, dtype=np.float64)

    def iter_chunks(self, chunk_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (start, rows) blocks of at most chunk_rows rows, one float64 block at a time."""
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
        for start in range(0, self.n, chunk_rows):
            yield start, self.rows(start, min(start + chunk_rows, self.n))


def _detect(path: Path) -> str:
    """Pick the format: by extension first, then by the file's first bytes."""
    suffix = path.suffix.lower()
    if suffix in (".npz", ".csv"):
        return suffix[1:]
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise DataError(f"{path}: cannot open test data: {exc.strerror or exc}") from None
    return "npz" if head == ZIP_MAGIC else "idx"


def _load_idx(images: Path, labels: Path | None) -> tuple[np.ndarray, np.ndarray]:
    if labels is None:
        raise DataError(f"{images}: IDX test images need a labels file (test.labels)")
    X, y = read_idx(images), read_idx(labels)
    if y.ndim != 1:
        raise DataError(f"{labels}: labels must be one-dimensional, found shape {y.shape}")
    if X.shape[0] != y.shape[0]:
        raise DataError(f"{images} has {X.shape[0]} images but {labels} has {y.shape[0]} labels")
    return X, y


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np

    try:
        # allow_pickle=False: an npz of object arrays would run code on load, like a pickle.
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("X", "y") if k not in npz.files]
            if missing:
                raise DataError(
                    f"{path}: npz file has no array {missing[0]!r} (found {sorted(npz.files)}; expected 'X' and 'y')"
                )
            X, y = npz["X"], npz["y"]
    except DataError:
        raise
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: cannot read npz file: {exc}") from None
    if X.ndim < 1 or y.ndim != 1 or X.shape[0] != y.shape[0]:
        raise DataError(
            f"{path}: X has shape {X.shape} and y has shape {y.shape}; "
            "expected X with one row per label in a one-dimensional y"
        )
    return X, y


def _load_csv(path: Path, label_column: str | None) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np

    if not label_column:
        raise DataError(f"{path}: CSV test data needs test.label_column to name the label column")
    try:
        with open(path, newline="") as f:
            lines = [(n, row) for n, row in enumerate(csv.reader(f), start=1) if row]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read CSV file: {exc}") from None
    if not lines:
        raise DataError(f"{path}: CSV file is empty; expected a header row")
    header = [h.strip() for h in lines[0][1]]
    if label_column not in header:
        raise DataError(f"{path}:1: no column {label_column!r} in the header (found {header[:8]})")
    col = header.index(label_column)
    for n, row in lines[1:]:
        if len(row) != len(header):
            raise DataError(f"{path}:{n}: {len(row)} cells, the header has {len(header)}")
    try:
        table = np.array([row for _, row in lines[1:]], dtype=np.float64)
    except ValueError:
        # numpy's message does not say where: find the first bad cell for the user.
        for n, row in lines[1:]:
            for name, cell in zip(header, row):
                try:
                    float(cell)
                except ValueError:
                    raise DataError(f"{path}:{n}: column {name!r}: {cell!r} is not a number") from None
        raise
    table = table.reshape(len(lines) - 1, len(header))
    bad = np.flatnonzero(~np.isfinite(table).all(axis=1))
    if bad.size:  # float() accepts 'nan' and 'inf', which no model can score
        raise DataError(f"{path}:{lines[1 + int(bad[0])][0]}: not a finite number in this row")
    y = table[:, col]
    bad = np.flatnonzero(y != np.round(y))
    if bad.size:
        n = lines[1 + int(bad[0])][0]
        raise DataError(f"{path}:{n}: column {label_column!r}: label {y[bad[0]]:g} is not an integer")
    return np.delete(table, col, axis=1), y


def load_dataset(
    images: Path, labels: Path | None, *, format: str = "auto", label_column: str | None = None, scale: float = 1.0
) -> Dataset:
    """Load a test set: `idx` (images + labels files), `npz` (X and y) or `csv` (header row)."""
    import numpy as np

    images = Path(images)
    fmt = _detect(images) if format == "auto" else format
    if fmt not in FORMATS[1:]:
        raise DataError(f"{images}: unknown test data format {format!r}; expected one of {list(FORMATS)}")
    if not scale > 0:
        raise DataError(f"{images}: scale must be positive, got {scale}")
    if fmt != "idx" and labels is not None:
        raise DataError(
            f"{labels}: a {fmt} test set keeps its labels in the same file "
            f"as the features ({images}); remove the labels file"
        )
    if fmt == "idx":
        X, y = _load_idx(images, Path(labels) if labels is not None else None)
    elif fmt == "npz":
        X, y = _load_npz(images)
    else:
        X, y = _load_csv(images, label_column)
    if y.dtype.kind not in "iub" and not (y.dtype.kind == "f" and np.all(y == np.round(y))):
        raise DataError(f"{labels or images}: labels must be integers, found dtype {y.dtype}")
    # reshape is a view: (n, 28, 28) images become (n, 784) rows without copying.
    return Dataset(X=X.reshape(X.shape[0], -1), y=y.astype(np.int64), scale=float(scale), source=str(images))


def count_rows(images: Path, format: str = "auto") -> int:
    """How many rows a test set has, cheaply: the IDX header, the npz header, or the CSV lines."""
    images = Path(images)
    fmt = _detect(images) if format == "auto" else format
    if fmt == "idx":
        return idx_count(images)
    if fmt == "npz":
        return _npz_rows(images)
    if fmt == "csv":
        try:
            with open(images, newline="") as f:
                return max(sum(1 for row in csv.reader(f) if row) - 1, 0)
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"{images}: cannot read CSV file: {exc}") from None
    raise DataError(f"{images}: unknown test data format {format!r}; expected one of {list(FORMATS)}")


def _npz_rows(path: Path) -> int:
    """Rows of the npz's X from its .npy header, without reading the array."""
    import zipfile

    from numpy.lib import format as npy

    try:
        with zipfile.ZipFile(path) as zf, zf.open("X.npy") as f:
            version = npy.read_magic(f)
            if version == (1, 0):
                shape, _, _ = npy.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, _ = npy.read_array_header_2_0(f)
            else:  # a newer .npy header version: fall back to reading the array
                return int(_load_npz(path)[0].shape[0])
    except KeyError:
        raise DataError(f"{path}: npz file has no array 'X'") from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: cannot read npz file: {exc}") from None
    if not shape:
        raise DataError(f"{path}: X is a scalar; expected one row per test example")
    return int(shape[0])
