"""The ``kws`` command: synth, train, eval, filters, models, sweep, table, realvoice."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from kws.augment import AugmentError
from kws.data import DataError
from kws.labels import CLASSES
from kws.models import DROPOUT_MEANINGS, INITS, ModelSpec, drop_rate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kws",
        description="The lab's raw-waveform 1D-CNN keyword spotter (16 words).",
    )
    parser.add_argument("--version", action="version", version=version_line())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    synth = sub.add_parser(
        "synth",
        help="make a synthetic dataset, split by voice (espeak-ng, flite, festival, sox)",
    )
    synth.add_argument("out", type=Path, help="new (or empty) folder to write")
    synth.add_argument("--per-word", type=int, default=20, help="clips per word (default 20)")
    synth.add_argument("--speakers", type=int, help="fake speakers (default: --per-word)")
    synth.add_argument("--seed", type=int, default=0, help="same seed, same files (default 0)")
    synth.add_argument("--jobs", type=int, help="parallel workers (default: all cores)")
    synth.add_argument(
        "--engines",
        default="espeak-ng,flite,festival",
        help="comma list of espeak-ng, flite, festival (default: all three)",
    )
    synth.add_argument(
        "--variants", help="espeak-ng variants to use, comma list (default: all it has)"
    )

    train = sub.add_parser("train", help="train a model, holding a gpumon GPU claim")
    add_model_options(train)
    train.add_argument("--data", type=Path, required=True, help="Speech Commands–format folder")
    train.add_argument("--out", type=Path, default=Path("runs/kws"), help="checkpoints, metrics")
    train.add_argument("--epochs", type=int, default=30, help="total epochs (default 30)")
    train.add_argument("--batch-size", type=int, default=64, help="default 64")
    train.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    train.add_argument("--seed", type=int, default=0, help="same seed, same run (default 0)")
    train.add_argument(
        "--gpus",
        default="auto",
        help="'auto' (free GPUs via gpumon), indices or UUIDs ('0,1'), or 'none' (CPU, no claim)",
    )
    train.add_argument("--count", type=int, default=1, help="how many GPUs 'auto' claims")
    train.add_argument("--resume", type=Path, help="continue from a checkpoint (or an --out dir)")
    train.add_argument("--quiet", action="store_true", help="no per-epoch lines, no bars")
    add_threads_option(train)
    add_augment_options(train)

    ev = sub.add_parser("eval", help="accuracy and confusion matrix (text and PNG)")
    ev.add_argument("checkpoint", type=Path, nargs="?", help="a checkpoint (OUT/best.pt)")
    ev.add_argument(
        "--compare",
        nargs=2,
        type=Path,
        metavar=("A", "B"),
        help="two checkpoints side by side, with the per-class differences",
    )
    ev.add_argument("--data", type=Path, required=True)
    ev.add_argument(
        "--split", choices=["train", "validation", "test"], default="test", help="default test"
    )
    ev.add_argument("--png", type=Path, help="write the matrix figure here")
    ev.add_argument("--json", action="store_true", help="print JSON instead of the text table")

    filters = sub.add_parser(
        "filters",
        help="plot the first two conv layers' filters and the first's frequency responses",
    )
    filters.add_argument("checkpoint", type=Path)
    filters.add_argument("--out", type=Path, default=Path("."), help="folder for the PNGs")

    sweep = sub.add_parser(
        "sweep", help="train one of the seed's grids, several seeds per cell, resumably"
    )
    sweep.add_argument("grid", choices=["depth", "main"], help="the seed's depth or main table")
    sweep.add_argument("--data", type=Path, required=True, help="Speech Commands–format folder")
    sweep.add_argument("--out", type=Path, default=Path("runs/sweep"), help="the sweep folder")
    sweep.add_argument("--seeds", type=int, default=3, help="runs per cell (default 3)")
    sweep.add_argument(
        "--channels", type=int, default=32, help="depth grid: ch32 or ch128 family (default 32)"
    )
    sweep.add_argument("--depths", default="3-9", help="depth grid: e.g. 3-9 (default) or 5,8")
    sweep.add_argument("--models", help="main grid: comma list of base,ch32,ch64,vgg,ch128")
    add_dropout_meaning(sweep)
    sweep.add_argument("--init", choices=INITS, default="keras", help="initial weights")
    sweep.add_argument("--epochs", type=int, default=30, help="per run (default 30)")
    sweep.add_argument("--batch-size", type=int, default=64, help="default 64")
    sweep.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    sweep.add_argument("--gpus", default="auto", help="as kws train: auto, indices/UUIDs, none")
    sweep.add_argument("--count", type=int, default=1, help="GPUs per run with --gpus auto")
    sweep.add_argument("--verbose", action="store_true", help="every run's per-epoch lines")
    add_threads_option(sweep)
    add_augment_options(sweep)

    table = sub.add_parser("table", help="the seed's tables from runs' metrics (Markdown, PNG)")
    table.add_argument("runs", type=Path, nargs="+", help="folders holding runs (a sweep's OUT)")
    table.add_argument("--grid", choices=["depth", "main"], default="main", help="default main")
    table.add_argument("--channels", type=int, default=32, help="depth table family (32, 128)")
    table.add_argument("--depths", default="3-9", help="depth table rows (default 3-9)")
    add_dropout_meaning(table, default=None)
    table.add_argument("--init", choices=INITS, help="the runs' init (default: the sweep's)")
    table.add_argument("--png", type=Path, help="also draw the table here")
    table.add_argument("--md", type=Path, help="also write the Markdown here")

    real = sub.add_parser(
        "realvoice", help="a 3-clip real-voice smoke set from Debian's pocketsphinx-testdata"
    )
    real.add_argument("out", type=Path, help="new (or empty) folder to write")

    models = sub.add_parser("models", help="the models and their parameter counts")
    models.add_argument(
        "--depths", action="store_true", help="also the depth sweep (1–9 layers) of ch32/ch128"
    )
    return parser


def version_line() -> str:
    """``kws 0.1.0 (gpumon-agent 0.1.0, torch 2.13.0)``: what a bug report needs (read from
    the installed distributions: no torch import)."""
    from importlib.metadata import PackageNotFoundError, version

    def of(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return f"kws {of('kws')} (gpumon-agent {of('gpumon-agent')}, torch {of('torch')})"


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", help="base, ch32, ch64, vgg, ch128 (or ch<N>); taken from --resume if omitted"
    )
    parser.add_argument("--depth", type=int, help="conv layers of a ch<N> model (1–9)")
    dropout = parser.add_mutually_exclusive_group()
    dropout.add_argument(
        "--dropout", type=float, help="drop rate before each FC (PyTorch/Keras meaning)"
    )
    dropout.add_argument(
        "--keep-prob",
        type=float,
        help="keep probability before each FC (TensorFlow 1.x meaning: drop rate 1 - P)",
    )
    parser.add_argument("--bn", action="store_true", help="batch norm after every conv")
    parser.add_argument(
        "--init",
        choices=INITS,
        default="keras",
        help="initial weights: keras (Glorot-uniform, zero bias; default) or torch's defaults",
    )


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads for torch (default: one per core; 1 is faster on a busy machine)",
    )


def add_dropout_meaning(parser: argparse.ArgumentParser, default: str | None = "keep") -> None:
    shown = "the sweep's, else keep" if default is None else default
    parser.add_argument(
        "--dropout-as",
        choices=DROPOUT_MEANINGS,
        default=default,
        help="how the seed's DO(p) reads: keep (TF1 keep_prob: drop rate 1-p) or rate "
        f"(drop rate p); default {shown}",
    )


def parse_depths(text: str) -> tuple[int, ...]:
    """ "3-9" or "5,8" → (3, …, 9) / (5, 8)."""
    try:
        if "-" in text:
            low, high = (int(x) for x in text.split("-", 1))
            depths = tuple(range(low, high + 1))
        else:
            depths = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise ValueError(
            f"--depths: give a range like 3-9 or a list like 5,8, not {text!r}"
        ) from None
    if not depths:
        raise ValueError(f"--depths {text!r} names no depth")
    return depths


def add_augment_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--augment",
        metavar="KINDS",
        help="on-the-fly augmentation: 'all' or a comma list of shift,gain,speed,noise",
    )
    parser.add_argument(
        "--noise-dir", type=Path, help="background noise WAVs (default DATA/_background_noise_)"
    )


def parse_augment(args: argparse.Namespace):
    from kws.augment import Augment

    augment = Augment.parse(args.augment, args.data, args.noise_dir)
    for problem in augment.skipped:
        print(f"kws {args.command}: warning: noise file skipped: {problem}", file=sys.stderr)
    return augment


def model_spec(args: argparse.Namespace) -> ModelSpec:
    """The network the model options name; an unknown name or depth fails here."""
    if args.keep_prob is not None:
        rate = drop_rate(args.keep_prob, "keep")
    else:
        rate = drop_rate(args.dropout or 0.0, "rate")
    spec = ModelSpec(args.model, args.depth, rate, args.bn, args.init)
    spec.arch()
    return spec


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except BrokenPipeError:  # `kws models | head`: the reader left; say nothing more
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 — stays open until exit
        return 0
    except (DataError, AugmentError, ValueError) as e:
        print(f"kws {args.command}: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from kws.realvoice import RealVoiceError
        from kws.sweep import SweepError
        from kws.synth import SynthError
        from kws.train import TrainError

        if isinstance(e, (SynthError, TrainError, SweepError, RealVoiceError)):
            print(f"kws {args.command}: {e}", file=sys.stderr)
            return 2
        status = _claim_error_status(e)
        if status:
            print(f"kws {args.command}: cannot claim a GPU: {e}", file=sys.stderr)
            return status
        raise


def _claim_error_status(e: Exception) -> int:
    """As `gpumon claim`: 75 (EX_TEMPFAIL) when GPUs are busy or the lock is, 1 for other
    claim errors, 0 when ``e`` is not a claim error."""
    from gpumon_agent.claims import ClaimError, LockTimeout, NoFreeGpu

    if isinstance(e, (NoFreeGpu, LockTimeout)):
        return 75
    return 1 if isinstance(e, ClaimError) else 0


def cmd_synth(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from kws.synth import synthesize

    with tqdm(
        total=args.per_word * len(CLASSES), unit="clip", disable=not sys.stderr.isatty()
    ) as bar:

        def progress(done: int, total: int) -> None:
            bar.update(done - bar.n)

        out = synthesize(
            args.out,
            args.per_word,
            args.seed,
            args.speakers,
            args.jobs,
            progress=progress,
            engines=[e.strip() for e in args.engines.split(",") if e.strip()],
            variants=args.variants.split(",") if args.variants else None,
        )
    print(f"wrote {args.per_word * len(CLASSES)} clips to {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from kws.train import TrainConfig, TrainError, load_checkpoint, train

    if args.model is None:
        if args.resume is None:
            raise TrainError("give --model (base, ch32, ch64, vgg, ch128) or --resume")
        spec = ModelSpec.from_dict(load_checkpoint(args.resume)["spec"])
    else:
        spec = model_spec(args)  # before any data is read
    augment = None
    if args.augment:
        augment = parse_augment(args)
    elif args.noise_dir:
        raise TrainError("--noise-dir is for --augment noise (or all)")
    for name in ("epochs", "batch_size", "count", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise TrainError(f"--{name.replace('_', '-')} must be at least 1")
    config = TrainConfig(
        spec=spec,
        data=args.data,
        out=args.out,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        gpus=args.gpus,
        count=args.count,
        resume=args.resume,
        progress=False if args.quiet else None,
        log=not args.quiet,
        augment=augment,
        threads=args.threads,
    )
    metrics = train(config)
    test = metrics.get("test_acc")
    shown = "-" if test is None else f"{test:.4f}"
    print(f"{spec.label()}: test_acc {shown} (best epoch {metrics['best']['epoch']}); {args.out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from kws.evaluate import evaluate, format_matrix

    if args.compare:
        if args.checkpoint:
            raise ValueError("give one checkpoint, or two with --compare A B, not both")
        return compare_checkpoints(args)
    if args.checkpoint is None:
        raise ValueError("give a checkpoint (OUT/best.pt), or two with --compare A B")
    result = evaluate(args.checkpoint, args.data, args.split)
    if args.png:
        from kws.plots import plot_confusion

        plot_confusion(result.matrix, args.png, result.title())
    if args.json:
        print(json.dumps(result.to_dict(), indent=1))
    else:
        print(f"{result.title()} on {args.split}: {int(result.matrix.sum())} clips")
        print(format_matrix(result.matrix))
    return 0


def compare_checkpoints(args: argparse.Namespace) -> int:
    from kws.evaluate import compare, format_comparison

    a, b = compare(*args.compare, args.data, args.split)
    if args.png:
        from kws.plots import plot_confusion_pair

        plot_confusion_pair([a.matrix, b.matrix], [a.title(), b.title()], args.png)
    if args.json:
        print(json.dumps({"a": a.to_dict(), "b": b.to_dict()}, indent=1))
    else:
        print(f"on {args.split}: {int(a.matrix.sum())} clips")
        print(format_comparison(a, b))
    return 0


def cmd_filters(args: argparse.Namespace) -> int:
    from kws.plots import (
        plot_first_layer,
        plot_first_layer_responses,
        plot_response_map,
        plot_second_layer,
    )
    from kws.train import load_checkpoint, model_from_checkpoint

    model, spec = model_from_checkpoint(load_checkpoint(args.checkpoint))
    convs = model.conv_layers()
    first = convs[0].weight.detach().numpy()
    name = spec.label()
    written = [
        plot_first_layer(first, args.out / "first_layer_filters.png", f"{name}: first layer"),
        plot_first_layer_responses(
            first, args.out / "first_layer_responses.png", f"{name}: first layer"
        ),
        plot_response_map(first, args.out / "first_layer_response_map.png", f"{name}: first layer"),
    ]
    if len(convs) > 1:
        second = convs[1].weight.detach().numpy()
        written.append(
            plot_second_layer(
                second, args.out / "second_layer_filters.png", f"{name}: second layer"
            )
        )
    for path in written:
        print(f"{spec.label()}: wrote {path}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from kws.models import MODEL_NAMES, SEED_COUNTS, KwsNet, get_arch, param_count

    header = f"{'model':7} {'architecture':36} {'params':>10} {'+bn':>10} {'seed':>10}  matches"
    print(header)
    for name in MODEL_NAMES:
        arch, seed = get_arch(name), SEED_COUNTS[name]
        plain, bn = param_count(KwsNet(arch)), param_count(KwsNet(arch, bn=True))
        ours = bn if seed.with_bn else plain
        match = ("with bn" if seed.with_bn else "without bn") if ours == seed.params else "NO"
        print(f"{name:7} {arch.notation:36} {plain:>10,} {bn:>10,} {seed.params:>10,}  {match}")
    if args.depths:
        for channels in (32, 128):
            print(f"\nch{channels} depth sweep (the seed's 'Added Work' tables)")
            for depth in range(1, 10):
                arch = get_arch(f"ch{channels}", depth)
                plain, bn = param_count(KwsNet(arch)), param_count(KwsNet(arch, bn=True))
                print(f"  {arch.notation:20} {plain:>12,} {bn:>12,}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from kws.sweep import SweepConfig, run_sweep
    from kws.table import by_spec, depth_table, find_metrics, main_table

    for name in ("seeds", "epochs", "batch_size", "count", "threads"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    models = {m.strip() for m in args.models.split(",")} if args.models else None
    config = SweepConfig(
        grid=args.grid,
        data=args.data,
        out=args.out,
        seeds=args.seeds,
        dropout_as=args.dropout_as,
        init=args.init,
        channels=args.channels,
        depths=parse_depths(args.depths),
        models=models,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        gpus=args.gpus,
        count=args.count,
        augment=parse_augment(args) if args.augment else None,
        progress=None if args.verbose else False,
        log=args.verbose,
        threads=args.threads,
    )
    run_sweep(config, report=lambda line: print(line, flush=True))
    results = by_spec(find_metrics([args.out]))
    if args.grid == "main":
        table = main_table(results, args.dropout_as, args.init)
    else:
        table = depth_table(results, args.dropout_as, args.channels, config.depths, args.init)
    print()
    print(table.markdown(), end="")
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    from kws.table import by_spec, depth_table, find_metrics, main_table, plot_table, sweep_defaults

    saved = sweep_defaults(args.runs)
    meaning = args.dropout_as or saved.get("dropout_as") or "keep"
    init = args.init or saved.get("init") or "keras"
    results = by_spec(find_metrics(args.runs))
    if args.grid == "main":
        table = main_table(results, meaning, init)
    else:
        table = depth_table(results, meaning, args.channels, parse_depths(args.depths), init)
    markdown = table.markdown()
    print(markdown, end="")
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(markdown, encoding="utf-8")
    if args.png:
        plot_table(table, args.png)
    return 0


def cmd_realvoice(args: argparse.Namespace) -> int:
    from kws.realvoice import build

    rels = build(args.out)
    print(f"wrote {len(rels)} real-voice clips to {args.out} (all in testing_list.txt)")
    return 0


COMMANDS = {
    "synth": cmd_synth,
    "train": cmd_train,
    "eval": cmd_eval,
    "filters": cmd_filters,
    "models": cmd_models,
    "sweep": cmd_sweep,
    "table": cmd_table,
    "realvoice": cmd_realvoice,
}


if __name__ == "__main__":
    raise SystemExit(main())
