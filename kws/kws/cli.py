"""The ``kws`` command: synth, train, eval, filters, models."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from kws.data import DataError
from kws.labels import CLASSES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kws",
        description="The lab's raw-waveform 1D-CNN keyword spotter (16 words).",
    )
    parser.add_argument("--version", action="version", version=version_line())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    synth = sub.add_parser("synth", help="make a small synthetic dataset with espeak-ng and sox")
    synth.add_argument("out", type=Path, help="new (or empty) folder to write")
    synth.add_argument("--per-word", type=int, default=20, help="clips per word (default 20)")
    synth.add_argument("--speakers", type=int, help="fake speakers (default: --per-word)")
    synth.add_argument("--seed", type=int, default=0, help="same seed, same files (default 0)")
    synth.add_argument("--jobs", type=int, help="parallel workers (default: all cores)")

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

    ev = sub.add_parser("eval", help="accuracy and confusion matrix (text and PNG)")
    ev.add_argument("checkpoint", type=Path, help="a checkpoint (OUT/best.pt)")
    ev.add_argument("--data", type=Path, required=True)
    ev.add_argument(
        "--split", choices=["train", "validation", "test"], default="test", help="default test"
    )
    ev.add_argument("--png", type=Path, help="write the matrix figure here")
    ev.add_argument("--json", action="store_true", help="print JSON instead of the text table")

    filters = sub.add_parser("filters", help="plot the first and second conv layers' filters")
    filters.add_argument("checkpoint", type=Path)
    filters.add_argument("--out", type=Path, default=Path("."), help="folder for the PNGs")

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
    parser.add_argument("--dropout", type=float, default=0.0, help="drop rate before each FC")
    parser.add_argument("--bn", action="store_true", help="batch norm after every conv")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except BrokenPipeError:  # `kws models | head`: the reader left; say nothing more
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 — stays open until exit
        return 0
    except (DataError, ValueError) as e:
        print(f"kws {args.command}: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from kws.synth import SynthError
        from kws.train import TrainError

        if isinstance(e, (SynthError, TrainError)):
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
            args.out, args.per_word, args.seed, args.speakers, args.jobs, progress=progress
        )
    print(f"wrote {args.per_word * len(CLASSES)} clips to {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from kws.models import ModelSpec
    from kws.train import TrainConfig, TrainError, load_checkpoint, train

    if args.model is None:
        if args.resume is None:
            raise TrainError("give --model (base, ch32, ch64, vgg, ch128) or --resume")
        spec = ModelSpec.from_dict(load_checkpoint(args.resume)["spec"])
    else:
        spec = ModelSpec(args.model, args.depth, args.dropout, args.bn)
        spec.arch()  # an unknown name or depth fails here, before any data is read
    for name in ("epochs", "batch_size", "count"):
        if getattr(args, name) < 1:
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
    )
    metrics = train(config)
    test = metrics.get("test_acc")
    shown = "-" if test is None else f"{test:.4f}"
    print(f"{spec.label()}: test_acc {shown} (best epoch {metrics['best']['epoch']}); {args.out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from kws.evaluate import evaluate, format_matrix

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


def cmd_filters(args: argparse.Namespace) -> int:
    from kws.plots import plot_first_layer, plot_second_layer
    from kws.train import load_checkpoint, model_from_checkpoint

    model, spec = model_from_checkpoint(load_checkpoint(args.checkpoint))
    convs = model.conv_layers()
    first = convs[0].weight.detach().numpy()
    written = [
        plot_first_layer(first, args.out / "first_layer_filters.png", "First layer's filter")
    ]
    if len(convs) > 1:
        second = convs[1].weight.detach().numpy()
        written.append(
            plot_second_layer(
                second, args.out / "second_layer_filters.png", "Second layer's filter"
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


COMMANDS = {
    "synth": cmd_synth,
    "train": cmd_train,
    "eval": cmd_eval,
    "filters": cmd_filters,
    "models": cmd_models,
}


if __name__ == "__main__":
    raise SystemExit(main())
