"""Reading files in a local worker's directory, which the worker can rewrite at will.

A local worker runs user code as the spawner's OS user, so its status file, its log and even its
environment record may hold anything, or be replaced by a link, a FIFO or a device. The spawner
reads them only through :func:`read_worker_file`: regular files only, never through a final
symbolic link, never blocking on open, and never more than a given number of bytes.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


class UnreadableFile(Exception):
    """The file exists but is not something the spawner reads; ``str()`` says why, briefly."""


def open_worker_file(path: Path) -> int:
    """A read-only descriptor of the regular file ``path``; FileNotFoundError if there is none.

    Raises :class:`UnreadableFile` for a symbolic link or anything but a regular file. The caller
    closes the descriptor.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnreadableFile("it is a symbolic link") from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnreadableFile("it is not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_worker_file(path: Path, limit: int) -> bytes:
    """The whole content of ``path`` if it is a regular file of at most ``limit`` bytes.

    FileNotFoundError if there is no such file; :class:`UnreadableFile` otherwise.
    """
    fd = open_worker_file(path)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise UnreadableFile(f"it holds {size} bytes, more than the {limit} read")
        parts: list[bytes] = []
        total = 0
        # Read one byte more than allowed: the file may have grown since fstat.
        while total <= limit:
            part = os.read(fd, limit + 1 - total)
            if not part:
                break
            parts.append(part)
            total += len(part)
        if total > limit:
            raise UnreadableFile(f"it holds over {limit} bytes")
        return b"".join(parts)
    finally:
        os.close(fd)
