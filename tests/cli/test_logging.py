"""-v / --debug say what gpumon does — each server's SSH stages with their times, each HTTP
request to Google with its time — and never a secret. Under journald every stderr line carries
its syslog priority (`<4>` …), so `journalctl -p warning` shows warnings and errors only:
checked on a pipe posing as the journal stream, and on a real systemd-journald."""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import openpyxl
import pytest
from clikit import GPUMON, clean_env, fleet_config, gpumon_here, local_config

from gpumon import logs
from harness.sheets_fixtures import google_fixture, sheets_server_fixture  # noqa: F401
from harness.sshd import Fleet

STAGE = r"{} \d+\.\d ms"


@pytest.fixture(scope="module")
def fleet(isolated_home: Path) -> Iterator[Fleet]:
    fleet = Fleet()
    fleet.add("hcpbsp")
    fleet.start()
    yield fleet
    fleet.close()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """In-process tests that turn logging on leave it as they found it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_verbose_shows_each_ssh_stage_with_its_time(fleet, tmp_path, no_nvml_env):
    config = fleet_config(fleet, tmp_path)
    done = gpumon_here("status", "-v", "--config", str(config),
                       env=clean_env(tmp_path, no_nvml_env), cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stderr.splitlines() if x.startswith("gpumon: hcpbsp: ON via"))
    assert f"@{fleet.servers[0].address}:{fleet.port}" in line
    for stage in ("connect", "banner", "kex", "auth", "exec", "read"):
        assert re.search(STAGE.format(stage), line), line
    quiet = gpumon_here("status", "--config", str(config),
                        env=clean_env(tmp_path, no_nvml_env), cwd=tmp_path)  # fmt: skip
    assert quiet.stderr == ""  # without -v: nothing but warnings and errors


def test_debug_shows_every_stage_as_it_begins_and_no_key(fleet, tmp_path, no_nvml_env):
    config = fleet_config(fleet, tmp_path)
    done = gpumon_here("--debug", "status", "--config", str(config),
                       env=clean_env(tmp_path, no_nvml_env), cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "gpumon: debug: hcpbsp: connect (deadline 3 s)" in done.stderr
    assert "gpumon: debug: hcpbsp: auth (deadline 5 s)" in done.stderr
    key = fleet.client_key.read_text()
    body = "".join(key.splitlines()[1:-1])
    for chunk in (body[i : i + 24] for i in range(0, len(body) - 24, 24)):
        assert chunk not in done.stderr.replace("\n", "")


def test_verbose_shows_sheets_requests_with_times_and_never_a_secret(
    google, capsys, restore_logging
):
    logs.setup(verbosity=1)
    backend = google.backend()
    backend.read()
    issued = list(google.server.tokens)
    google.server.expire_tokens()  # the next call: 401, a new token, the call again
    backend.read()
    backend.close()
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert any(
        re.match(r"gpumon: HTTP POST http://127\.0\.0\.1:\d+/token → 200 OK .* in \d+ ms$", x)
        for x in lines
    ), err
    # (the loopback adapter sends sheets.googleapis.com to the local server's address)
    reads = [x for x in lines if re.match(r"gpumon: HTTP GET \S+/v4/spreadsheets/\w+\?", x)]
    assert any(" → 200 OK" in x for x in reads) and any(" → 401 " in x for x in reads), err
    assert all(re.search(r" in \d+ ms$", x) for x in reads)
    secrets = [*issued, *google.server.tokens, "Bearer", "Authorization", "BEGIN PRIVATE"]
    secrets += [form["assertion"][-40:] for form in google.server.token_requests]
    key = google.key_file.read_text()
    secrets += [key.split("\\n")[3]]  # a line of the private key's body
    for secret in secrets:
        assert secret not in err, secret


def test_secret_query_parameters_are_masked():
    from gpumon.sheet.google_auth import safe_url

    url = "https://x.test/v4/s?access_token=ya29.abc&fields=sheets&key=AIza123&sig=zz"
    assert safe_url(url) == "https://x.test/v4/s?access_token=***&fields=sheets&key=***&sig=***"
    long = safe_url("https://x.test/v4/s?fields=" + "a" * 100)
    assert long.endswith("a" * 37 + "...") and len(long) < 80


# --- journald ---------------------------------------------------------------------------------


def warning_workbook(folder: Path) -> None:
    """A sheet whose Server column names an address: the push warns it is not polled."""
    book = openpyxl.Workbook()
    book.active.append(["Server", "GPU", "IP", "ON/OFF", "Time"])
    book.active.append(["192.0.2.7", "0"])
    book.active.append(["box", "0"])
    book.save(folder / "sheet.xlsx")


def sheet_config(folder: Path) -> Path:
    config = local_config(folder, state_dir=folder / "state")
    config.write_text(config.read_text().replace("servers_from_sheet = false", ""))
    warning_workbook(folder)
    return config


def run_into_pipe(args: list[str], env: dict[str, str], cwd: Path, as_journal: bool) -> str:
    """Run gpumon with stdout and stderr into one pipe; with ``as_journal``, JOURNAL_STREAM
    names that pipe, as systemd names the journal's stream socket."""
    read_end, write_end = os.pipe()
    st = os.fstat(write_end)
    if as_journal:
        env = {**env, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
    else:  # another stream's identity: not ours
        env = {**env, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}
    with os.fdopen(read_end) as reader:
        proc = subprocess.Popen(
            [str(GPUMON), *args], env=env, cwd=cwd, stdout=write_end, stderr=write_end,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(write_end)
        text = reader.read()
    proc.wait(timeout=120)
    return text


def test_under_journald_every_stderr_line_carries_its_priority(tmp_path, no_nvml_env):
    config = sheet_config(tmp_path / "c")
    env = clean_env(tmp_path, no_nvml_env)
    text = run_into_pipe(["push", "-v", "--config", str(config)], env, tmp_path, True)
    lines = text.splitlines()
    assert "<4>gpumon: warning: not polled: '192.0.2.7'" in text  # printed by the command
    assert any(x.startswith("<6>gpumon: box: ON via local") for x in lines)  # -v, logged
    # The summary goes to stdout: the stream's default priority (info), no prefix.
    assert any("1 servers, 1 ON" in x and not x.startswith("<") for x in lines)
    (tmp_path / "c" / "sheet.xlsx").write_bytes(b"not a workbook")
    broken = run_into_pipe(["push", "--config", str(config)], env, tmp_path, True)
    assert broken.startswith("<3>gpumon: ") and "sheet.xlsx" in broken  # exit 3: an error


def test_outside_journald_lines_carry_no_prefix(tmp_path, no_nvml_env):
    config = sheet_config(tmp_path / "c")
    text = run_into_pipe(["push", "-v", "--config", str(config)],
                         clean_env(tmp_path, no_nvml_env), tmp_path, False)  # fmt: skip
    assert "gpumon: warning: not polled: '192.0.2.7'" in text
    assert not any(line.startswith("<") for line in text.splitlines())


def test_serve_logs_under_journald_carry_priorities(tmp_path, no_nvml_env):
    config = sheet_config(tmp_path / "c")
    config.write_text(config.read_text() + "[serve]\ninterval_s = 0.3\n")
    read_end, write_end = os.pipe()
    st = os.fstat(write_end)
    env = clean_env(tmp_path, no_nvml_env, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
    proc = subprocess.Popen([str(GPUMON), "--config", str(config), "serve"], env=env,
                            cwd=tmp_path, stdout=write_end, stderr=write_end)  # fmt: skip
    os.close(write_end)
    seen = b""
    deadline = time.monotonic() + 60
    with os.fdopen(read_end, "rb") as reader:
        while seen.count(b"push: ") < 2 and time.monotonic() < deadline:
            seen += os.read(reader.fileno(), 65536)
        proc.terminate()
        seen += reader.read()
    assert proc.wait(timeout=30) == 0
    text = seen.decode()
    assert "<6>gpumon: push: 1 servers, 1 ON" in text
    assert "<4>gpumon: warning: not polled: '192.0.2.7'" in text
    assert "<6>gpumon: stopped after" in text
    assert all(line.startswith(("<4>", "<6>")) for line in text.splitlines() if line)


JOURNALD = "/lib/systemd/systemd-journald"


@pytest.fixture
def journal() -> Iterator[str]:
    """A private systemd-journald (its own namespace: sockets under
    /run/systemd/journal.NS, files under /var/log/journal/MACHINE-ID.NS), removed after."""
    if os.geteuid() != 0:
        pytest.skip("systemd-journald needs root")
    assert os.path.exists(JOURNALD), "systemd-journald missing: apt-get install systemd"
    namespace = f"gpumontest{os.getpid()}"
    proc = subprocess.Popen([JOURNALD, namespace], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    sockets = Path(f"/run/systemd/journal.{namespace}")
    machine = Path("/etc/machine-id").read_text().strip()
    try:
        deadline = time.monotonic() + 10
        while not (sockets / "stdout").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "journald did not start"
            time.sleep(0.02)
        yield namespace
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(sockets, ignore_errors=True)
        shutil.rmtree(f"/var/log/journal/{machine}.{namespace}", ignore_errors=True)
        shutil.rmtree(f"/run/log/journal/{machine}.{namespace}", ignore_errors=True)


def journal_stream(namespace: str, identifier: str) -> socket.socket:
    """A stream into the journal, as systemd gives a unit's stdout/stderr (sd-journal's
    stdout protocol: identifier, unit, priority, level prefix on, no forwarding)."""
    stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stream.connect(f"/run/systemd/journal.{namespace}/stdout")
    stream.shutdown(socket.SHUT_RD)
    stream.sendall(f"{identifier}\n\n6\n1\n0\n0\n0\n".encode())
    return stream


def journalctl(namespace: str, identifier: str, priority: str) -> list[str]:
    done = subprocess.run(
        ["journalctl", f"--namespace={namespace}", "-t", identifier, "-p", priority, "-o", "cat",
         "--no-pager"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return done.stdout.splitlines()


@pytest.mark.slow
def test_journalctl_p_warning_shows_only_warnings_and_errors(journal, tmp_path, no_nvml_env):
    config = sheet_config(tmp_path / "c")
    identifier = "gpumon-push-test"
    stream = journal_stream(journal, identifier)
    st = os.fstat(stream.fileno())
    env = clean_env(tmp_path, no_nvml_env, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
    with stream:
        for args, code in ((["push", "-v"], 0), (["push"], 3)):
            done = subprocess.run([str(GPUMON), "--config", str(config), *args], env=env,
                                  cwd=tmp_path, stdout=stream.fileno(), stderr=stream.fileno(),
                                  timeout=120)  # fmt: skip
            assert done.returncode == code
            (tmp_path / "c" / "sheet.xlsx").write_bytes(b"not a workbook")  # the second: exit 3
    deadline = time.monotonic() + 10
    while len(journalctl(journal, identifier, "info")) < 4 and time.monotonic() < deadline:
        time.sleep(0.1)
    everything = journalctl(journal, identifier, "debug")
    warnings = journalctl(journal, identifier, "warning")
    assert any(x.startswith("gpumon: box: ON via local") for x in everything)
    assert any("1 servers, 1 ON" in x for x in everything)
    assert any(x.startswith("gpumon: warning: not polled: '192.0.2.7'") for x in warnings)
    assert any("sheet.xlsx" in x for x in journalctl(journal, identifier, "err"))
    assert not any("ON via local" in x or "1 servers, 1 ON" in x for x in warnings)
    assert not any(x.startswith("<") for x in everything)  # journald took the prefixes
