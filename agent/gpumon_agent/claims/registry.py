"""The claims registry: the directory of claim files, read and written safely.

Layout (``AgentSettings.claims_path``, default ``/run/gpumon/claims``; docs/claims.md)::

    claims/                     mode 1777 (sticky, world-writable, like /tmp), made by the agent
      .lock                     flock(2) target serialising allocation (0644, the agent's)
      u1000-p4242-9f3a1c.json   one claim: u<uid>-p<pid>-<random>.json, owned by that uid
      .u1000-p4242-….json.gpumon-tmp-<pid>-…   a claim being written (gpumon_agent.atomic)

Trust model (docs/security.md): any user may write here, so every file is checked before it
counts. The directory and those above it must be owned by root or the agent's user (whoever
owns it could delete and forge every claim). A file's owner, the uid in its name and the uid
inside must agree (the sticky bit stops users from replacing each other's files, the uid check
stops them from forging someone else's); symlinks and non-regular files are refused
(O_NOFOLLOW, fstat); size, nesting depth, numbers and fields are bounded. Files are read in
turns per owner, at most MAX_CLAIM_FILES a scan, so a user who floods the registry hides only
their own claims; allocation reads every claim or refuses. A bad file becomes a
``ClaimFileProblem`` in the Report (at most MAX_CLAIM_ERRORS), never an exception.

A claim is live while the process that made it runs: same pid, same boot-relative start time
(gpumon_agent.pidstat: a reused pid does not revive it, a wall-clock step does not kill it),
same uid, not a zombie. A dead claim is ignored, and removed by whoever may: its owner, root, or
the registry's owner (the agent, which made the directory; in a sticky directory its owner may
delete any file). The agent also remakes a deleted registry and replaces a lock file a user
could lock others out with (``upkeep``), and clears dead writers' temporary files.

Must stay importable on Python 3.8.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import stat
import time
from dataclasses import dataclass, field
from typing import (
    AbstractSet,
    Any,
    Dict,
    Iterable,
    Iterator,
    List,
    Optional,
    Set,
    Tuple,
)

from gpumon_agent import pidstat
from gpumon_agent.atomic import TMP_MARK, write_atomic
from gpumon_agent.claims.record import (
    MAX_CLAIM_BYTES,
    MAX_JSON_DEPTH,
    ClaimError,
    ClaimRecord,
    InvalidClaimFile,
    check_owner_process,
    json_depth_ok,
)
from gpumon_agent.filelock import FileLock, LockBusy, LockFileError, open_lock_file
from gpumon_agent.report import (
    ClaimFileProblem,
)
from gpumon_agent.safedir import make_dirs, untrusted, user_name
from gpumon_agent.settings import AgentSettings

# Claim files read per agent scan: bounds the agent's work and the Report's size whatever users
# drop here. Only well-formed names whose owner checks out count, taken in turns per owner, so a
# user who floods the registry hides only their own claims.
MAX_CLAIM_FILES = 128

MAX_CLAIM_ERRORS = 32  # claim_errors entries per scan (the rest are counted in one more)
LOCK_NAME = ".lock"
DEFAULT_LOCK_TIMEOUT_S = 10.0

# Leftover temporary files of dead writers: distinct writer pids checked per clean-up pass.
MAX_TMP_PIDS = 1024

_NAME_RE = re.compile(r"^u(\d{1,10})-p(\d{1,7})-([0-9a-f]{6,32})\.json$")
# A claim being written: gpumon_agent.atomic's temporary name for it, ".<claim name>.gpumon-tmp-
# <writer pid>-<random>"; groups: the claimer's uid, the writer's pid.
_TMP_RE = re.compile(
    r"^\.u(\d{1,10})-p\d{1,7}-[0-9a-f]{6,32}\.json"
    + re.escape(TMP_MARK)
    + r"(\d{1,7})-[0-9a-f]{1,32}$"
)


class RegistryError(ClaimError):
    """The registry directory is missing, unusable or unsafe."""


class LockTimeout(ClaimError):
    """Another claimer held the registry lock for longer than the bounded wait."""


# --- the registry directory -------------------------------------------------------------------


def _missing_hint(path: str) -> str:
    return (
        "start the gpumon agent on this server (it creates the registry: "
        "`systemctl start gpumon-agent`), or set GPUMON_CLAIMS_DIR to a registry root made "
        f"for all users (`sudo install -d -m 1777 DIR`) — it is {path}"
    )


def agent_uid(settings: AgentSettings) -> Optional[int]:
    """The agent's user: the owner of the state directory (systemd gives a service's
    RuntimeDirectory to its user; a daemon started by hand makes it its own), or None when
    there is none."""
    try:
        st = os.lstat(settings.state_dir)
    except OSError:
        return None
    return st.st_uid if stat.S_ISDIR(st.st_mode) else None


@dataclass
class RegistryScan:
    """One pass over the registry: the live claims, a ClaimFileProblem per file that does not
    count (at most MAX_CLAIM_ERRORS, then one counting the rest), ``unread``: owner uid → claim
    files left unread past the limit, and ``refused``: why the whole registry was not read."""

    claims: List[ClaimRecord] = field(default_factory=list)
    errors: List[ClaimFileProblem] = field(default_factory=list)
    unread: Dict[int, int] = field(default_factory=dict)
    refused: Optional[str] = None


class _Errors:
    """ClaimFileProblems, capped: the Report stays small whatever users drop in the registry."""

    def __init__(self, registry: str) -> None:
        self.registry = registry
        self.items: List[ClaimFileProblem] = []
        self.dropped = 0

    def add(self, path: str, error: str) -> None:
        if len(self.items) < MAX_CLAIM_ERRORS:
            self.items.append(ClaimFileProblem(path, error))
        else:
            self.dropped += 1

    def done(self) -> List[ClaimFileProblem]:
        if self.dropped:
            more = f"{self.dropped} more bad files in the registry, not listed"
            return [*self.items, ClaimFileProblem(self.registry, more)]
        return self.items


class ClaimRegistry:
    """The claim files in one directory. Reading never raises for a bad file; writing raises
    ClaimError with what to do.

    ``trusted_owners``: who besides root may own the directory (and the directories above it):
    the agent's user. A directory anyone else owns is refused — its owner could delete and forge
    every claim in it. Default: this process's user (for the agent itself and for tests);
    commands use ``for_settings``."""

    def __init__(self, path: str, trusted_owners: Optional[Iterable[int]] = None) -> None:
        self.path = path
        self.lock_path = os.path.join(path, LOCK_NAME)
        self._trusted = None if trusted_owners is None else frozenset(trusted_owners)
        # What the agent's scans remember (see scan / _names): owner and mode by name, and the
        # last listing with the directory state it was taken in.
        self._seen: Dict[str, Tuple[int, int]] = {}
        self._listing: Optional[Tuple[Tuple[int, ...], List[str]]] = None

    @classmethod
    def for_settings(cls, settings: AgentSettings, agent: bool = False) -> ClaimRegistry:
        """The registry of ``settings``; ``agent``: as the agent daemon (its own user is the
        agent's user), else trusting the owner of the state directory (``agent_uid``)."""
        if agent:
            return cls(settings.claims_path, {os.geteuid()})
        uid = agent_uid(settings)
        return cls(settings.claims_path, () if uid is None else {uid})

    @property
    def trusted_owners(self) -> AbstractSet[int]:
        return (self._trusted if self._trusted is not None else {os.geteuid()}) | {0}

    def _trusted_text(self) -> str:
        others = sorted(self.trusted_owners - {0})
        names = [f"{user_name(uid)} (uid {uid})" for uid in others]
        return "root" + (" or the agent's user " + ", ".join(names) if names else "")

    # -- directory ------------------------------------------------------------------------

    def ensure(self, create: bool = True) -> None:
        """Make sure the registry exists and is safe to write in; create it (1777) if missing
        and ``create``. The agent calls this at start, claimers before claiming."""
        if not os.path.lexists(self.path):
            if not create:
                raise RegistryError(
                    f"the claims registry {self.path} does not exist: " + _missing_hint(self.path)
                )
            self._create_dir()
        why = self.trouble()
        if why is not None:
            raise RegistryError(why)
        if not os.access(self.path, os.W_OK | os.X_OK):
            st = os.stat(self.path)
            raise RegistryError(
                f"you cannot write in the claims registry {self.path} (mode "
                f"{stat.S_IMODE(st.st_mode):o}, owner uid {st.st_uid}): it should be mode 1777 "
                "like /tmp — restart the gpumon agent, or set GPUMON_CLAIMS_DIR"
            )
        # Made now, by whoever comes first (ideally the agent, at start): see open_lock_file.
        try:
            os.close(open_lock_file(self.lock_path, mode=0o644))
        except LockFileError as e:
            raise RegistryError(self._lock_trouble(e.reason)) from None

    def trouble(self) -> Optional[str]:
        """Why the registry must not be used, with the fix; None when it may."""
        problem = untrusted(self.path, self.trusted_owners, shared=True)
        if problem is None:
            return None
        where = f"the claims registry {self.path}"
        if problem.kind == "missing":
            return f"{where} does not exist: " + _missing_hint(self.path)
        if problem.kind == "unreadable":
            return f"{where} cannot be reached ({problem}): " + _missing_hint(self.path)
        if problem.kind == "symlink" and problem.path == os.path.abspath(self.path):
            return f"{where} is a symlink; refusing it (ask root to remove it and restart the " + (
                "gpumon agent)"
            )
        if problem.kind == "not_dir":
            return f"{where} is not a directory ({problem})"
        if problem.kind == "writable" and problem.path == os.path.abspath(self.path):
            return (
                f"{where} is writable by others without the sticky bit, so users could delete "
                f"each other's claims: run `chmod 1777 {self.path}`"
            )
        who = "its owner" if problem.kind == "owner" else "whoever may write there"
        return (
            f"{where} is not safe: {problem}, so {who} could delete or forge other users' "
            f"claims in it (only {self._trusted_text()} may own the registry and the "
            "directories above it, none of them writable by others unless sticky like /tmp). "
            "Fix: unset GPUMON_CLAIMS_DIR to use the agent's registry, or have root make this "
            f"one: `sudo install -d -o root -g root -m 1777 {self.path}` in a directory only "
            "root can change"
        )

    def _create_dir(self) -> None:
        if os.geteuid() not in self.trusted_owners:
            raise RegistryError(
                f"the claims registry {self.path} does not exist, and only "
                f"{self._trusted_text()} may create it: " + _missing_hint(self.path)
            )
        parent = os.path.dirname(os.path.abspath(self.path))
        try:
            make_dirs(parent, 0o755)
            # Private until it is fully set up, then shared like /tmp.
            os.mkdir(self.path, 0o700)
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            try:
                os.fchmod(fd, 0o1777)
            finally:
                os.close(fd)
        except FileExistsError:
            return  # someone else made it just now; ensure() checks what they made
        except OSError as e:
            raise RegistryError(
                f"the claims registry {self.path} does not exist and cannot be created "
                f"({e.strerror}): " + _missing_hint(self.path)
            ) from None

    def upkeep(self, starting: bool = False) -> Optional[str]:
        """The agent's care of its registry, at every sample: recreate it if it was deleted,
        give it back mode 1777, and replace a lock file that is not a plain 0644 file of root's
        or the agent's (a user who owns the lock could chmod it and lock everyone out).

        Returns what was repaired (for the log), None when all was well (or, ``starting``, the
        registry was simply made); raises RegistryError when it is unsafe or cannot be
        repaired."""
        if not os.path.lexists(self.path):
            self.ensure(create=True)
            if starting:
                return None  # made at start, as expected: not news
            return f"the claims registry {self.path} was missing: recreated it (mode 1777)"
        why = self.trouble()
        if why is not None:
            raise RegistryError(why)
        repaired = []
        st = os.lstat(self.path)
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != 0o1777:
            os.chmod(self.path, 0o1777)
            repaired.append(f"mode {stat.S_IMODE(st.st_mode):04o} → 1777")
        try:
            lock = os.lstat(self.lock_path)
        except FileNotFoundError:
            lock = None
        if lock is not None:
            bad = None
            if not stat.S_ISREG(lock.st_mode):
                bad = _file_kind(lock.st_mode) if not stat.S_ISLNK(lock.st_mode) else "a symlink"
            elif lock.st_uid not in self.trusted_owners:
                bad = f"owned by {user_name(lock.st_uid)}"
            elif stat.S_IMODE(lock.st_mode) != 0o644 and lock.st_uid != os.geteuid():
                bad = f"mode {stat.S_IMODE(lock.st_mode):04o}"
            if bad is not None:
                try:
                    if stat.S_ISDIR(lock.st_mode):
                        os.rmdir(self.lock_path)
                    else:
                        os.unlink(self.lock_path)
                except FileNotFoundError:
                    pass
                except OSError as e:
                    trouble = self._lock_trouble(f"{bad}, cannot remove it ({e.strerror})")
                    raise RegistryError(trouble) from None
                repaired.append(f"lock file {bad} → replaced")
        try:
            fd = open_lock_file(self.lock_path, mode=0o644)
        except LockFileError as e:
            raise RegistryError(self._lock_trouble(e.reason)) from None
        if lock is None:
            repaired.append("lock file missing → made")
        elif stat.S_IMODE(lock.st_mode) != 0o644 and not repaired:
            repaired.append(f"lock file mode {stat.S_IMODE(lock.st_mode):04o} → 0644")
        os.close(fd)
        if not repaired:
            return None
        return f"the claims registry {self.path}: " + "; ".join(repaired)

    def clean_temporary(self) -> int:
        """Remove temporary files (``.u<uid>-p<pid>-….json.gpumon-tmp-<pid>-…``) of writers that
        died between writing and renaming (SIGKILL). Cheap whatever is there: names only, one
        kill(pid, 0) per distinct writer pid, at most MAX_TMP_PIDS pids a call. Returns how
        many went."""
        try:
            names = os.listdir(self.path)
            owner = os.lstat(self.path).st_uid
        except OSError:
            return 0
        me = os.geteuid()
        cleaner = me in (0, owner)  # may delete anyone's file in a sticky directory
        dead: Dict[int, bool] = {}
        removed = 0
        for name in names:
            if not name.startswith(".u"):
                continue
            m = _TMP_RE.match(name)
            if m is None:
                continue
            uid, pid = int(m.group(1)), int(m.group(2))
            if not cleaner and uid != me:
                continue
            if pid not in dead:
                if len(dead) >= MAX_TMP_PIDS:
                    continue
                dead[pid] = not pidstat.alive(pid)
            if not dead[pid]:
                continue
            path = os.path.join(self.path, name)
            with contextlib.suppress(OSError):
                if os.lstat(path).st_uid == uid:
                    os.unlink(path)
                    removed += 1
        return removed

    # -- the allocation lock --------------------------------------------------------------

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
        lock = FileLock(self.lock_path, mode=0o644)
        try:
            lock.acquire(timeout_s)
        except LockBusy:
            raise LockTimeout(
                f"waited {timeout_s:g} s for the claims lock {self.lock_path} "
                "(another claimer holds it; if this lasts, find it with "
                f"`fuser -v {self.lock_path}`) — try again"
            ) from None
        except LockFileError as e:
            raise RegistryError(self._lock_trouble(e.reason)) from None
        try:
            yield
        finally:
            lock.release()

    # -- writing my claims ----------------------------------------------------------------

    def new_name(self, uid: int, pid: int) -> str:
        return f"u{uid}-p{pid}-{secrets.token_hex(4)}.json"

    def _write_file(self, final: str, data: bytes) -> None:
        """Publish ``data`` at ``final`` atomically (gpumon_agent.atomic), 0644 whatever the
        umask: readers see the old content or the new, never a part. Renaming over a file of
        another user fails (EPERM): the sticky bit guards other people's claims. No fsync: a
        claim means nothing after a crash (its process is gone)."""
        write_atomic(final, data, 0o644, durable=False)

    def create(self, record: ClaimRecord) -> None:
        """Publish a new claim (sets record.path). Call under lock()."""
        record.path = os.path.join(self.path, self.new_name(record.uid, record.pid))
        try:
            self._write_file(record.path, record.to_json())
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                hint = "the file system is full; tell root"
            else:
                hint = _missing_hint(self.path)
            raise RegistryError(
                f"cannot write a claim in {self.path} ({e.strerror}): {hint}"
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

    def read(self, path: str, trusted: Optional[AbstractSet[int]] = None) -> ClaimRecord:
        """One claim file, checked (raises InvalidClaimFile with the reason).

        The file's owner must be the uid its name and content give — or one of ``trusted``
        (default: root and the registry's owner, who may replace any file here anyway). That
        covers systemd, which chowns a service's RuntimeDirectory to the service's user,
        recursively, when a DynamicUser= uid changes. Parsing is bounded: at most
        MAX_CLAIM_BYTES, nested at most MAX_JSON_DEPTH deep (checked before parsing)."""
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
        if not json_depth_ok(raw):
            raise InvalidClaimFile(f"JSON nested deeper than {MAX_JSON_DEPTH} levels; refused")
        try:
            data = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise InvalidClaimFile(f"not JSON ({str(e)[:200]})") from None
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

    def live_claims(
        self, limit: int = MAX_CLAIM_FILES
    ) -> Tuple[List[ClaimRecord], List[ClaimFileProblem]]:
        """The live claims, and a ClaimFileProblem per file that does not count. Never raises.
        See ``scan``."""
        scan = self.scan(limit)
        return scan.claims, scan.errors

    def scan(self, limit: int = MAX_CLAIM_FILES) -> RegistryScan:
        """Read the registry. Never raises.

        Names that are not claim names (``u<uid>-p<pid>-<hex>.json``) are reported; dot files
        (the lock, writers' temporary files) are skipped unread. The rest are checked by owner
        (lstat, remembered per name and inode across scans) and read in turns per owner — each
        owner's first file, then each one's second, … — at most ``limit`` in all, so whoever
        floods the registry hides only their own claims. Stale claims (their process is gone)
        are skipped and deleted when this process may (it owns them, or is root, or owns the
        registry). A missing registry means no claims (the agent recreates it); an unsafe one
        is not read at all (``refused``)."""
        out = RegistryScan()
        errors = _Errors(self.path)
        try:
            directory = os.lstat(self.path)
        except FileNotFoundError:
            return out
        except OSError as e:
            directory = None
            out.refused = f"cannot reach the claims registry: {e.strerror}"
        if directory is not None:
            out.refused = self.trouble()
        if out.refused is None:
            try:
                names = self._names(directory)
            except FileNotFoundError:
                return out
            except OSError as e:
                out.refused = f"cannot list the claims registry: {e.strerror}"
        if out.refused is not None:
            out.errors = [ClaimFileProblem(self.path, out.refused)]
            return out
        assert directory is not None
        # Who may delete in a sticky directory: the file's owner, the directory's, and root.
        # The last two may replace any file here, so files they own are trusted as named.
        cleaners = {0, directory.st_uid}
        by_owner: Dict[int, List[str]] = {}
        seen: Dict[str, Tuple[int, int]] = {}
        for name in names:
            path = os.path.join(self.path, name)
            m = _NAME_RE.match(name)
            if m is None:
                errors.add(
                    path, "not a claim file name (expected u<uid>-p<pid>-<hex>.json); ignored"
                )
                continue
            # Owner and type, remembered by name: they only order the reading (read() checks
            # the open file again), so a name reused by someone else costs fairness, not trust.
            known = self._seen.get(name)
            if known is None:
                try:
                    st = os.lstat(path)
                except OSError:
                    continue  # gone since the listing
                known = (st.st_uid, st.st_mode)
            seen[name] = known
            owner, mode = known
            name_uid = int(m.group(1))
            if stat.S_ISLNK(mode):
                errors.add(path, "a symlink; refused")
            elif not stat.S_ISREG(mode):
                errors.add(path, f"not a regular file ({_file_kind(mode)}); refused")
            elif owner != name_uid and owner not in cleaners:
                errors.add(path, f"owned by uid {owner} but named for uid {name_uid}; refused")
            else:
                by_owner.setdefault(owner, []).append(name)
        self._seen = seen
        turns = _in_turns(by_owner)
        for _owner_uid, name in turns[:limit]:
            path = os.path.join(self.path, name)
            try:
                record = self.read(path, cleaners)
            except InvalidClaimFile as e:
                errors.add(path, str(e))
                continue
            verdict = check_owner_process(record)
            if verdict == "stale":
                self._remove_stale(path, record.uid, cleaners)
            elif verdict is not None:
                errors.add(path, verdict + "; refused")
            else:
                out.claims.append(record)
        for owner, _name in turns[limit:]:
            out.unread[owner] = out.unread.get(owner, 0) + 1
        for owner, count in sorted(out.unread.items()):
            errors.add(
                self.path,
                f"{user_name(owner)} (uid {owner}) has {count} more claim file"
                f"{'s' if count != 1 else ''} than gpumon reads at once ({limit} in all, taken "
                "in turns per user); those were not read — ask root to look at the registry",
            )
        out.errors = errors.done()
        return out

    def _names(self, directory: os.stat_result) -> List[str]:
        """The registry's names, dot files (the lock, writers' temporary files) left out.

        The listing is reused while the directory is unchanged (same inode, times, size and
        link count: any name added, removed or renamed changes them), so junk that just sits
        there costs one lstat per sample, not a listing. Only a listing taken a second or more
        after the directory last changed is reused: a change within the same timestamp tick
        as the one before would leave the times as they were."""
        key = (
            directory.st_ino,
            directory.st_mtime_ns,
            directory.st_ctime_ns,
            directory.st_size,
            directory.st_nlink,
        )
        if self._listing is not None and self._listing[0] == key:
            return self._listing[1]
        started = time.time()
        names = [name for name in os.listdir(self.path) if not name.startswith(".")]
        still = started - directory.st_mtime > 1.0 and started - directory.st_ctime > 1.0
        self._listing = (key, names) if still else None
        return names

    def _remove_stale(self, path: str, owner_uid: int, cleaners: Set[int]) -> None:
        if os.geteuid() in cleaners | {owner_uid}:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _in_turns(by_owner: Dict[int, List[str]]) -> List[Tuple[int, str]]:
    """(owner, name) pairs: every owner's first name (by uid), then every owner's second, …"""
    queues = [(owner, sorted(names)) for owner, names in sorted(by_owner.items())]
    out: List[Tuple[int, str]] = []
    depth = 0
    while queues:
        queues = [(owner, names) for owner, names in queues if depth < len(names)]
        out.extend((owner, names[depth]) for owner, names in queues)
        depth += 1
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


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
