"""The agent daemon's footprint: `gpumon-agent run` on 8 fake GPUs (the real pynvml over the fake
libnvidia-ml.so.1 from tests/harness), sampling every 2 s for a minute. RSS and CPU are read from
/proc/PID of the daemon itself.

Beside it, in the same run and against the same fake GPUs:
- `gpustat --json` (a popular one-shot reader, also pynvml + psutil), per call;
- `gpumon-agent report --json` with no daemon (the one-shot fallback), per call;
so "one daemon sample" can be set against "one call of a tool that starts from nothing".

Targets: daemon RSS <= 40 MB and CPU <= 1 % of one core.

    .venv/bin/python bench/agent_daemon.py [--duration 60] [--interval 2] [--metrics]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from harness.fakenvml import FakeNvml, FakeProcess, FakeState  # noqa: E402

TARGET_RSS_MB = 40.0
TARGET_CPU_PCT = 1.0
AGENT = Path(sys.executable).with_name("gpumon-agent")
GPUSTAT = Path(sys.executable).with_name("gpustat")
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (threads included), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime (fields 14, 15)


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MB."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024.0
    return values["VmRSS"], values["VmHWM"]


def run_child(argv: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """Run ``argv`` to completion: (wall s, CPU s, max RSS MB) of that one process."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv} failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    if proc.stderr:
        proc.stderr.close()
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0


def fake_fleet_state(pids: list[int]) -> FakeState:
    """8 busy GPUs, each with two real processes (so the process lookups are real work)."""
    state = FakeState.with_gpus(8, utilization_gpu=93, memory_used=60 << 30, temperature=71)
    for i, gpu in enumerate(state.gpus):
        gpu.compute_processes = [
            FakeProcess(pid=pids[(2 * i) % len(pids)], used_memory=20 << 30),
            FakeProcess(pid=pids[(2 * i + 1) % len(pids)], used_memory=20 << 30),
        ]
    return state


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds measured")
    parser.add_argument("--interval", type=float, default=2.0, help="daemon sampling period")
    parser.add_argument("--metrics", action="store_true", help="daemon also serves /metrics")
    parser.add_argument("--calls", type=int, default=15, help="one-shot calls of each tool")
    args = parser.parse_args()
    for tool in (AGENT, GPUSTAT):
        if not tool.exists():
            raise SystemExit(f"{tool} not found: run scripts/bootstrap.sh --test first")

    tmp = Path(tempfile.mkdtemp(prefix="gpumon-bench-"))
    # Real processes for the fake GPUs to report (owned by this user, with command lines).
    sleepers = [subprocess.Popen(["sleep", "3600"]) for _ in range(8)]
    daemon = None
    try:
        fake = FakeNvml(tmp / "nvml", fake_fleet_state([p.pid for p in sleepers]))
        state_dir = tmp / "state"
        base = {k: v for k, v in fake.env(log=False).items() if not k.startswith("GPUMON_")}
        env = dict(base, GPUMON_STATE_DIR=str(state_dir))
        argv = [str(AGENT), "run", "--interval", str(args.interval)]
        if args.metrics:
            argv += ["--metrics", "127.0.0.1:0"]
        daemon = subprocess.Popen(argv, env=env, stderr=subprocess.DEVNULL)
        snapshot = state_dir / "report.json"
        deadline = time.monotonic() + 60
        while not snapshot.exists():
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the daemon did not write a snapshot")
            time.sleep(0.05)
        time.sleep(min(args.interval * 2, 5))  # past start-up: measure the steady state

        cpu0, t0 = cpu_seconds(daemon.pid), time.monotonic()
        rss_samples, writes, last_mtime = [], [], snapshot.stat().st_mtime_ns
        while time.monotonic() - t0 < args.duration:
            time.sleep(0.1)
            mtime = snapshot.stat().st_mtime_ns
            if mtime != last_mtime:
                writes.append(mtime / 1e9)
                last_mtime = mtime
                rss_samples.append(rss_mb(daemon.pid)[0])
        cpu1, t1 = cpu_seconds(daemon.pid), time.monotonic()
        rss_now, rss_peak = rss_mb(daemon.pid)
        threads = len(os.listdir(f"/proc/{daemon.pid}/task"))
        daemon.terminate()
        daemon.wait(30)

        # The same fake GPUs, read by tools that start from nothing on every call.
        gpustat = [run_child([str(GPUSTAT), "--json"], base) for _ in range(args.calls)]
        oneshot_env = dict(base, GPUMON_STATE_DIR=str(tmp / "no-daemon"))
        oneshot = [
            run_child([str(AGENT), "report", "--json"], oneshot_env) for _ in range(args.calls)
        ]
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
        for p in sleepers:
            p.kill()
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    elapsed = t1 - t0
    cpu_pct = 100.0 * (cpu1 - cpu0) / elapsed
    samples = len(writes)
    cpu_per_sample_ms = 1000.0 * (cpu1 - cpu0) / max(samples, 1)
    periods = [b - a for a, b in zip(writes, writes[1:])]

    def summary(rows: list[tuple[float, float, float]]) -> tuple[float, float, float]:
        return (
            1000.0 * statistics.median(r[0] for r in rows),
            1000.0 * statistics.median(r[1] for r in rows),
            max(r[2] for r in rows),
        )

    gs_wall, gs_cpu, gs_rss = summary(gpustat)
    os_wall, os_cpu, os_rss = summary(oneshot)
    print(
        f"gpumon-agent run, 8 fake GPUs x 2 processes, every {args.interval:g} s, "
        f"{elapsed:.0f} s measured{' (with /metrics)' if args.metrics else ''}"
    )
    period = statistics.mean(periods or [0])
    jitter_ms = statistics.pstdev(periods or [0]) * 1000
    print(f"  samples written      {samples} (mean period {period:.3f} s, sd {jitter_ms:.1f} ms)")
    rss_verdict = "meets" if rss_peak <= TARGET_RSS_MB else "MISSES"
    cpu_verdict = "meets" if cpu_pct <= TARGET_CPU_PCT else "MISSES"
    print(
        f"  RSS                  {rss_now:.1f} MB now, {rss_peak:.1f} MB peak "
        f"(target <= {TARGET_RSS_MB:.0f} MB: {rss_verdict}); {threads} threads"
    )
    print(
        f"  CPU                  {cpu_pct:.2f} % of one core "
        f"(target <= {TARGET_CPU_PCT:.0f} %: {cpu_verdict}); {cpu_per_sample_ms:.1f} ms per sample"
    )
    print(f"one-shot readers of the same GPUs, median of {args.calls} calls:")
    print(f"  {'tool':32} {'wall ms':>8} {'CPU ms':>8} {'max RSS MB':>11}")
    print(f"  {'gpustat --json':32} {gs_wall:8.1f} {gs_cpu:8.1f} {gs_rss:11.1f}")
    print(f"  {'gpumon-agent report --json':32} {os_wall:8.1f} {os_cpu:8.1f} {os_rss:11.1f}")
    print("  (report --json with no daemon: samples once, as when the daemon is down)")
    print("ratios:")
    print(f"  gpustat CPU per call / daemon CPU per sample      {gs_cpu / cpu_per_sample_ms:6.1f}x")
    gs_pct = 100.0 * gs_cpu / 1000.0 / args.interval
    print(
        f"  gpustat every {args.interval:g} s would use {gs_pct:.1f} % of a core: "
        f"{gs_pct / cpu_pct:.1f}x the daemon"
    )
    print(f"  gpustat max RSS / daemon peak RSS                 {gs_rss / rss_peak:6.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
