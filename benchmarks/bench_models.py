"""Training-step cost of AdAct in whole models: adactified against the original, side by side.

For each model (built from its config, random weights, nothing downloaded): one training step --
forward, loss, backward, AdamW step -- of the original and of ``adact.adactify(copy)``, timed in
interleaved rounds after warm-up, medians. ``--compile`` adds both under ``torch.compile`` and
counts the graph breaks Dynamo reports for each. This is a benchmark, not a test: nothing here
asserts speed (issue 22 sets the targets: adactified / original <= 1.10 eager, <= 1.05 compiled).

Usage::

    python benchmarks/bench_models.py --cpu-time --threads 1      # eager, 1 thread, process CPU time
    python benchmarks/bench_models.py --compile                   # eager and compiled, all cores
    python benchmarks/bench_models.py --models resnet18 gpt2      # a subset

Models: torchvision ``resnet18`` (32x32, batch 64), ``mobilenet_v3_small`` (64x64, batch 32), timm
``convnext_atto`` (64x64, batch 32), timm ``vit_tiny_patch16_224`` at 64x64 (batch 32), and a tiny
GPT-2 from a transformers config (4 layers, 4 heads, 128-dim, 64 tokens, batch 12). timm and
transformers are optional: their models are skipped, with a line saying so, when missing.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch._dynamo
import torch.nn.functional as F
from torch import nn

from adact import adact_units, adactify

__all__ = ["main"]

_CLOCK: Callable[[], float] = time.perf_counter


@dataclass
class Case:
    """A model and one training batch for it."""

    name: str
    build: Callable[[], nn.Module]
    batch: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    loss: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def _images(n: int, size: int, classes: int = 10) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
    return lambda: (torch.randn(n, 3, size, size), torch.randint(0, classes, (n,)))


def _ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def _lm(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return model(input_ids=x, labels=y).loss


def _cases() -> dict[str, Case | str]:
    import torchvision

    cases: dict[str, Case | str] = {
        "resnet18": Case("torchvision resnet18, 32x32, batch 64",
                         lambda: torchvision.models.resnet18(num_classes=10), _images(64, 32), _ce),
        "mobilenet_v3_small": Case("torchvision mobilenet_v3_small, 64x64, batch 32",
                                   lambda: torchvision.models.mobilenet_v3_small(num_classes=10), _images(32, 64), _ce),
    }
    try:
        import timm

        cases["convnext_atto"] = Case("timm convnext_atto, 64x64, batch 32",
                                      lambda: timm.create_model("convnext_atto", num_classes=10), _images(32, 64), _ce)
        cases["vit_tiny"] = Case("timm vit_tiny_patch16_224 at 64x64, batch 32",
                                 lambda: timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=64),
                                 _images(32, 64), _ce)
    except ImportError:
        cases["convnext_atto"] = cases["vit_tiny"] = "skipped: timm is not installed"
    try:
        from transformers import GPT2Config, GPT2LMHeadModel

        def gpt2() -> nn.Module:
            config = GPT2Config(n_layer=4, n_head=4, n_embd=128, n_positions=64, vocab_size=256, bos_token_id=0,
                                eos_token_id=0)
            return GPT2LMHeadModel(config)

        def tokens() -> tuple[torch.Tensor, torch.Tensor]:
            x = torch.randint(0, 256, (12, 64))
            return x, x

        cases["gpt2"] = Case("transformers GPT-2 (4 layers, 128-dim, vocab 256), 12 x 64 tokens", gpt2, tokens, _lm)
    except ImportError:
        cases["gpt2"] = "skipped: transformers is not installed"
    return cases


def _step(model: nn.Module, case: Case, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        case.loss(model, x, y).backward()
        opt.step()

    return step


def _median(fns: dict[str, Callable[[], None]], rounds: int, inner: int, sync: Callable[[], None]) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            sync()
            start = _CLOCK()
            for _ in range(inner):
                fn()
            sync()
            times[k].append((_CLOCK() - start) / inner)
    return {k: statistics.median(v) for k, v in times.items()}


def _graph_breaks() -> int:
    from torch._dynamo.utils import counters

    return sum(counters["graph_break"].values())


def run_case(case: Case, rounds: int, compiled: bool, device: str = "cpu") -> dict[str, float | int]:
    torch.manual_seed(0)
    original = case.build().to(device).train()
    converted = copy.deepcopy(original)
    adactify(converted)
    units = len(adact_units(converted))
    if units == 0:
        raise SystemExit(f"{case.name}: adactify converted nothing; the comparison would mean nothing")
    x, y = (t.to(device) for t in case.batch())
    fns = {"original": _step(original, case, x, y), "adact": _step(converted, case, x, y)}
    out: dict[str, float | int] = {"units": units}
    if compiled:
        for name, model in (("original", original), ("adact", converted)):
            torch._dynamo.reset()
            before = _graph_breaks()
            fns[f"{name}_compiled"] = _step(torch.compile(model), case, x, y)
            for _ in range(3):  # compiles here
                fns[f"{name}_compiled"]()
            out[f"{name}_graph_breaks"] = _graph_breaks() - before
    for fn in fns.values():
        for _ in range(2):
            fn()
    out.update(_median(fns, rounds, 1, torch.cuda.synchronize if device == "cuda" else (lambda: None)))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads (default: all)")
    parser.add_argument("--cpu-time", action="store_true", help="time with the process's CPU time (use --threads 1)")
    parser.add_argument("--compile", action="store_true", help="also time both models under torch.compile")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default: 7)")
    parser.add_argument("--models", nargs="+", default=None, metavar="NAME", help="a subset of the models")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default: cpu")
    args = parser.parse_args(argv)
    global _CLOCK
    if args.cpu_time:
        _CLOCK = time.process_time
    torch.set_num_threads(args.threads)
    cases = _cases()
    unknown = sorted(set(args.models or []) - set(cases))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; valid: {', '.join(cases)}")
    print("# AdAct in whole models: one training step (forward, loss, backward, AdamW step)")
    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    gpu = f"; device: {torch.cuda.get_device_name(0)}" if args.device == "cuda" else ""
    print(f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores{gpu}, torch threads "
          f"{args.threads}; clock: {'process CPU time' if args.cpu_time else 'wall clock'}; torch {torch.__version__}")
    print()
    head = "| model | units | original | adactified | ratio |"
    if args.compile:
        head += " original, compiled | adactified, compiled | ratio | graph breaks (original / adactified) |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for key in args.models or list(cases):
        case = cases[key]
        if isinstance(case, str):
            print(f"| {key} | {case} |")
            continue
        t = run_case(case, args.rounds, args.compile, args.device)
        row = (f"| {case.name} | {t['units']} | {t['original'] * 1e3:.1f} ms | {t['adact'] * 1e3:.1f} ms | "
               f"x{t['adact'] / t['original']:.2f} |")
        if args.compile:
            row += (f" {t['original_compiled'] * 1e3:.1f} ms | {t['adact_compiled'] * 1e3:.1f} ms | "
                    f"x{t['adact_compiled'] / t['original_compiled']:.2f} | "
                    f"{t['original_graph_breaks']} / {t['adact_graph_breaks']} |")
        print(row, flush=True)
    print(f"load average (1 min) at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
