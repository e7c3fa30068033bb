"""pid -> (user, command line): real processes of other users, a vanished pid, long commands."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys

from gpumon_agent.procs import MAX_COMMAND_CHARS, describe


def test_a_process_of_another_user_shows_its_user_and_command():
    # Running as another user needs root, as in CI.
    child = subprocess.Popen(["sleep", "30"], user="nobody")
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
    child = subprocess.Popen([sys.executable, "-c", code, "two\nlines", "x" * 300])
    try:
        user, command = describe(child.pid)
    finally:
        child.kill()
        child.wait()

    assert user == pwd.getpwuid(os.geteuid()).pw_name
    assert command.startswith(f"{sys.executable} -c {code} two lines xxx")
    assert len(command) == MAX_COMMAND_CHARS and command.endswith("...")
