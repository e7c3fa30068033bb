"""``kws train``: train a model on a Speech Commands–format folder, holding a gpumon GPU claim.

The claim (gpumon_agent.hook.claim) is entered before anything touches torch.cuda, so its
CUDA_VISIBLE_DEVICES takes effect; on a machine without an NVIDIA driver it is empty and the
run uses the CPU, under a CPU claim where the gpumon agent runs (shown in the server's Job cell
as "USER: JOB (CPU)"; metrics.json says ``claimed_cpu``). Every epoch updates the claim's
progress (epoch, loss, val_acc), rewrites ``OUT/last.pt`` and ``OUT/metrics.json``, and
``OUT/best.pt`` when validation accuracy improves. Leaving for any reason (the end, an
exception, SIGINT/SIGTERM) releases the claim.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from gpumon_agent.atomic import atomic_file, write_atomic
from kws.augment import Augment
from kws.data import Dataset, Split, load_dataset, skipped_summary
from kws.labels import CLASSES
from kws.models import KwsNet, ModelSpec, param_count
from kws.wav import SCALE

CHECKPOINT_FORMAT = "kws-checkpoint-1"


class TrainError(Exception):
    """A problem the user can fix (bad resume file, conflicting options); message says how."""


@dataclass
class TrainConfig:
    spec: ModelSpec
    data: Path
    out: Path
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    gpus: str = "auto"  # "auto", indices/UUIDs ("0,1"), or "none" (no claim, CPU)
    count: int = 1
    resume: Path | None = None
    progress: bool | None = None  # bars; None: when stderr is a terminal
    log: bool = True  # one line per epoch on stdout
    augment: Augment | None = None  # on-the-fly training augmentation (kws.augment)
    threads: int | None = None  # torch's CPU threads while training (None: torch's, per core)
    job: str | None = None  # the claim's job name (default "kws <model label>")
    tags: dict[str, Any] = field(default_factory=dict)  # copied into metrics.json

    def job_name(self) -> str:
        return self.job or f"kws {self.spec.label()}"


@dataclass
class RunState:
    """What a checkpoint carries besides the weights."""

    epoch: int = 0  # epochs completed
    best_val_acc: float = -1.0
    best_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def batches(n: int, batch_size: int, order: torch.Tensor | None = None) -> Iterator[np.ndarray]:
    index = np.arange(n) if order is None else order.numpy()
    for start in range(0, n, batch_size):
        yield index[start : start + batch_size]


def to_tensor(waves: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(waves).to(device).float().mul_(SCALE)


def predict(model: nn.Module, split: Split, device: torch.device, batch_size: int = 256):
    """Predicted class indices for every clip of ``split`` (eval mode, no gradients)."""
    model.eval()
    out = []
    with torch.no_grad():
        for idx in batches(len(split), batch_size):
            logits = model(to_tensor(split.waves[idx], device))
            out.append(logits.argmax(1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def accuracy(model: nn.Module, split: Split, device: torch.device) -> float | None:
    if len(split) == 0:
        return None
    return float((predict(model, split, device) == split.labels).mean())


def pick_device(visible: str | None) -> torch.device:
    """The first CUDA device the claim left visible, else the CPU.

    ``visible`` is CUDA_VISIBLE_DEVICES as the claim set it: "" means no GPU for us."""
    if visible == "":
        return torch.device("cpu")
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return torch.device("cuda", 0)
    return torch.device("cpu")


def make_deterministic(seed: int, device: torch.device) -> None:
    torch.manual_seed(seed)
    if device.type == "cuda":
        # cuBLAS is deterministic only with a fixed workspace; read when its handle is made.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)


def save_checkpoint(path: Path, model: nn.Module, optimizer, spec: ModelSpec, state: RunState):
    net = model.module if isinstance(model, nn.DataParallel) else model
    payload = {
        "format": CHECKPOINT_FORMAT,
        "spec": spec.to_dict(),
        "classes": list(CLASSES),
        "model": net.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": state.epoch,
        "best_val_acc": state.best_val_acc,
        "best_epoch": state.best_epoch,
        "history": state.history,
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
    }
    with atomic_file(path) as f:  # a crash mid-save leaves the previous checkpoint whole
        torch.save(payload, f)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "last.pt"
    if not path.is_file():
        raise TrainError(f"{path}: no such checkpoint (give OUT/last.pt or OUT/best.pt)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise TrainError(f"{path}: not a readable kws checkpoint ({e})") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise TrainError(f"{path}: not a kws checkpoint (format {CHECKPOINT_FORMAT} expected)")
    if list(data.get("classes", [])) != list(CLASSES):
        raise TrainError(f"{path}: its classes differ from this kws version's {CLASSES}")
    return data


def model_from_checkpoint(data: dict[str, Any]) -> tuple[KwsNet, ModelSpec]:
    spec = ModelSpec.from_dict(data["spec"])
    model = spec.build()
    model.load_state_dict(data["model"])
    return model, spec


class _NoClaim:
    """Stands in for a claim with --gpus none: the CPU, nothing recorded."""

    gpu_indices: list[int] = []  # noqa: RUF012 — never mutated
    cuda_visible_devices = ""
    job = None
    record = None

    def update(self, **progress: Any) -> None:
        pass


@contextlib.contextmanager
def held_claim(config: TrainConfig):
    if config.gpus == "none":
        saved = os.environ.get("CUDA_VISIBLE_DEVICES")
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        try:
            yield _NoClaim()
        finally:
            if saved is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)
            else:
                os.environ["CUDA_VISIBLE_DEVICES"] = saved
        return
    from gpumon_agent.hook import claim

    with claim(gpus=config.gpus, count=config.count, job=config.job_name(), required=False) as c:
        yield c


def train(config: TrainConfig, dataset: Dataset | None = None) -> dict[str, Any]:
    """Run the training; returns the metrics (also written to OUT/metrics.json)."""
    resumed = load_checkpoint(config.resume) if config.resume else None
    if resumed is not None:
        saved_spec = ModelSpec.from_dict(resumed["spec"])
        if saved_spec != config.spec:
            raise TrainError(
                f"{config.resume}: the checkpoint is {saved_spec.label()!r}, not "
                f"{config.spec.label()!r}; give the same model options (or none) to resume"
            )
    if dataset is None:
        dataset = load_dataset(config.data)
    if dataset.skipped:
        print(f"kws train: warning: {skipped_summary(dataset.skipped)}", file=sys.stderr)
    if len(dataset["train"]) == 0:
        raise TrainError(f"{config.data}: the training split is empty")
    config.out.mkdir(parents=True, exist_ok=True)

    with held_claim(config) as held, cpu_threads(config.threads):
        device = pick_device(held.cuda_visible_devices)
        return _train_claimed(config, dataset, resumed, held, device)


@contextlib.contextmanager
def cpu_threads(threads: int | None):
    """torch's intra-op threads set to ``threads`` for the block (None: left as they are).

    On a CPU shared with other work, one thread trains faster than one per core: the
    per-core OpenMP team waits, spinning, for whichever of its threads the scheduler has
    put aside (docs/kws.md, "Speed on the CPU")."""
    if threads is None:
        yield
        return
    if threads < 1:
        raise TrainError(f"--threads must be at least 1, not {threads}")
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _train_claimed(config, dataset, resumed, held, device: torch.device) -> dict[str, Any]:
    make_deterministic(config.seed, device)
    net = config.spec.build()  # initial weights depend only on the seed
    state = RunState()
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    if resumed is not None:
        net.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        state = RunState(
            resumed["epoch"], resumed["best_val_acc"], resumed["best_epoch"], resumed["history"]
        )
        torch.set_rng_state(resumed["rng"])
        if device.type == "cuda" and resumed.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(resumed["cuda_rng"])
    net.to(device)
    _move_optimizer(optimizer, device)
    model: nn.Module = net
    if device.type == "cuda" and torch.cuda.device_count() > 1:
        model = nn.DataParallel(net)

    train_split, val_split = dataset["train"], dataset["validation"]
    loss_fn = nn.CrossEntropyLoss()
    show_bars = sys.stderr.isatty() if config.progress is None else config.progress
    info = _run_info(config, dataset, net, device, held)
    claimed = ",".join(map(str, info["claimed_gpus"]))
    claimed = claimed or ("none, a CPU claim" if info["claimed_cpu"] else "none")
    print(
        f"kws train: {info['job']!r} on {info['device']} (GPUs claimed: {claimed}), "
        f"{info['params']:,} parameters, {_clip_counts(dataset)}",
        file=sys.stderr,
    )
    n = len(train_split)
    for epoch in range(state.epoch + 1, config.epochs + 1):
        model.train()
        # The order of epoch e depends on (seed, e) only, so a resumed run sees the same data.
        order = torch.randperm(
            n, generator=torch.Generator().manual_seed(config.seed * 1000 + epoch)
        )
        started = time.perf_counter()
        total_loss, correct = 0.0, 0
        bar = tqdm(
            total=n,
            desc=f"epoch {epoch}/{config.epochs}",
            unit="clip",
            disable=not show_bars,
            leave=False,
        )
        for step, idx in enumerate(batches(n, config.batch_size, order)):
            if config.augment is None:
                waves = to_tensor(train_split.waves[idx], device)
            else:
                rng = np.random.default_rng([config.seed, epoch, step])
                waves = torch.from_numpy(config.augment.apply(train_split.waves[idx], rng))
                waves = waves.to(device)
            labels = torch.from_numpy(train_split.labels[idx]).to(device)
            optimizer.zero_grad(set_to_none=True)
            logits = model(waves)
            loss = loss_fn(logits, labels)
            loss.backward()
            optimizer.step()
            batch_loss = float(loss.detach())
            total_loss += batch_loss * len(idx)
            correct += int((logits.argmax(1) == labels).sum())
            bar.update(len(idx))
            bar.set_postfix(loss=f"{batch_loss:.3f}")
        bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        val_acc = accuracy(model, val_split, device)
        row = {
            "epoch": epoch,
            "loss": total_loss / n,
            "train_acc": correct / n,
            "val_acc": val_acc,
            "seconds": round(seconds, 3),
            "samples_per_s": round(n / seconds, 1),
        }
        state.history.append(row)
        state.epoch = epoch
        # No validation split: the best checkpoint is the best on the training data.
        score = val_acc if val_acc is not None else row["train_acc"]
        improved = score > state.best_val_acc
        if improved:
            state.best_val_acc, state.best_epoch = score, epoch
        save_checkpoint(config.out / "last.pt", model, optimizer, config.spec, state)
        if improved:
            save_checkpoint(config.out / "best.pt", model, optimizer, config.spec, state)
        held.update(epoch=epoch, epochs=config.epochs, loss=round(row["loss"], 4), val_acc=val_acc)
        _write_metrics(config.out, info, state, None)
        if config.log:
            val = "-" if val_acc is None else f"{val_acc:.4f}"
            print(
                f"epoch {epoch}/{config.epochs}  loss {row['loss']:.4f}  "
                f"train_acc {row['train_acc']:.4f}  val_acc {val}  "
                f"{row['samples_per_s']:.0f} clips/s",
                flush=True,
            )

    test = _test_results(config, dataset, model, device)
    return _write_metrics(config.out, info, state, test)


def _move_optimizer(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for per_param in optimizer.state.values():
        for key, value in per_param.items():
            if isinstance(value, torch.Tensor) and key != "step":
                per_param[key] = value.to(device)


def _clip_counts(dataset: Dataset) -> str:
    return ", ".join(f"{len(split)} {name}" for name, split in dataset.splits.items()) + " clips"


def _run_info(config, dataset, net, device, held) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {
        "job": config.job_name(),
        "model": config.spec.to_dict(),
        "label": config.spec.label(),
        "params": param_count(net),
        "device": f"{device} ({name})" if device.type == "cuda" else "cpu",
        "claimed_gpus": list(held.gpu_indices),
        # On a machine without GPUs the hook records a CPU claim (where the agent runs), so the
        # sheet's Job cell shows "USER: JOB (CPU)".
        "claimed_cpu": bool(held.record is not None and held.record.cpu),
        "data": {
            "root": str(dataset.root),
            "split_by": dataset.split_source,
            **{name: len(split) for name, split in dataset.splits.items()},
            "skipped": len(dataset.skipped),
        },
        "config": {
            "epochs": config.epochs,
            "batch_size": config.batch_size,
            "lr": config.lr,
            "seed": config.seed,
            "augment": config.augment.describe() if config.augment else None,
            "threads": torch.get_num_threads() if device.type == "cpu" else None,
        },
        **config.tags,
    }


def _test_results(config, dataset, model, device) -> dict[str, Any]:
    test_split = dataset["test"]
    results: dict[str, Any] = {"test_acc_last": accuracy(model, test_split, device)}
    best_path = config.out / "best.pt"
    if best_path.exists():
        best, _ = model_from_checkpoint(load_checkpoint(best_path))
        results["test_acc"] = accuracy(best.to(device), test_split, device)
    else:
        results["test_acc"] = results["test_acc_last"]
    return results


def _write_metrics(out: Path, info, state: RunState, test) -> dict[str, Any]:
    seconds = sum(r["seconds"] for r in state.history)
    samples = sum(r["samples_per_s"] * r["seconds"] for r in state.history)
    metrics = {
        **info,
        "epochs": state.history,
        "best": {"epoch": state.best_epoch, "val_acc": state.best_val_acc},
        "samples_per_s": round(samples / seconds, 1) if seconds else None,
        "finished": test is not None,
        **(test or {}),
    }
    write_atomic(out / "metrics.json", (json.dumps(metrics, indent=1) + "\n").encode("utf-8"))
    return metrics
