"""The issue-15 target, measured: on a voice-split synthetic set, does ch32 with dropout and no
batch norm learn (test accuracy on unseen voices within 10 epochs), and is the seed's order
base < ch32 reproduced?

    nice -n 10 .venv/bin/python kws/tools/target.py --work /tmp/kws-target [--per-word 600] \
        [--epochs 10] [--models ch32,base] [--threads 1]

Makes WORK/data with ``kws synth`` (unless it is there), trains each model with ``kws train``'s
code on the CPU (no claim), and prints and writes WORK/target.json: per model the test accuracy
of the best-validation checkpoint, per epoch loss / validation accuracy / clips per second, and
the test accuracy per kind of unseen voice (espeak-ng variant or recorded person).
Resumable: run it again and each model goes on from its WORK/<model>/last.pt; two invocations
(``--models ch32`` and ``--models base``) may run at once. 15-26 CPU-ms per training clip on
this 2-core VM (more beside other jobs), so 10 epochs of 7,680 clips are ~20-35 CPU-minutes
per model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from gpumon_agent.atomic import write_atomic
from kws.data import load_dataset
from kws.models import ModelSpec, drop_rate
from kws.synth import synthesize
from kws.train import TrainConfig, load_checkpoint, model_from_checkpoint, pick_device, predict


def by_voice_kind(data_root: Path, dataset, out: Path) -> dict[str, float]:
    """Test accuracy of OUT/best.pt per voice kind of the test speakers."""
    manifest = json.loads((data_root / "synth.json").read_text())
    kind = {s["id"]: s["voice"]["group"].split(":")[0] for s in manifest["speakers"]}
    model, _ = model_from_checkpoint(load_checkpoint(out / "best.pt"))
    test = dataset["test"]
    predicted = predict(model, test, pick_device(None))
    speakers = [Path(f).name.split("_nohash_")[0] for f in test.files]
    result = {}
    for k in sorted(set(kind.values())):
        mask = np.array([kind.get(s) == k for s in speakers])
        if mask.any():
            result[f"{k} ({int(mask.sum())} clips)"] = float(
                (predicted == test.labels)[mask].mean()
            )
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--per-word", type=int, default=600)
    parser.add_argument("--seed", type=int, default=1, help="the data set's seed")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--keep-prob", type=float, default=0.5, help="DO(p), keep meaning")
    parser.add_argument("--models", default="ch32,base")
    # One thread: on this shared 2-core VM, torch's two spin-waiting OpenMP threads train
    # 1.7-3.6x slower than one (bench/kws_bench.py, section 0). 0: torch's default.
    parser.add_argument("--threads", type=int, default=1, help="torch's CPU threads (default 1)")
    args = parser.parse_args()

    data_root = args.work / "data"
    if not (data_root / "synth.json").is_file():
        started = time.perf_counter()
        synthesize(data_root, per_word=args.per_word, seed=args.seed)
        print(f"synth: {16 * args.per_word} clips in {time.perf_counter() - started:.0f} s")
    dataset = load_dataset(data_root)
    print(dataset.summary(), flush=True)
    target = args.work / "target.json"
    splits = {k: len(v) for k, v in dataset.splits.items()}
    rate = drop_rate(args.keep_prob, "keep")
    from kws.train import train

    for name in args.models.split(","):
        spec = ModelSpec(name, dropout=rate)
        out = args.work / spec.label().replace(" ", "_")
        metrics = train(
            TrainConfig(
                spec,
                data_root,
                out,
                epochs=args.epochs,
                batch_size=args.batch_size,
                lr=args.lr,
                gpus="none",
                progress=False,
                resume=out if (out / "last.pt").is_file() else None,
                threads=args.threads or None,
            ),
            dataset,
        )
        result = {
            "seed_name": f"DO({args.keep_prob:g}) as keep_prob",
            "test_acc": metrics["test_acc"],
            "best_epoch": metrics["best"]["epoch"],
            "samples_per_s": metrics["samples_per_s"],
            "epochs": [
                {k: r[k] for k in ("epoch", "loss", "train_acc", "val_acc", "samples_per_s")}
                for r in metrics["epochs"]
            ],
            "test_by_voice_kind": by_voice_kind(data_root, dataset, out),
        }
        print(json.dumps({spec.label(): result}, indent=1), flush=True)
        # Models run in separate invocations (--models ch32 and --models base, maybe at once)
        # share one file: read it again just before adding this model's entry.
        summary = json.loads(target.read_text()) if target.is_file() else {}
        summary.update({"data": str(data_root), "splits": splits, spec.label(): result})
        write_atomic(target, (json.dumps(summary, indent=1) + "\n").encode("utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
