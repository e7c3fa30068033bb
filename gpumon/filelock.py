"""A blocking flock(2) with a deadline, for read-merge-write of the central box's state files.

(Interim: the agent gains ``gpumon_agent.filelock`` in another change; once merged, this should
become a thin use of it — one way to take a file lock.)
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


class LockTimeout(Exception):
    """The lock was still held by someone else when the deadline came."""


@contextmanager
def held(path: Path, timeout_s: float, mode: int = 0o600) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing, never followed if a symlink),
    waiting at most ``timeout_s``; raises LockTimeout, or OSError if it cannot be opened."""
    fd = os.open(path, _FLAGS, mode)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
            if time.monotonic() >= deadline:
                raise LockTimeout(f"{path}: still locked after {timeout_s:g} s")
            time.sleep(0.01)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (unlinking it would race)
