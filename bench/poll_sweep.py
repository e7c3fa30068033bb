"""One sweep of 64 servers: gpumon's Poller cold and steady — over kept-open `stream` channels
(the default) and one-shot ([poll] stream = false) — beside baselines measured in the same run
on the same fleet:

- the floor: one request/response round trip on channels already open (paramiko, the same
  client library), answered by a trivial responder with a line of the Report's size — what no
  poller over these SSH connections can beat;
- a bare exec of `true` on open transports (what any new-command-per-poll way costs at least);
- gpustat-web's way: asyncssh, a connection per server kept open, a new remote command per poll
  (our own small equivalent of its polling loop) — asking for `gpumon-agent report --json`
  through the same forced command, and, the cheapest command there is, `cat` of the Report;
- a naive serial paramiko loop (connect, exec, close per server).

The fleet: 64 simulated servers, 4 real sshd × 16 loopback addresses (tests/harness/sshd.py),
each with the production authorized_keys line (`gpumon-agent ssh`) and the real agent (this
venv's console script) reading a snapshot written as its daemon writes it (4 GPUs). The
baselines that run other commands log in with a second key that has no forced command.

Server-side CPU per steady poll is the agent processes' own accounting (their time on a CPU in
/proc/PID/schedstat) over the steady sweeps; sshd's share (its per-connection processes) is printed
beside it.

Targets on the 2-core CI machine (printed, not asserted): steady sweep <= 1.5x the floor and
>= 3x faster than gpustat-web's way; cold no slower than gpustat-web's way; agent CPU per steady
poll <= 2 ms.

    .venv/bin/python bench/poll_sweep.py [--servers 64] [--runs 7] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import asyncssh  # noqa: E402
import paramiko  # noqa: E402

from gpumon.poll import transport as ssh_transport  # noqa: E402
from gpumon.poll.inventory import resolve  # noqa: E402
from gpumon.poll.poller import Poller  # noqa: E402
from gpumon.poll.stream import VIA_STREAM  # noqa: E402
from gpumon.poll.transport import Attempt  # noqa: E402
from gpumon_agent.report import Report  # noqa: E402
from harness.sshd import REAL_AGENT, Fleet, _descendants, canned_report  # noqa: E402

COMMAND = "gpumon-agent report --json"  # what gpustat-web's way asks the forced command for
TARGET_FLOOR_RATIO = 1.5
TARGET_GPUSTAT_RATIO = 3.0
TARGET_AGENT_CPU_MS = 2.0
# The floor's responder: one line of the Report's size for each line read, nothing else.
RESPONDER = (
    "exec /usr/bin/python3 -S -c 'import os, sys\n"
    'answer = open(sys.argv[1], "rb").read()\n'
    "while os.read(0, 4096):\n"
    "    os.write(1, answer)' {path}"
)


def p50(samples: list[float]) -> float:
    return statistics.median(samples)


def check(reports: list[bytes | str], expected: int, label: str) -> None:
    """Every way must really read every Report, or its timing means nothing."""
    good = 0
    for text in reports:
        try:
            Report.from_json(text)
            good += 1
        except Exception:
            pass
    if good != expected:
        raise SystemExit(f"{label}: only {good}/{expected} servers answered with a Report")


def proc_cpu_s(pid: int) -> float:
    """The kernel's own account of a process' time on a CPU: /proc/PID/schedstat (ns; the
    utime/stime of /proc/PID/stat count whole 10 ms ticks, coarser than a poll)."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def server_side_cpu(fleet: Fleet) -> tuple[float, float]:
    """(CPU seconds of the agent processes, of sshd's per-connection processes) so far."""
    agents = sshd = 0.0
    for proc in fleet._procs:  # the harness' own sshd processes
        if proc is None:
            continue
        for pid in _descendants(proc.pid):
            try:
                with open(f"/proc/{pid}/comm") as f:
                    name = f.read().strip()
            except OSError:
                continue
            if name.startswith("sshd"):
                sshd += proc_cpu_s(pid)
            else:
                agents += proc_cpu_s(pid)
    return agents, sshd


# --- gpumon --------------------------------------------------------------------------------


def gpumon_sweeps(config, names: list[str], runs: int, fleet: Fleet | None = None):
    """(cold sweeps, steady sweeps, server CPU (agent, sshd) per steady poll in seconds)."""
    cold, steady = [], []
    for _ in range(runs):
        with Poller(config) as poller:
            started = time.perf_counter()
            results = poller.sweep(names)
            cold.append(time.perf_counter() - started)
            off = {r.reason for r in results if not r.on}
            check([r.report.to_json() for r in results if r.on], len(names), f"cold {off}")
    cpu = (0.0, 0.0)
    with Poller(config) as poller:
        poller.sweep(names)  # open the connections (and the streams)
        poller.sweep(names)
        before = server_side_cpu(fleet) if fleet else (0.0, 0.0)
        for _ in range(runs * 2):
            started = time.perf_counter()
            results = poller.sweep(names)
            steady.append(time.perf_counter() - started)
            assert all(r.reused for r in results)
            if config.poll.stream:
                assert all(r.via == VIA_STREAM for r in results), {r.via for r in results}
            check([r.report.to_json() for r in results if r.on], len(names), "gpumon steady")
        if fleet:
            after = server_side_cpu(fleet)
            polls = runs * 2 * len(names)
            cpu = ((after[0] - before[0]) / polls, (after[1] - before[1]) / polls)
    return cold, steady, cpu


# --- baselines on open paramiko transports (the bench key: no forced command) ---------------


def open_transports(config, fleet: Fleet) -> list[paramiko.Transport]:
    with Poller(config) as poller:
        out = []
        for name in config.servers:
            dest = resolve(config, name, poller.ssh_config)
            dest.identity_files = [str(fleet.bench_client_key)]
            conn = poller.opener.open(dest, Attempt(name))
            out.append(conn.transport)
        return out


def floor_sweeps(transports: list[paramiko.Transport], paths: list[str], runs: int) -> list[float]:
    """Send one line on every open channel, then read every answer line: the round trip."""
    channels = []
    for transport, path in zip(transports, paths):
        channel = transport.open_session()
        channel.settimeout(30)
        channel.exec_command(RESPONDER.format(path=path))
        channels.append(channel)

    def sweep() -> list[bytes]:
        for channel in channels:
            channel.sendall(b"report\n")
        answers = []
        for channel in channels:
            buf = b""
            while not buf.endswith(b"\n"):
                buf += channel.recv(65536)
            answers.append(buf)
        return answers

    check(sweep(), len(channels), "floor")  # the responders started
    times = []
    for _ in range(runs * 2):
        started = time.perf_counter()
        answers = sweep()
        times.append(time.perf_counter() - started)
        check(answers, len(channels), "floor")
    for channel in channels:
        channel.close()
    return times


def exec_true_sweeps(transports: list[paramiko.Transport], runs: int) -> list[float]:
    def one(transport: paramiko.Transport) -> int:
        channel = transport.open_session()
        channel.exec_command("true")
        status = channel.recv_exit_status()
        channel.close()
        return status

    times = []
    with ThreadPoolExecutor(max_workers=len(transports)) as pool:
        list(pool.map(one, transports))
        for _ in range(runs * 2):
            started = time.perf_counter()
            statuses = list(pool.map(one, transports))
            times.append(time.perf_counter() - started)
            if any(statuses):
                raise SystemExit(f"exec true: statuses {set(statuses)}")
    return times


# --- gpustat-web's way: asyncssh, kept connections, a new command per poll -----------------


async def _asyncssh_sweeps(fleet: Fleet, known_hosts: Path, runs: int, key: Path, command):
    user = fleet.user.pw_name

    async def connect(address: str) -> asyncssh.SSHClientConnection:
        return await asyncssh.connect(
            address,
            port=fleet.port,
            username=user,
            client_keys=[str(key)],
            known_hosts=str(known_hosts),
            agent_path=None,
            config=None,
        )

    async def poll(conn: asyncssh.SSHClientConnection, server) -> str:
        result = await conn.run(command(server), check=False, timeout=30)
        return str(result.stdout)

    servers = fleet.servers
    cold = []
    for _ in range(runs):
        started = time.perf_counter()
        conns = await asyncio.gather(*(connect(s.address) for s in servers))
        outputs = await asyncio.gather(*(poll(c, s) for c, s in zip(conns, servers)))
        cold.append(time.perf_counter() - started)
        check(outputs, len(servers), "asyncssh cold")
        for conn in conns:
            conn.close()
        await asyncio.gather(*(c.wait_closed() for c in conns))
    conns = await asyncio.gather(*(connect(s.address) for s in servers))
    steady = []
    for _ in range(runs * 2):
        started = time.perf_counter()
        outputs = await asyncio.gather(*(poll(c, s) for c, s in zip(conns, servers)))
        steady.append(time.perf_counter() - started)
        check(outputs, len(servers), "asyncssh steady")
    for conn in conns:
        conn.close()
    await asyncio.gather(*(c.wait_closed() for c in conns))
    return cold, steady


# --- one cold connect at a time: where paramiko's time goes, beside asyncssh's --------------


def cpu_s() -> float:
    return time.process_time()  # all this process' threads, to the ns (os.times: 10 ms ticks)


def connect_breakdown(config, name: str, runs: int) -> dict[str, tuple[float, float, str]]:
    """{way: (p50 wall s, CPU s per connect, stage times of the median one)} for connecting
    (TCP, banner, key exchange, host key check, auth) one server at a time: gpumon's opener
    with its cipher order, and with paramiko's own."""
    out = {}
    with Poller(config) as poller:
        dest = resolve(config, name, poller.ssh_config)
        orders = (("AES-GCM first", ssh_transport.FAST_CIPHERS), ("paramiko's order", ()))
        for way, ciphers in orders:
            saved, ssh_transport.FAST_CIPHERS = ssh_transport.FAST_CIPHERS, ciphers
            walls, stages = [], []
            cpu0 = cpu_s()
            try:
                for _ in range(runs):
                    attempt = Attempt(name)
                    started = time.perf_counter()
                    conn = poller.opener.open(dest, attempt)
                    walls.append(time.perf_counter() - started)
                    stages.append((walls[-1], attempt.stage_times(), conn.transport.local_cipher))
                    conn.close()
            finally:
                ssh_transport.FAST_CIPHERS = saved
            median = sorted(stages)[len(stages) // 2]
            out[way] = (p50(walls), (cpu_s() - cpu0) / runs, f"{median[2]}: {median[1]}")
    return out


async def asyncssh_connects(fleet: Fleet, known_hosts: Path, runs: int) -> tuple[float, float]:
    walls = []
    cpu0 = cpu_s()
    for _ in range(runs):
        started = time.perf_counter()
        conn = await asyncssh.connect(
            fleet.servers[0].address,
            port=fleet.port,
            username=fleet.user.pw_name,
            client_keys=[str(fleet.client_key)],
            known_hosts=str(known_hosts),
            agent_path=None,
            config=None,
        )
        walls.append(time.perf_counter() - started)
        conn.close()
        await conn.wait_closed()
    return p50(walls), (cpu_s() - cpu0) / runs


# --- naive: serial paramiko, connect/exec/close per server ---------------------------------


def naive_sweeps(fleet: Fleet, known_hosts: Path, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        outputs = []
        started = time.perf_counter()
        for server in fleet.servers:
            client = paramiko.SSHClient()
            client.load_host_keys(str(known_hosts))
            client.connect(
                server.address,
                port=fleet.port,
                username=fleet.user.pw_name,
                key_filename=str(fleet.client_key),
                look_for_keys=False,
                allow_agent=False,
                timeout=10,
            )
            _, stdout, _ = client.exec_command(COMMAND)
            outputs.append(stdout.read())
            client.close()
        times.append(time.perf_counter() - started)
        check(outputs, len(fleet.servers), "naive paramiko")
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", type=int, default=64)
    parser.add_argument("--runs", type=int, default=7, help="cold sweeps (steady: twice as many)")
    parser.add_argument("--naive-runs", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="the figures as one JSON object")
    args = parser.parse_args()

    home = tempfile.mkdtemp(prefix="bench-home-")
    work = Path(tempfile.mkdtemp(prefix="bench-poll-"))
    os.environ["HOME"] = home  # no personal ~/.ssh, no ssh-agent: the same for every method
    os.environ.pop("SSH_AUTH_SOCK", None)
    fleet = Fleet(bench_key=True)
    for i in range(args.servers):
        server = fleet.add(f"bench{i:02d}", behaviour=REAL_AGENT)
        server.report = canned_report(server.name, server.address, gpus=4)
        server.report.generated_at = "2019-03-14T06:26:45Z"  # staleness is not timed here
    transports: list[paramiko.Transport] = []
    try:
        fleet.start()
        # Deadlines far above any stage's time: what is timed is the sweep, not a deadline (a
        # loaded 2-core machine handshakes 64 servers in seconds).
        config = fleet.config(
            work,
            stale_after_s=1e9,
            concurrency=64,
            connect_timeout_s=20.0,
            handshake_timeout_s=30.0,
            auth_timeout_s=30.0,
            command_timeout_s=30.0,
            sweep_timeout_s=120.0,
        )
        known_hosts = Path(config.poll.known_hosts or "")
        names = list(config.servers)
        snapshots = [str(fleet.root / "state" / s.address / "report.json") for s in fleet.servers]
        size = os.path.getsize(snapshots[0])
        load = os.getloadavg()[0]
        if not args.json:
            print(
                f"fleet: {len(names)} servers on {fleet.sshd_count} sshd, Report {size} bytes, "
                f"{os.cpu_count()} CPUs, load {load:.1f}",
                flush=True,
            )

        cold, steady, (agent_cpu, sshd_cpu) = gpumon_sweeps(config, names, args.runs, fleet)
        config.poll.stream = False
        o_cold, o_steady, _ = gpumon_sweeps(config, names, args.runs)
        config.poll.stream = True
        transports = open_transports(config, fleet)
        floor = floor_sweeps(transports, snapshots, args.runs)
        exec_true = exec_true_sweeps(transports, args.runs)
        a_cold, a_steady = asyncio.run(
            _asyncssh_sweeps(fleet, known_hosts, args.runs, fleet.client_key, lambda s: COMMAND)
        )
        c_cold, c_steady = asyncio.run(
            _asyncssh_sweeps(
                fleet,
                known_hosts,
                args.runs,
                fleet.bench_client_key,
                lambda s: f"cat {fleet.root}/state/{s.address}/report.json",
            )
        )
        naive = naive_sweeps(fleet, known_hosts, args.naive_runs)
        connects = connect_breakdown(config, names[0], args.runs * 3)
        a_connect = asyncio.run(asyncssh_connects(fleet, known_hosts, args.runs * 3))
    finally:
        for transport in transports:
            transport.close()
        fleet.close()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)

    figures = {
        "servers": len(names),
        "gpumon_steady_s": p50(steady),
        "gpumon_cold_s": p50(cold),
        "gpustat_web_steady_s": p50(a_steady),
        "gpustat_web_cold_s": p50(a_cold),
        "floor_steady_s": p50(floor),
        "exec_true_steady_s": p50(exec_true),
        "gpumon_oneshot_steady_s": p50(o_steady),
        "gpumon_oneshot_cold_s": p50(o_cold),
        "gpustat_web_cat_steady_s": p50(c_steady),
        "gpustat_web_cat_cold_s": p50(c_cold),
        "naive_serial_s": p50(naive),
        "agent_cpu_per_steady_poll_ms": agent_cpu * 1000,
        "sshd_cpu_per_steady_poll_ms": sshd_cpu * 1000,
        "connect_s": connects["AES-GCM first"][0],
        "connect_cpu_s": connects["AES-GCM first"][1],
        "connect_paramiko_ciphers_s": connects["paramiko's order"][0],
        "connect_paramiko_ciphers_cpu_s": connects["paramiko's order"][1],
        "asyncssh_connect_s": a_connect[0],
        "asyncssh_connect_cpu_s": a_connect[1],
        "report_bytes": size,
        "load_average": load,
    }
    if args.json:
        print(json.dumps(figures))
        return 0

    rows = [
        ("gpumon steady (streams)", p50(steady)),
        ("gpumon cold (streams)", p50(cold)),
        ("gpumon one-shot steady (stream = false)", p50(o_steady)),
        ("gpumon one-shot cold", p50(o_cold)),
        ("floor: round trip on open channels", p50(floor)),
        ("exec `true` on open transports", p50(exec_true)),
        ("gpustat-web way steady (agent report)", p50(a_steady)),
        ("gpustat-web way cold (agent report)", p50(a_cold)),
        ("gpustat-web way steady (cat)", p50(c_steady)),
        ("gpustat-web way cold (cat)", p50(c_cold)),
        ("naive serial paramiko", p50(naive)),
    ]
    print(f"\n{'sweep of ' + str(len(names)) + ' servers, p50':44} {'s':>7}")
    for label, value in rows:
        print(f"{label:44} {value:7.3f}")

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    floor_ratio = p50(steady) / p50(floor)
    print(
        "\ntargets:\n"
        f"  steady / floor: {floor_ratio:.2f}x (<= {TARGET_FLOOR_RATIO:g}x: "
        f"{verdict(floor_ratio <= TARGET_FLOOR_RATIO)})\n"
        f"  gpustat-web way steady / gpumon steady: agent report "
        f"{p50(a_steady) / p50(steady):.1f}x, cat {p50(c_steady) / p50(steady):.1f}x "
        f"(>= {TARGET_GPUSTAT_RATIO:g}x: "
        f"{verdict(min(p50(a_steady), p50(c_steady)) / p50(steady) >= TARGET_GPUSTAT_RATIO)})\n"
        f"  gpumon cold / gpustat-web way cold: agent report {p50(cold) / p50(a_cold):.2f}x, "
        f"cat {p50(cold) / p50(c_cold):.2f}x (<= 1: "
        f"{verdict(p50(cold) <= p50(a_cold))} against the same agent)\n"
        f"  agent CPU per steady poll: {agent_cpu * 1000:.2f} ms (<= {TARGET_AGENT_CPU_MS:g} "
        f"ms: {verdict(agent_cpu * 1000 <= TARGET_AGENT_CPU_MS)}); sshd's share "
        f"{sshd_cpu * 1000:.2f} ms"
    )
    print(
        f"  streams vs one-shot, steady: {p50(o_steady) / p50(steady):.1f}x; "
        f"exec `true` / floor {p50(exec_true) / p50(floor):.1f}x"
    )
    print("\none connect at a time (p50 wall, client CPU per connect):")
    for way, (wall, cpu, stages) in connects.items():
        print(f"  gpumon, {way:18} {wall * 1000:6.1f} ms, CPU {cpu * 1000:5.1f} ms  ({stages})")
    print(f"  asyncssh{'':20} {a_connect[0] * 1000:6.1f} ms, CPU {a_connect[1] * 1000:5.1f} ms")
    print(
        f"spread: gpumon steady min/max {min(steady):.3f}/{max(steady):.3f} s, "
        f"cold {min(cold):.3f}/{max(cold):.3f} s ({len(steady)} and {len(cold)} sweeps)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
