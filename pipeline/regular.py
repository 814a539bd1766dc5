"""Files a user names (specs, models, test data): regular files only, read with a bound, so none can hang or
exhaust us."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

SPEC_LIMIT = 1 << 20  # 1 MiB: a spec is a page of YAML; anything larger is a mistake or an attack

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class NotRegularFile(OSError):
    """The path exists but is not a regular file (a directory, a FIFO, a device): its strerror says which."""

    def __init__(self, path: str | os.PathLike[str], mode: int) -> None:
        self.kind = kind(mode)
        super().__init__(
            errno.EISDIR if stat.S_ISDIR(mode) else errno.EINVAL, f"is {self.kind}, not a regular file", os.fspath(path)
        )


class FileTooLarge(OSError):
    """A file larger than the limit its reader allows."""

    def __init__(self, path: str | os.PathLike[str], limit: int, size: int | None) -> None:
        self.limit, self.size = limit, size
        found = f"{size:,} bytes" if size is not None else "more than that"
        super().__init__(errno.EFBIG, f"is larger than the {_size(limit)} limit ({found})", os.fspath(path))


def kind(mode: int) -> str:
    """What a stat mode says the file is, as a phrase: 'a named pipe (FIFO)'."""
    return next(
        (name for test, name in _KINDS if test(mode)), "a regular file" if stat.S_ISREG(mode) else "a special file"
    )


def problem(path: Path) -> str | None:
    """Why `path` (symlinks followed) cannot be read as a regular file, as a phrase ('is a directory, ...');
    "not found" when nothing is there; None when it can be read."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        if os.path.islink(path):
            return f"is a symlink to {os.readlink(path)}, which does not exist"
        return "not found"
    except OSError as exc:
        return f"cannot be read: {exc.strerror}"
    if stat.S_ISREG(st.st_mode):
        return None
    via = f"is a symlink to {os.readlink(path)}, which " if os.path.islink(path) else ""
    return f"{via}is {kind(st.st_mode)}, not a regular file"


def open_regular(path: Path) -> tuple[int, os.stat_result]:
    """Open a regular file for reading and return (fd, its stat); a FIFO, a device or a directory is refused.

    The path is checked before it is opened, so a device is never opened at all; O_NONBLOCK makes the open
    of a FIFO swapped in between return at once (instead of waiting for a writer), and fstat refuses it.
    """
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFile(path, st.st_mode)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(path, st.st_mode)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_bounded(path: Path, limit: int) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; FileTooLarge past it, without reading further.

    The size is checked twice: by stat (cheap, before reading) and by reading at most limit + 1 bytes,
    since a file may grow after the stat and some (in /proc) report size 0.
    """
    fd, st = open_regular(path)
    try:
        if st.st_size > limit:
            raise FileTooLarge(path, limit, st.st_size)
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0:
            block = os.read(fd, min(left, 1 << 16))
            if not block:
                break
            chunks.append(block)
            left -= len(block)
    finally:
        os.close(fd)
    if left <= 0:
        raise FileTooLarge(path, limit, None)
    return b"".join(chunks)


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n % (1 << 20) == 0 else f"{n:,}-byte"
