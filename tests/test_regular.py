"""Tests for pipeline.regular: what a path is, regular files only, bounded reads, no hang on a FIFO swapped in."""

from __future__ import annotations

import os
import socket
import stat
import threading
from pathlib import Path

import pytest

from pipeline import regular


def test_problem_names_what_the_path_is(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "fifo")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock"))
        assert regular.problem(tmp_path / "sock") == "is a socket, not a regular file"
    os.symlink(tmp_path / "file", tmp_path / "link")
    os.symlink("/dev/null", tmp_path / "null")
    os.symlink(tmp_path / "gone", tmp_path / "dangling")
    assert regular.problem(tmp_path / "file") is None
    assert regular.problem(tmp_path / "link") is None  # a symlink to a regular file is followed
    assert regular.problem(tmp_path / "folder") == "is a directory, not a regular file"
    assert regular.problem(tmp_path / "fifo") == "is a named pipe (FIFO), not a regular file"
    assert regular.problem(Path("/dev/null")) == "is a character device, not a regular file"
    assert (
        regular.problem(tmp_path / "null")
        == "is a symlink to /dev/null, which is a character device, not a regular file"
    )
    assert regular.problem(tmp_path / "dangling") == f"is a symlink to {tmp_path / 'gone'}, which does not exist"
    assert regular.problem(tmp_path / "missing") == "not found"
    assert regular.problem(tmp_path / "file" / "below") == "not found"


def test_read_bounded_reads_up_to_the_limit_and_refuses_one_byte_more(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"a" * 100)
    assert regular.read_bounded(path, 100) == b"a" * 100
    with pytest.raises(regular.FileTooLarge) as err:
        regular.read_bounded(path, 99)
    assert (err.value.limit, err.value.size) == (99, 100)
    assert err.value.strerror == "is larger than the 99-byte limit (100 bytes)"


def test_a_file_larger_than_its_stat_says_is_still_cut_at_the_limit() -> None:
    # /proc files are regular and report size 0; reading stops at limit + 1 bytes all the same
    path = Path("/proc/self/status")
    assert os.stat(path).st_size == 0 and len(path.read_bytes()) > 64
    with pytest.raises(regular.FileTooLarge) as err:
        regular.read_bounded(path, 64)
    assert err.value.size is None and "more than that" in err.value.strerror


def test_devices_and_folders_are_refused_before_they_are_opened(tmp_path: Path) -> None:
    for path, kind in ((Path("/dev/zero"), "a character device"), (tmp_path, "a directory")):
        with pytest.raises(regular.NotRegularFile) as err:
            regular.read_bounded(path, 10)
        assert err.value.kind == kind


def test_a_fifo_swapped_in_after_the_check_does_not_hang(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: stat says regular file (the path was one when checked), then a FIFO is what gets opened.

    Without O_NONBLOCK the open would wait for a writer forever; with it, fstat sees the FIFO and refuses it.
    """
    fifo = tmp_path / "spec.yaml"
    os.mkfifo(fifo)
    (tmp_path / "decoy").write_text("x")
    real_stat = os.stat
    monkeypatch.setattr(
        regular.os,
        "stat",
        lambda p, *a, **k: real_stat(tmp_path / "decoy") if Path(p) == fifo else real_stat(p, *a, **k),
    )
    outcome: list[BaseException | bytes] = []
    worker = threading.Thread(target=lambda: outcome.append(_try(lambda: regular.read_bounded(fifo, 10))), daemon=True)
    worker.start()
    worker.join(timeout=5)
    if worker.is_alive():  # release the blocked open before failing, so no thread is left waiting
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(timeout=5)
        pytest.fail("opening a FIFO swapped in for the spec blocked")
    assert isinstance(outcome[0], regular.NotRegularFile) and outcome[0].kind == "a named pipe (FIFO)"
    assert stat.S_ISFIFO(real_stat(fifo).st_mode)


def _try(call):  # type: ignore[no-untyped-def]
    try:
        return call()
    except BaseException as exc:  # noqa: BLE001 - handed back to the test thread
        return exc
