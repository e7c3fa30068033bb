"""kws: how fast the pieces are, each beside a baseline measured in the same run.

0. CPU training speed before / after issue 15's speed work, in the same run: clips/s of a
   training step (forward, backward, Adam; batch 16, as kws/tools/target.py trains) with the
   blocks as kws built them before (ReLU, then max-pool) on torch's default threads (one per
   core), against max-pool then ReLU and `--threads 1`, and each change alone. The variants
   take turns round after round and the median is printed, so a load that comes and goes
   (other jobs on a shared machine) weighs on all of them alike; CPU seconds per clip are
   printed too (wall time is what a run takes; CPU time is what it costs the machine).
1. Training throughput (clips/s, forward + backward + Adam step, batch 64) of each of the seed's
   five models, as a ratio to the baseline model `base`; on the GPU when torch sees one, else CPU.
2. `kws synth`: clips/s with all cores against one worker (the parallel speed-up).
3. Data loading: clips/s of kws.data.load_dataset (wave + numpy, pad, split) against reading
   the same files' bytes only.

    .venv/bin/python bench/kws_bench.py [--steps N] [--per-word 16] [--models base,ch32,…]
                                        [--speed-models ch32,base] [--rounds 5] [--only-speed]

--steps defaults to 50 on a GPU and 5 on the CPU (a CPU step of ch128 takes seconds).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from kws.data import load_dataset
from kws.models import MODEL_NAMES, SEED_COUNTS, ModelSpec, param_count, relu_before_pool
from kws.synth import synthesize


def train_throughput(name: str, device: torch.device, steps: int, batch: int) -> float:
    torch.manual_seed(0)
    model = ModelSpec(name, bn=SEED_COUNTS[name].with_bn).build().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    waves = torch.randn(batch, 16000, device=device) * 0.1
    labels = torch.randint(0, 16, (batch,), device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(waves), labels).backward()
        optimizer.step()

    for _ in range(3):  # warm-up: allocator, kernels, oneDNN primitives
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - started)


# (name, textbook block order, torch threads: None = torch's default, one per core)
SPEED_VARIANTS = (
    ("before: ReLU→pool, default threads", True, None),
    ("ReLU→pool, 1 thread", True, 1),
    ("pool→ReLU, default threads", False, None),
    ("after: pool→ReLU, 1 thread", False, 1),
)


def bench_cpu_speed(names: list[str], rounds: int, steps: int, batch: int = 16) -> None:
    default_threads = torch.get_num_threads()
    load = os.getloadavg()[0]
    print(
        f"\n0. CPU training step, batch {batch}, {steps} steps x {rounds} rounds per variant "
        f"(default threads: {default_threads}; load average {load:.1f} at the start)"
    )
    waves = torch.randn(batch, 16000) * 0.1
    labels = torch.randint(0, 16, (batch,))
    for name in names:
        nets = {}
        for label, textbook, _ in SPEED_VARIANTS:
            torch.manual_seed(0)
            net = ModelSpec(name, dropout=0.5).build()
            net = relu_before_pool(net) if textbook else net
            nets[label] = (net, torch.optim.Adam(net.parameters(), lr=1e-3))
        wall: dict[str, list[float]] = {label: [] for label, _, _ in SPEED_VARIANTS}
        cpu: dict[str, list[float]] = {label: [] for label, _, _ in SPEED_VARIANTS}
        for round_ in range(rounds + 1):  # round 0 warms every variant up, and is not counted
            for label, _, threads in SPEED_VARIANTS:
                net, optimizer = nets[label]
                torch.set_num_threads(threads or default_threads)
                started, cpu_started = time.perf_counter(), time.process_time()
                for _ in range(steps if round_ else 1):
                    optimizer.zero_grad(set_to_none=True)
                    torch.nn.functional.cross_entropy(net(waves), labels).backward()
                    optimizer.step()
                if round_:
                    wall[label].append(time.perf_counter() - started)
                    cpu[label].append(time.process_time() - cpu_started)
        torch.set_num_threads(default_threads)
        before = statistics.median(wall[SPEED_VARIANTS[0][0]])
        print(f"   {name}:")
        print(f"     {'variant':36} {'clips/s':>8} {'vs before':>9} {'CPU ms/clip':>12}")
        for label, _, _ in SPEED_VARIANTS:
            seconds = statistics.median(wall[label])
            cpu_ms = 1000 * statistics.median(cpu[label]) / (steps * batch)
            print(
                f"     {label:36} {steps * batch / seconds:8.1f} {before / seconds:8.2f}x "
                f"{cpu_ms:12.1f}"
            )
    print(f"   load average {os.getloadavg()[0]:.1f} at the end")


def bench_models(names: list[str], steps: int, batch: int) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    label = (
        torch.cuda.get_device_name(0)
        if device.type == "cuda"
        else f"cpu x{torch.get_num_threads()}"
    )
    print(f"\n1. training throughput on {label}, batch {batch}, {steps} steps")
    rates = {name: train_throughput(name, device, steps, batch) for name in names}
    base = rates.get("base")
    print(f"   {'model':7} {'params':>10} {'clips/s':>10} {'vs base':>8}")
    for name, rate in rates.items():
        params = param_count(ModelSpec(name, bn=SEED_COUNTS[name].with_bn).build())
        ratio = f"{rate / base:.2f}x" if base else "-"
        print(f"   {name:7} {params:>10,} {rate:>10.1f} {ratio:>8}")


def bench_synth(per_word: int, workdir: Path) -> Path:
    cores = os.cpu_count() or 1
    print(f"\n2. kws synth, {per_word} clips per word ({16 * per_word} clips)")
    timings = {}
    for jobs in (1, cores):
        out = workdir / f"synth-{jobs}"
        started = time.perf_counter()
        synthesize(out, per_word=per_word, seed=0, jobs=jobs)
        timings[jobs] = time.perf_counter() - started
    for jobs, seconds in timings.items():
        print(f"   {jobs:2} worker(s): {16 * per_word / seconds:8.1f} clips/s")
    print(f"   speed-up with {cores} workers: {timings[1] / timings[cores]:.2f}x (baseline 1)")
    return workdir / f"synth-{cores}"


def bench_loading(root: Path) -> None:
    files = sorted(root.rglob("*.wav"))
    started = time.perf_counter()
    for path in files:
        path.read_bytes()
    raw = time.perf_counter() - started
    started = time.perf_counter()
    data = load_dataset(root)
    loaded = time.perf_counter() - started
    n = sum(len(s) for s in data.splits.values())
    print(f"\n3. loading {n} clips")
    print(f"   read bytes only (baseline): {len(files) / raw:10.0f} clips/s")
    print(f"   load_dataset:               {n / loaded:10.0f} clips/s ({raw / loaded:.2f}x)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help="timed steps per model (default 50 GPU, 5 CPU)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--per-word", type=int, default=16)
    parser.add_argument("--models", default=",".join(MODEL_NAMES))
    parser.add_argument("--speed-models", default="ch32,base", help="models of section 0")
    parser.add_argument("--rounds", type=int, default=5, help="section 0's rounds per variant")
    parser.add_argument("--only-speed", action="store_true", help="section 0 only")
    args = parser.parse_args()
    steps = args.steps or (50 if torch.cuda.is_available() else 5)
    bench_cpu_speed(args.speed_models.split(","), args.rounds, steps=4)
    if args.only_speed:
        return 0
    bench_models(args.models.split(","), steps, args.batch)
    workdir = Path(tempfile.mkdtemp(prefix="kws-bench-"))
    try:
        bench_loading(bench_synth(args.per_word, workdir))
    finally:
        shutil.rmtree(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
