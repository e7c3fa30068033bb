"""What the agent's answer means: its Report, or why there is none (missing, failed, bad)."""

from __future__ import annotations

import re

from gpumon.poll import result as codes
from gpumon.poll.transport import CommandOutput, PollFailure
from gpumon_agent.report import MAX_REPORT_BYTES, Report, ReportError, check
from gpumon_agent.text import cut_start

REASON_CHARS = 300  # the agent's own words kept in a reason (the sheet cell stays readable)
_NOT_FOUND = re.compile(rb"command not found")  # bash; dash says "not found", exit 127
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def interpret(out: CommandOutput, command: str) -> Report:
    """The Report in ``out``, or a PollFailure saying what went wrong (stage "read")."""
    program = command.split()[0] if command.split() else command
    if out.too_large:
        raise PollFailure(
            codes.BAD_OUTPUT,
            f"bad output: more than {MAX_REPORT_BYTES} bytes — stopped reading "
            f"(is `{command}` the agent?)",
            "read",
        )
    if out.exit_status == 127 or (out.exit_status != 0 and _NOT_FOUND.search(out.stderr)):
        raise PollFailure(
            codes.AGENT_MISSING,
            f"agent not installed: `{program}` not found ({trim(out.stderr) or 'exit 127'}) "
            "— install gpumon-agent on the server, or enable [poll] agentless",
            "exec",
        )
    if out.exit_status != 0:
        status = (
            f"exit {out.exit_status}"
            if out.exit_status >= 0
            else "killed, no exit status (OOM or a signal?)"
        )
        said = trim(out.stderr)
        raise PollFailure(
            codes.AGENT_FAILED,
            f"agent failed ({status})" + (f": {said}" if said else ""),
            "read",
        )
    try:
        return Report.from_json(out.stdout)
    except ReportError as e:
        preview = _CONTROL.sub("", out.stdout[:60].decode("utf-8", "replace")).strip()
        raise PollFailure(
            codes.BAD_OUTPUT,
            f"bad output: {trim(str(e), REASON_CHARS)}"
            + (f" — it began {preview!r}" if "not JSON" in str(e) and preview else ""),
            "read",
        ) from None


def bounded(report: Report) -> Report:
    """A Report built here (agentless) or read in-process, held to the same bounds as one
    decoded from the wire (``gpumon_agent.bounds``)."""
    try:
        return check(report)
    except ReportError as e:
        raise PollFailure(codes.BAD_OUTPUT, f"bad output: {trim(str(e))}", "read") from None


def trim(data: bytes | str, limit: int = REASON_CHARS) -> str:
    """One line of printable text: the last lines (errors come last), at most ``limit``."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    lines = [_CONTROL.sub("", line).strip() for line in text.splitlines()]
    return cut_start(" | ".join(line for line in lines if line), limit)
