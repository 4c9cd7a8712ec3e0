"""The ``adact`` command: ``reproduce`` the paper, ``train`` one model, ``analyze`` a run.

A thin adapter: options become :mod:`adact.config` settings (their defaults and choices are read
from there) and each command calls the library.

User mistakes (:class:`adact.errors.UserError`: bad arguments, unknown names, missing or
damaged files) and the file system's refusals (any ``OSError``: a full disk, a read-only or
missing folder, no permission) end with one line ``adact: error: ...`` and exit status 2, all
decided in :func:`main`; a diverged training run, and a search in which no AdAct run finished,
exit with 1. Anything else is a bug: its
traceback is printed with a line on how to report it, and the exit status is 1.

torch is imported only when a command runs, so ``adact --help`` and ``--version`` are fast.
"""

from __future__ import annotations

import argparse
import errno
import io
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adact import __version__, _options
from adact.config import (
    ACTIVATION_NAMES,
    BASELINE,
    PAPER,
    SEARCH,
    SearchConfig,
    TrainConfig,
    train_default,
)
from adact.dataspec import DATASET_HELP, DatasetSpec
from adact.errors import UserCodeError, UserError
from adact.runs.io import WriteError, one_line_warnings

__all__ = ["build_parser", "main"]

_DATASET_HELP = DATASET_HELP
_D = train_default  # every training option's default is TrainConfig's


def build_parser() -> argparse.ArgumentParser:
    parser = _options.Parser(
        prog="adact",
        description="Learn which activation each layer should use (AdAct, ICLR 2024 Tiny Papers).",
        epilog="Start with `adact reproduce` (offline, digits, seeds 0 1 2: about 2 minutes on 2 CPU cores), "
               "then `adact analyze runs/reproduce`.",
    )
    parser.add_argument("--version", action="version", version=f"adact {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_options.Parser)

    r = sub.add_parser(
        "reproduce", help="the paper's experiment: AdAct -> choices -> ReLU and Optimized, Table 1 and figures",
        description="Per dataset and seed: train ConvNet-AdAct, read each layer's dominant activation from its "
                    "best checkpoint, train ConvNet-ReLU and ConvNet-Optimized from scratch with the same seed; "
                    "then write Table 1 (mean ± sd over seeds, paired differences with 95% CIs, the paper's values), "
                    "the choices, figures and a report. Rerunning the same command skips finished runs and resumes "
                    "interrupted ones.",
        epilog="Example: adact reproduce --datasets fmnist cifar10 svhn --download --seeds 0 1 2 --jobs 3",
    )
    r.add_argument("--datasets", type=_options.dataset, nargs="+", default=["digits"], metavar="NAME",
                   help=f"datasets to run (default: digits, offline). Valid: {_DATASET_HELP}")
    r.add_argument("--out", default=PAPER.out, metavar="DIR", help=f"output folder (default: {PAPER.out})")
    r.add_argument("--baselines", type=_options.activation, nargs="+", default=["relu"], metavar="NAME",
                   help="train a model with one activation everywhere for each NAME, as baselines with a column and "
                        "paired differences each (default: relu, the paper's; e.g. --baselines relu mish)")
    _options.add_pipeline_args(r)
    _options.add_run_args(r, with_model=False)
    _options.add_data_args(r)
    r.set_defaults(func=_cmd_reproduce)

    s = sub.add_parser(
        "search", help="the paper's pipeline on your model and data: AdAct -> choices -> optimized and baseline",
        description="Per dataset and seed: train the model with an AdAct unit at every activation (adactify), read "
                    "each unit's dominant activation at the best epoch (by the validation metric with --val-fraction, "
                    "else by the test metric: accuracy for images, the held-out loss for a text file), then train from scratch with the same seed the optimized model (each "
                    "unit fixed to its choice) and the baseline (the model as written). Writes a table (mean ± sd, "
                    "paired differences with 95% CIs), the choices, a heatmap of every unit's weights, trajectories "
                    "and a report. Rerunning the same command skips finished runs and resumes interrupted ones.",
        epilog="Examples: adact search --model torchvision:resnet18 --dataset imagefolder:data/pets --image-size 64 "
               "--val-fraction 0.1 --seeds 0 1;  adact search --model gpt --dataset text:input.txt --baselines relu "
               "relu2 silu --seeds 0 1 2 3 4 (nanoGPT's shakespeare_char settings)",
    )
    s.add_argument("--dataset", "--datasets", dest="datasets", type=_options.dataset, nargs="+", required=True,
                   metavar="NAME", help=f"dataset(s) to search on. Valid: {_DATASET_HELP}")
    s.add_argument("--out", default=SEARCH.out, metavar="DIR", help=f"output folder (default: {SEARCH.out})")
    s.add_argument("--baselines", type=_options.activation, nargs="+", default=[], metavar="NAME",
                   help="besides the model as written, train it with one activation everywhere for each NAME, as "
                        "extra baselines with a column and paired differences each (e.g. --baselines relu mish)")
    s.add_argument("--activation", dest="gpt_activation", type=_options.activation_name, default=None, metavar="NAME",
                   help="--model gpt: the activation of its MLPs as written, the baseline (default: gelu, GPT-2's)")
    _options.add_pipeline_args(s)
    _options.add_run_args(s)
    _options.add_data_args(s)
    s.set_defaults(func=_cmd_search)

    t = sub.add_parser("train", help="train one model into a run folder",
                       description="Train one ConvNet with the paper's protocol (AdamW, lr 1e-3, batch 64, best "
                                   "epoch on test kept). Rerunning resumes an interrupted run.",
                       epilog="Example: adact train --dataset digits --activation elu mish mish silu --epochs 5")
    t.add_argument("--dataset", type=_options.dataset, default=_D("dataset"), metavar="NAME",
                   help=f"default: {_D('dataset')}. {_DATASET_HELP}")
    t.add_argument("--activation", type=_options.activation, nargs="+", default=["adact"], metavar="NAME",
                   help="'adact', 'baseline' (the model as written), one activation name for every ConvNet block, "
                        f"or one name per block / AdAct site (default: adact). Names: {', '.join(ACTIVATION_NAMES)}")
    t.add_argument("--seed", type=_options.int_at_least(0), default=_D("seed"),
                   help="seed of init, shuffling and RReLU noise (default: 0)")
    t.add_argument("--out", default=None, metavar="DIR",
                   help="run folder (default: runs/train/<dataset>_<activation>_seed<k>)")
    _options.add_run_args(t)
    _options.add_data_args(t)
    t.set_defaults(func=_cmd_train)

    a = sub.add_parser("analyze", help="weight table and figures of a run folder, checkpoint or reproduce folder",
                       description="For a run folder (read from best.pt, or from result.json when it keeps no "
                                   "checkpoint) or a checkpoint: print each layer's raw and softmax weights with the "
                                   "dominant activation, and draw its figures. For an "
                                   "`adact reproduce` output folder: re-render tables, figures and report from its "
                                   "run folders without training.")
    a.add_argument("path", metavar="PATH", help="run folder, best.pt/last.pt, or reproduce output folder")
    a.add_argument("--out", default=None, metavar="DIR", help="figure folder (default: next to the run)")
    a.set_defaults(func=_cmd_analyze)

    i = sub.add_parser("info", help="versions, CPU and ISA level, native build and fused backends (for bug reports)",
                       description="Print what a bug report about speed or the fused kernels needs: versions, the "
                                   "CPU's instruction-set level, whether the native kernels built (flags, cache), "
                                   "the backend each device and dtype gets and why, and auto's calibration.")
    i.set_defaults(func=_cmd_info)
    return parser


# --- commands ------------------------------------------------------------------------------


def _train_config(args: argparse.Namespace, **fixed: Any) -> TrainConfig:
    """The TrainConfig of the parsed options: every field with an option of its name, then ``fixed``.

    The one place options become settings, for every command.
    """
    from dataclasses import fields

    values: dict[str, Any] = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    values["fused"] = not args.reference
    values["decay_adact"] = not args.no_decay_adact
    if args.channels is None:
        values.pop("channels", None)
    else:
        values["channels"] = list(args.channels)
    for key in ("activation", "dataset", "seed"):  # per run: given by the command
        values.pop(key, None)
    values.update(fixed)
    return TrainConfig(**values)


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from adact.experiments.reproduce import paper_config, reproduce

    cfg = paper_config(datasets=list(dict.fromkeys(args.datasets)), seeds=list(args.seeds), out=args.out,
                       jobs=args.jobs, quiet=args.quiet, train=_train_config(args),
                       baselines=list(dict.fromkeys(args.baselines)), sync_bn=args.sync_bn)
    results = reproduce(cfg, restart=args.restart)
    if results.get("failure"):  # every AdAct run diverged: there are no choices
        print(f"adact: reproduce failed: {results['failure']}", file=sys.stderr)
        return 1
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from adact.experiments.search import search

    # The model as written is always search's first baseline; --baselines adds one-activation ones.

    cfg = SearchConfig(datasets=list(dict.fromkeys(args.datasets)), seeds=list(args.seeds), out=args.out,
                       jobs=args.jobs, quiet=args.quiet, train=_train_config(args, dataset=args.datasets[0]),
                       preset="search",
                       baselines=[BASELINE, *dict.fromkeys(args.baselines)], sync_bn=args.sync_bn)
    results = search(cfg, restart=args.restart)
    if results.get("failure"):  # every AdAct run diverged: there are no choices to use
        print(f"adact: search failed: {results['failure']}", file=sys.stderr)
        return 1
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from adact.training.build import load_data
    from adact.training.loop import DivergedError, train

    acts: list[str] = args.activation
    config = _train_config(args, dataset=args.dataset, seed=args.seed,
                           activation=acts[0] if len(acts) == 1 else acts)
    blocks = {"convnet": len(config.channels), "gpt": config.n_layer}.get(config.model or "")
    if blocks is not None and len(acts) not in (1, blocks):
        raise UserError(f"--activation got {len(acts)} names but the {'net' if config.model == 'convnet' else 'GPT'} has {blocks} blocks; "
                         f"give one name, or one per block")
    spec = DatasetSpec.parse(config.dataset)
    spec.check(config.data_dir)
    act = config.activation if isinstance(config.activation, str) else "-".join(config.activation)
    model = "" if config.model == "convnet" else "".join(c if c.isalnum() else "-" for c in config.model) + "_"
    out = Path(args.out or f"runs/train/{model}{spec.slug}_{act}_seed{config.seed}")
    spec.check_out(out, config.data_dir)
    data = load_data(config, args.quiet)
    if not args.quiet:
        print(f"{data} -> {out}")
    if data.info.get("bad_images"):
        print(f"skipped {data.info['bad_images']} image(s) that cannot be decoded (see the warnings)")
    try:
        result = train(config, out, data=data, quiet=args.quiet, restart=args.restart, sync_bn=args.sync_bn)
    except DivergedError as e:
        print(f"adact: training diverged: {e}", file=sys.stderr)
        return 1
    m = result["metric"]
    val = result[f"val_selected_test_{m}"]
    ppl = f", perplexity {result['best_test_ppl']:.3f}" if result.get("best_test_ppl") is not None else ""
    when = "epoch" if not config.is_text else "evaluation"
    print(f"best test {m} {result[f'best_test_{m}']:.4f} ({when} {result['best_epoch']}{ppl}), "
          f"final {result[f'final_test_{m}']:.4f}" + (f", val-selected {val:.4f}" if val is not None else ""))
    if result["dominant"]:
        chosen = ", ".join(f"{p}: {n} ({w:.3f})" for p, (n, w) in result["dominant"].items())
        print(f"dominant activations (final model): {chosen}")
    if result.get("discretization_gap"):
        from adact.reporting.tables import render_confidence_text, render_gap_text

        print(f"best epoch ({result['best_epoch']}):")
        text = render_confidence_text(result["best_weights"]["confidence"])
        print(text + render_gap_text(result["discretization_gap"]), end="")
    if result["status"] == "done" and result.get("n_adact_units") and result.get("best_weights"):
        from adact.reporting.analyze import function_figures
        from adact.training import distributed

        if distributed.writer():  # [distributed] one rank draws
            text, files = function_figures(out, result)
            print(f"{text}figure: {files[0]}")
    print(f"run folder: {out}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from adact.info import main as info_main

    return info_main()


def _cmd_analyze(args: argparse.Namespace) -> int:
    from adact.reporting.analyze import analyze_run
    from adact.reporting.render import rerender
    from adact.runs.manifest import is_search_dir

    path = Path(args.path)
    if not path.exists():
        raise FileNotFoundError(f"no such run folder, checkpoint or reproduce folder (or search folder): {path}")
    if is_search_dir(path):
        if args.out is not None:
            raise UserError("--out applies to a single run; a search folder or a reproduce folder is re-rendered "
                             "in place")
        results = rerender(path)
        print(results["table_text"])
        for ds, figs in results["figures"].items():
            for files in figs.values():
                print(f"figure: {path / files[0]}")
        for problem in results["problems"]:
            print(f"adact: warning: {problem}", file=sys.stderr)
        print(f"wrote {path / 'report.md'}")
        return 0
    text, files = analyze_run(path, args.out)
    print(text)
    for f in files:
        print(f"figure: {f}")
    return 0


# --- errors at the edge -----------------------------------------------------------------------

_OS_HINTS: dict[int, str] = {
    errno.ENOSPC: "the disk is full; free some space (or choose another --out) and rerun the same command to resume",
    errno.EDQUOT: "the disk quota is used up; free some space (or choose another --out) and rerun the same command",
    errno.EROFS: "the file system is read-only; choose an --out folder on a writable disk",
    errno.EACCES: "choose an --out folder you may write to, or fix its permissions",
    errno.EPERM: "choose an --out folder you may write to, or fix its permissions",
    errno.EEXIST: "a file is in the way; choose another --out folder, or move the file",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another --out folder",
    errno.EISDIR: "a folder is in the way; choose another path",
    errno.ENOENT: "check the path",
    errno.ENAMETOOLONG: "choose a shorter path",
}


def _os_error_line(e: OSError) -> str:
    """``cannot write PATH: <reason>; <what to do>`` for an OSError from the file system."""
    path = str(e.filename) if e.filename is not None else None
    verb = "write" if isinstance(e, WriteError) else "access"
    hint = _OS_HINTS.get(e.errno or 0, "check the path and the disk")
    if path and Path(path).resolve().parts[1:2] in (("proc",), ("sys",), ("dev",)):
        hint = f"only the kernel makes files under /{Path(path).resolve().parts[1]}; choose a folder on a normal disk"
    reason = e.strerror or str(e)
    return f"cannot {verb} {path}: {reason}; {hint}" if path else f"{reason}; {hint}"


def _user_error(e: BaseException) -> str | None:
    """The one-line message for an error the user can fix, or None for a bug (keeps its traceback)."""
    if isinstance(e, OSError) and e.errno is not None:
        return _os_error_line(e)
    if isinstance(e, (UserError, OSError)):
        return str(e)
    return None


def _report_bug() -> None:
    """Print the current exception's traceback and how to report it, with what a report needs."""
    import platform
    import traceback

    traceback.print_exc()
    try:
        import torch

        versions = f"torch {torch.__version__}"
    except ImportError:  # pragma: no cover - adact needs torch; say so rather than fail here
        versions = "torch not importable"
    print(f"adact: internal error: this is a bug in adact {__version__} ({versions}, Python "
          f"{platform.python_version()} on {platform.system()} {platform.machine()}), not in what you gave it. "
          f"Please report it with the traceback above, the command you ran and the output of `adact info`.",
          file=sys.stderr)


def _distributed() -> Any:
    """``adact.training.distributed`` when torchrun started this process, else None (it imports torch)."""
    if os.environ.get("WORLD_SIZE", "1").strip() in ("", "1"):
        return None
    from adact.training import distributed

    return distributed


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``adact`` console script; returns the exit status.

    Every user error of every command becomes one line ``adact: error: ...`` here, exit status 2;
    any other exception is a bug: its traceback and how to report it, exit status 1.
    Under torchrun, only rank 0 prints to stdout, and a rank that loses another rank (killed,
    crashed, unreachable) ends with one line saying so, exit status 2.
    """
    for stream in (sys.stdout, sys.stderr):
        # A path's undecodable bytes (a dataset folder named b"d\xff") print as \xff, not a crash of the run.
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help / --version (0) or a usage error (2, already printed)
        return e.code if isinstance(e.code, int) else 2
    dist = _distributed()  # [distributed]
    if dist is not None:
        dist.silence_non_writers()
    with warnings.catch_warnings():
        one_line_warnings()
        try:
            status = int(args.func(args))
        except KeyboardInterrupt:
            print("adact: interrupted; rerun the same command to resume", file=sys.stderr)
            return 130
        except Exception as e:
            message = _user_error(e)
            if message is None and dist is not None:  # [distributed] a lost rank is not a bug of ours
                message = dist.peer_failure_message(e)
            if message is None:
                _report_bug()
                return 1
            if isinstance(e, UserCodeError) and e.frames:
                sys.stderr.write(e.frames)  # the user's own frames: where in their code it went wrong
            print(f"adact: error: {message}", file=sys.stderr)
            return 2
        if dist is not None:  # [distributed] only after success: tearing down after a lost peer can block
            dist.cleanup()
        return status


if __name__ == "__main__":
    sys.exit(main())
