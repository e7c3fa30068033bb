"""`gpumon-agent ssh` (the central key's forced command) and `gpumon-agent stream`: the real
console script in a subprocess on pipes, as sshd runs it — what is accepted, what is refused,
and the stream's bounds (one request in flight, the request size cap, the idle timeout, the end
of input)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from pathlib import Path

import pytest
from agent_proc import AGENT, agent_env, imported_modules

from gpumon_agent.report import SOURCE_DAEMON, Gpu, Host, Report, utc_iso
from gpumon_agent.settings import AgentSettings
from gpumon_agent.snapshot import write_snapshot
from gpumon_agent.stream import (
    MAX_REQUEST_BYTES,
    REQUEST_REPORT,
    REQUEST_STREAM,
    STREAM_SCHEMA,
    allowed_request,
    hello,
)


def snapshot(state: Path, hostname: str = "gpu7", util: float = 42.0) -> bytes:
    state.mkdir(parents=True, exist_ok=True)
    report = Report(
        generated_at=utc_iso(),
        host=Host(hostname=hostname, primary_ip="192.0.2.7"),
        source=SOURCE_DAEMON,
        gpus=[Gpu(index=0, uuid="GPU-aaaa", name="NVIDIA A100", utilization_pct=util)],
    )
    write_snapshot(AgentSettings(state_dir=str(state)), report)
    return (state / "report.json").read_bytes()


class Session:
    """`gpumon-agent ARGS` with pipes, read line by line with a deadline."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [str(AGENT), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self._buf = b""

    def send(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def line(self, timeout: float = 20.0) -> bytes:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            assert left > 0, f"no line within {timeout} s (so far {self._buf[:200]!r})"
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return self._take(len(self._buf))
                self._buf += chunk
        return self._take(self._buf.index(b"\n") + 1)

    def _take(self, n: int) -> bytes:
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def end(self, timeout: float = 20.0) -> tuple[int, bytes]:
        """Exit status and stderr once it exits (stdin left as it is)."""
        code = self.proc.wait(timeout)
        assert self.proc.stderr is not None
        err = self.proc.stderr.read()
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                try:
                    pipe.close()
                except BrokenPipeError:
                    pass
        return code, err


@pytest.fixture
def env(tmp_path: Path, no_nvml_env: dict[str, str]) -> dict[str, str]:
    return agent_env(no_nvml_env, tmp_path / "state")


def ssh_env(env: dict[str, str], requested: str | None) -> dict[str, str]:
    out = dict(env)
    out.pop("SSH_ORIGINAL_COMMAND", None)
    if requested is not None:
        out["SSH_ORIGINAL_COMMAND"] = requested
    return out


# --- the dispatcher -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "requested",
    [
        "gpumon-agent report --json",  # what central boxes send
        "/usr/local/bin/gpumon-agent report --json",
        "gpumon agent report --json",
        "report --json",
    ],
)
def test_ssh_runs_the_report_for_what_central_boxes_ask(tmp_path, env, requested):
    written = snapshot(tmp_path / "state")
    done = subprocess.run(
        [str(AGENT), "ssh"], env=ssh_env(env, requested), capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == written


def test_ssh_report_takes_the_fast_path(tmp_path, env):
    snapshot(tmp_path / "state")
    probe = ssh_env(env, "gpumon-agent report --json")
    probe["PYTHONPROFILEIMPORTTIME"] = "1"
    done = subprocess.run([str(AGENT), "ssh"], env=probe, capture_output=True, timeout=60)
    assert done.returncode == 0
    modules = imported_modules(done.stderr.decode())
    assert {"argparse", "json", "gpumon_agent.cli", "pynvml", "psutil"} & modules == set()


@pytest.mark.parametrize(
    "requested",
    [
        "rm -rf /",
        "sh",
        "",
        "gpumon-agent report",  # not the JSON the poller reads
        "gpumon-agent report --json --state-dir /etc",  # flags are the forced command's own
        "gpumon-agent report --json; id",
        "gpumon-agent stream --idle-timeout 86400",
        "gpumon-agent claims --json",
        "gpumon-agent run",
        "gpumon-agent ssh",
        "python3 -c 'import os'",
        "gpumon-agent report --json\nid",  # a second line is a second command to a shell
        "gpumon-agent report --json " + "x" * 100_000,
        "ünïcødé report --json",
    ],
)
def test_ssh_refuses_anything_else_and_runs_nothing(tmp_path, env, requested):
    marker = tmp_path / "ran"
    done = subprocess.run(
        [str(AGENT), "ssh"],
        env=ssh_env(env, requested),
        capture_output=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert done.stdout == b""
    said = done.stderr.decode()
    assert said.startswith("gpumon-agent ssh: refused ")
    assert "may only run `gpumon-agent report --json` or `gpumon-agent stream`" in said
    assert len(said) < 400  # the request is cut in the refusal, and shown printable
    assert said.endswith("\n") and said[:-1].isprintable()
    assert not marker.exists()


def test_ssh_without_a_command_is_refused(env):
    done = subprocess.run([str(AGENT), "ssh"], env=ssh_env(env, None), capture_output=True)
    assert done.returncode == 2
    assert b"no command given" in done.stderr


def test_ssh_passes_its_own_flags_to_the_command(tmp_path, env):
    elsewhere = tmp_path / "elsewhere"
    written = snapshot(elsewhere, hostname="elsewhere")
    done = subprocess.run(
        [str(AGENT), "ssh", "--state-dir", str(elsewhere), "--idle-timeout", "30"],
        env=ssh_env(env, "gpumon-agent report --json"),
        capture_output=True,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == written


def test_allowed_request_is_what_the_forced_command_accepts():
    assert allowed_request("gpumon-agent stream") == REQUEST_STREAM
    assert allowed_request("  gpumon-agent   report   --json  ") == REQUEST_REPORT
    assert allowed_request("/opt/x/bin/gpumon-agent stream") == REQUEST_STREAM
    for other in ("stream stream", "report --json --json", "gpumon-agentx stream", None):
        assert allowed_request(other) is None


@pytest.mark.parametrize("args", [["--max-age", "nan"], ["--claims-dir", "/x", "--bogus", "1"]])
def test_ssh_with_flags_the_fast_start_cannot_judge_goes_through_the_full_cli(env, args):
    done = subprocess.run(
        [str(AGENT), "ssh", *args],
        env=ssh_env(env, "rm -rf /"),
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stdout == b""


# --- the stream -----------------------------------------------------------------------------


def test_stream_says_hello_then_answers_each_request_with_the_latest_snapshot(tmp_path, env):
    state = tmp_path / "state"
    first = snapshot(state, util=10.0)
    s = Session(["ssh"], ssh_env(env, "gpumon-agent stream"))
    assert json.loads(s.line()) == json.loads(hello())
    assert json.loads(hello())["schema"] == STREAM_SCHEMA
    s.send(b"report\n")
    assert s.line() == first
    second = snapshot(state, util=90.0)  # the daemon wrote a new one: the next answer has it
    s.send(b"report\r\n")
    assert s.line() == second
    s.proc.stdin.close()  # the channel closes: the session ends at once
    code, err = s.end()
    assert (code, err) == (0, b"")


def test_stream_samples_once_when_there_is_no_daemon(tmp_path, env):
    s = Session(["stream"], env)
    assert s.line() == hello()
    s.send(b"report\n")
    answer = Report.from_json(s.line(timeout=60))
    assert answer.source == "oneshot"
    assert "no agent daemon running" in answer.notes[0]
    s.proc.stdin.close()
    assert s.end()[0] == 0


@pytest.mark.parametrize(
    ("sent", "said"),
    [
        (b"shell\n", "unknown request 'shell': the only request is 'report'"),
        (b"report --json\n", "unknown request 'report --json'"),
        (b"\n", "unknown request ''"),
        (b"report\nreport\n", "one request at a time"),
        (b"x" * (MAX_REQUEST_BYTES + 1), f"request longer than {MAX_REQUEST_BYTES} bytes"),
        (b"report" + b" " * 10_000_000, f"request longer than {MAX_REQUEST_BYTES} bytes"),
    ],
)
def test_stream_refuses_what_is_not_one_report_request_and_ends(tmp_path, env, sent, said):
    snapshot(tmp_path / "state")
    s = Session(["stream"], env)
    assert s.line() == hello()
    try:
        s.send(sent)
    except BrokenPipeError:  # it stopped reading at the cap and left: what it said is there
        pass
    refusal = json.loads(s.line())
    assert refusal["schema"] == STREAM_SCHEMA
    assert refusal["error"].startswith("refused: ")
    assert said in refusal["error"]
    code, err = s.end()
    assert code == 2
    assert said in err.decode()


def test_stream_ends_after_the_idle_timeout(tmp_path, env):
    snapshot(tmp_path / "state")
    s = Session(["stream", "--idle-timeout", "1"], env)
    assert s.line() == hello()
    s.send(b"report\n")
    s.line()
    started = time.monotonic()
    code, err = s.end(timeout=10)
    assert code == 0
    assert 0.9 <= time.monotonic() - started < 8
    assert b"no request for 1 s" in err


def test_stream_idle_timeout_out_of_bounds_is_a_clear_error(env):
    done = subprocess.run(
        [str(AGENT), "stream", "--idle-timeout", "0"], env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 2
    assert b"--idle-timeout=0.0: give seconds from 1 to 86400" in done.stderr


def test_stream_start_imports_neither_argparse_nor_nvml(tmp_path, env):
    snapshot(tmp_path / "state")
    probe = dict(env, PYTHONPROFILEIMPORTTIME="1")
    done = subprocess.run(
        [str(AGENT), "stream"], env=probe, input=b"report\n", capture_output=True, timeout=60
    )
    assert done.returncode == 0
    modules = imported_modules(done.stderr.decode())
    assert "gpumon_agent.stream" in modules
    heavy = {"argparse", "json", "dataclasses", "gpumon_agent.cli", "pynvml", "psutil"}
    assert heavy & modules == set()


def test_stream_cpu_per_request_is_small(tmp_path, env):
    """The agent's own accounting (its CPU time, /proc/PID/schedstat) over 500 requests: the
    per-request cost the bench (bench/poll_sweep.py) holds to <= 2 ms; a loose bound here."""
    snapshot(tmp_path / "state")
    s = Session(["stream"], env)
    s.line()
    s.send(b"report\n")
    s.line()
    before = _cpu_s(s.proc.pid)
    for _ in range(500):
        s.send(b"report\n")
        s.line()
    per_request = (_cpu_s(s.proc.pid) - before) / 500
    s.proc.stdin.close()
    s.end()
    assert per_request < 0.002 * 2  # stated slack: a loaded CI host


def _cpu_s(pid: int) -> float:
    """Its time on a CPU as the kernel accounts it (ns in /proc/PID/schedstat)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0]) / 1e9
