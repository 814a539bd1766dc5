"""Tests for pipeline.data: IDX parsing and its error messages, npz and CSV, Dataset chunks."""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.data import count_rows, idx_count, load_dataset, read_idx
from pipeline.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT / "examples" / "mnist" / "data"
CODES = {
    np.dtype("u1"): 0x08,
    np.dtype("i1"): 0x09,
    np.dtype("i2"): 0x0B,
    np.dtype("i4"): 0x0C,
    np.dtype("f4"): 0x0D,
    np.dtype("f8"): 0x0E,
}


def idx_bytes(arr: np.ndarray) -> bytes:
    """An IDX file's bytes: 00 00 type ndim, big-endian dims, big-endian data."""
    header = bytes([0, 0, CODES[arr.dtype], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, arr: np.ndarray, *, compress: bool = True, extra: bytes = b"", cut: int = 0) -> Path:
    raw = idx_bytes(arr) + extra
    raw = raw[: len(raw) - cut]
    path.write_bytes(gzip.compress(raw, mtime=0) if compress else raw)
    return path


@pytest.fixture
def images() -> np.ndarray:
    return np.arange(5 * 4 * 3, dtype=np.uint8).reshape(5, 4, 3)


@pytest.mark.parametrize("dtype", list(CODES))
@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trips_every_type(tmp_path: Path, dtype: np.dtype, compress: bool) -> None:
    arr = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    got = read_idx(write_idx(tmp_path / "x.idx", arr, compress=compress))
    assert got.dtype == dtype.newbyteorder("=") and got.shape == (2, 3, 4)
    np.testing.assert_array_equal(got, arr)


def test_gzip_is_detected_by_content_not_extension(tmp_path: Path, images: np.ndarray) -> None:
    gz_named_raw = write_idx(tmp_path / "raw.gz", images, compress=False)
    raw_named_gz = write_idx(tmp_path / "data.idx", images, compress=True)
    np.testing.assert_array_equal(read_idx(gz_named_raw), images)
    np.testing.assert_array_equal(read_idx(raw_named_gz), images)


def test_truncated_idx_names_expected_and_found_bytes(tmp_path: Path, images: np.ndarray) -> None:
    path = write_idx(tmp_path / "x.gz", images, cut=10)
    with pytest.raises(DataError) as err:
        read_idx(path)
    assert str(err.value) == f"{path}: truncated IDX file: expected 60 bytes of data, found 50"


def test_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "x.idx"
    path.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">I", 5))
    with pytest.raises(DataError, match="header declares 3 dimensions but ends after 1"):
        read_idx(path)


def test_trailing_bytes_are_an_error(tmp_path: Path, images: np.ndarray) -> None:
    path = write_idx(tmp_path / "x.gz", images, extra=b"\x00\x01")
    with pytest.raises(DataError) as err:
        read_idx(path)
    assert str(err.value) == (f"{path}: IDX file has trailing bytes after its 60 bytes of data (shape 5x4x3)")


@pytest.mark.parametrize("content", [b"PK\x03\x04rest", b"\x00\x00\x07\x01abcd", b"\x00"])
def test_not_an_idx_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.idx"
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        read_idx(path)
    assert str(err.value).startswith(f"{path}: not an IDX file: it starts with ")
    assert "an IDX file starts with 00 00" in str(err.value)


def test_corrupt_gzip_is_a_clear_error(tmp_path: Path, images: np.ndarray) -> None:
    good = gzip.compress(idx_bytes(images), mtime=0)
    bad = bytearray(good)
    bad[12:20] = b"\xff" * 8  # damage the deflate stream just after the 10-byte gzip header
    path = tmp_path / "x.gz"
    path.write_bytes(bytes(bad))
    with pytest.raises(DataError) as err:
        read_idx(path)
    assert str(err.value).startswith(f"{path}: corrupt gzip file: ")
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_cut_gzip_stream_is_a_clear_error(tmp_path: Path, images: np.ndarray) -> None:
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(idx_bytes(images), mtime=0)[:-12])
    with pytest.raises(DataError, match=r"corrupt gzip file: Compressed file ended"):
        read_idx(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope.gz: cannot open test data: No such file"):
        read_idx(tmp_path / "nope.gz")


def test_idx_count_reads_only_the_header_without_numpy(tmp_path: Path, images: np.ndarray) -> None:
    path = write_idx(tmp_path / "x.gz", images, cut=50)  # payload damage is not its business
    assert idx_count(path) == 5
    code = (
        "import sys; from pathlib import Path; from pipeline.data import idx_count; "
        f"print(idx_count(Path({str(MNIST / 'test-images.gz')!r})), 'numpy' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["1000", "False"]


def test_label_image_count_mismatch_names_both_files(tmp_path: Path, images: np.ndarray) -> None:
    img = write_idx(tmp_path / "img.gz", images)
    lab = write_idx(tmp_path / "lab.gz", np.arange(4, dtype=np.uint8))
    with pytest.raises(DataError) as err:
        load_dataset(img, lab)
    assert str(err.value) == f"{img} has 5 images but {lab} has 4 labels"


def test_idx_dataset_keeps_uint8_and_scales_per_chunk(tmp_path: Path, images: np.ndarray) -> None:
    img = write_idx(tmp_path / "img.gz", images)
    lab = write_idx(tmp_path / "lab.gz", np.array([3, 1, 4, 1, 5], dtype=np.uint8))
    ds = load_dataset(img, lab, scale=255)
    assert ds.n == 5 and ds.X.shape == (5, 12) and ds.X.dtype == np.uint8
    assert ds.y.dtype == np.int64 and ds.y.tolist() == [3, 1, 4, 1, 5]
    rows = ds.rows(1, 3)
    assert rows.dtype == np.float64
    np.testing.assert_array_equal(rows, images.reshape(5, -1)[1:3] / 255.0)  # the tutorial's X/255
    chunks = list(ds.iter_chunks(2))
    assert [start for start, _ in chunks] == [0, 2, 4]
    np.testing.assert_array_equal(np.vstack([c for _, c in chunks]), images.reshape(5, -1) / 255.0)


def test_real_mnist_example_data() -> None:
    ds = load_dataset(MNIST / "test-images.gz", MNIST / "test-labels.gz", scale=255)
    assert (ds.n, ds.features) == (1000, 784)
    assert set(ds.y.tolist()) == set(range(10))
    assert ds.rows(0, 1000).min() >= 0.0 and ds.rows(0, 1000).max() == 1.0
    assert count_rows(MNIST / "train-images.gz") == 4000


def test_npz_loading(tmp_path: Path) -> None:
    path = tmp_path / "test.npz"
    X = np.random.default_rng(0).random((6, 2, 2))
    np.savez(path, X=X, y=np.array([0, 1, 2, 0, 1, 2]))
    ds = load_dataset(path, None, scale=2.0)
    assert ds.X.shape == (6, 4) and ds.y.tolist() == [0, 1, 2, 0, 1, 2]
    np.testing.assert_array_equal(ds.rows(0, 6), X.reshape(6, 4) / 2.0)
    assert count_rows(path) == 6
    other = tmp_path / "noext"  # detected as npz by its zip magic
    other.write_bytes(path.read_bytes())
    assert load_dataset(other, None).n == 6


def test_npz_errors(tmp_path: Path) -> None:
    path = tmp_path / "test.npz"
    np.savez(path, X=np.zeros((2, 3)))
    with pytest.raises(DataError, match=r"npz file has no array 'y' \(found \['X'\]"):
        load_dataset(path, None)
    with pytest.raises(DataError, match="keeps its labels in the same file"):
        load_dataset(path, tmp_path / "labels.gz")
    np.savez(path, X=np.zeros(2, dtype=object), y=np.zeros(2))
    with pytest.raises(DataError, match="cannot read npz file"):  # object arrays would unpickle
        load_dataset(path, None)


def test_csv_loading(tmp_path: Path) -> None:
    path = tmp_path / "test.csv"
    path.write_text("a,label,b\n1,3,2.5\n\n4,0,5\n")
    ds = load_dataset(path, None, label_column="label", scale=0.5)
    assert ds.y.tolist() == [3, 0]
    np.testing.assert_array_equal(ds.rows(0, 2), [[2.0, 5.0], [8.0, 10.0]])
    assert count_rows(path) == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,label\n1,2\nx,3\n", r"test.csv:3: column 'a': 'x' is not a number"),
        ("a,label\n1,2\n3,2.5\n", r"test.csv:3: column 'label': label 2.5 is not an integer"),
        ("a,label\n1,2\n3\n", r"test.csv:3: 1 cells, the header has 2"),
        ("a,label\nnan,2\n", r"test.csv:2: not a finite number in this row"),
        ("a,b\n1,2\n", r"test.csv:1: no column 'label' in the header \(found \['a', 'b'\]\)"),
        ("", r"test.csv: CSV file is empty"),
    ],
)
def test_csv_errors_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "test.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        load_dataset(path, None, label_column="label")


def test_csv_needs_label_column(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a,label\n1,2\n")
    with pytest.raises(DataError, match=r"needs test\.label_column"):
        load_dataset(path, None)


def test_idx_needs_labels_and_known_format(tmp_path: Path, images: np.ndarray) -> None:
    img = write_idx(tmp_path / "img.gz", images)
    with pytest.raises(DataError, match="IDX test images need a labels file"):
        load_dataset(img, None)
    with pytest.raises(DataError, match="unknown test data format 'parquet'"):
        load_dataset(img, None, format="parquet")
