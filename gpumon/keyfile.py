"""Private key files (the SSH identity, the Google service-account key): too open is refused.

OpenSSH refuses a private key that others may read ("UNPROTECTED PRIVATE KEY FILE"); gpumon did
not, so a key left world-readable was used silently. Refused here, with the chmod that fixes it:

- readable, writable or executable by *others* (mode & 0o007): anyone on the central box could
  copy the fleet's key;
- writable by the *group*: anyone in it could swap the key for theirs.

Group-readable stays allowed: the README installs both keys ``root:gpumon 0640`` so the
``gpumon`` service user reads them without owning them.
"""

from __future__ import annotations

import os
import stat


def too_open(path: str, st: os.stat_result) -> str | None:
    """Why the key file at ``path`` may not be used, naming the fix; None when it may."""
    if not stat.S_ISREG(st.st_mode):
        return None  # a directory or device: the reader says what it is
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o007:
        return (
            f"{path} is open to every user on this machine (mode {mode:04o}); OpenSSH refuses "
            f"such a key and so does gpumon — chmod o-rwx {path}"
        )
    if mode & 0o020:
        return (
            f"{path} is writable by its group (mode {mode:04o}), so anyone in it could replace "
            f"the key — chmod g-w {path}"
        )
    return None
