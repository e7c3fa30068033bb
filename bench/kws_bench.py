"""kws: how fast the pieces are, each beside a baseline measured in the same run.

1. Training throughput (clips/s, forward + backward + Adam step, batch 64) of each of the seed's
   five models, as a ratio to the baseline model `base`; on the GPU when torch sees one, else CPU.
2. `kws synth`: clips/s with all cores against one worker (the parallel speed-up).
3. Data loading: clips/s of kws.data.load_dataset (wave + numpy, pad, split) against reading
   the same files' bytes only.

    .venv/bin/python bench/kws_bench.py [--steps N] [--per-word 16] [--models base,ch32,…]

--steps defaults to 50 on a GPU and 5 on the CPU (a CPU step of ch128 takes seconds).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from kws.data import load_dataset
from kws.models import MODEL_NAMES, SEED_COUNTS, ModelSpec, param_count
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
    args = parser.parse_args()
    steps = args.steps or (50 if torch.cuda.is_available() else 5)
    bench_models(args.models.split(","), steps, args.batch)
    workdir = Path(tempfile.mkdtemp(prefix="kws-bench-"))
    try:
        bench_loading(bench_synth(args.per_word, workdir))
    finally:
        shutil.rmtree(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
