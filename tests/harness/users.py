"""Unprivileged users for the tests that run the agent as the lab deploys it: the agent under its
own user with the shipped unit's umask and environment, and ordinary users who claim GPUs.

Where this machine's Python lives in a directory others cannot enter (pyenv under /root, 0700),
each user's process gets a private mount namespace in which that one directory is replaced by a
0755 tmpfs holding a bind mount of the interpreter's tree, so the real venv, console scripts and
paths work as they do for root; nothing else changes for it (see ``_reach_interpreter``).

Created with useradd when running as root (CI does), named ``gpumon-t-…``, only if missing, and
removed at the end only if this run created them. ``Deployment`` lays out what systemd would: a
runtime directory owned by the agent's user with the unit's RuntimeDirectoryMode, the unit's
Environment= with its /run path mapped into a scratch directory every user can reach.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.fakenvml import FakeNvml, FakeState
from harness.systemd_units import unit_settings

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "systemd" / "gpumon-agent.service"
BIN = Path(sys.executable).parent
AGENT = BIN / "gpumon-agent"
GPUMON = BIN / "gpumon"
PREFIX = "gpumon-t-"


@dataclass
class User:
    name: str
    uid: int
    gid: int
    created: bool = False

    def preexec(self, umask: int = 0o077, nproc: int | None = None) -> Callable[[], None]:
        """For subprocess: become this user (no supplementary groups), with ``umask`` and, if
        given, RLIMIT_NPROC (what TasksMax= bounds: the user's tasks, threads included)."""
        blocked = _blocked_ancestor()

        def become() -> None:
            if blocked is not None:
                _reach_interpreter(*blocked)
            os.setgroups([])
            os.setgid(self.gid)
            os.setuid(self.uid)
            os.umask(umask)
            if nproc is not None:
                resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))

        return become


def _blocked_ancestor() -> tuple[str, str] | None:
    """(a directory others cannot enter on the way to this interpreter, the entry below it on
    that way), or None when every user can reach the interpreter and its library."""
    target = os.path.realpath(sys.base_prefix)
    parts = target.split(os.sep)[1:]
    blocked = None
    current = "/"
    for part in parts:
        if not os.stat(current).st_mode & stat.S_IXOTH:
            assert blocked is None, f"two directories others cannot enter above {target}"
            blocked = (current, os.path.join(current, part))
        current = os.path.join(current, part)
    for path in (REPO, Path(sys.executable).parent):
        for parent in [path, *path.parents]:
            if blocked and str(parent).startswith(blocked[0] + os.sep):
                continue
            assert os.stat(parent).st_mode & stat.S_IXOTH, f"{parent}: others cannot enter it"
    return blocked


_CLONE_NEWNS = 0x00020000
_MS_BIND, _MS_REC, _MS_PRIVATE = 4096, 16384, 1 << 18


def reach_interpreter(stash: str) -> Callable[[], None] | None:
    """For a root process whose children become other users (sshd): a preexec step that lets
    them reach this interpreter as ``_reach_interpreter`` does, by way of ``stash`` (an empty
    directory the caller made); None when every user reaches it already."""
    blocked = _blocked_ancestor()
    if blocked is None:
        return None
    return lambda: _reach_interpreter(*blocked, stash=stash)


def _reach_interpreter(blocked: str, inner: str, stash: str | None = None) -> None:
    """In the child, before it drops root: a private mount namespace where ``blocked`` is a
    0755 tmpfs holding ``inner`` (bind-mounted from the real one, by way of a stash mount)."""
    libc = ctypes.CDLL(None, use_errno=True)

    def check(result: int, what: str) -> None:
        if result != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    stash_path = (stash or STASH).encode()
    check(libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    check(libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "mount --make-rprivate /")
    check(libc.mount(inner.encode(), stash_path, None, _MS_BIND | _MS_REC, None), "bind to stash")
    check(libc.mount(b"tmpfs", blocked.encode(), b"tmpfs", 0, b"mode=0755"), "tmpfs")
    os.mkdir(inner, 0o755)
    check(libc.mount(stash_path, inner.encode(), None, _MS_BIND | _MS_REC, None), "bind back")


# An empty directory to bind-mount on inside each child's own namespace (never in ours).
STASH = os.path.join(tempfile.gettempdir(), f"{PREFIX}stash")


def ensure_user(name: str) -> User:
    """``name`` (must start with gpumon-t-), created as a system user if missing."""
    assert name.startswith(PREFIX), name
    created = False
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(name)
        created = True
    return User(entry.pw_name, entry.pw_uid, entry.pw_gid, created)


def remove_user(user: User) -> None:
    if user.created:
        done = subprocess.run(["userdel", user.name], capture_output=True, text=True)
        if done.returncode != 0:  # a process of it still runs: say so, do not hide it
            warnings.warn(f"userdel {user.name}: {done.stderr.strip()}", stacklevel=2)


def unit_environment() -> tuple[dict[str, str], int, str, int, int]:
    """(Environment=, UMask, the RuntimeDirectory path, RuntimeDirectoryMode, TasksMax) of the
    shipped unit."""
    s = unit_settings(UNIT)
    env = dict(line.split("=", 1) for line in s["Environment"])
    runtime = "/run/" + s["RuntimeDirectory"][0]
    return (
        env,
        int(s["UMask"][0], 8),
        runtime,
        int(s["RuntimeDirectoryMode"][0], 8),
        int(s["TasksMax"][0]),
    )


class Deployment:
    """One GPU server as the unit sets it up, under a scratch directory all users can reach."""

    def __init__(self, agent: User, gpus: int = 4) -> None:
        self.agent = agent
        self.top = Path(tempfile.mkdtemp(prefix=PREFIX, dir="/tmp"))
        os.chmod(self.top, 0o755)
        unit_env, self.umask, runtime, runtime_mode, self.tasks_max = unit_environment()
        assert unit_env["GPUMON_STATE_DIR"] == runtime, "the unit keeps its state in /run/gpumon"
        # What systemd does for RuntimeDirectory=gpumon: /run/gpumon, the service user's.
        (self.top / "run").mkdir(mode=0o755)
        self.state = self.top / "run" / runtime.rsplit("/", 1)[1]
        self.state.mkdir()
        os.chmod(self.state, runtime_mode)
        os.chown(self.state, agent.uid, agent.gid)
        self.claims = self.state / "claims"
        self.fake = FakeNvml(self.top / "nvml", FakeState.with_gpus(gpus))
        os.chmod(self.fake.workdir, 0o755)
        os.chmod(self.fake.state_path, 0o644)
        base = {
            "PATH": f"{BIN}:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "HOME": "/nonexistent",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        self.user_env = self.fake.env(base, log=False)
        self.user_env["GPUMON_STATE_DIR"] = str(self.state)
        self.agent_env = dict(self.user_env)
        for key, value in unit_env.items():  # the unit's Environment=, /run mapped here
            self.agent_env[key] = value.replace(runtime, str(self.state))
        self.procs: list[subprocess.Popen] = []

    def start_agent(self, *args: str, nproc: int | None = None) -> subprocess.Popen:
        """`gpumon-agent run ARGS` as the agent's user, with the unit's umask; stderr to a log."""
        log = open(self.top / "agent.log", "ab")  # noqa: SIM115 -- closed with the process
        proc = subprocess.Popen(
            [str(AGENT), "run", "--interval", "0.2", *args],
            env=self.agent_env,
            stdout=subprocess.DEVNULL,
            stderr=log,
            preexec_fn=self.agent.preexec(self.umask, nproc),
            start_new_session=True,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def agent_log(self) -> str:
        path = self.top / "agent.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def run_as(
        self,
        user: User,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            list(argv),
            env=dict(self.user_env if env is None else env),
            capture_output=True,
            text=True,
            timeout=timeout,
            preexec_fn=user.preexec(),
            cwd="/",
        )

    def spawn_as(
        self, user: User, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> subprocess.Popen:
        proc = subprocess.Popen(
            list(argv),
            env=dict(self.user_env if env is None else env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=user.preexec(),
            cwd="/",
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        """Stop what this deployment started: each process and, by its process group (each
        was started in a session of its own), whatever it left running."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(self.top, ignore_errors=True)


def users(names: Sequence[str]) -> Iterator[dict[str, User]]:
    stash_made = not os.path.isdir(STASH)
    os.makedirs(STASH, mode=0o755, exist_ok=True)
    made = {name: ensure_user(PREFIX + name) for name in names}
    try:
        yield made
    finally:
        for user in made.values():
            remove_user(user)
        if stash_made:
            with contextlib.suppress(OSError):
                os.rmdir(STASH)
