"""`kws sweep`: every cell of a grid, several seeds, resumable, each run claimed via the hook."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.fakenvml import FakeNvml, FakeState
from kws.data import load_dataset
from kws.models import ModelSpec
from kws.sweep import SweepConfig, SweepError, plan, run_dir, run_sweep
from kws.train import TrainConfig, train

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def dataset(synth_set):
    return load_dataset(synth_set)


def tiny(out: Path, data: Path, **kw) -> SweepConfig:
    # The depth grid of a 4-channel family at 3 layers: 4 cells, fast on a CPU.
    settings = dict(channels=4, depths=(3,), seeds=2, epochs=1, batch_size=32, gpus="none")
    settings.update(kw)
    return SweepConfig("depth", data, out, **settings)


def test_the_seed_grids_plan_every_cell_and_seed_once(tmp_path):
    depth = plan(SweepConfig("depth", tmp_path, tmp_path / "out", seeds=3))
    assert len(depth) == 7 * 4 * 3  # depths 3–9 × the 4 columns × 3 seeds
    main = plan(SweepConfig("main", tmp_path, tmp_path / "out", seeds=3))
    assert len(main) == 19 * 3
    # ch32 at 8 layers with DO(0.75) is a cell of both grids: the same run folder
    shared = ModelSpec("ch32", dropout=0.25)
    assert {r.out for r in depth if r.spec == shared} == {r.out for r in main if r.spec == shared}
    assert run_dir(tmp_path, shared, 1) == tmp_path / "ch32_do0.25" / "seed1"


def test_a_sweep_trains_each_run_and_a_second_call_skips_them(tmp_path, dataset, synth_set):
    lines: list[str] = []
    outcomes = run_sweep(tiny(tmp_path, synth_set), dataset, report=lines.append)
    assert [o.status for o in outcomes] == ["trained"] * 8
    assert lines[0].startswith("[1/8] ch4 d3 do0.75 seed 0: test_acc ")
    metrics = json.loads((tmp_path / "ch4_d3_do0.75" / "seed1" / "metrics.json").read_text())
    assert metrics["job"] == "kws sweep 2/8 ch4 d3 do0.75 seed 1"
    assert metrics["sweep"] == {
        "cell": {"model": "ch4", "depth": 3, "do": 0.25, "bn": False},
        "dropout_as": "keep",
    }
    again = run_sweep(tiny(tmp_path, synth_set), dataset, report=lines.append)
    assert [o.status for o in again] == ["done"] * 8
    assert all("done before" in line for line in lines[8:])


def test_an_interrupted_run_is_resumed_from_its_last_checkpoint(tmp_path, dataset, synth_set):
    config = tiny(tmp_path, synth_set, seeds=1, epochs=2, depths=(3,))
    first = plan(config)[0]
    # What a run killed during epoch 2 leaves: last.pt of epoch 1, metrics not finished.
    one = TrainConfig(first.spec, synth_set, first.out, epochs=1, batch_size=32, gpus="none")
    one.log, one.progress = False, False
    epoch1 = train(one, dataset)["epochs"][0]
    metrics = json.loads((first.out / "metrics.json").read_text())
    metrics["finished"] = False
    (first.out / "metrics.json").write_text(json.dumps(metrics))
    outcomes = run_sweep(config, dataset, report=lambda line: None)
    assert outcomes[0].status == "resumed"
    history = outcomes[0].metrics["epochs"]
    assert [r["epoch"] for r in history] == [1, 2] and history[0]["loss"] == epoch1["loss"]
    assert [o.status for o in outcomes[1:]] == ["trained"] * 3


def test_other_settings_in_the_same_folder_are_refused(tmp_path, dataset, synth_set):
    run_sweep(tiny(tmp_path, synth_set, seeds=1), dataset, report=lambda line: None)
    with pytest.raises(SweepError, match=r"made with lr=0\.001.*another --out"):
        run_sweep(tiny(tmp_path, synth_set, seeds=1, lr=0.01), dataset, report=lambda line: None)
    with pytest.raises(SweepError, match="dropout_as='keep'"):
        run_sweep(
            tiny(tmp_path, synth_set, seeds=1, dropout_as="rate"), dataset, report=lambda x: None
        )
    # more seeds or another grid are fine: they only add runs
    more = run_sweep(tiny(tmp_path, synth_set, seeds=2), dataset, report=lambda line: None)
    assert [o.status for o in more].count("trained") == 4


def test_the_command_claims_a_gpu_for_every_run_and_releases_it(tmp_path, synth_set):
    nvml = FakeNvml(tmp_path / "nvml", FakeState.with_gpus(2))
    env = nvml.env(log=False)
    env.update(GPUMON_STATE_DIR=str(tmp_path / "state"), GPUMON_CLAIMS_DIR=str(tmp_path / "cl"))
    (tmp_path / "state").mkdir()
    command = [str(BIN / "kws"), "sweep", "depth", "--channels", "4", "--depths", "3"]
    command += ["--seeds", "1", "--epochs", "1", "--data", str(synth_set)]
    command += ["--out", str(tmp_path / "sweep"), "--gpus", "auto"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "[4/4] ch4 d3 bn seed 0: test_acc" in done.stdout or "[4/4]" in done.stdout
    assert "### Depth sweep of 'Custom channel 4'" in done.stdout
    jobs = []
    for path in sorted((tmp_path / "sweep").rglob("metrics.json")):
        metrics = json.loads(path.read_text())
        assert metrics["claimed_gpus"] == [0]
        jobs.append(metrics["job"])
    assert sorted(jobs) == sorted(
        f"kws sweep {k}/4 ch4 d3 {label} seed 0"
        for k, label in enumerate(["do0.75", "do0.75+bn", "do0.25", "do0.25+bn"], 1)
    )
    claims = list((tmp_path / "cl").glob("*.json")) if (tmp_path / "cl").exists() else []
    assert claims == []
