"""pid -> (user, command line): real processes of other users, a vanished pid, long commands."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import time

import psutil

from gpumon_agent.procs import MAX_COMMAND_CHARS, describe


def started(argv: list[str], **kwargs) -> subprocess.Popen:
    """A child that has really exec'd `argv` (before exec, /proc shows the forking parent)."""
    child = subprocess.Popen(argv, **kwargs)
    deadline = time.monotonic() + 10
    while psutil.Process(child.pid).cmdline() != argv:
        assert time.monotonic() < deadline, "child never exec'd"
        time.sleep(0.005)
    return child


def test_a_process_of_another_user_shows_its_user_and_command():
    # Running as another user needs root, as in CI.
    child = started(["sleep", "30"], user="nobody")
    try:
        assert describe(child.pid) == ("nobody", "sleep 30")
    finally:
        child.kill()
        child.wait()


def test_a_vanished_or_impossible_pid_is_unknown():
    gone = subprocess.Popen(["true"])
    gone.wait()

    assert describe(gone.pid) == ("?", "?")
    assert describe(-5) == ("?", "?")
    assert describe(2**40) == ("?", "?")


def test_a_long_or_multiline_command_is_one_cut_line():
    code = "import time; time.sleep(30)"
    child = started([sys.executable, "-c", code, "two\nlines", "x" * 300])
    try:
        user, command = describe(child.pid)
    finally:
        child.kill()
        child.wait()

    assert user == pwd.getpwuid(os.geteuid()).pw_name
    assert command.startswith(f"{sys.executable} -c {code} two lines xxx")
    assert len(command) == MAX_COMMAND_CHARS and command.endswith("…")
