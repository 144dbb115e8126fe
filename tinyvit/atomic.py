"""Atomic file writes: a crash, a kill or Ctrl-C never leaves a half-written file where a good one was.

The data goes to a temporary file in the same directory (so the rename cannot cross filesystems),
is flushed to disk, and is renamed over the target in one step (non-atomic saves are the usual cause of
"unexpected EOF" checkpoints after an interruption: Lightning-AI/pytorch-lightning#688).
"""
from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def write_atomic(path, write: Callable[[BinaryIO], object]) -> None:
    """Call write(f) with a binary file object, then put the result at `path` in one step."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp creates 0600; give what open() would have given
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def open_append(path):
    """Open `path` to append text, creating it, the way a log is opened, but never through a link:
    a log that is a link (or a FIFO, a device) in a folder someone else could write would have
    its lines written into the link's target. Raises OSError naming the file."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise OSError(e.errno, f"{path}: not a regular file (a link, a folder or a device); not written to") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"{path}: not a regular file (a FIFO or a device); not written to")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "a")
