"""flock(2) on a lock file: the project's one way to take a file lock (the agent's daemon lock
and claims registry, the central box's push lock and last-seen times).

Lock files live in directories other users may write in (the claims registry is world-writable
and sticky, like /tmp) or that a careless set-up leaves open, so the file is opened with
``O_NOFOLLOW`` (a planted symlink is refused, never followed: a root daemon must not truncate
``/etc/shadow`` through one) and ``O_NONBLOCK`` (a planted FIFO does not hang the open), must be a
regular file, and is created ``O_EXCL`` with its mode set by ``fchmod`` — the umask (``UMask=0077``
in the agent's unit) must not make a lock others have to open unreadable to them.

flock works on a read-only descriptor, so a lock that others take (the claims registry's) is
opened read-only and its owner does not matter; a lock that records its holder's pid (the
daemon's ``agent.lock``) is opened read-write.

A lock file is never deleted while in use; if its owner deletes it anyway, ``FileLock`` notices
after taking the lock (the path no longer names the locked inode) and takes it again on the file
that is there now, so two holders never both believe they hold it.

Must stay importable on Python 3.8.
"""

from __future__ import annotations

import errno
import fcntl
import os
import random
import stat
import time
from typing import Optional

_BASE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class LockFileError(Exception):
    """The lock file cannot be used (a symlink, not a regular file, cannot be opened or made).

    ``reason`` is the bare cause ("a symlink", "Permission denied"), for the caller's message."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class LockBusy(Exception):
    """Someone else holds the lock (past the wait). ``holder``: the pid it recorded, if any."""

    def __init__(self, path: str, holder: Optional[str]) -> None:
        super().__init__(f"{path} is held" + (f" by pid {holder}" if holder else ""))
        self.path = path
        self.holder = holder


def open_lock_file(path: str, writable: bool = False, mode: int = 0o644) -> int:
    """A descriptor on the regular file ``path``, created with exactly ``mode`` if missing.

    Never ``O_CREAT`` on an existing file: the kernel's fs.protected_regular refuses that in a
    sticky directory when someone else owns the file. A file of ours with a narrower mode (made
    by an older version under a strict umask) gets ``mode`` back."""
    flags = (os.O_RDWR if writable else os.O_RDONLY) | _BASE_FLAGS
    for _ in range(10):
        created = False
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            try:
                fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, mode)
                created = True
            except FileExistsError:
                continue  # made by someone else just now: open theirs
            except OSError as e:
                raise LockFileError(path, _strerror(e)) from None
        except OSError as e:
            raise LockFileError(path, _strerror(e)) from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise LockFileError(path, "not a regular file")
            if created or (st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != mode):
                os.fchmod(fd, mode)
        except BaseException:
            os.close(fd)
            raise
        return fd
    raise LockFileError(path, "it keeps vanishing")  # pragma: no cover


def _strerror(e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return "a symlink (refused: it is never followed)"
    return e.strerror or str(e)


class FileLock:
    """An exclusive flock on ``path``: ``acquire(timeout_s)`` / ``release()``, or ``with``
    (which waits at most ``timeout_s``, 0: one try).

    ``record_pid``: after taking the lock, write this process's pid into the file (so the next
    taker can say who holds it); needs a writable file, hence a lock only its owner takes."""

    def __init__(
        self, path: str, mode: int = 0o644, record_pid: bool = False, timeout_s: float = 0.0
    ) -> None:
        self.path = path
        self.mode = mode
        self.record_pid = record_pid
        self.timeout_s = timeout_s
        self.fd = -1

    def acquire(self, timeout_s: float = 0.0) -> None:
        """Take the lock, waiting at most ``timeout_s`` (0: one try). Raises LockBusy or
        LockFileError."""
        if self.fd >= 0:
            raise RuntimeError(f"{self.path}: already held by this FileLock")
        deadline = time.monotonic() + timeout_s
        delay = 0.002
        while True:
            fd = open_lock_file(self.path, writable=self.record_pid, mode=self.mode)
            try:
                while not _try_flock(fd):
                    if time.monotonic() >= deadline:
                        raise LockBusy(self.path, _holder(fd) if self.record_pid else None)
                    time.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 0.05)
                if not _still_named(self.path, fd):
                    os.close(fd)  # deleted while we waited: lock the file there now
                    continue
                if self.record_pid:
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
            except BaseException:
                os.close(fd)
                raise
            self.fd = fd
            return

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing releases the flock; the file stays (unlinking races)
            self.fd = -1

    def __enter__(self) -> FileLock:
        self.acquire(self.timeout_s)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _still_named(path: str, fd: int) -> bool:
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (now.st_ino, now.st_dev) == (mine.st_ino, mine.st_dev)


def _holder(fd: int) -> Optional[str]:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return text if text.isdigit() else None
