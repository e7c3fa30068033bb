"""known_hosts: which host keys are trusted, checking a server's key, and recording one (for
`gpumon trust HOST`, gpumon.trust).

Files read, like OpenSSH: the system ``/etc/ssh/ssh_known_hosts``, the user's
``~/.ssh/known_hosts``, and ``[poll] known_hosts`` if set. OpenSSH's format is read as OpenSSH
reads it: ``host`` or ``[host]:port`` names, comma lists, ``*``/``?`` wildcards, ``!`` negation,
hashed ``|1|salt|hash`` names and ``@revoked`` lines. ``@cert-authority`` lines are skipped
(paramiko cannot check host certificates), so such hosts show as "host key unknown".

Never trust on first use: an unknown key makes the server OFF until an admin runs
``gpumon trust HOST``, which shows the fingerprint and records it.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import logging
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gpumon.config import Config

if TYPE_CHECKING:
    import paramiko


log = logging.getLogger(__name__)

SYSTEM_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"
USER_KNOWN_HOSTS = "~/.ssh/known_hosts"

TRUSTED = "trusted"
UNKNOWN = "unknown"
CHANGED = "changed"
REVOKED = "revoked"

# known_hosts key type → the signature algorithms a server proves it with (paramiko names).
_ALGORITHMS = {"ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256")}


@dataclass
class KnownKey:
    patterns: list[str]
    key_type: str
    blob: bytes
    path: str
    line: int
    marker: str | None = None  # "@revoked" (other markers are skipped when reading)

    def matches(self, name: str) -> bool:
        """OpenSSH host-pattern matching: any positive match and no negated match."""
        hit = False
        for pattern in self.patterns:
            negated = pattern.startswith("!")
            pattern = pattern[1:] if negated else pattern
            if _pattern_matches(pattern, name):
                if negated:
                    return False
                hit = True
        return hit

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


@dataclass
class Verdict:
    status: str  # TRUSTED | UNKNOWN | CHANGED | REVOKED
    name: str  # the known_hosts name looked up
    key_type: str
    fingerprint: str
    known: list[KnownKey] = field(default_factory=list)  # entries for this name

    def reason(self, server: str) -> str:
        """The OFF reason text for ``server`` (the sweep shows it; `gpumon trust` prints it)."""
        if self.status == UNKNOWN:
            return f"host key unknown — run `gpumon trust {server}`"
        if self.status == REVOKED:
            return (
                f"HOST KEY REVOKED: {self.name} offers {self.key_type} {self.fingerprint}, "
                f"marked @revoked in {self.known[0].where if self.known else 'known_hosts'}"
            )
        if self.status == CHANGED:
            where = ", ".join(k.where for k in self.known)
            held = ", ".join(sorted({k.key_type for k in self.known}))
            return (
                f"HOST KEY CHANGED: {self.name} now offers {self.key_type} {self.fingerprint}, "
                f"known_hosts holds a different {held} key ({where}) — possible "
                "man-in-the-middle; if the server was reinstalled, remove the old key with "
                f"`ssh-keygen -R '{self.name}' -f FILE` and run `gpumon trust {server}`"
            )
        return "host key trusted"


def fingerprint(blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint of a public key blob."""
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_files(config: Config) -> list[str]:
    files = [SYSTEM_KNOWN_HOSTS, os.path.expanduser(USER_KNOWN_HOSTS)]
    if config.poll.known_hosts:
        files.append(os.path.expanduser(config.poll.known_hosts))
    return files


def record_file(config: Config) -> str:
    """Where `gpumon trust` records keys: ``[poll] known_hosts`` if set, else the user's."""
    return os.path.expanduser(config.poll.known_hosts or USER_KNOWN_HOSTS)


class KnownHosts:
    """All known_hosts files, re-read only when one changes (so `serve` sees `trust`)."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths
        self._cache: dict[str, tuple[tuple[int, int] | None, list[KnownKey]]] = {}

    def entries(self) -> list[KnownKey]:
        found: list[KnownKey] = []
        for path in self.paths:
            found.extend(self._file(path))
        return found

    def _file(self, path: str) -> list[KnownKey]:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return []
        except OSError as e:
            log.warning("%s: cannot read known_hosts (%s); its keys are not trusted", path, e)
            return []
        stamp = (st.st_mtime_ns, st.st_size)
        cached = self._cache.get(path)
        if cached and cached[0] == stamp:
            return cached[1]
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                keys = list(parse_known_hosts(f.read(), path))
        except OSError as e:
            log.warning("%s: cannot read known_hosts (%s); its keys are not trusted", path, e)
            return []
        self._cache[path] = (stamp, keys)
        return keys

    def for_name(self, name: str) -> list[KnownKey]:
        return [k for k in self.entries() if k.marker is None and k.matches(name)]

    def check(self, name: str, key_type: str, blob: bytes) -> Verdict:
        entries = self.entries()
        verdict = Verdict(UNKNOWN, name, key_type, fingerprint(blob))
        revoked = [k for k in entries if k.marker == "@revoked" and k.blob == blob]
        if revoked:
            verdict.status, verdict.known = REVOKED, revoked
            return verdict
        known = [k for k in entries if k.marker is None and k.matches(name)]
        verdict.known = known
        if any(k.blob == blob for k in known):
            verdict.status = TRUSTED
        elif known:
            # A different key — of the same type, or of another type when the server no longer
            # offers any type we know (we ask for known types first): both are a changed key.
            verdict.status = CHANGED
        return verdict

    def preferred_algorithms(self, name: str, available: tuple[str, ...]) -> list[str]:
        """Host key algorithms to offer: the types known for ``name`` first, as OpenSSH does,
        so a server with several keys proves itself with the one we hold."""
        first: list[str] = []
        for known in self.for_name(name):
            for algorithm in _ALGORITHMS.get(known.key_type, (known.key_type,)):
                if algorithm in available and algorithm not in first:
                    first.append(algorithm)
        return first + [a for a in available if a not in first]


def parse_known_hosts(text: str, path: str):
    """Yield a KnownKey per usable line; unusable lines are skipped (as OpenSSH does)."""
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        marker = None
        if fields[0].startswith("@"):
            marker, fields = fields[0], fields[1:]
            if marker != "@revoked":  # @cert-authority: certificates are not checked
                continue
        if len(fields) < 3:
            log.debug("%s:%d: not a known_hosts line, skipped", path, number)
            continue
        patterns, key_type, encoded = fields[0].split(","), fields[1], fields[2]
        try:
            blob = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            log.debug("%s:%d: bad base64 key, skipped", path, number)
            continue
        yield KnownKey(patterns, key_type, blob, path, number, marker)


@functools.lru_cache(maxsize=65536)
def _pattern_matches(pattern: str, name: str) -> bool:
    """One known_hosts pattern against one name. Cached: every connection looks its name up
    in every line of every file (twice), which uncached cost O(servers²) regex builds and
    HMACs a cold sweep — 27 % of its CPU at 32 servers."""
    if pattern.startswith("|1|"):
        try:
            _, _, salt64, hash64 = pattern.split("|", 3)
            salt, expected = base64.b64decode(salt64), base64.b64decode(hash64)
        except (ValueError, binascii.Error):
            return False
        mac = hmac.new(salt, name.encode(), hashlib.sha1).digest()
        return hmac.compare_digest(mac, expected)
    # Only * and ? are special in ssh patterns ([host]:port brackets are literal).
    if "*" not in pattern and "?" not in pattern:
        return pattern.lower() == name.lower()
    regex = "".join(
        ".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern.lower()
    )
    return re.fullmatch(regex, name.lower()) is not None


def append_known_host(path: str, name: str, key: paramiko.PKey) -> None:
    """Append one ``name type base64`` line; never rewrites what is there."""
    directory = os.path.dirname(path)
    if directory and not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "ab") as f:
        # A file whose last line lacks its newline would swallow ours into it.
        if f.tell() > 0:
            with open(path, "rb") as existing:
                existing.seek(-1, os.SEEK_END)
                if existing.read(1) != b"\n":
                    f.write(b"\n")
        f.write(f"{name} {key.get_name()} {key.get_base64()}\n".encode())
