"""The claims registry's costs, each beside a bare-filesystem baseline measured in the same run:

1. claim + release (lock, scan of the live claims, choose, publish, unlink) with 0 / 8 / 64 live
   claims present — baseline: create (O_EXCL) + unlink of one file in the same directory;
2. a progress update (``Claim.update``: temp file + rename) — baseline: open/write/close;
3. the agent's per-sample scan (``live_claims``: checked reads + a liveness check per claim) of
   8 / 64 / 128 claims — baseline: listdir + read of the same files, unchecked;
4. contention: P processes each doing claim + release cycles at once, cycles/s in all, against
   one process alone;
5. ``with claim(): pass`` end to end on the fake NVML library (8 GPUs) — baseline: the NVML read
   alone (``NvmlReader().read()``), which the claim has to do anyway.

Targets (2-core CI machine): claim + release with 8 claims <= 2 ms; update <= 0.5 ms; scan of
128 claims <= 50 ms (the daemon samples every 2 s). Printed, not asserted.

    .venv/bin/python bench/claims.py [--repeat 200]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
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

from gpumon_agent.claims import ClaimRegistry, claim_gpus, new_record  # noqa: E402
from gpumon_agent.report import Gpu  # noqa: E402
from harness.fakenvml import FakeNvml, FakeState  # noqa: E402

GPUS = [Gpu(index=i, uuid=f"GPU-{i}", processes=[]) for i in range(512)]  # idle: listed, none


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median seconds per call over ``repeat`` calls (after 5 warm-up calls)."""
    for _ in range(5):
        fn()
    samples = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def row(name: str, value: float, base: float, unit: str = "ms") -> None:
    scale = 1000.0 if unit == "ms" else 1.0
    print(
        f"  {name:<44} {value * scale:9.3f} {unit}   baseline {base * scale:8.3f} {unit}"
        f"   x{value / base:6.1f}"
    )


def sleepers(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen(["sleep", "600"]) for _ in range(n)]


def fill(reg: ClaimRegistry, procs: list[subprocess.Popen]) -> None:
    for i, p in enumerate(procs):
        reg.create(new_record(f"job {i}", "python train.py", [GPUS[i]], pid=p.pid))


def bench_claim_release(top: str, repeat: int) -> None:
    print("claim + release (the whole allocation under the lock):")
    for present in (0, 8, 64):
        reg = ClaimRegistry(os.path.join(top, f"cr{present}"))
        reg.ensure()
        procs = sleepers(present)
        try:
            fill(reg, procs)

            def cycle(reg: ClaimRegistry = reg) -> None:
                record = claim_gpus(reg, GPUS, None, 1, "bench", "bench")
                reg.release(record)

            def baseline(reg: ClaimRegistry = reg) -> None:
                path = os.path.join(reg.path, "plain")
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                os.unlink(path)

            row(f"{present} live claims present", timed(cycle, repeat), timed(baseline, repeat))
        finally:
            for p in procs:
                p.kill()
                p.wait()


def bench_update(top: str, repeat: int) -> None:
    print("progress update:")
    reg = ClaimRegistry(os.path.join(top, "upd"))
    reg.ensure()
    record = new_record("bench", "bench", GPUS[:1])
    reg.create(record)
    plain = os.path.join(reg.path, "plain")
    counter = [0]

    def update() -> None:
        counter[0] += 1
        record.progress = {"epoch": counter[0], "loss": 0.25, "val_acc": 0.93}
        reg.rewrite(record)

    def baseline() -> None:
        with open(plain, "wb") as f:
            f.write(record.to_json())

    row("Claim.update (temp file + rename)", timed(update, repeat), timed(baseline, repeat))
    reg.release(record)


def bench_scan(top: str, repeat: int) -> None:
    print("agent scan (live_claims) per sample:")
    for present in (8, 64, 128):
        reg = ClaimRegistry(os.path.join(top, f"scan{present}"))
        reg.ensure()
        procs = sleepers(present)
        try:
            fill(reg, procs)
            assert len(reg.live_claims()[0]) == present

            def baseline(reg: ClaimRegistry = reg) -> None:
                for name in os.listdir(reg.path):
                    if not name.startswith("."):
                        with open(os.path.join(reg.path, name), "rb") as f:
                            f.read()

            row(
                f"{present} claims",
                timed(reg.live_claims, max(repeat // 4, 20)),
                timed(baseline, max(repeat // 4, 20)),
            )
        finally:
            for p in procs:
                p.kill()
                p.wait()


def _contender(path: str, cycles: int, start: float) -> None:
    reg = ClaimRegistry(path)
    while time.time() < start:
        time.sleep(0.001)
    for _ in range(cycles):
        reg.release(claim_gpus(reg, GPUS[:64], None, 1, "bench", "bench", lock_timeout_s=60))


def bench_contention(top: str, cycles: int) -> None:
    print("contention (claim + release cycles per second, all processes together):")
    path = os.path.join(top, "contention")
    ClaimRegistry(path).ensure()
    ctx = multiprocessing.get_context("fork")
    rates = {}
    for procs in (1, 4, 16):
        start = time.time() + 0.5
        workers = [ctx.Process(target=_contender, args=(path, cycles, start)) for _ in range(procs)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
            assert w.exitcode == 0
        rates[procs] = procs * cycles / (time.time() - start)
        ratio = rates[procs] / rates[1]
        print(
            f"  {procs:2d} processes{'':33} {rates[procs]:9.0f} /s   "
            f"one process {rates[1]:8.0f} /s   x{ratio:6.2f}"
        )


HOOK = """
import sys, time, statistics
from gpumon_agent.hook import claim
from gpumon_agent.nvml import NvmlReader
from gpumon_agent.settings import AgentSettings
settings = AgentSettings(claims_dir={claims!r})

def med(fn, n):
    fn()
    out = []
    for _ in range(n):
        t = time.perf_counter(); fn(); out.append(time.perf_counter() - t)
    return statistics.median(out)

def enter():
    with claim(settings=settings):
        pass

def read():
    r = NvmlReader()
    r.read()
    r.close()

print(med(enter, {n}), med(read, {n}))
"""


def bench_hook(top: str, repeat: int) -> None:
    print("with claim(): pass, end to end on the fake NVML (8 GPUs):")
    code = HOOK.format(claims=os.path.join(top, "hook"), n=max(repeat // 4, 20))
    # The fake library is found through LD_LIBRARY_PATH, read when the process starts.
    fake = FakeNvml(Path(top) / "nvml", FakeState.with_gpus(8))
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=fake.env(log=False),
        capture_output=True,
        text=True,
        check=True,
    )
    enter, read = (float(x) for x in out.stdout.split())
    row("claim() enter + exit (baseline: NVML read)", enter, read)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--cycles", type=int, default=100, help="per process, contention")
    args = parser.parse_args()
    top = tempfile.mkdtemp(prefix="gpumon-bench-claims-")
    try:
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, registry under {top}")
        bench_claim_release(top, args.repeat)
        bench_update(top, args.repeat)
        bench_scan(top, args.repeat)
        bench_contention(top, args.cycles)
        bench_hook(top, args.repeat)
    finally:
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
