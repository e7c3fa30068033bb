"""Atomic file replacement: the project's one way to write a file that others read.

A reader sees the old file or the new one, never a part; the new file has exactly the mode asked
for, whatever the umask (the agent's unit runs with ``UMask=0077``); and temporary files do not
pile up: one is removed by its writer on any error, and one left by a writer killed with SIGKILL
(its name carries the writer's pid) is removed by the next write of the same path.

(``O_TMPFILE`` would leave nothing even then, but naming the anonymous file needs
``linkat(AT_EMPTY_PATH)``, which is root-only, or ``/proc/self/fd``, which fails with EXDEV on
some kernels: measured here.)

Must stay importable on Python 3.8 and cheap to import (the agent's `report` fast path): module
level imports ``os`` only.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import BinaryIO, Optional, Union

    PathLike = Union[str, "os.PathLike[str]"]

# Temporary names are ".<name>.gpumon-tmp-<writer pid>-<random>" (the claims registry's
# clean-up reads them too).
TMP_MARK = ".gpumon-tmp-"
_FLAGS = os.O_WRONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)


def write_atomic(
    path: PathLike, data: bytes, mode: Optional[int] = 0o644, durable: bool = True
) -> None:
    """Replace ``path`` with ``data`` (``mode=None``: keep the current file's mode)."""
    with atomic_file(path, mode, durable) as f:
        f.write(data)


class atomic_file:
    """``with atomic_file(path, mode) as f: f.write(...)`` — ``f`` is a binary file; on a clean
    exit it is flushed, fsynced and renamed over ``path`` (then the directory is fsynced); on an
    exception nothing at ``path`` changes and the temporary data is gone.

    ``mode=None`` keeps the mode of the file being replaced (0o644 when there is none).
    ``durable=False`` skips the fsyncs, for files that mean nothing after a crash (a GPU claim
    is stale once its process is gone): still atomic, ~10 ms cheaper on a disk."""

    def __init__(self, path: PathLike, mode: Optional[int] = 0o644, durable: bool = True) -> None:
        self.path = os.fspath(path)
        self.durable = durable
        self.directory = os.path.dirname(self.path) or "."
        self.mode = mode
        self._file: Optional[BinaryIO] = None
        self._named: Optional[str] = None  # the temporary file, until renamed or removed

    def __enter__(self) -> BinaryIO:
        mode = self.mode
        if mode is None:
            try:
                mode = os.stat(self.path).st_mode & 0o7777
            except FileNotFoundError:
                mode = 0o644
        self.mode = mode
        _remove_orphans(self.directory, os.path.basename(self.path))
        self._named = os.path.join(
            self.directory,
            f".{os.path.basename(self.path)}{TMP_MARK}{os.getpid()}-{os.urandom(4).hex()}",
        )
        fd = os.open(self._named, _FLAGS | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.fchmod(fd, mode)  # the umask narrowed it; readers may be other users
            self._file = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            self._discard()
            raise
        return self._file

    def __exit__(self, kind: object, value: object, traceback: object) -> None:
        f = self._file
        assert f is not None
        try:
            if kind is None:
                f.flush()
                if self.durable:
                    os.fsync(f.fileno())
            f.close()
            if kind is None:
                assert self._named is not None
                os.replace(self._named, self.path)
                self._named = None
                if self.durable:
                    _fsync_directory(self.directory)
        finally:
            if not f.closed:
                try:
                    f.close()  # after a failed flush (a full disk) this raises again: the
                except OSError:  # first error is the one that propagates
                    pass
            self._discard()

    def _discard(self) -> None:
        if self._named is not None:
            try:
                os.unlink(self._named)
            except OSError:
                pass
            self._named = None


def _remove_orphans(directory: str, name: str) -> None:
    """Remove temporary files of ``name`` left by writers that no longer run."""
    prefix = f".{name}{TMP_MARK}"
    try:
        entries = os.listdir(directory)
    except OSError:
        return
    for entry in entries:
        if not entry.startswith(prefix):
            continue
        pid_text = entry[len(prefix) :].partition("-")[0]
        if not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        try:
            os.unlink(os.path.join(directory, entry))
        except OSError:
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _fsync_directory(directory: str) -> None:
    """Make the rename durable (a crash after it must not bring the old file back)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a directory; the rename itself is done
    finally:
        os.close(fd)
