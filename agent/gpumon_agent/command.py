"""The program a command line runs, as people name it: "/usr/bin/python3 -u train.py --lr 1" →
"python3 train.py". The sheet's Running cell and /metrics' ``command`` label both use it, so a
sheet fed from Prometheus says what one fed over SSH says.

Must stay importable on Python 3.8.
"""

from __future__ import annotations

import os
import shlex

_INTERPRETERS = {"python", "python2", "python3", "sh", "bash", "perl", "ruby", "node", "java"}


def short_command(command: str) -> str:
    """The program, plus the script for interpreters: "/usr/bin/python3 -u train.py --lr 1" →
    "python3 train.py"."""
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    if not words:
        return "?"
    program = os.path.basename(words[0]) or words[0]
    if _base_interpreter(program) in _INTERPRETERS:
        for word in words[1:]:
            if word == "-m":
                continue
            if not word.startswith("-"):
                return f"{program} {os.path.basename(word) or word}"
    return program


def _base_interpreter(program: str) -> str:
    return program.rstrip("0123456789.")
