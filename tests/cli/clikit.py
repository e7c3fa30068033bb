"""Running the real `gpumon` command in tests: a clean environment (no XDG, journald or colour
variables from the developer's session, no NVML), a config for this machine alone."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

GPUMON = Path(sys.executable).with_name("gpumon")
# Variables that change where gpumon looks or how it prints: never inherited by a test.
CLEARED = (
    "GPUMON_CONFIG",
    "XDG_CONFIG_HOME",
    "XDG_STATE_HOME",
    "STATE_DIRECTORY",
    "JOURNAL_STREAM",
    "NO_COLOR",
    "SSH_AUTH_SOCK",
    "COLUMNS",
    "LINES",
)


def clean_env(home: Path, base: Mapping[str, str], **extra: str) -> dict[str, str]:
    """``base`` (e.g. no_nvml_env) without CLEARED, HOME=home, the agent's state under home."""
    env = {k: v for k, v in base.items() if k not in CLEARED}
    env.update(HOME=str(home), GPUMON_STATE_DIR=str(home / "agent-state"))
    env.update(extra)
    return env


def local_config(folder: Path, state_dir: Path | None = None, extra: str = "") -> Path:
    """A config polling this machine in-process into folder/sheet.xlsx."""
    folder.mkdir(parents=True, exist_ok=True)
    state = f'state_dir = "{state_dir}"\n' if state_dir is not None else ""
    path = folder / "gpumon.toml"
    path.write_text(
        f'{state}[poll]\nservers_from_sheet = false\n[sheet]\npath = "sheet.xlsx"\n'
        f"add_rows = true\n{extra}[servers.box]\nlocal = true\n"
    )
    return path


def fleet_config(fleet, folder: Path) -> Path:
    """A config file naming every server of a harness.sshd.Fleet, its key and known_hosts."""
    known = folder / "known_hosts"
    known.write_text(fleet.known_hosts_text())
    config = folder / "gpumon.toml"
    config.write_text(
        f'state_dir = "{folder}/state"\n[poll]\nknown_hosts = "{known}"\n'
        f'user = "{fleet.user.pw_name}"\nidentity_files = ["{fleet.client_key}"]\n'
        f'ssh_config = "{folder}/none"\nservers_from_sheet = false\n'
        + "".join(
            f'[servers.{s.name}]\nhost = "{s.address}"\nport = {fleet.port}\n'
            for s in fleet.servers
        )
    )
    return config


def gpumon(
    *args: str, env: Mapping[str, str], cwd: Path, timeout: float = 120, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(GPUMON), *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        **kwargs,  # type: ignore[arg-type]
    )


def gpumon_here(*args: str, env: Mapping[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """The same as gpumon() but in this process (``gpumon.cli.main``, no interpreter start):
    ``env`` is the whole environment meanwhile, ``cwd`` the folder; logging left as found."""
    import contextlib
    import io
    import logging

    from gpumon.cli import main

    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out, err = io.StringIO(), io.StringIO()
    try:
        os.environ.clear()
        os.environ.update(env)
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        root.handlers[:] = handlers
        root.setLevel(level)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def check_config_line(stdout: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith("ok   config:"))


def state_line(stdout: str) -> str:
    return next(line for line in stdout.splitlines() if "state directory:" in line)


def mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o7777


def warm_imports(argv: list[str], env: Mapping[str, str], cwd: Path) -> None:
    """Run ``gpumon.cli.main(argv)`` here once (output dropped), so that every module it
    imports is loaded before main_as_user forks: the child may not be able to read them."""
    import contextlib
    import io

    from gpumon.cli import main

    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    try:
        os.environ.clear()
        os.environ.update(env)
        os.chdir(cwd)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            main(argv)
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)


def main_as_user(
    uid: int, argv: list[str], env: Mapping[str, str], cwd: Path, umask: int = 0o077
) -> tuple[int, str, str]:
    """``gpumon.cli.main(argv)`` in a forked child running as ``uid`` (no groups) under
    ``umask``, with ``env`` as its whole environment: (exit status, stdout, stderr). A fork, not
    an exec: this venv's interpreter may sit where other users cannot run it (/root), so run
    warm_imports first."""
    import tempfile

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 70
            try:
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
                sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
                os.umask(umask)
                os.environ.clear()
                os.environ.update(env)
                os.chdir(cwd)
                from gpumon.cli import main

                code = main(argv)
                sys.stdout.flush()
                sys.stderr.flush()
            except BaseException as e:
                os.write(2, f"child failed: {type(e).__name__}: {e}\n".encode())
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        out.seek(0)
        err.seek(0)
        return (
            os.waitstatus_to_exitcode(status),
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
        )
