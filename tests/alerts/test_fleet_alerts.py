"""Alerts end to end, as the lab runs them: the real sshd fleet on 127.0.0.x, one server a real
agent daemon on the fake NVML, `gpumon push` run as cron runs it (a process per push, --debug)
and `gpumon serve`, messages received by a real HTTP receiver (the webhook) and a real SMTP
server (aiosmtpd, STARTTLS with a login) on loopback.

The story: all well; then hcpbsp runs out of memory (its host state), trlbsp's GPU overheats
(the fake NVML), ganbsp hangs and mlbsp refuses connections (its sshd stopped); then all is well
again. Each transition is told once, grouped per push, the same by cron and by serve; the
sheet is written at every push; no secret shows in any output.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openpyxl
import pytest
from alertkit import secret_file

from gpumon_agent.health import evaluate
from gpumon_agent.report import Report
from harness.agents import AgentFleet, SimAgent
from harness.fakenvml import FakeState, make_gpu
from harness.receivers import LoopbackCA, SmtpServer, WebhookReceiver
from harness.sshd import REPORT, SLEEP, Fleet, canned_report
from harness.timing import COMMAND_START_S, SLACK_S

pytestmark = pytest.mark.slow

GPUMON = Path(sys.executable).with_name("gpumon")
PASSWORD = "sm7p-pa55w0rd-q9"
SERVERS = ("ganbsp", "hcpbsp", "trlbsp", "mlbsp")
DOWN_AFTER_S = 3.0


@dataclass
class Lab:
    fleet: Fleet
    agents: AgentFleet
    trl: SimAgent
    ca: LoopbackCA
    work: Path
    hook: WebhookReceiver
    smtp: SmtpServer
    webhook_file: Path
    password_file: Path

    def config(self, name: str, extra: str = "") -> Path:
        """A config of its own (state, sheet) naming the four servers and both channels."""
        folder = self.work / name
        folder.mkdir(exist_ok=True)
        known = folder / "known_hosts"
        known.write_text(self.fleet.known_hosts_text())
        servers = "".join(
            f'[servers.{s.name}]\nhost = "{s.address}"\nport = {self.fleet.port}\n'
            for s in self.fleet.servers
            if s.name in SERVERS
        )
        path = folder / "gpumon.toml"
        path.write_text(
            f'state_dir = "{folder}/state"\n'
            f'[sheet]\npath = "{folder}/sheet.xlsx"\nadd_rows = true\ntime_zone = "UTC"\n'
            f'[poll]\nuser = "{self.fleet.user.pw_name}"\nknown_hosts = "{known}"\n'
            f'identity_files = ["{self.fleet.client_key}"]\nssh_config = "{folder}/none"\n'
            "servers_from_sheet = false\nconnect_timeout_s = 1\nhandshake_timeout_s = 2\n"
            "auth_timeout_s = 2\ncommand_timeout_s = 1.5\nsweep_timeout_s = 8\n"
            "[serve]\ninterval_s = 1\n"
            f"[alerts]\ndown_after_s = {DOWN_AFTER_S}\ntimeout_s = 3\n"
            f'webhook_file = "{self.webhook_file}"\n'
            f'smtp = "{self.smtp.address}"\nsmtp_user = "gpumon"\n'
            f'smtp_password_file = "{self.password_file}"\nca_file = "{self.ca.ca_file}"\n'
            'email_from = "gpumon@lab.example"\nemail_to = ["gpu-admins@lab.example"]\n'
            + extra
            + servers
        )
        return path

    # --- the story ---------------------------------------------------------------------------

    def all_well(self) -> None:
        self.fleet.set_behaviour(self.fleet.server("ganbsp"), REPORT)
        self.fleet.set_report(self.fleet.server("hcpbsp"), healthy_report(self.fleet, "hcpbsp"))
        self.set_temperature(45)
        self.fleet.start_sshd(1)

    def trouble(self) -> None:
        self.set_temperature(91)  # first, and waited for: the agent samples every 0.5 s
        self.fleet.set_report(self.fleet.server("hcpbsp"), overloaded_report(self.fleet))
        self.fleet.set_behaviour(self.fleet.server("ganbsp"), SLEEP)
        self.fleet.stop_sshd(1)  # mlbsp: connection refused

    def set_temperature(self, celsius: int) -> None:
        self.trl.nvml.state.gpus[0].temperature = celsius
        self.trl.nvml.write()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            report = Report.from_json(self.trl.snapshot.read_bytes())
            if report.gpus and report.gpus[0].temperature_c == celsius:
                return
            time.sleep(0.1)
        raise AssertionError(f"the agent did not sample {celsius} °C")


def gpu_warnings_only(agent: SimAgent) -> str:
    """An SSH fleet behaviour: the agent's snapshot with its host warnings left out."""
    script = (
        "import json,sys; r=json.load(open(sys.argv[1])); "
        "r['warnings']=[w for w in r['warnings'] if w['gpu_index'] is not None]; "
        "print(json.dumps(r))"
    )
    return f'exec python3 -c "{script}" {agent.snapshot}'


def healthy_report(fleet: Fleet, name: str) -> Report:
    report = canned_report(name, fleet.server(name).address)
    report.host = dataclasses.replace(
        report.host, cpu_count=32, memory_percent=40.0, swap_total_bytes=8 << 30, swap_percent=1.0
    )
    return report


def overloaded_report(fleet: Fleet) -> Report:
    """hcpbsp nearly out of memory, swapping hard: warnings as the agent's own rules give them."""
    report = healthy_report(fleet, "hcpbsp")
    report.host = dataclasses.replace(report.host, memory_percent=97.0, swap_percent=81.0)
    report.warnings = evaluate(report, None)
    assert {w.code for w in report.warnings} == {"memory_high", "swap_high"}
    return report


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, isolated_home: Path) -> Iterator[Lab]:
    work = tmp_path_factory.mktemp("alerts-fleet")
    os.chmod(work, 0o755)
    agents = AgentFleet(first_address=60)
    fleet = Fleet()
    hook = WebhookReceiver()
    ca = LoopbackCA(work / "tls")
    smtp = SmtpServer("starttls", ca=ca, user="gpumon", password=PASSWORD)
    try:
        trl = agents.add("trlbsp", FakeState(gpus=[make_gpu(0, temperature=45)]))
        agents.start(interval=0.5)
        fleet.add("ganbsp")
        fleet.add("hcpbsp")
        # The real agent's snapshot, less the warnings about this test machine itself (its
        # load and memory, which the test cannot set): the GPU's are what this server is for.
        fleet.add("trlbsp", behaviour=gpu_warnings_only(trl))
        for i in range(13):  # the rest of the first sshd's 16 addresses: not in the config
            fleet.add(f"filler{i:02d}")
        mlbsp = fleet.add("mlbsp")
        assert mlbsp.sshd_index == 1  # its own sshd: stopping it refuses mlbsp alone
        fleet.server("hcpbsp").report = healthy_report(fleet, "hcpbsp")
        fleet.start()
        yield Lab(
            fleet=fleet, agents=agents, trl=trl, ca=ca, work=work, hook=hook, smtp=smtp,
            webhook_file=secret_file(work, "webhook-url", hook.url(), 0o640),
            password_file=secret_file(work, "smtp-password", PASSWORD, 0o640),
        )  # fmt: skip
    finally:
        smtp.close()
        hook.close()
        fleet.close()
        agents.close()


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("GPUMON_CONFIG", "JOURNAL_STREAM")}
    return subprocess.run(
        [str(GPUMON), *args], capture_output=True, text=True, timeout=timeout, env=env,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def normalized(text: str) -> str:
    """A message without its times and durations (cron and serve push at other moments)."""
    text = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "TIME", text)
    return re.sub(r"\d+(\.\d+)? (s|min|h|days)\b", "N", text)


def event_lines(texts: list[str]) -> Counter[str]:
    lines = [line for text in texts for line in text.splitlines()[1:]]
    return Counter(normalized(line) for line in lines)


def sheet_cells(config: Path) -> dict[str, tuple[str, str, str]]:
    """Each server's (ON/OFF, Time, Health) in the config's workbook."""
    book = openpyxl.load_workbook(config.parent / "sheet.xlsx")
    rows = list(book.active.iter_rows(values_only=True))
    header_at = next(i for i, r in enumerate(rows) if r and "Server" in r)
    header = list(rows[header_at])
    cols = [header.index(name) for name in ("ON/OFF", "Time", "Health")]
    out = {}
    for row in rows[header_at + 1 :]:
        if row and row[0] in SERVERS:
            out[row[0]] = tuple(str(row[c]) for c in cols)
    return out


def assert_no_secret(*outputs: str) -> None:
    for text in outputs:
        assert "s3cr3t" not in text and "B0002" not in text, text  # the webhook URL's path
        assert PASSWORD not in text, text


def test_cron_pushes_tell_each_transition_once_grouped_and_write_the_sheet(lab: Lab):
    lab.all_well()
    config = lab.config("cron")
    hooks_before, mails_before = len(lab.hook.hooks), len(lab.smtp.messages)
    outputs: list[str] = []

    def push() -> subprocess.CompletedProcess[str]:
        done = run("--config", str(config), "--debug", "push")
        outputs.extend([done.stdout, done.stderr])
        assert done.returncode == 0, done.stderr
        return done

    push()
    first = sheet_cells(config)
    assert {name: cells[0] for name, cells in first.items()} == dict.fromkeys(SERVERS, "ON")
    assert lab.hook.wait(hooks_before + 1, timeout_s=0.3)[hooks_before:] == []

    lab.trouble()
    push()  # the warnings at once; the servers not down yet (one failed poll)
    [warned] = [h.text for h in lab.hook.wait(hooks_before + 1)[hooks_before:]]
    assert warned.splitlines()[0] == "gpumon: warning: hcpbsp, trlbsp"
    assert "WARNING hcpbsp: memory 97% used" in warned and "WARNING hcpbsp: swap 81% used" in warned
    assert "WARNING trlbsp: GPU 0 at 91 °C" in warned
    assert "DOWN" not in warned

    time.sleep(DOWN_AFTER_S)  # failed polls for down_after_s: down
    push()
    downs = [h.text for h in lab.hook.wait(hooks_before + 2)[hooks_before + 1 :]]
    assert len(downs) == 1, downs  # two servers down together: one message
    lines = downs[0].splitlines()
    assert lines[0] == "gpumon: down: ganbsp, mlbsp"
    assert lines[1].startswith("DOWN    ganbsp: timed out") and "last seen ON" in lines[1]
    assert lines[2].startswith("DOWN    mlbsp: connection refused (")
    assert "is sshd running?); OFF since " in lines[2]
    cells = sheet_cells(config)
    assert cells["mlbsp"][0] == "OFF"
    assert cells["mlbsp"][2].startswith("connection refused (")
    assert re.search(r"; OFF since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d$", cells["mlbsp"][2])
    assert cells["mlbsp"][1] == first["mlbsp"][1]  # the last-seen time stays

    for _ in range(2):
        push()  # still down, still warned: nothing new
    assert len(lab.hook.wait(hooks_before + 3, timeout_s=0.5)) == hooks_before + 2

    lab.all_well()
    push()
    back = [h.text for h in lab.hook.wait(hooks_before + 3)[hooks_before + 2 :]]
    assert len(back) == 1
    assert back[0].splitlines()[0] == "gpumon: back ON: ganbsp, mlbsp; cleared: hcpbsp, trlbsp"
    assert sorted(line.split()[0] for line in back[0].splitlines()[1:]) == [
        "BACK", "BACK", "CLEARED", "CLEARED", "CLEARED",
    ]  # fmt: skip
    assert sheet_cells(config)["mlbsp"][0] == "ON"

    # The lab's list got the same messages by mail (STARTTLS, logged in).
    mails = lab.smtp.wait(mails_before + 3)[mails_before:]
    assert [m.subject for m in mails] == [
        "gpumon: warning: hcpbsp, trlbsp",
        "gpumon: down: ganbsp, mlbsp",
        "gpumon: back ON: ganbsp, mlbsp; cleared: hcpbsp, trlbsp",
    ]
    assert all(m.tls and m.recipients == ["gpu-admins@lab.example"] for m in mails)
    assert [m.body.strip() for m in mails] == [
        t.split("\n", 1)[1] for t in (warned, downs[0], back[0])
    ]
    assert any("alerts: sent through webhook" in text for text in outputs)
    assert_no_secret(*outputs)
    lab.cron_messages = [warned, downs[0], back[0]]  # type: ignore[attr-defined]


def test_serve_tells_the_same(lab: Lab):
    cron = getattr(lab, "cron_messages", None)
    if cron is None:
        pytest.skip("needs the cron test's messages")
    lab.all_well()
    config = lab.config("serve")
    before = len(lab.hook.hooks)
    log = lab.work / "serve.log"
    with open(log, "w") as stream:
        serve = subprocess.Popen(
            [str(GPUMON), "--config", str(config), "--debug", "serve"],
            stdout=stream, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        _wait_pushes(log, 2)
        assert len(lab.hook.hooks) == before
        lab.trouble()
        got = lab.hook.wait(before + 2, timeout_s=60)[before:]
        assert len(got) >= 2, [h.text for h in got]
        _wait_pushes(log, _pushes(log) + 3)  # still down, still warned: nothing new
        told = len(lab.hook.hooks)
        lab.all_well()
        lab.hook.wait(told + 1, timeout_s=60)
        _wait_pushes(log, _pushes(log) + 3)  # all well again: nothing more
        served = [h.text for h in lab.hook.hooks[before:]]
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(60)
    assert serve.returncode == 0, log.read_text()[-3000:]
    # Every event once, as cron told them (how they fall into pushes may differ by a change
    # made between two servers' polls).
    assert event_lines(served) == event_lines(cron)
    assert_no_secret(log.read_text())


def _pushes(log: Path) -> int:
    return log.read_text().count("gpumon: push: ")


def _wait_pushes(log: Path, count: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while _pushes(log) < count:
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.1)


@pytest.mark.parametrize("fault", ["refused", "slow", "500"])
def test_a_channel_down_never_stops_the_sheet_and_is_retried(lab: Lab, fault: str, tmp_path):
    lab.all_well()
    sick = WebhookReceiver()
    url = sick.url()
    if fault == "refused":
        sick.close()  # nothing listens there any more
    elif fault == "slow":
        sick.delay_s = 60
    else:
        sick.status = 500
    hook_file = secret_file(tmp_path, "webhook", url)
    config = lab.config(f"fault-{fault}", extra="")
    text = config.read_text().replace(str(lab.webhook_file), str(hook_file))
    # The mail channel is left out: this test is about one channel failing.
    text = re.sub(r"(?m)^(smtp|smtp_user|smtp_password_file|email_from|email_to) = .*\n", "", text)
    config.write_text(text)
    try:
        first = run("--config", str(config), "push")
        assert first.returncode == 0, first.stderr
        lab.fleet.set_report(lab.fleet.server("hcpbsp"), overloaded_report(lab.fleet))
        started = time.monotonic()
        failing = run("--config", str(config), "-v", "push")
        took = time.monotonic() - started
        assert failing.returncode == 0, failing.stderr
        assert "message(s) kept, retried at the next push" in failing.stderr
        # BUDGET: the channel's timeout_s (3 s) on top of the push itself.
        assert took < 3 + COMMAND_START_S + SLACK_S
        assert sheet_cells(config)["hcpbsp"][2].startswith("memory 97% used")  # sheet written
        status = run("--config", str(config), "alerts")
        assert status.returncode == 1 and "FAIL webhook http://127.0.0.1:" in status.stdout
        check = run("--config", str(config), "check")
        assert "FAIL alerts: webhook http://127.0.0.1:" in check.stdout
        assert_no_secret(failing.stdout, failing.stderr, status.stdout, check.stdout)
        # The channel comes back: the kept message goes at the next push.
        fixed = WebhookReceiver()
        hook_file.write_text(fixed.url() + "\n")
        try:
            again = run("--config", str(config), "push")
            assert again.returncode == 0
            [delivered] = fixed.wait(1)
            assert "WARNING hcpbsp: memory 97% used" in delivered.text
            assert run("--config", str(config), "alerts").returncode == 0
        finally:
            fixed.close()
    finally:
        lab.all_well()
        if fault != "refused":
            sick.close()


def test_alerts_lists_what_is_active_and_test_reaches_every_channel(lab: Lab):
    lab.all_well()
    config = lab.config("listing")
    lab.fleet.set_report(lab.fleet.server("hcpbsp"), overloaded_report(lab.fleet))
    try:
        assert run("--config", str(config), "push").returncode == 0
        listed = run("--config", str(config), "alerts")
        assert listed.returncode == 0, listed.stdout
        assert "WARNING  hcpbsp: memory 97% used (since " in listed.stdout
        assert "ok   webhook http://127.0.0.1:" in listed.stdout
        assert "ok   e-mail to gpu-admins@lab.example: last delivered " in listed.stdout
        before_hooks, before_mails = len(lab.hook.hooks), len(lab.smtp.messages)
        tested = run("--config", str(config), "--debug", "alerts", "test")
        assert tested.returncode == 0, tested.stdout + tested.stderr
        assert tested.stdout.count("test message sent") == 2
        assert "test message" in lab.hook.wait(before_hooks + 1)[-1].text
        assert "test message" in lab.smtp.wait(before_mails + 1)[-1].subject
        check = run("--config", str(config), "check")
        assert "ok   alerts: e-mail through SMTP 127.0.0.1:" in check.stdout
        assert "STARTTLS, login ok" in check.stdout
        assert_no_secret(listed.stdout, tested.stdout, tested.stderr, check.stdout, check.stderr)
    finally:
        lab.all_well()
