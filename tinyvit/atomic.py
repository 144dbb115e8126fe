"""Atomic file writes: a crash, a kill or Ctrl-C never leaves a half-written file where a good one was.

The data goes to a temporary file in the same directory (so the rename cannot cross filesystems),
is flushed to disk, and is renamed over the target in one step (non-atomic saves are the usual cause of
"unexpected EOF" checkpoints after an interruption: Lightning-AI/pytorch-lightning#688).
"""
from __future__ import annotations

import os
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
