"""One sweep of 64 servers: gpumon's Poller cold and steady, beside two baselines measured in
the same run on the same fleet — gpustat-web's way (asyncssh, a connection per server kept
open, a new remote command per poll; our own small equivalent of its polling loop) and a naive
serial paramiko loop (connect, exec, close per server).

The fleet: 64 simulated servers, 4 real sshd × 16 loopback addresses (tests/harness/sshd.py),
each answering with its canned Report through the production authorized_keys line; the fake
agent is `cat` of the Report, so what is timed is the polling, not an agent.

Targets on the 2-core CI machine: steady <= 0.3 s, cold <= 2 s (printed, not asserted).

    .venv/bin/python bench/poll_sweep.py [--servers 64] [--runs 7]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import asyncssh  # noqa: E402
import paramiko  # noqa: E402

from gpumon.poll.poller import Poller  # noqa: E402
from gpumon_agent.report import Report  # noqa: E402
from harness.sshd import REPORT_AS_WRITTEN, Fleet, canned_report  # noqa: E402

COMMAND = "gpumon-agent report --json"  # the forced command runs whatever is asked; ask as prod
TARGET_STEADY_S = 0.3
TARGET_COLD_S = 2.0


def p50(samples: list[float]) -> float:
    return statistics.median(samples)


def check(reports: list[bytes | str], expected: int, label: str) -> None:
    """Every baseline must really read every Report, or its timing means nothing."""
    good = 0
    for text in reports:
        try:
            Report.from_json(text)
            good += 1
        except Exception:
            pass
    if good != expected:
        raise SystemExit(f"{label}: only {good}/{expected} servers answered with a Report")


# --- gpumon --------------------------------------------------------------------------------


def gpumon_sweeps(config, names: list[str], runs: int) -> tuple[list[float], list[float]]:
    cold, steady = [], []
    for _ in range(runs):
        with Poller(config) as poller:
            started = time.perf_counter()
            results = poller.sweep(names)
            cold.append(time.perf_counter() - started)
            check([r.report.to_json() for r in results if r.on], len(names), "gpumon cold")
    with Poller(config) as poller:
        poller.sweep(names)  # open the connections
        for _ in range(runs * 2):
            started = time.perf_counter()
            results = poller.sweep(names)
            steady.append(time.perf_counter() - started)
            assert all(r.reused for r in results)
            check([r.report.to_json() for r in results if r.on], len(names), "gpumon steady")
    return cold, steady


# --- gpustat-web's way: asyncssh, kept connections, a new command per poll -----------------


async def _asyncssh_sweeps(fleet: Fleet, known_hosts: Path, runs: int):
    user = fleet.user.pw_name
    key = str(fleet.client_key)

    async def connect(address: str) -> asyncssh.SSHClientConnection:
        return await asyncssh.connect(
            address,
            port=fleet.port,
            username=user,
            client_keys=[key],
            known_hosts=str(known_hosts),
            agent_path=None,
            config=None,
        )

    async def poll(conn: asyncssh.SSHClientConnection) -> str:
        result = await conn.run(COMMAND, check=False, timeout=10)
        return str(result.stdout)

    addresses = [s.address for s in fleet.servers]
    cold = []
    for _ in range(runs):
        started = time.perf_counter()
        conns = await asyncio.gather(*(connect(a) for a in addresses))
        outputs = await asyncio.gather(*(poll(c) for c in conns))
        cold.append(time.perf_counter() - started)
        check(outputs, len(addresses), "asyncssh cold")
        for conn in conns:
            conn.close()
        await asyncio.gather(*(c.wait_closed() for c in conns))
    conns = await asyncio.gather(*(connect(a) for a in addresses))
    steady = []
    for _ in range(runs * 2):
        started = time.perf_counter()
        outputs = await asyncio.gather(*(poll(c) for c in conns))
        steady.append(time.perf_counter() - started)
        check(outputs, len(addresses), "asyncssh steady")
    for conn in conns:
        conn.close()
    await asyncio.gather(*(c.wait_closed() for c in conns))
    return cold, steady


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
    parser.add_argument("--naive-runs", type=int, default=3)
    args = parser.parse_args()

    home = tempfile.mkdtemp(prefix="bench-home-")
    work = Path(tempfile.mkdtemp(prefix="bench-poll-"))
    os.environ["HOME"] = home  # no personal ~/.ssh, no ssh-agent: the same for every method
    os.environ.pop("SSH_AUTH_SOCK", None)
    fleet = Fleet()
    for i in range(args.servers):
        server = fleet.add(f"bench{i:02d}", behaviour=REPORT_AS_WRITTEN)
        server.report = canned_report(server.name, server.address, gpus=4)
        server.report.generated_at = "2019-03-14T06:26:45Z"  # staleness is not timed here
    try:
        fleet.start()
        config = fleet.config(work, stale_after_s=1e9, concurrency=64, sweep_timeout_s=30.0)
        known_hosts = Path(config.poll.known_hosts or "")
        names = list(config.servers)
        size = len(fleet.servers[0].report.to_json())
        print(
            f"fleet: {len(names)} servers on {fleet.sshd_count} sshd, Report {size} bytes, "
            f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"
        )

        cold, steady = gpumon_sweeps(config, names, args.runs)
        a_cold, a_steady = asyncio.run(_asyncssh_sweeps(fleet, known_hosts, args.runs))
        naive = naive_sweeps(fleet, known_hosts, args.naive_runs)
    finally:
        fleet.close()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)

    rows = [
        ("gpumon steady (kept connections)", p50(steady), TARGET_STEADY_S),
        ("gpumon cold (new connections)", p50(cold), TARGET_COLD_S),
        ("gpustat-web way, steady (asyncssh)", p50(a_steady), None),
        ("gpustat-web way, cold (asyncssh)", p50(a_cold), None),
        ("naive serial paramiko", p50(naive), None),
    ]
    print(f"\n{'sweep of ' + str(len(names)) + ' servers, p50':40} {'s':>7}  target")
    for label, value, target in rows:
        verdict = "" if target is None else ("ok" if value <= target else "MISSED")
        mark = "" if target is None else f"<= {target:g} s {verdict}"
        print(f"{label:40} {value:7.3f}  {mark}")
    print(
        f"\nratios (time of the other way / gpumon's; above 1: gpumon is faster):\n"
        f"  steady: gpustat-web way {p50(a_steady) / p50(steady):.2f}x, "
        f"naive serial {p50(naive) / p50(steady):.0f}x\n"
        f"  cold:   gpustat-web way {p50(a_cold) / p50(cold):.2f}x, "
        f"naive serial {p50(naive) / p50(cold):.1f}x"
    )
    print(
        f"spread: gpumon steady min/max {min(steady):.3f}/{max(steady):.3f} s, "
        f"cold {min(cold):.3f}/{max(cold):.3f} s ({len(steady)} and {len(cold)} sweeps)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
