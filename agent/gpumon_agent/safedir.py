"""Directories the agent writes in or trusts: made with explicit modes, checked before use.

Whoever can write a directory decides what appears in it: a planted symlink, a file in place of
ours, or — by renaming the directory itself — a different directory at the same path. So a
directory is trusted only when it and every directory above it can be changed by root or the
trusted owners alone (the rule OpenSSH's StrictModes applies to ~/.ssh): each is owned by root or
one of them, and none is writable by group or others unless it is sticky like /tmp (there others
may add names but not rename or remove ours).

Must stay importable on Python 3.8.
"""

from __future__ import annotations

import os
import pwd
import stat
from dataclasses import dataclass
from typing import AbstractSet, List, Optional

_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid{uid}"


def make_dirs(path: str, mode: int = 0o755) -> List[str]:
    """Create ``path`` and its missing parents, each with exactly ``mode`` (not narrowed by the
    umask: others must reach what is inside). Returns the directories created, top first.
    Raises OSError; one made by someone else meanwhile is left as it is (the caller checks)."""
    missing = []
    current = os.path.abspath(path)
    while not os.path.lexists(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    made = []
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)  # private until its mode is set
        except FileExistsError:
            continue
        fd = os.open(directory, _OPEN_DIR)
        try:
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        made.append(directory)
    return made


@dataclass
class Untrusted:
    """Why a directory is not trusted: ``path`` (it, or the directory above it at fault),
    ``kind`` ("missing", "symlink", "not_dir", "owner", "writable", "unreadable") and ``text``
    ("/x is owned by alice (uid 1001)")."""

    path: str
    kind: str
    text: str
    owner: Optional[int] = None

    def __str__(self) -> str:
        return self.text


def untrusted(path: str, owners: AbstractSet[int], shared: bool = False) -> Optional[Untrusted]:
    """None when ``path`` is a directory only root and ``owners`` can change, else why not.

    ``shared``: ``path`` itself may be writable by everyone if sticky (the claims registry,
    1777); otherwise it must not be writable by group or others at all (the state directory).
    Directories above it may be sticky and world-writable (/tmp)."""
    trusted = set(owners) | {0}
    current = os.path.abspath(path)
    first = True
    while True:
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            return Untrusted(current, "missing", f"{current} does not exist")
        except OSError as e:
            return Untrusted(current, "unreadable", f"{current} cannot be checked ({e.strerror})")
        if stat.S_ISLNK(st.st_mode):
            return Untrusted(current, "symlink", f"{current} is a symlink", st.st_uid)
        if not stat.S_ISDIR(st.st_mode):
            return Untrusted(current, "not_dir", f"{current} is not a directory", st.st_uid)
        if st.st_uid not in trusted:
            text = f"{current} is owned by {user_name(st.st_uid)} (uid {st.st_uid})"
            return Untrusted(current, "owner", text, st.st_uid)
        writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        sticky = st.st_mode & stat.S_ISVTX
        if writable and (not sticky or (first and not shared)):
            who = "others" if st.st_mode & stat.S_IWOTH else "its group"
            mode = f"mode {stat.S_IMODE(st.st_mode):04o}" + ("" if sticky else ", no sticky bit")
            return Untrusted(current, "writable", f"{current} is writable by {who} ({mode})")
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent
        first = False
