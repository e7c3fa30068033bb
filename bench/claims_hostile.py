"""What junk in the shared claims registry costs, beside the same registry without it, measured
in the same run:

1. the agent's per-sample scan (``live_claims``) with 30,000 names of the shape
   ``.u<uid>-p1-<hex>.json.tmp<hex>`` (a writer's temporary file in gpumon 0.1; pid 1 is
   alive): listed afresh (a claimer, or a directory that keeps changing), and by the agent's
   kept registry once the directory has been still; and with 130 junk names — baseline: the
   scan of the same live claim alone;
2. ``gpumon claim --gpus auto -- true`` end to end (interpreter start, NVML read on the fake
   library, the scan under the lock, publish, release) with the 30,000 names — baseline: the
   same command on the clean registry;
3. the daemon (``gpumon-agent run``, 2 s interval, 4 fake GPUs) for ``--duration`` seconds with
   the 30,000 names: CPU % of one core from /proc — baseline: the same daemon on a clean
   registry.

Targets: the agent's scan with 30,000 still junk names <= 5x the clean scan; listed afresh
<= 1.5x a bare os.listdir of the directory; the claim <= 2x the clean claim; the daemon's CPU
<= 1 % of a core. Printed, not asserted. Before the fix (same machine, load 3): scan
2,044 ms (x5233), claim 2,590 ms (x10.4), daemon 52.6 % of a core (x263), and the live claim
was hidden by the 130 junk names.

    .venv/bin/python bench/claims_hostile.py [--repeat 20] [--duration 20]
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "agent"))
sys.path.insert(0, str(ROOT / "tests"))

from gpumon_agent.claims import ClaimRegistry, new_record  # noqa: E402
from gpumon_agent.report import Gpu  # noqa: E402
from harness.fakenvml import FakeNvml, FakeState  # noqa: E402

GPUS = [Gpu(index=i, uuid=f"GPU-{i}") for i in range(4)]
JUNK_TMP = 30_000
GPUMON = Path(sys.executable).with_name("gpumon")
AGENT = Path(sys.executable).with_name("gpumon-agent")


def median_time(fn: Callable[[], object], repeat: int) -> float:
    fn()
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def row(name: str, value: float, base: float, unit: str = "ms", scale: float = 1000.0) -> None:
    print(
        f"  {name:<46} {value * scale:10.2f} {unit}   baseline {base * scale:9.2f} {unit}"
        f"   x{value / base:7.1f}"
    )


def registry(top: Path, name: str, sleeper: subprocess.Popen) -> ClaimRegistry:
    reg = ClaimRegistry(str(top / name / "claims"))
    (top / name).mkdir()
    reg.ensure()
    reg.create(new_record("real job", "python train.py", GPUS[:1], pid=sleeper.pid))
    return reg


def add_tmp_junk(reg: ClaimRegistry, count: int) -> None:
    uid = os.geteuid()
    for i in range(count):
        name = f".u{uid}-p1-{i:06x}.json.tmp{secrets.token_hex(4)}"
        os.close(os.open(os.path.join(reg.path, name), os.O_WRONLY | os.O_CREAT, 0o644))


def add_name_junk(reg: ClaimRegistry, count: int) -> None:
    for i in range(count):
        with open(os.path.join(reg.path, f"aaa-junk-{i:04d}"), "wb") as f:
            f.write(b"x")


def bench_scan(top: Path, sleeper: subprocess.Popen, repeat: int) -> None:
    print("agent scan (live_claims) of one live claim:")
    clean = registry(top, "clean", sleeper)
    base = median_time(clean.live_claims, repeat)
    tmp = registry(top, "tmpjunk", sleeper)
    add_tmp_junk(tmp, JUNK_TMP)

    def fresh_scan() -> None:  # a new reader each time: what a claimer (or a changing dir) pays
        ClaimRegistry(tmp.path).live_claims()

    listed = median_time(fresh_scan, repeat)
    row(f"+ {JUNK_TMP} '.u<uid>-p1-….tmp…' names, listed", listed, base)
    bare = median_time(lambda: os.listdir(tmp.path), repeat)
    row("  the same, beside a bare os.listdir of it", listed, bare)
    time.sleep(1.5)  # the directory has been still: the agent's registry reuses its listing
    tmp.live_claims()
    row(
        f"+ {JUNK_TMP} names, unchanged since the last scan",
        median_time(tmp.live_claims, repeat),
        base,
    )
    junk = registry(top, "namejunk", sleeper)
    add_name_junk(junk, 130)
    found = len(junk.live_claims()[0])
    row("+ 130 junk names", median_time(junk.live_claims, repeat), base)
    print(f"  the live claim is {'seen' if found == 1 else 'HIDDEN'} beside the 130 junk names")


def bench_claim(top: Path, fake: FakeNvml, repeat: int) -> None:
    print("gpumon claim --gpus auto -- true (end to end):")
    times = {}
    for name in ("clean", "tmpjunk"):
        env = fake.env(log=False)
        env["GPUMON_CLAIMS_DIR"] = str(top / name / "claims")
        env["GPUMON_STATE_DIR"] = str(top / name)

        def run(env: dict = env) -> None:
            argv = [str(GPUMON), "claim", "--", "true"]
            done = subprocess.run(argv, env=env, capture_output=True)
            assert done.returncode == 0, done.stderr.decode()

        times[name] = median_time(run, max(repeat // 4, 3))
    row(f"with {JUNK_TMP} temporary-file names", times["tmpjunk"], times["clean"])


def daemon_cpu(top: Path, name: str, fake: FakeNvml, duration: float) -> float:
    env = fake.env(log=False)
    state = top / name
    env["GPUMON_STATE_DIR"] = str(state)
    env.pop("GPUMON_CLAIMS_DIR", None)
    proc = subprocess.Popen([str(AGENT), "run", "--interval", "2"], env=env, stderr=subprocess.PIPE)
    try:
        time.sleep(3)  # start-up and the first sample are not the steady cost
        ticks = os.sysconf("SC_CLK_TCK")

        def cpu() -> float:
            fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / ticks

        c0, t0 = cpu(), time.monotonic()
        time.sleep(duration)
        return (cpu() - c0) / (time.monotonic() - t0)
    finally:
        proc.terminate()
        proc.wait(20)


def bench_daemon(top: Path, fake: FakeNvml, duration: float) -> None:
    print(f"daemon CPU, 2 s interval, {duration:g} s (% of one core):")
    base = daemon_cpu(top, "clean", fake, duration)
    junk = daemon_cpu(top, "tmpjunk", fake, duration)
    row(f"with {JUNK_TMP} temporary-file names", junk, base, unit="%", scale=100.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--duration", type=float, default=20.0, help="daemon run, seconds")
    args = parser.parse_args()
    top = Path(tempfile.mkdtemp(prefix="gpumon-bench-hostile-"))
    sleeper = subprocess.Popen(["sleep", "3600"])
    try:
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, under {top}")
        fake = FakeNvml(top / "nvml", FakeState.with_gpus(4))
        bench_scan(top, sleeper, args.repeat)
        bench_claim(top, fake, args.repeat)
        if args.duration > 0:
            bench_daemon(top, fake, args.duration)
    finally:
        sleeper.kill()
        sleeper.wait()
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
