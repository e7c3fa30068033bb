"""A fleet of simulated GPU servers: real OpenSSH sshd processes on loopback addresses.

Each server is one address, 127.0.0.2, 127.0.0.3, …, all on one port; one sshd serves up to 16
of them (more ListenAddress lines kill sshd). The central key is installed with exactly the line
of ``deploy/ssh/authorized_keys.example`` (the forced command ``gpumon-agent ssh``, the
dispatcher); ``OLD``-keyed servers get the line agents before it shipped with (the forced
command ``gpumon-agent report --json``). ``gpumon-agent`` on the test user's PATH is a small
script that reads the dialled address from ``SSH_CONNECTION`` and runs that server's behaviour
with what was asked in ``GPUMON_FAKE_ASK`` (the dispatcher's SSH_ORIGINAL_COMMAND, or the
command line itself): print its canned Report, print garbage, sleep… A server with
``stream=True`` speaks the stream protocol (gpumon_agent.stream) when asked for ``stream``:
the hello, then its behaviour once per request line — the one-shot faults, as a stream. The
behaviour ``REAL_AGENT`` runs the real `gpumon-agent` (this venv's console script) on a snapshot
written as the daemon writes it. Per-server differences that must be real (agent not on PATH,
key not authorized, no forced command) are sshd ``Match LocalAddress`` blocks.

Logins use a test user whose shell is /bin/sh (root's bash rc costs ~100 ms per command):
``gpumon-test``, created with useradd when running as root (and removed again if this process
created it); otherwise the current user, with sshd running unprivileged.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from gpumon.config import Config, PollConfig, ServerEntry
from gpumon_agent.report import Gpu, GpuProcess, Host, Nvml, Report
from harness.users import reach_interpreter

REPO = Path(__file__).resolve().parents[2]
AUTHORIZED_KEYS_EXAMPLE = REPO / "deploy" / "ssh" / "authorized_keys.example"
SSHD = "/usr/sbin/sshd"
TEST_USER = "gpumon-test"
MAX_ADDRESSES_PER_SSHD = 16
NOW = "@NOW@"  # replaced by the fake agent with the current UTC time

# What a server's fake agent does (a /bin/sh snippet; {dir} is the fleet directory, {addr} the
# server's address). The Report is printed with a fresh generated_at unless told otherwise.
REPORT = 'exec sed "s/@NOW@/$(date -u +%Y-%m-%dT%H:%M:%SZ)/" {dir}/reports/{addr}.json'
REPORT_AS_WRITTEN = "exec cat {dir}/reports/{addr}.json"  # generated_at as written (cheapest)
GARBAGE = "echo 'Segmentation fault (core dumped) -- not a report'"
HUGE = "head -c 10485760 /dev/zero | tr '\\0' x"  # 10 MB on stdout
SLEEP = "exec sleep 3600"  # never answers (the harness kills it at the end)
# The real agent (this venv's console script), as the forced command ran it, on the snapshot
# {dir}/state/{addr}/report.json (Fleet.write_snapshot; the harness keeps it fresh).
REAL_AGENT = (
    "GPUMON_STATE_DIR={dir}/state/{addr} GPUMON_MAX_AGE=86400 exec {agent} $GPUMON_FAKE_ARGS"
)
# Stream faults (for servers with stream=True: what each request gets).
STALL_MID_ANSWER = 'printf \'%s\' \'{{"schema": "gpumon.report", "version": 2, \'; exec sleep 3600'
STREAM_ERROR = (
    'printf \'%s\\n\' \'{{"schema": "gpumon.stream", "version": 1, '
    '"error": "could not sample: RuntimeError: NVML exploded"}}\''
)
STREAM_EXIT = "exit 0"  # the session ends at the first request (agent killed, restarted)
HUGE_LINE = "head -c 10485760 /dev/zero | tr '\\0' x; echo"  # 10 MB, then a newline
STREAM_HELLO = '{"schema": "gpumon.stream", "version": 1, "agent_version": "fake"}'
AGENT = Path(sys.executable).with_name("gpumon-agent")  # the venv's real console script
FAILING = (
    "echo 'Traceback (most recent call last):' >&2; "
    "echo 'gpumon-agent report: could not sample: RuntimeError: NVML exploded' >&2; exit 3"
)

# Per-server sshd differences (Match LocalAddress).
FORCED = "forced"  # the deploy/ssh line: the dispatcher (report --json or stream)
OLD = "old"  # the line of agents before the dispatcher: always `gpumon-agent report --json`
PLAIN = "plain"  # the same key without a forced command (agentless needs this)
JUMP = "jump"  # a ProxyJump gateway's line (deploy/ssh/README.md): forwarding to the fleet only
NONE = "none"  # the key is not authorized at all


@dataclass
class SimServer:
    name: str
    address: str
    behaviour: str = REPORT
    report: Report | None = None
    keys: str = FORCED
    agent_on_path: bool = True
    nvidia_smi: bool = False  # a fake nvidia-smi on PATH (for the agentless read)
    sshd_options: tuple[str, ...] = ()  # more sshd_config lines for this address only
    sshd_index: int = 0
    # Answers `stream` with the protocol, the behaviour once per request, as the real agent
    # behind the dispatcher would (False: the behaviour whatever is asked, like the old forced
    # command; REAL_AGENT speaks it itself either way).
    stream: bool = True


def ensure_test_user() -> tuple[pwd.struct_passwd, bool]:
    """(passwd entry, created by us). Root: gpumon-test with /bin/sh; else the current user."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()), False
    # Password "*": no password login, but not "locked" ("!"), which sshd refuses without PAM.
    try:
        entry = pwd.getpwnam(TEST_USER)
        subprocess.run(["usermod", "--password", "*", TEST_USER], check=True, capture_output=True)
        return entry, False
    except KeyError:
        pass
    home = f"/var/lib/{TEST_USER}"
    subprocess.run(
        [
            "useradd",
            "--system",
            "--create-home",
            "--home-dir",
            home,
            "--shell",
            "/bin/sh",
            "--password",
            "*",
            TEST_USER,
        ],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam(TEST_USER), True


def remove_test_user() -> None:
    subprocess.run(["userdel", "--remove", TEST_USER], check=False, capture_output=True)


def keygen(path: Path, comment: str = "") -> str:
    """A new ed25519 key pair at ``path``; returns the public line."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return (path.parent / (path.name + ".pub")).read_text().strip()


OLD_COMMAND = 'command="gpumon-agent report --json"'  # the forced command before the dispatcher
NEW_COMMAND = 'command="gpumon-agent ssh"'


def authorized_keys_lines(public_key: str) -> dict[str, str]:
    """The deploy/ssh example lines with ``public_key`` put in: {"restrict": …, "legacy": …,
    "old": the restrict line with the forced command agents before the dispatcher had}."""
    lines = {}
    for raw in AUTHORIZED_KEYS_EXAMPLE.read_text().splitlines():
        text = raw.strip()
        legacy = text.startswith("# command=")
        if legacy:
            text = text[2:]
        elif not text or text.startswith("#"):
            continue
        options, _, _key = text.partition(" ssh-ed25519 ")
        lines["legacy" if legacy else "restrict"] = f"{options} {public_key}"
    assert set(lines) == {"restrict", "legacy"}, AUTHORIZED_KEYS_EXAMPLE
    assert NEW_COMMAND in lines["restrict"], AUTHORIZED_KEYS_EXAMPLE
    lines["old"] = lines["restrict"].replace(NEW_COMMAND, OLD_COMMAND)
    return lines


def free_port(addresses: list[str]) -> int:
    """A port free on every address (sshd binds each explicitly)."""
    for _ in range(200):
        port = random.randint(20000, 59999)
        socks = []
        try:
            for address in addresses:
                s = socket.socket()
                socks.append(s)
                s.bind((address, port))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port on the loopback addresses")


def canned_report(name: str, address: str, gpus: int = 2, generated_at: str = NOW) -> Report:
    """A plausible Report for a simulated server (fresh unless ``generated_at`` is given)."""
    number = int(address.rsplit(".", 1)[1])
    return Report(
        generated_at=generated_at,
        host=Host(hostname=name, primary_ip=f"192.0.2.{number}", load_avg=[0.5, 0.4, 0.3]),
        source="daemon",
        agent_version="0.1.0",
        nvml=Nvml(available=True, driver_version="550.54.15"),
        gpus=[
            Gpu(
                index=i,
                uuid=f"GPU-{number:03d}-{i}",
                name="NVIDIA GeForce RTX 2080 Ti",
                utilization_pct=float((number * 7 + i * 13) % 100),
                memory_used_bytes=(number + i) * 2**28,
                memory_total_bytes=11 * 2**30,
                processes=[
                    GpuProcess(
                        pid=1000 + i, user="niv", command="python train.py", gpu_memory_bytes=2**30
                    )
                ]
                if i == 0
                else [],
            )
            for i in range(gpus)
        ],
    )


@dataclass
class Fleet:
    """Simulated servers on 127.0.0.2…; ``add`` them, ``start()``, poll, ``stop()``."""

    first_address: int = 2
    servers: list[SimServer] = field(default_factory=list)
    port: int = 0
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gpumon-fleet-")))
    _procs: list[subprocess.Popen[bytes] | None] = field(default_factory=list)
    _created_user: bool = False
    # bench/poll_sweep.py's baselines: a second key, authorized everywhere beside the central
    # one but with `restrict` alone (no forced command), so they can run `true` or a responder.
    bench_key: bool = False

    def __post_init__(self) -> None:
        self.user, self._created_user = ensure_test_user()
        root = self.root
        os.chmod(root, 0o755)  # the test user reads the fake agent and reports here
        for sub in ("bin", "smi-bin", "hosts", "reports", "keys", "smi", "state"):
            (root / sub).mkdir()
            os.chmod(root / sub, 0o755)
        pids = root / "pids"
        pids.mkdir()
        os.chown(pids, self.user.pw_uid, self.user.pw_gid)
        self.client_key = root / "keys" / "central"
        self.client_public = keygen(self.client_key, "gpumon-central")
        self.other_key = root / "keys" / "stranger"  # a key no server authorizes
        keygen(self.other_key, "stranger")
        lines = authorized_keys_lines(self.client_public)
        self.authorized_keys_lines = lines
        self._write(root / "authorized_keys", lines["restrict"] + "\n", 0o644)
        self._write(root / "authorized_keys.legacy", lines["legacy"] + "\n", 0o644)
        self._write(root / "authorized_keys.old", lines["old"] + "\n", 0o644)
        self._write(root / "authorized_keys.plain", self.client_public + "\n", 0o644)
        self._write(root / "authorized_keys.none", "", 0o644)
        if self.bench_key:
            self.bench_client_key = root / "keys" / "bench"
            extra = "restrict " + keygen(self.bench_client_key, "bench") + "\n"
            for name in ("authorized_keys", "authorized_keys.legacy", "authorized_keys.old"):
                with open(root / name, "a") as f:
                    f.write(extra)
        self._write(
            root / "bin" / "gpumon-agent",
            "#!/bin/sh\n"
            "# Stand-in for gpumon-agent: answers as the server whose address was dialled.\n"
            "# The dispatcher (forced `gpumon-agent ssh`) is asked in SSH_ORIGINAL_COMMAND.\n"
            'GPUMON_FAKE_ARGS="$*"\n'
            'case "$*" in\n'
            '  ssh) GPUMON_FAKE_ASK="$SSH_ORIGINAL_COMMAND" ;;\n'
            '  *) GPUMON_FAKE_ASK="gpumon-agent $*" ;;\n'
            "esac\n"
            "export GPUMON_FAKE_ARGS GPUMON_FAKE_ASK\n"
            f"echo $$ >> {root}/pids/agents\n"
            "set -- $SSH_CONNECTION\n"
            f'exec /bin/sh {root}/hosts/"$3"\n',
            0o755,
        )
        self._write(
            root / "smi-bin" / "nvidia-smi",
            "#!/bin/sh\n"
            "# Stand-in for nvidia-smi: the two queries the agentless read makes, nothing else.\n"
            'case "$1" in\n'
            f"  --query-gpu=*) exec cat {root}/smi/gpus.csv ;;\n"
            f"  --query-compute-apps=*) exec cat {root}/smi/apps.csv ;;\n"
            'esac\necho "fake nvidia-smi: unexpected $*" >&2\nexit 2\n',
            0o755,
        )

    # --- building the fleet -------------------------------------------------------------

    def add(self, name: str | None = None, **kwargs: object) -> SimServer:
        number = self.first_address + len(self.servers)
        if number > 254:
            raise ValueError("out of 127.0.0.x addresses")
        address = f"127.0.0.{number}"
        server = SimServer(name=name or f"gpu{number:02d}", address=address, **kwargs)  # type: ignore[arg-type]
        server.sshd_index = len(self.servers) // MAX_ADDRESSES_PER_SSHD
        if server.report is None and server.behaviour in (REPORT, REPORT_AS_WRITTEN, REAL_AGENT):
            server.report = canned_report(server.name, address)
        self.servers.append(server)
        return server

    def server(self, name: str) -> SimServer:
        return next(s for s in self.servers if s.name == name)

    def set_behaviour(self, server: SimServer, behaviour: str) -> None:
        server.behaviour = behaviour
        self._write_host(server)

    def set_report(self, server: SimServer, report: Report) -> None:
        server.report = report
        self._write_host(server)

    def write_snapshot(self, server: SimServer) -> None:
        """The server's Report as its daemon would leave it for REAL_AGENT: report.json in
        its state dir, one line, generated now (unless the Report says otherwise)."""
        assert server.report is not None
        folder = self.root / "state" / server.address
        folder.mkdir(exist_ok=True)
        os.chmod(folder, 0o755)
        text = server.report.to_json().replace(
            NOW, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        )
        self._write(folder / "report.json", text + "\n", 0o644)

    def agent_starts(self) -> int:
        """How many times a server started `gpumon-agent` (a process each) so far."""
        pids_file = self.root / "pids" / "agents"
        return len(pids_file.read_text().split()) if pids_file.exists() else 0

    def smi_output(self, gpus_csv: str, apps_csv: str) -> None:
        self._write(self.root / "smi" / "gpus.csv", gpus_csv, 0o644)
        self._write(self.root / "smi" / "apps.csv", apps_csv, 0o644)

    # --- running ------------------------------------------------------------------------

    @property
    def sshd_count(self) -> int:
        return (len(self.servers) + MAX_ADDRESSES_PER_SSHD - 1) // MAX_ADDRESSES_PER_SSHD

    def start(self) -> None:
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
        if not self.port:
            self.port = free_port([s.address for s in self.servers])
        for server in self.servers:
            self._write_host(server)
        permits = ",".join(f'permitopen="{s.address}:{self.port}"' for s in self.servers)
        self._write(
            self.root / "authorized_keys.jump",
            f'restrict,port-forwarding,{permits},command="/bin/false" {self.client_public}\n',
            0o644,
        )
        self.host_keys: list[str] = []
        for index in range(self.sshd_count):
            key = self.root / "keys" / f"host{index}"
            if not key.exists():
                keygen(key, f"sshd{index}")
            self.host_keys.append((self.root / "keys" / f"host{index}.pub").read_text().split()[1])
            self._write(self.root / f"sshd{index}.conf", self._sshd_config(index), 0o644)
        self._procs = [None] * self.sshd_count
        for index in range(self.sshd_count):
            self._start_sshd(index)

    def _start_sshd(self, index: int) -> None:
        log = open(self.root / f"sshd{index}.log", "ab")  # noqa: SIM115 - kept for the process
        reach = None
        if os.geteuid() == 0:  # the test user's sessions run this venv's agent (REAL_AGENT)
            stash = self.root / "stash"
            stash.mkdir(exist_ok=True)
            reach = reach_interpreter(str(stash))

        def preexec() -> None:
            _die_with_parent()
            if reach is not None:
                reach()

        proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(self.root / f"sshd{index}.conf")],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            preexec_fn=preexec,
        )
        log.close()
        self._procs[index] = proc
        mine = [s for s in self.servers if s.sshd_index == index]
        deadline = time.monotonic() + 10
        for server in mine:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"sshd {index} exited ({proc.returncode}):\n{self.log(index)[-2000:]}"
                    )
                try:
                    socket.create_connection((server.address, self.port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"sshd {index} not listening on {server.address}"
                        ) from None
                    time.sleep(0.02)

    def stop_sshd(self, index: int) -> None:
        """Stop one sshd and every process it started (connections, agents): a server down."""
        proc = self._procs[index] if index < len(self._procs) else None
        if proc is None:
            return
        victims = _descendants(proc.pid)
        proc.terminate()
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        self._procs[index] = None

    def start_sshd(self, index: int) -> None:
        """Start a stopped sshd again (a server back up); nothing if it runs."""
        if self._procs[index] is None:
            self._start_sshd(index)

    def restart_sshd(self, index: int) -> None:
        self.stop_sshd(index)
        self._start_sshd(index)

    def stop(self) -> None:
        for index in range(len(self._procs)):
            self.stop_sshd(index)
        self._kill_agents()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
        if self._created_user:
            remove_test_user()
            self._created_user = False

    def _kill_agents(self) -> None:
        """The fake agents that were told to sleep forever outlive their sessions; end them."""
        pids_file = self.root / "pids" / "agents"
        if not pids_file.exists():
            return
        for line in pids_file.read_text().split():
            pid = int(line)
            if _owner(pid) == self.user.pw_uid:  # still ours (not a recycled pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def log(self, index: int) -> str:
        return (self.root / f"sshd{index}.log").read_text(errors="replace")

    def logins_to(self, server: SimServer) -> int:
        """How many SSH logins (authenticated connections) this server's sshd accepted."""
        lines = self.log(server.sshd_index).splitlines()
        marker = f" on {server.address} port {self.port} "
        ports = {
            line.split(" port ", 1)[1].split()[0]
            for line in lines
            if line.startswith("Connection from ") and marker in line
        }
        return sum(
            1
            for line in lines
            if line.startswith("Accepted publickey") and line.split(" port ")[1].split()[0] in ports
        )

    # --- the central side's view --------------------------------------------------------

    def known_hosts_text(self, skip: tuple[str, ...] = (), wrong: tuple[str, ...] = ()) -> str:
        """known_hosts for the fleet; servers in ``skip`` left out, in ``wrong`` given a
        different key of the same type (as after a reinstall, or an impostor)."""
        lines = []
        for server in self.servers:
            if server.name in skip:
                continue
            key = self.host_keys[server.sshd_index]
            if server.name in wrong:
                impostor = self.root / "keys" / f"impostor-{server.name}"
                if not impostor.exists():
                    keygen(impostor)
                key = (self.root / "keys" / f"impostor-{server.name}.pub").read_text().split()[1]
            lines.append(f"[{server.address}]:{self.port} ssh-ed25519 {key}")
        return "\n".join(lines) + "\n"

    def config(self, workdir: Path, known_hosts: str | None = None, **poll: object) -> Config:
        """A gpumon Config naming every server, our key, and a known_hosts for the fleet."""
        known = workdir / "known_hosts"
        known.write_text(self.known_hosts_text() if known_hosts is None else known_hosts)
        settings = dict(
            user=self.user.pw_name,
            known_hosts=str(known),
            ssh_config=str(workdir / "ssh_config"),  # absent unless a test writes it
            identity_files=[str(self.client_key)],
            connect_timeout_s=2.0,
            handshake_timeout_s=3.0,
            auth_timeout_s=3.0,
            command_timeout_s=3.0,
            sweep_timeout_s=10.0,
        )
        settings.update(poll)
        return Config(
            path=str(workdir / "gpumon.toml"),
            state_dir=str(workdir / "state"),
            poll=PollConfig(**settings),  # type: ignore[arg-type]
            servers={
                s.name: ServerEntry(name=s.name, host=s.address, port=self.port)
                for s in self.servers
            },
        )

    # --- files ----------------------------------------------------------------------------

    def _write_host(self, server: SimServer) -> None:
        if server.report is not None:
            self._write(
                self.root / "reports" / f"{server.address}.json",
                server.report.to_json() + "\n",  # one line, as the agent prints it
                0o644,
            )
        script = server.behaviour.format(dir=self.root, addr=server.address, agent=AGENT)
        if server.behaviour == REAL_AGENT and server.report is not None:
            self.write_snapshot(server)
        if server.stream and server.behaviour != REAL_AGENT:
            # The stream protocol around the behaviour: the hello, then the behaviour once
            # per request line, read afresh each time (set_behaviour changes what an open
            # stream answers next), in a subshell (behaviours exec).
            answer = self.root / "hosts" / f"{server.address}.answer"
            self._write(answer, script + "\n", 0o644)
            script = (
                'case "$GPUMON_FAKE_ASK" in *stream)\n'
                f"  echo '{STREAM_HELLO}'\n"
                f"  while read -r line; do ( . {answer} ) || exit $?; done\n"
                "  exit 0 ;;\n"
                f"esac\n{script}"
            )
        self._write(self.root / "hosts" / server.address, script + "\n", 0o644)

    def _sshd_config(self, index: int) -> str:
        root = self.root
        mine = [s for s in self.servers if s.sshd_index == index]
        path = f"{root}/bin:/usr/bin:/bin"
        lines = [f"ListenAddress {s.address}:{self.port}" for s in mine] + [
            f"HostKey {root}/keys/host{index}",
            f"PidFile {root}/sshd{index}.pid",
            f"AuthorizedKeysFile {root}/authorized_keys",
            f"AllowUsers {self.user.pw_name}",
            "UsePAM no",
            "StrictModes no",  # the temp dir is not root-owned all the way up
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "MaxStartups 500",  # the whole fleet connects at once
            "MaxSessions 50",
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
            "LogLevel VERBOSE",
            f"SetEnv PATH={path}",
        ]
        for server in mine:
            overrides = []
            if server.keys != FORCED:
                overrides.append(f"AuthorizedKeysFile {root}/authorized_keys.{server.keys}")
            if not server.agent_on_path or server.nvidia_smi:
                dirs = ([f"{root}/bin"] if server.agent_on_path else []) + (
                    [f"{root}/smi-bin"] if server.nvidia_smi else []
                )
                overrides.append(f"SetEnv PATH={':'.join([*dirs, '/usr/bin', '/bin'])}")
            overrides += server.sshd_options
            if overrides:
                lines.append(f"Match LocalAddress {server.address}")
                lines += ["    " + o for o in overrides]
        return "\n".join(lines) + "\n"

    def use_legacy_line(self, server: SimServer) -> None:
        server.keys = "legacy"

    @staticmethod
    def _write(path: Path, text: str, mode: int = 0o600) -> None:
        path.write_text(text)
        os.chmod(path, mode)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies, however it dies, so a
    killed pytest leaves no sshd behind (Linux prctl PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM, 0, 0, 0)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _owner(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


# --- listeners that are not sshd (for the stage faults) --------------------------------------


class SilentListener:
    """Accepts TCP connections (the kernel completes the handshake) and never says a word."""

    def __init__(self, address: str, banner: bytes | None = None) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, 0))
        self.sock.listen(64)
        self.address, self.port = self.sock.getsockname()
        self.banner = banner
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        if banner is not None:  # accept, greet, then silence
            self._thread = threading.Thread(target=self._serve, daemon=True)
            self._thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self._conns.append(conn)
            with contextlib.suppress(OSError):
                conn.sendall(self.banner or b"")

    def close(self) -> None:
        self._stop.set()
        for conn in self._conns:
            conn.close()
        self.sock.close()


class RefusedPort:
    """A port that refuses connections: bound (so nobody else takes it), never listening."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket()
        self.sock.bind((address, 0))
        self.address, self.port = self.sock.getsockname()

    def close(self) -> None:
        self.sock.close()
