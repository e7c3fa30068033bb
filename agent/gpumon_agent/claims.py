"""The GPU claims registry: which job holds which GPU, as training jobs registered it.

Layout (``AgentSettings.claims_path``, default ``/run/gpumon/claims``; docs/claims.md)::

    claims/                     mode 1777 (sticky, world-writable, like /tmp), made by the agent
      .lock                     flock(2) target serialising allocation; never deleted
      u1000-p4242-9f3a1c.json   one claim: u<uid>-p<pid>-<random>.json, owned by that uid
      .u1000-p4242-….tmp…       a claim being written (readers skip dot files)

Trust model: any user may write here, so every file is checked before it counts. The file's
owner, the uid in its name and the uid inside must agree (the sticky bit stops users from
replacing each other's files, the uid check stops them from forging someone else's); symlinks
and non-regular files are refused (O_NOFOLLOW, fstat); size and fields are capped. A bad file
becomes a ``ClaimFileError`` in the Report, never an exception.

A claim is live while the process that made it runs: same pid, same process start time (so a
reused pid does not revive it), same uid, not a zombie. A dead claim is ignored, and removed by
whoever may: its owner, root, or the registry's owner (the agent, which made the directory;
in a sticky directory its owner may delete any file).

Entry points: ``ClaimRegistry`` (files), ``choose_gpus`` (allocation, pure), ``annotate`` and
``IdleTracker`` (per-GPU claim status in a Report), ``print_claims`` (``gpumon-agent claims``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import pwd
import random
import re
import secrets
import socket
import stat
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple, Union

from gpumon_agent.report import (
    GPU_OK,
    ClaimFileError,
    ClaimInfo,
    Gpu,
    Report,
    parse_utc_iso,
    utc_iso,
)
from gpumon_agent.settings import AgentSettings
from gpumon_agent.usage import judge_use

CLAIM_SCHEMA = "gpumon.claim"
CLAIM_VERSION = 1
MAX_CLAIM_BYTES = 64 * 1024  # a claim file larger than this is refused unread
MAX_PROGRESS_BYTES = 4 * 1024  # progress, as compact JSON
MAX_JOB_CHARS = 200
MAX_COMMAND_CHARS = 4096
# Files read per scan: bounds the agent's work and the Report's size whatever users drop here.
MAX_CLAIM_FILES = 128
LOCK_NAME = ".lock"
DEFAULT_LOCK_TIMEOUT_S = 10.0
# psutil derives a start time from boot time + clock ticks; the same process reads the same
# value, a new process with the recycled pid differs by far more than this.
START_TIME_SLACK_S = 1.0

_NAME_RE = re.compile(r"^u(\d+)-p(\d+)-([0-9a-f]{6,32})\.json$")
_TMP_RE = re.compile(r"^\.u(\d+)-p(\d+)-[0-9a-f]+\.json\.tmp[0-9a-f]+$")

# A GPU request: "auto" or explicit indices / UUIDs (see parse_gpu_request).
GpuRequest = Optional[List[Union[int, str]]]


class ClaimError(Exception):
    """A claim could not be made or kept. The message says what happened and what to do."""


class RegistryError(ClaimError):
    """The registry directory is missing, unusable or unsafe."""


class LockTimeout(ClaimError):
    """Another claimer held the registry lock for longer than the bounded wait."""


class NoFreeGpu(ClaimError):
    """Not enough GPUs are free (or the ones asked for are taken)."""


class InvalidClaimFile(ValueError):
    """Why one claim file does not count (becomes a ClaimFileError)."""


# --- the claim record --------------------------------------------------------------------------


@dataclass
class ClaimedGpu:
    index: int
    uuid: Optional[str] = None


@dataclass
class ClaimRecord:
    """One claim file's content, validated. ``path`` is where it was read from or written to."""

    job: str
    user: str
    uid: int
    pid: int
    pid_started: float  # psutil create_time() of pid: tells a reused pid apart
    hostname: str
    command: str
    started_at: str  # utc_iso
    gpus: List[ClaimedGpu] = field(default_factory=list)
    updated_at: Optional[str] = None
    progress: Dict[str, Any] = field(default_factory=dict)
    path: str = ""

    @property
    def file_name(self) -> str:
        return os.path.basename(self.path)

    def covers(self, gpu: Gpu) -> bool:
        """True if this claim holds ``gpu`` (by UUID when both sides know it, else by index)."""
        for held in self.gpus:
            if held.uuid is not None and gpu.uuid is not None:
                if held.uuid == gpu.uuid:
                    return True
            elif held.index == gpu.index:
                return True
        return False

    def info(self) -> ClaimInfo:
        return ClaimInfo(
            job=self.job,
            user=self.user,
            pid=self.pid,
            started_at=self.started_at,
            updated_at=self.updated_at,
            progress=dict(self.progress),
        )

    def to_dict(self) -> Dict[str, Any]:
        return {
            "schema": CLAIM_SCHEMA,
            "version": CLAIM_VERSION,
            "job": self.job,
            "user": self.user,
            "uid": self.uid,
            "pid": self.pid,
            "pid_started": self.pid_started,
            "hostname": self.hostname,
            "command": self.command,
            "started_at": self.started_at,
            "updated_at": self.updated_at,
            "gpus": [{"index": g.index, "uuid": g.uuid} for g in self.gpus],
            "progress": self.progress,
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), allow_nan=False, separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, data: Any, path: str = "") -> ClaimRecord:
        """Validate a decoded claim file; raises InvalidClaimFile naming the bad field."""
        if not isinstance(data, dict):
            raise InvalidClaimFile("not a JSON object")
        if data.get("schema") != CLAIM_SCHEMA:
            raise InvalidClaimFile(f"schema is {data.get('schema')!r}, expected {CLAIM_SCHEMA!r}")
        if data.get("version") != CLAIM_VERSION:
            raise InvalidClaimFile(
                f"claim version {data.get('version')!r}, this agent reads {CLAIM_VERSION}"
                " (mixed gpumon-agent versions on this server?)"
            )
        gpus_raw = _field(data, "gpus", list)
        if not gpus_raw:
            raise InvalidClaimFile("field 'gpus': claims no GPU")
        gpus = []
        for i, g in enumerate(gpus_raw):
            if not isinstance(g, dict):
                raise InvalidClaimFile(f"field 'gpus[{i}]': expected an object")
            index = _field(g, "index", int, f"gpus[{i}].")
            uuid = _field(g, "uuid", str, f"gpus[{i}].", optional=True)
            if index < 0:
                raise InvalidClaimFile(f"field 'gpus[{i}].index': negative")
            gpus.append(ClaimedGpu(index=index, uuid=uuid))
        progress = _field(data, "progress", dict)
        if len(_compact(progress)) > MAX_PROGRESS_BYTES:
            raise InvalidClaimFile(f"field 'progress': larger than {MAX_PROGRESS_BYTES} bytes")
        record = cls(
            job=_capped(data, "job", MAX_JOB_CHARS),
            user=_capped(data, "user", 64),
            uid=_field(data, "uid", int),
            pid=_field(data, "pid", int),
            pid_started=float(_field(data, "pid_started", float)),
            hostname=_capped(data, "hostname", 255),
            command=_capped(data, "command", MAX_COMMAND_CHARS),
            started_at=_capped(data, "started_at", 40),
            updated_at=_field(data, "updated_at", str, optional=True),
            gpus=gpus,
            progress=progress,
            path=path,
        )
        for name in ("started_at", "updated_at"):
            value = getattr(record, name)
            if value is not None:
                try:
                    parse_utc_iso(value)
                except ValueError:
                    raise InvalidClaimFile(f"field {name!r}: not an ISO-8601 time") from None
        if record.uid < 0 or record.pid <= 0:
            raise InvalidClaimFile("fields 'uid'/'pid': out of range")
        return record


def _field(
    data: Dict[str, Any], name: str, kind: type, prefix: str = "", optional: bool = False
) -> Any:
    if name not in data:
        raise InvalidClaimFile(f"field '{prefix}{name}': missing")
    value = data[name]
    if value is None and optional:
        return None
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise InvalidClaimFile(
            f"field '{prefix}{name}': expected {kind.__name__}, got {type(value).__name__}"
        )
    return value


def _capped(data: Dict[str, Any], name: str, limit: int) -> str:
    value = _field(data, name, str)
    if len(value) > limit:
        raise InvalidClaimFile(f"field {name!r}: longer than {limit} characters")
    return value


def _compact(value: Any) -> str:
    return json.dumps(value, allow_nan=False, separators=(",", ":"))


def clean_progress(progress: Dict[str, Any]) -> Dict[str, Any]:
    """Progress as the registry stores it: JSON values only, capped in size.

    Numbers from numpy/torch (anything with ``.item()``) become Python numbers; NaN and
    infinities become the strings "nan", "inf", "-inf" (a diverging loss must not break the
    Report, which is strict JSON). Raises TypeError for a value JSON cannot hold and
    ValueError when the whole is over MAX_PROGRESS_BYTES.
    """
    cleaned = {str(k): _clean_value(v, str(k)) for k, v in progress.items()}
    size = len(_compact(cleaned))
    if size > MAX_PROGRESS_BYTES:
        raise ValueError(
            f"claim progress is {size} bytes as JSON, over the {MAX_PROGRESS_BYTES}-byte limit: "
            "report a few numbers (epoch, loss, accuracy), not arrays"
        )
    return cleaned


def _clean_value(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, (list, tuple)):
        return [_clean_value(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {str(k): _clean_value(v, f"{where}.{k}") for k, v in value.items()}
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item):
        try:
            return _clean_value(item(), where)
        except (TypeError, ValueError):
            pass
    raise TypeError(
        f"claim progress {where!r}: {type(value).__name__} is not a JSON value "
        "(use numbers, strings, booleans, lists or dicts)"
    )


# --- process identity --------------------------------------------------------------------------


def process_start_time(pid: int) -> Optional[float]:
    """psutil's create_time() for pid, or None if there is no such (live) process."""
    import psutil  # lazy: keeps `import gpumon_agent.claims` cheap

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None


def check_owner_process(record: ClaimRecord) -> Optional[str]:
    """None if the claim's process is alive and is the one that wrote it, "stale" if it is gone
    (dead, zombie, or the pid now belongs to a newer process), else why the claim is bogus."""
    import psutil

    try:
        proc = psutil.Process(record.pid)
        with proc.oneshot():
            if proc.status() == psutil.STATUS_ZOMBIE:
                return "stale"
            if abs(proc.create_time() - record.pid_started) > START_TIME_SLACK_S:
                return "stale"
            uids = proc.uids()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return "stale"
    except psutil.AccessDenied:  # hidepid=2 on /proc: cannot tell, trust the file
        return None
    if record.uid not in (uids.real, uids.effective):
        return f"pid {record.pid} runs as uid {uids.real}, not the claim's uid {record.uid}"
    return None


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid{uid}"


# --- the registry directory -------------------------------------------------------------------


def _missing_hint(path: str) -> str:
    return (
        "start the gpumon agent on this server (it creates the registry: "
        "`systemctl start gpumon-agent`), or set GPUMON_CLAIMS_DIR to a directory shared by "
        f"all users (mode 1777) — it is {path}"
    )


class ClaimRegistry:
    """The claim files in one directory. Reading never raises for a bad file; writing raises
    ClaimError with what to do."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock_path = os.path.join(path, LOCK_NAME)

    # -- directory ------------------------------------------------------------------------

    def ensure(self, create: bool = True) -> None:
        """Make sure the registry exists and is safe to write in; create it (1777) if missing
        and ``create``. The agent calls this at start, claimers before claiming."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            if not create:
                raise RegistryError(
                    f"the claims registry {self.path} does not exist: " + _missing_hint(self.path)
                ) from None
            self._create_dir()
            st = os.lstat(self.path)
        except OSError as e:
            raise RegistryError(
                f"cannot reach the claims registry {self.path} ({e.strerror}): "
                + _missing_hint(self.path)
            ) from None
        if stat.S_ISLNK(st.st_mode):
            raise RegistryError(
                f"the claims registry {self.path} is a symlink; refusing it (ask root to "
                "remove it and restart the gpumon agent)"
            )
        if not stat.S_ISDIR(st.st_mode):
            raise RegistryError(f"the claims registry {self.path} is not a directory")
        shared_write = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if shared_write and not st.st_mode & stat.S_ISVTX:
            raise RegistryError(
                f"the claims registry {self.path} is writable by others without the sticky bit, "
                f"so users could delete each other's claims: run `chmod 1777 {self.path}`"
            )
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise RegistryError(
                f"you cannot write in the claims registry {self.path} (mode "
                f"{stat.S_IMODE(st.st_mode):o}, owner uid {st.st_uid}): it should be mode 1777 "
                "like /tmp — restart the gpumon agent, or set GPUMON_CLAIMS_DIR"
            )
        # Made now, by whoever comes first (ideally the agent, at start): see _open_lock.
        os.close(self._open_lock())

    def _create_dir(self) -> None:
        parent = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(parent, exist_ok=True)
            os.mkdir(self.path, 0o700)
            # Private until it is fully set up, then shared like /tmp.
            os.chmod(self.path, 0o1777)
        except FileExistsError:
            return  # someone else made it just now; ensure() checks what they made
        except OSError as e:
            raise RegistryError(
                f"the claims registry {self.path} does not exist and cannot be created "
                f"({e.strerror}): " + _missing_hint(self.path)
            ) from None

    # -- the allocation lock --------------------------------------------------------------

    def _open_lock(self) -> int:
        """An fd on the lock file, created (0644) if missing. O_NOFOLLOW refuses a symlink and
        O_NONBLOCK keeps a FIFO planted there from hanging the open; flock works on a read-only
        fd, so the file's owner does not matter (it is never written)."""
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        for _ in range(10):
            try:
                fd = os.open(self.lock_path, flags)
            except FileNotFoundError:
                try:
                    # Never O_CREAT on an existing file: fs.protected_regular refuses that in a
                    # sticky directory when someone else owns the file.
                    fd = os.open(self.lock_path, flags | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    continue
            except OSError as e:
                raise RegistryError(self._lock_trouble(f"cannot open it ({e.strerror})")) from None
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                raise RegistryError(self._lock_trouble("it is not a regular file"))
            return fd
        raise RegistryError(self._lock_trouble("it keeps vanishing"))  # pragma: no cover

    def _lock_trouble(self, what: str) -> str:
        owner = ""
        with contextlib.suppress(OSError):
            owner = f", owned by {user_name(os.lstat(self.lock_path).st_uid)}"
        return (
            f"the claims lock {self.lock_path}{owner}: {what} — ask root to remove it "
            "(the gpumon agent recreates it)"
        )

    @contextlib.contextmanager
    def lock(self, timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> Iterator[None]:
        """Hold the registry's allocation lock (flock), waiting at most ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        delay = 0.002
        while True:
            fd = self._open_lock()
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() >= deadline:
                            raise LockTimeout(
                                f"waited {timeout_s:g} s for the claims lock {self.lock_path} "
                                "(another claimer holds it; if this lasts, find it with "
                                f"`fuser -v {self.lock_path}`) — try again"
                            ) from None
                        time.sleep(delay * (0.5 + random.random()))
                        delay = min(delay * 2, 0.05)
                # The owner of a lock file may delete it while we wait; a lock on a deleted
                # inode excludes nobody, so take the lock again on the file now there.
                try:
                    now = os.stat(self.lock_path, follow_symlinks=False)
                except FileNotFoundError:
                    now = None
                mine = os.fstat(fd)
                if now is None or (now.st_ino, now.st_dev) != (mine.st_ino, mine.st_dev):
                    os.close(fd)
                    fd = -1
                    continue
                yield
                return
            finally:
                if fd >= 0:
                    os.close(fd)  # closing releases the flock

    # -- writing my claims ----------------------------------------------------------------

    def new_name(self, uid: int, pid: int) -> str:
        return f"u{uid}-p{pid}-{secrets.token_hex(4)}.json"

    def _write_file(self, final: str, data: bytes) -> None:
        """Write ``data`` to a fresh dot file (O_EXCL|O_NOFOLLOW) and rename it to ``final``:
        readers see the old content or the new, never a half-written file. Renaming over a
        file of another user fails (EPERM): the sticky bit guards other people's claims."""
        tmp = os.path.join(self.path, f".{os.path.basename(final)}.tmp{secrets.token_hex(4)}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(tmp, flags, 0o644)
        renamed = False
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fchmod(fd, 0o644)  # readable by the agent and `gpumon-agent claims` whatever umask
            os.close(fd)
            fd = -1
            os.rename(tmp, final)
            renamed = True
        finally:
            if fd >= 0:
                os.close(fd)
            if not renamed:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def create(self, record: ClaimRecord) -> None:
        """Publish a new claim (sets record.path). Call under lock()."""
        record.path = os.path.join(self.path, self.new_name(record.uid, record.pid))
        try:
            self._write_file(record.path, record.to_json())
        except OSError as e:
            raise RegistryError(
                f"cannot write a claim in {self.path} ({e.strerror}): " + _missing_hint(self.path)
            ) from None

    def rewrite(self, record: ClaimRecord) -> None:
        """Replace my claim file with ``record`` (progress updates)."""
        self._check_mine(record, "update")
        try:
            self._write_file(record.path, record.to_json())
        except OSError as e:
            raise ClaimError(f"cannot update the claim {record.path} ({e.strerror})") from None

    def release(self, record: ClaimRecord) -> None:
        """Remove my claim file. Gone already is fine; someone else's is refused."""
        try:
            self._check_mine(record, "release")
        except FileNotFoundError:
            return
        try:
            os.unlink(record.path)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise ClaimError(f"cannot release the claim {record.path} ({e.strerror})") from None

    def _check_mine(self, record: ClaimRecord, what: str) -> None:
        try:
            st = os.lstat(record.path)
        except FileNotFoundError:
            if what == "release":
                raise
            raise ClaimError(
                f"the claim {record.path} is gone (removed by root?); cannot {what} it"
            ) from None
        euid = os.geteuid()
        if st.st_uid != euid or record.uid != euid:
            raise ClaimError(
                f"the claim {record.path} belongs to {user_name(st.st_uid)}, not to you "
                f"({user_name(euid)}): cannot {what} it"
            )

    # -- reading everyone's claims --------------------------------------------------------

    def read(self, path: str, trusted: Optional[Set[int]] = None) -> ClaimRecord:
        """One claim file, checked (raises InvalidClaimFile with the reason).

        The file's owner must be the uid its name and content give — or one of ``trusted``
        (default: root and the registry's owner, who may replace any file here anyway). That
        covers systemd, which chowns a service's RuntimeDirectory to the service's user,
        recursively, when a DynamicUser= uid changes."""
        if trusted is None:
            trusted = {0, _owner(self.path)}
        name = os.path.basename(path)
        m = _NAME_RE.match(name)
        if m is None:
            raise InvalidClaimFile(
                "not a claim file name (expected u<uid>-p<pid>-<hex>.json); ignored"
            )
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise InvalidClaimFile("a symlink; refused") from None
            raise InvalidClaimFile(f"cannot open: {e.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise InvalidClaimFile(f"not a regular file ({_file_kind(st.st_mode)}); refused")
            name_uid, name_pid = int(m.group(1)), int(m.group(2))
            if st.st_uid != name_uid and st.st_uid not in trusted:
                raise InvalidClaimFile(
                    f"owned by uid {st.st_uid} but named for uid {name_uid}; refused"
                )
            if st.st_size > MAX_CLAIM_BYTES:
                raise InvalidClaimFile(
                    f"{st.st_size} bytes, over the {MAX_CLAIM_BYTES}-byte limit; refused"
                )
            chunks = []
            left = MAX_CLAIM_BYTES + 1
            while left > 0:
                chunk = os.read(fd, left)
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
        finally:
            os.close(fd)
        raw = b"".join(chunks)
        if len(raw) > MAX_CLAIM_BYTES:
            raise InvalidClaimFile(f"over the {MAX_CLAIM_BYTES}-byte limit; refused")
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise InvalidClaimFile(f"not JSON ({e})") from None
        record = ClaimRecord.from_dict(data, path)
        if record.uid != name_uid:
            raise InvalidClaimFile(
                f"records uid {record.uid} but is named for uid {name_uid}; refused"
            )
        if record.uid != st.st_uid and st.st_uid not in trusted:
            raise InvalidClaimFile(
                f"records uid {record.uid} but the file is owned by uid {st.st_uid}; refused"
            )
        if record.pid != name_pid:
            raise InvalidClaimFile(f"records pid {record.pid} but is named for pid {name_pid}")
        return record

    def live_claims(self) -> Tuple[List[ClaimRecord], List[ClaimFileError]]:
        """The live claims, and a ClaimFileError per file that does not count. Never raises.

        Stale claims (their process is gone) are skipped, and deleted when this process may
        (it owns them, or is root); leftover temporary files of dead writers likewise. A
        missing registry means no claims (the agent creates it)."""
        try:
            names = sorted(os.listdir(self.path))
        except FileNotFoundError:
            return [], []
        except OSError as e:
            return [], [ClaimFileError(self.path, f"cannot list the claims registry: {e.strerror}")]
        claims: List[ClaimRecord] = []
        errors: List[ClaimFileError] = []
        counted = 0
        # Who may delete in a sticky directory: the file's owner, the directory's, and root.
        # The last two may replace any file here, so files they own are trusted as named.
        cleaners = {0, _owner(self.path)}
        for name in names:
            path = os.path.join(self.path, name)
            if name.startswith("."):
                self._clean_tmp(name, path, cleaners)
                continue
            counted += 1
            if counted > MAX_CLAIM_FILES:
                errors.append(
                    ClaimFileError(
                        self.path,
                        f"more than {MAX_CLAIM_FILES} claim files; the rest were not read "
                        "(ask root to look at the registry)",
                    )
                )
                break
            try:
                record = self.read(path, cleaners)
            except InvalidClaimFile as e:
                errors.append(ClaimFileError(path, str(e)))
                continue
            verdict = check_owner_process(record)
            if verdict == "stale":
                self._remove_stale(path, record.uid, cleaners)
            elif verdict is not None:
                errors.append(ClaimFileError(path, verdict + "; refused"))
            else:
                claims.append(record)
        return claims, errors

    def _remove_stale(self, path: str, owner_uid: int, cleaners: Set[int]) -> None:
        if os.geteuid() in cleaners | {owner_uid}:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def _clean_tmp(self, name: str, path: str, cleaners: Set[int]) -> None:
        m = _TMP_RE.match(name)
        if m is None:
            return
        uid, pid = int(m.group(1)), int(m.group(2))
        if os.geteuid() not in cleaners | {uid} or process_start_time(pid) is not None:
            return
        with contextlib.suppress(OSError):
            if os.lstat(path).st_uid == uid:
                os.unlink(path)


def _owner(path: str) -> int:
    try:
        return os.stat(path).st_uid
    except OSError:
        return 0


def _file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return kind
    return "not a plain file"


def new_record(
    job: str, command: str, gpus: Sequence[Gpu], pid: Optional[int] = None
) -> ClaimRecord:
    """A claim by this process (or ``pid``, one of this user's) on ``gpus``, started now."""
    pid = os.getpid() if pid is None else pid
    started = process_start_time(pid)
    if started is None:
        raise ClaimError(f"process {pid} is not running; cannot claim GPUs for it")
    uid = os.geteuid()
    return ClaimRecord(
        job=(job or "?")[:MAX_JOB_CHARS],
        user=user_name(uid)[:64],
        uid=uid,
        pid=pid,
        pid_started=started,
        hostname=socket.gethostname()[:255],
        command=command[:MAX_COMMAND_CHARS],
        started_at=utc_iso(),
        gpus=[ClaimedGpu(index=g.index, uuid=g.uuid) for g in gpus],
    )


# --- allocation --------------------------------------------------------------------------------


def parse_gpu_request(gpus: Union[str, int, Sequence[Union[int, str]], None]) -> GpuRequest:
    """The request: "auto" (or None) → None; "0,2" / [0, 2] / "GPU-…,GPU-…" / ["GPU-…"] → the list.

    Raises ClaimError for anything else (an empty list, a negative index, junk)."""
    if gpus is None:
        return None
    if isinstance(gpus, bool):
        raise ClaimError(f"gpus={gpus!r}: give 'auto', indices or UUIDs")
    if isinstance(gpus, int):
        items: List[Any] = [gpus]
    elif isinstance(gpus, str):
        text = gpus.strip()
        if text.lower() == "auto":
            return None
        items = [part.strip() for part in text.split(",")]
    else:
        items = list(gpus)
    out: List[Union[int, str]] = []
    for item in items:
        if isinstance(item, bool):
            raise ClaimError(f"gpus: {item!r} is not a GPU index or UUID")
        if isinstance(item, int):
            value: Union[int, str] = item
        elif isinstance(item, str) and item.strip().isdigit():
            value = int(item.strip())
        elif isinstance(item, str) and re.match(r"^(GPU|MIG)-[0-9A-Za-z-]+$", item.strip()):
            value = item.strip()
        else:
            raise ClaimError(
                f"gpus: {item!r} is not a GPU index (0, 1, …) or UUID (GPU-…); "
                "use 'auto' to let gpumon pick"
            )
        if isinstance(value, int) and value < 0:
            raise ClaimError(f"gpus: {value} is not a GPU index")
        if value not in out:
            out.append(value)
    if not out:
        raise ClaimError("gpus: no GPU given; use 'auto' to let gpumon pick")
    return out


def _describe_taken(gpu: Gpu, holders: List[ClaimRecord]) -> str:
    if holders:
        c = holders[0]
        return f"GPU {gpu.index}: claimed by {c.user} (pid {c.pid}, job {c.job!r})"
    if gpu.state != GPU_OK:
        return f"GPU {gpu.index}: {gpu.state}" + (f" ({gpu.error})" if gpu.error else "")
    if gpu.processes:
        users = sorted({p.user for p in gpu.processes})
        n = len(gpu.processes)
        plural = "es" if n != 1 else ""
        return f"GPU {gpu.index}: {n} unclaimed process{plural} ({', '.join(users)})"
    use = judge_use(gpu)
    return f"GPU {gpu.index}: {use.state} ({use.reason})"


def choose_gpus(
    gpus: Sequence[Gpu], claims: Sequence[ClaimRecord], request: GpuRequest, count: int = 1
) -> List[Gpu]:
    """The GPUs to claim. Pure: ``gpus`` as sampled now, ``claims`` the live ones.

    auto (request None): ``count`` GPUs that gpumon_agent.usage judges free (healthy, processes
    listed and none, little memory used, not busy — never one whose processes are unknown) and
    no live claim covers, least utilized first (then least memory used, then index). Explicit:
    exactly those GPUs, each existing and not claimed (a process without a claim, or unknown
    processes, do not block an explicit request: the user asked for that GPU). Raises NoFreeGpu
    / ClaimError saying why."""
    taken = {id(g): [c for c in claims if c.covers(g)] for g in gpus}
    if request is None:
        if count < 1:
            raise ClaimError(f"count={count}: claim at least one GPU")
        free = [g for g in gpus if judge_use(g).free and not taken[id(g)]]
        if len(free) < count:
            busy = [_describe_taken(g, taken[id(g)]) for g in gpus if g not in free]
            detail = "; ".join(busy[:8]) + ("; …" if len(busy) > 8 else "")
            raise NoFreeGpu(
                f"need {count} free GPU{'s' if count != 1 else ''}, {len(free)} of {len(gpus)} "
                f"free" + (f" — {detail}" if detail else "") + " (`gpumon-agent claims` lists "
                "the claims; try later or name GPUs with --gpus)"
            )

        def load(g: Gpu) -> Tuple[float, float, int]:
            util = g.utilization_pct if g.utilization_pct is not None else 100.0
            mem = float(g.memory_used_bytes) if g.memory_used_bytes is not None else math.inf
            return (util, mem, g.index)

        return sorted(free, key=load)[:count]
    chosen: List[Gpu] = []
    for want in request:
        if isinstance(want, int):
            match = [g for g in gpus if g.index == want]
        else:
            match = [g for g in gpus if g.uuid is not None and g.uuid.lower() == want.lower()]
        if not match:
            have = ", ".join(str(g.index) for g in gpus) or "none"
            raise ClaimError(f"no GPU {want} on this server (GPUs: {have})")
        gpu = match[0]
        if taken[id(gpu)]:
            raise NoFreeGpu(_describe_taken(gpu, taken[id(gpu)]) + " — pick another or 'auto'")
        if gpu.state != GPU_OK:
            raise ClaimError(_describe_taken(gpu, []) + "; cannot claim it")
        if gpu not in chosen:
            chosen.append(gpu)
    return chosen


def claim_gpus(
    registry: ClaimRegistry,
    gpus: Sequence[Gpu],
    request: GpuRequest,
    count: int,
    job: str,
    command: str,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
) -> ClaimRecord:
    """Choose and record, atomically among claimers: the lock is held across reading the live
    claims, choosing, and publishing the new claim file."""
    with registry.lock(lock_timeout_s):
        live, _errors = registry.live_claims()
        chosen = choose_gpus(gpus, live, request, count)
        record = new_record(job, command, chosen)
        registry.create(record)
    return record


# --- Report annotation -------------------------------------------------------------------------


def _gpu_key(gpu: Gpu) -> str:
    return gpu.uuid or f"index:{gpu.index}"


class IdleTracker:
    """Remembers, per GPU (UUID, else index), the last time a process was seen on it.

    The daemon keeps one across samples. A one-shot report starts from nothing or from the
    previous snapshot (``from_report``). What annotate() does with it: see its docstring."""

    def __init__(self) -> None:
        self.last_busy: Dict[str, float] = {}

    def observe(self, gpu: Gpu, now: float) -> Optional[float]:
        """Record this sample; the last time ``gpu`` had a process (``now`` if it has one).

        Processes unknown count as busy: an idle stretch starts only where "none" was seen."""
        key = _gpu_key(gpu)
        if gpu.processes is None or gpu.processes:
            self.last_busy[key] = now
        return self.last_busy.get(key)

    @classmethod
    def from_report(cls, previous: Optional[Report]) -> IdleTracker:
        """Seed from an earlier Report: a GPU with processes then was busy at its
        ``generated_at``; an idle one was last busy at its ``idle_since`` (if it had one)."""
        tracker = cls()
        if previous is None:
            return tracker
        try:
            at = parse_utc_iso(previous.generated_at).timestamp()
        except ValueError:
            return tracker
        for gpu in previous.gpus:
            if gpu.processes is None or gpu.processes:  # unknown counts as busy, as in observe
                tracker.last_busy[_gpu_key(gpu)] = at
            elif gpu.idle_since:
                with contextlib.suppress(ValueError):
                    since = parse_utc_iso(gpu.idle_since).timestamp()
                    tracker.last_busy[_gpu_key(gpu)] = min(since, at)
        return tracker


def annotate(
    report: Report,
    claims: Sequence[ClaimRecord],
    tracker: IdleTracker,
    idle_after_s: float,
    now: Optional[float] = None,
) -> None:
    """Set each GPU's ``claims``, ``unclaimed_use``, ``claimed_idle`` and ``idle_since``.

    - claims: every live claim covering the GPU (matched by GPU, not by pid, so a claimer's
      children — dataloader workers, the command under `gpumon claim` — are covered).
    - unclaimed_use: the GPU runs a process and no live claim covers it.
    - processes unknown (None): nothing is read into them. unclaimed_use is False if a claim
      covers the GPU, else None; claimed_idle is None if claimed, else False; idle_since None.
    - idle_since: for a GPU without processes, since when it has had none as far as known:
      the last time ``tracker`` saw a process there, or, for a claimed GPU, the newest covering
      claim's start if that is later (a new claim gets the full idle allowance). None while
      processes run, or when unknown (unclaimed and never seen busy).
    - claimed_idle: claimed, no process, and ``now - idle_since >= idle_after_s``.

    One-shot rule: with no history (fresh tracker) a claimed GPU counts as idle since its claim
    started — seed the tracker with IdleTracker.from_report(previous snapshot) to do better.
    """
    now = time.time() if now is None else now
    for gpu in report.gpus:
        holders = [c for c in claims if c.covers(gpu)]
        gpu.claims = [c.info() for c in holders]
        last_busy = tracker.observe(gpu, now)
        if gpu.processes is None:
            gpu.unclaimed_use = False if holders else None
            gpu.claimed_idle = None if holders else False
            gpu.idle_since = None
            continue
        gpu.unclaimed_use = bool(gpu.processes) and not holders
        if gpu.processes:
            gpu.idle_since = None
            gpu.claimed_idle = False
            continue
        since = last_busy
        for c in holders:
            started = _timestamp(c.started_at)
            if started is not None and (since is None or started > since):
                since = started
        gpu.idle_since = utc_iso(since) if since is not None else None
        gpu.claimed_idle = bool(holders) and since is not None and now - since >= idle_after_s


def _timestamp(text: Optional[str]) -> Optional[float]:
    if not text:
        return None
    try:
        return parse_utc_iso(text).timestamp()
    except ValueError:
        return None


def apply_claims(
    report: Report,
    registry: ClaimRegistry,
    tracker: IdleTracker,
    idle_after_s: float,
    now: Optional[float] = None,
) -> None:
    """What collect.py needs in one call: read the live claims (cleaning stale ones), annotate
    the GPUs, and add the bad claim files to ``report.claim_errors``."""
    claims, errors = registry.live_claims()
    annotate(report, claims, tracker, idle_after_s, now)
    report.claim_errors.extend(errors)


# --- `gpumon-agent claims` --------------------------------------------------------------------


def print_claims(settings: AgentSettings, as_json: bool = False) -> int:
    """List the live claims (and unreadable claim files) of this server. Returns 0, or 1 when
    the registry cannot be read."""
    registry = ClaimRegistry(settings.claims_path)
    claims, errors = registry.live_claims()
    if as_json:
        out = {
            "registry": registry.path,
            "claims": [
                dict(c.to_dict(), file=c.file_name)
                for c in sorted(claims, key=lambda c: c.started_at)
            ],
            "errors": [{"path": e.path, "error": e.error} for e in errors],
        }
        print(json.dumps(out, indent=2))
    else:
        if not os.path.isdir(registry.path):
            print(f"no claims registry at {registry.path} (the gpumon agent creates it)")
        elif not claims:
            print(f"no live claims in {registry.path}")
        else:
            rows = [("GPUS", "USER", "PID", "STARTED", "JOB", "PROGRESS")]
            for c in sorted(claims, key=lambda c: c.started_at):
                rows.append(
                    (
                        ",".join(str(g.index) for g in c.gpus),
                        _printable(c.user),
                        str(c.pid),
                        _printable(c.started_at),
                        _printable(c.job),
                        _printable(" ".join(f"{k}={v}" for k, v in c.progress.items())),
                    )
                )
            widths = [max(len(r[i]) for r in rows) for i in range(5)]
            for r in rows:
                print("  ".join(r[i].ljust(widths[i]) for i in range(5)) + "  " + r[5])
        for e in errors:
            print(f"bad claim file {_printable(e.path)}: {e.error}", file=sys.stderr)
    unreadable = any(e.path == registry.path for e in errors)
    return 1 if unreadable else 0


def _printable(text: str) -> str:
    """Users write claim files: never let their control characters reach a terminal."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)
