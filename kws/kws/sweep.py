"""``kws sweep``: train every cell of one of the seed's grids, several seeds each, resumably.

Grids (kws.seed_results): ``depth`` — ch32 (or ``--channels 128``) at 3–9 conv layers × DO(0.25),
DO(0.25)+BN, DO(0.75), DO(0.75)+BN; ``main`` — each seed model × its row's DO(p), BN, DO(p)+BN.
Every run is an ordinary ``kws train`` run in ``OUT/<model label>/seed<k>/`` and claims its GPU
through gpumon's hook for its own duration (job "kws sweep 3/56 ch32 d5 do0.75"), so the sheet
shows the sweep's progress. Running the same command again skips finished runs, resumes an
interrupted one from its last.pt and starts the rest; ``OUT/sweep.json`` holds the settings that
must not change between those invocations (data, epochs, batch size, lr, dropout meaning, init,
augmentation). The depth and main grids may share one OUT: a cell both name (ch32 at 8 layers,
DO(0.75)) is trained once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gpumon_agent.atomic import write_atomic
from kws.augment import Augment
from kws.data import Dataset, load_dataset
from kws.models import ModelSpec
from kws.seed_results import SEED_DEPTHS, Cell, depth_cells, main_cells
from kws.train import TrainConfig, train

SWEEP_FORMAT = "kws-sweep-1"
GRIDS = ("depth", "main")


class SweepError(Exception):
    """The sweep cannot go on as asked (settings differ from the folder's); message says how."""


@dataclass
class SweepConfig:
    grid: str
    data: Path
    out: Path
    seeds: int = 3
    dropout_as: str = "keep"
    init: str = "keras"
    channels: int = 32  # the depth grid's family
    depths: tuple[int, ...] = SEED_DEPTHS
    models: set[str] | None = None  # the main grid's rows (None: all)
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    gpus: str = "auto"
    count: int = 1
    augment: Augment | None = None
    progress: bool | None = False
    log: bool = False  # the runs' per-epoch lines
    threads: int | None = None  # torch's CPU threads (kws.train.TrainConfig.threads)

    def settings(self) -> dict[str, Any]:
        """What every run of one sweep folder must share."""
        return {
            "data": str(self.data.resolve()),
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "dropout_as": self.dropout_as,
            "init": self.init,
            "augment": self.augment.describe() if self.augment else None,
        }

    def cells(self) -> list[Cell]:
        if self.grid == "depth":
            return depth_cells(self.channels, self.depths)
        if self.grid == "main":
            return main_cells(self.models)
        raise SweepError(f"unknown grid {self.grid!r}: choose {' or '.join(GRIDS)}")


@dataclass(frozen=True)
class PlannedRun:
    cell: Cell
    spec: ModelSpec
    seed: int
    out: Path


@dataclass
class Outcome:
    run: PlannedRun
    status: str  # "done" (found finished), "resumed", "trained"
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def run_dir(out: Path, spec: ModelSpec, seed: int) -> Path:
    return out / spec.label().replace(" ", "_") / f"seed{seed}"


def plan(config: SweepConfig) -> list[PlannedRun]:
    """Every (cell, seed) once; cells that are one network (same spec) share their runs."""
    runs, seen = [], set()
    for cell in config.cells():
        spec = cell.spec(config.dropout_as, config.init)
        spec.arch()  # an impossible depth fails before anything trains
        for seed in range(config.seeds):
            if (spec, seed) in seen:
                continue
            seen.add((spec, seed))
            runs.append(PlannedRun(cell, spec, seed, run_dir(config.out, spec, seed)))
    return runs


def check_settings(config: SweepConfig) -> None:
    """Write OUT/sweep.json, or refuse when it holds other settings."""
    path = config.out / "sweep.json"
    wanted = config.settings()
    if path.is_file():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise SweepError(f"{path}: unreadable ({e}); move it away to start afresh") from None
        if not isinstance(saved, dict) or saved.get("format") != SWEEP_FORMAT:
            raise SweepError(f"{path}: not a kws sweep file ({SWEEP_FORMAT})")
        differ = [k for k, v in wanted.items() if saved.get("settings", {}).get(k) != v]
        if differ:
            were = ", ".join(f"{k}={saved['settings'].get(k)!r}" for k in differ)
            raise SweepError(
                f"{config.out}: this sweep was made with {were}; give the same options to "
                "resume it, or another --out for a new sweep"
            )
        return
    config.out.mkdir(parents=True, exist_ok=True)
    payload = {"format": SWEEP_FORMAT, "settings": wanted}
    write_atomic(path, (json.dumps(payload, indent=1) + "\n").encode("utf-8"))


def finished_metrics(out: Path) -> dict[str, Any] | None:
    try:
        metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) and metrics.get("finished") else None


def run_sweep(
    config: SweepConfig,
    dataset: Dataset | None = None,
    report: Callable[[str], None] = print,
) -> list[Outcome]:
    runs = plan(config)
    check_settings(config)
    if dataset is None:
        dataset = load_dataset(config.data)
    outcomes = []
    for k, run in enumerate(runs, 1):
        tag = f"[{k}/{len(runs)}] {run.spec.label()} seed {run.seed}"
        done = finished_metrics(run.out)
        if done is not None:
            outcomes.append(Outcome(run, "done", done))
            report(f"{tag}: done before, test_acc {done.get('test_acc', 0):.4f}")
            continue
        resume = run.out / "last.pt" if (run.out / "last.pt").is_file() else None
        started = time.perf_counter()
        metrics = train(
            TrainConfig(
                spec=run.spec,
                data=config.data,
                out=run.out,
                epochs=config.epochs,
                batch_size=config.batch_size,
                lr=config.lr,
                seed=run.seed,
                gpus=config.gpus,
                count=config.count,
                resume=resume,
                progress=config.progress,
                log=config.log,
                augment=config.augment,
                threads=config.threads,
                job=f"kws sweep {k}/{len(runs)} {run.spec.label()} seed {run.seed}",
                tags={"sweep": {"cell": asdict(run.cell), "dropout_as": config.dropout_as}},
            ),
            dataset,
        )
        seconds = time.perf_counter() - started
        outcomes.append(Outcome(run, "resumed" if resume else "trained", metrics, seconds))
        test = metrics.get("test_acc")
        shown = "-" if test is None else f"{test:.4f}"
        report(f"{tag}: test_acc {shown} ({seconds:.0f} s{', resumed' if resume else ''})")
    return outcomes
