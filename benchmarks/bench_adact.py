"""Benchmark of the fused AdAct against SiLU, the naive reference sum, and a ReLU ConvNet.

Prints, in one run, the four ratios of GitHub issue #4 (targets in brackets):

1. AdAct fwd+bwd time / SiLU fwd+bwd time, 64x64x32x32 fp32, CPU         [<= 2.0]
2. bytes saved for backward by one AdAct unit / input bytes (training)    [<= 1.25]
3. ConvNet-AdAct training images/s / ConvNet-ReLU images/s (batch 64)     [>= 0.8]
4. on CUDA, AdAct fwd+bwd / SiLU fwd+bwd at 64M elements, fp32 and bf16   [<= 1.3]

with the naive reference (``AdAct(fused=False)``) side by side. Timings are medians over
interleaved rounds (the candidates alternate, so background load hits them alike), after warm-up
(which includes compiling the fused kernels). This is a benchmark, not a test: nothing here
asserts speed.

Usage::

    python benchmarks/bench_adact.py                    # full run (about a minute on 2 cores)
    python benchmarks/bench_adact.py --quick            # fewer rounds
    python benchmarks/bench_adact.py --glibc-defaults   # let glibc unmap freed buffers (see below)
    python benchmarks/bench_adact.py --isa all          # one table row per ISA level this CPU runs
    python benchmarks/bench_adact.py --isa x86-64-v3 x86-64
    python benchmarks/bench_adact.py --sweep --cpu-time --threads 1   # 1K..16M elements, one unit
    python benchmarks/bench_adact.py --sweep --pool gelu,relu,silu,relu2 --cpu-time --threads 1  # a custom pool vs GELU

ISA levels (``--isa``): each level runs in a process of its own in which the native kernels are
built for that level (``ADACT_NATIVE_ISA``) and torch's own kernels and Inductor's generated code
are held to the matching level too (``ATEN_CPU_CAPABILITY``: ``avx512``, ``avx2`` or ``default``),
so that SiLU and the Inductor path are what a CPU of that level would run. Each row times, in
interleaved rounds, SiLU, the native kernels and the Inductor kernels (training and eval) and the
reference sum (training).

Large buffers: with its default settings glibc returns a freed 16 MB tensor to the OS or keeps
it, depending on the history of allocations (its mmap threshold adapts), and a returned one is
page-faulted back in at the next allocation, at a cost of the order of a whole SiLU pass. In a
microbenchmark that alternates candidates this cost lands on one candidate or another from run to
run (measured AdAct/SiLU ratios of 1.1 and 3.9 for the same kernels), so by default the benchmark
re-executes itself with ``GLIBC_TUNABLES`` set to keep freed buffers for reuse, as a training loop
does in steady state: the timings are then those of the kernels. ``--glibc-defaults`` skips that.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adact import AdAct, ConvNet
from adact.fused import dispatch, fused_backend, native
from adact.fused.autograd import apply_fused
from adact.fused.keys import dispatch_key

__all__ = ["main"]

_REUSE = "glibc.malloc.mmap_threshold=2000000000:glibc.malloc.trim_threshold=4000000000"


#: What the timings read: wall-clock time (the default), or this process's CPU time (--cpu-time).
_CLOCK: Callable[[], float] = time.perf_counter


def _median_times(fns: dict[str, Callable[[], object]], rounds: int, inner: int, sync: Callable[[], None]) -> dict[str, float]:
    """Median seconds per call of each function, measured in interleaved rounds."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            sync()
            start = _CLOCK()
            for _ in range(inner):
                fn()
            sync()
            times[name].append((_CLOCK() - start) / inner)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _fwd_bwd(module: nn.Module, x: Tensor, g: Tensor) -> Callable[[], object]:
    inputs = [x, *module.parameters()]

    def step() -> object:
        return torch.autograd.grad(module(x), inputs, g)

    return step


def unit_speed(device: str, shape: tuple[int, ...], dtype: torch.dtype, rounds: int, inner: int) -> dict[str, float]:
    """Seconds per fwd+bwd of SiLU, the fused AdAct (train and eval) and the reference (train)."""
    x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
    g = torch.randn_like(x)
    silu = _fwd_bwd(nn.SiLU(), x, g)
    groups = [
        {"silu": silu, "fused_train": _fwd_bwd(AdAct().to(device).train(), x, g),
         "fused_eval": _fwd_bwd(AdAct().to(device).eval(), x, g)},
        # The reference keeps ~15 input-sized tensors alive: interleaved with the others, its
        # frees and re-allocations would make glibc unmap and page-fault buffers in their turns
        # too. It is timed in a group of its own, against SiLU again.
        {"silu": silu, "reference_train": _fwd_bwd(AdAct(fused=False).to(device).train(), x, g)},
    ]  # fmt: skip
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    out: dict[str, float] = {}
    for fns in groups:
        for fn in fns.values():  # warm-up: compiles the fused kernels, fills allocator caches
            for _ in range(3):
                fn()
        times = _median_times(fns, rounds, inner, sync)
        if "silu" in out:  # reference / SiLU of its own group, scaled to the first group's SiLU
            times = {k: v * out["silu"] / times["silu"] for k, v in times.items() if k != "silu"}
        out.update(times)
    return out


class _CtypesRoute(nn.Module):
    """The default unit in training mode called the way it was before the native torch operator.

    A Python ``autograd.Function`` around ctypes calls of the same kernels (the route that still
    runs where the operator cannot be built): the per-call cost the operator removes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.unit = AdAct().train()

    def forward(self, x: Tensor) -> Tensor:
        u = self.unit
        key = dispatch_key(x, u.logits, u.prelu_weight, u.candidates, True)
        seed = torch.randint(0, 2**31, (), dtype=torch.int32, device=x.device)
        return apply_fused(x, u.scaled_logits(), u.prelu_weight, seed, u.candidates, True, key)


#: ``--sweep``: the sizes of a unit's input, 1K to 16M elements (x4 each step).
SWEEP_SIZES: tuple[int, ...] = tuple(1024 * 4**k for k in range(8))
#: Above this the reference sum (about 15 input-sized tensors alive) is not timed: seconds per call.
SWEEP_REFERENCE_MAX = 4 * 1024 * 1024


def run_sweep(rounds: int, device: str = "cpu", dtype: torch.dtype = torch.float32) -> None:
    """fwd+bwd of one unit at every size of :data:`SWEEP_SIZES`: SiLU, AdAct (training, eval), the reference.

    A fixed cost per call dominates small inputs, so each size runs enough calls per round for
    about 4M elements (at least one): every row takes a comparable time, and the timer's
    resolution never matters.
    """
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    ctypes_route = device == "cpu" and dtype == torch.float32 and dispatch.explain("cpu", dtype)[0] == "native"
    print("| elements | SiLU | AdAct, training | AdAct, eval | reference sum, training | training, old ctypes route |")
    print("|---|---|---|---|---|---|")
    for n in SWEEP_SIZES:
        inner = max(1, min(1000, SWEEP_SIZES[-3] // n))
        x = torch.randn(n, device=device, dtype=dtype, requires_grad=True)
        g = torch.randn_like(x)
        silu = _fwd_bwd(nn.SiLU(), x, g)
        groups = [{"silu": silu, "fused_train": _fwd_bwd(AdAct().to(device).train(), x, g),
                   "fused_eval": _fwd_bwd(AdAct().to(device).eval(), x, g)}]
        if ctypes_route:
            groups[0]["ctypes_train"] = _fwd_bwd(_CtypesRoute(), x, g)
        if n <= SWEEP_REFERENCE_MAX:  # in a group of its own, against SiLU again (see unit_speed)
            groups.append({"silu": silu, "reference_train": _fwd_bwd(AdAct(fused=False).to(device).train(), x, g)})
        t: dict[str, float] = {}
        for fns in groups:
            for fn in fns.values():
                for _ in range(3):
                    fn()
            times = _median_times(fns, rounds, inner, sync)
            if "silu" in t:
                times = {k: v * t["silu"] / times["silu"] for k, v in times.items() if k != "silu"}
            t.update(times)

        def cell(name: str) -> str:
            return f"{t[name] * 1e6:.0f} us, x{t[name] / t['silu']:.2f}" if name in t else "not timed"

        label = f"{n // 1024}K" if n < 1024 * 1024 else f"{n // (1024 * 1024)}M"
        print(f"| {label} | {t['silu'] * 1e6:.0f} us | {cell('fused_train')} | {cell('fused_eval')} | "
              f"{cell('reference_train')} | {cell('ctypes_train')} |", flush=True)


def run_pool_sweep(pool: tuple[str, ...], rounds: int, device: str = "cpu", dtype: torch.dtype = torch.float32) -> None:
    """``--sweep --pool``: fwd+bwd (training) of AdAct(pool) by size, next to GELU alone, SiLU alone and the reference.

    Same method as :func:`run_sweep` (interleaved rounds, medians, warm-up that compiles the
    kernels); the ratios are to GELU alone. The backend the pool runs on is printed first.
    """
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    backend, why = dispatch.explain(device, dtype, pool, training=True)
    print(f"pool {','.join(pool)}: backend {backend} ({why})")
    print()
    print(f"| elements | GELU | SiLU | AdAct({','.join(pool)}), training | reference sum, training |")
    print("|---|---|---|---|---|")
    for n in SWEEP_SIZES:
        inner = max(1, min(1000, SWEEP_SIZES[-3] // n))
        x = torch.randn(n, device=device, dtype=dtype, requires_grad=True)
        g = torch.randn_like(x)
        gelu = _fwd_bwd(nn.GELU(), x, g)
        groups = [{"gelu": gelu, "silu": _fwd_bwd(nn.SiLU(), x, g),
                   "fused_train": _fwd_bwd(AdAct(candidates=pool).to(device).train(), x, g)}]
        if n <= SWEEP_REFERENCE_MAX:  # in a group of its own, against GELU again (see unit_speed)
            groups.append({"gelu": gelu,
                           "reference_train": _fwd_bwd(AdAct(candidates=pool, fused=False).to(device).train(), x, g)})
        t: dict[str, float] = {}
        for fns in groups:
            for fn in fns.values():
                for _ in range(3):
                    fn()
            times = _median_times(fns, rounds, inner, sync)
            if "gelu" in t:
                times = {k: v * t["gelu"] / times["gelu"] for k, v in times.items() if k != "gelu"}
            t.update(times)

        def cell(name: str) -> str:
            return f"{t[name] * 1e6:.0f} us, x{t[name] / t['gelu']:.2f}" if name in t else "not timed"

        label = f"{n // 1024}K" if n < 1024 * 1024 else f"{n // (1024 * 1024)}M"
        print(f"| {label} | {t['gelu'] * 1e6:.0f} us | {cell('silu')} | {cell('fused_train')} | "
              f"{cell('reference_train')} |", flush=True)


#: torch's (and Inductor's) kernel level for each native ISA level: what a CPU of that level runs.
_ATEN_CAPABILITY = {"x86-64-v4": "avx512", "x86-64-v3": "avx2", "avx-fma": "default", "x86-64-v2": "default",
                    "x86-64": "default"}  # fmt: skip


def _with_backend(backend: str, fn: Callable[[], object]) -> Callable[[], object]:
    def call() -> object:
        os.environ[dispatch.ENV_VAR] = backend  # read at each call; a new value is a new cached decision
        return fn()

    return call


def isa_row(shape: tuple[int, ...], rounds: int, inner: int) -> dict[str, float]:
    """Seconds per fwd+bwd at this process's ISA level: SiLU, native, Inductor, reference."""
    x = torch.randn(shape, requires_grad=True)
    g = torch.randn_like(x)
    silu = _fwd_bwd(nn.SiLU(), x, g)
    fused = {f"{b}_{mode}": _with_backend(b, _fwd_bwd(AdAct().train(mode == "train"), x, g))
             for b in ("native", "compile") for mode in ("train", "eval")}  # fmt: skip
    groups = [{"silu": silu, **fused},
              {"silu": silu, "reference_train": _with_backend("off", _fwd_bwd(AdAct(fused=False).train(), x, g))}]
    out: dict[str, float] = {}
    for fns in groups:
        for name, fn in list(fns.items()):
            try:
                for _ in range(3):
                    fn()
            except Exception as err:  # noqa: BLE001 - e.g. Inductor cannot compile at this level: say so
                print(f"{name} failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}", file=sys.stderr)
                out[name] = float("nan")
                del fns[name]
        times = _median_times(fns, rounds, inner, lambda: None)
        if "silu" in out:
            times = {k: v * out["silu"] / times["silu"] for k, v in times.items() if k != "silu"}
        out.update(times)
    return out


def run_isa_levels(levels: list[str], rounds: int, threads: int, cpu_time: bool) -> None:
    """One child process per level (the ISA settings are read at process start); prints a table."""
    runnable = native.runnable_levels()
    if levels == ["all"]:
        levels = [level for level in reversed(list(native.ISA_LEVELS)) if level in runnable and level != "native"]
    cols = ("native_train", "native_eval", "compile_train", "compile_eval", "reference_train")
    print("| level | lanes | SiLU ms | native train | native eval | Inductor train | Inductor eval | reference train |")
    print("|---|---|---|---|---|---|---|---|")
    for level in levels:
        if level not in runnable:
            print(f"| {level} | {native.lanes_for(level)} | not runnable on this CPU (build only) |||||| ")
            continue
        env = dict(os.environ, ADACT_NATIVE_ISA=level)
        scratch = tempfile.mkdtemp(prefix=f"adact-bench-{level}-")
        if level in _ATEN_CAPABILITY:
            env["ATEN_CPU_CAPABILITY"] = _ATEN_CAPABILITY[level]
            # Inductor's on-disk cache does not key its code by ATEN_CPU_CAPABILITY (torch 2.14): code
            # generated for AVX2 and then reused at AVX-512 corrupts the heap. Each level gets a
            # cache of its own, so none leaks into another level or into the user's cache.
            env["TORCHINDUCTOR_CACHE_DIR"] = scratch
        cmd = [sys.executable, __file__, "--isa-child", "--threads", str(threads), "--rounds", str(rounds),
               *(["--cpu-time"] if cpu_time else [])]  # fmt: skip
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if proc.returncode != 0:
            print(f"| {level} | {native.lanes_for(level)} | failed: {proc.stderr.strip().splitlines()[-1]} |||||| ")
            continue
        t = {k: float(v) for k, v in (item.split("=") for item in proc.stdout.split())}
        cells = " | ".join("failed" if t[c] != t[c] else f"{t[c] * 1e3:.1f} ms x{t[c] / t['silu']:.2f}" for c in cols)
        print(f"| {level} | {native.lanes_for(level)} | {t['silu'] * 1e3:.1f} | {cells} |", flush=True)
        for line in proc.stderr.splitlines():
            if " failed: " in line:
                print(f"  ({level}) {line}")


def saved_bytes_ratios(fused: bool, training: bool = True) -> tuple[float, float]:
    """Bytes kept for backward by one AdAct unit over the input's bytes: (distinct storages, all).

    The first counts each storage once (memory actually held: x saved by 7 ops is one x); the
    second adds up every saved tensor, as a plain ``saved_tensors_hooks`` tally does.
    """
    x = torch.randn(64, 64, 32, 32, requires_grad=True)
    unit = AdAct(fused=fused).train(training)
    storages: dict[int, int] = {}
    every = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal every
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        every += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = unit(x)
    del y
    input_bytes = x.numel() * x.element_size()
    return sum(storages.values()) / input_bytes, every / input_bytes


def convnet_images_per_s(rounds: int, steps: int, with_reference: bool) -> dict[str, float]:
    """Training images/s of ConvNet(3, 10, 32) with ReLU, fused AdAct and (optionally) reference AdAct."""
    batch = 64
    data = torch.randn(batch, 3, 32, 32)
    target = torch.randint(0, 10, (batch,))
    models = {
        "relu": ConvNet(3, 10, 32, activation="relu"),
        "adact_fused": ConvNet(3, 10, 32, activation="adact"),
    }
    if with_reference:
        models["adact_reference"] = ConvNet(3, 10, 32, activation="adact", adact_kwargs={"fused": False})
    steps_fns = {}
    for name, model in models.items():
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def step(model: nn.Module = model, opt: torch.optim.Optimizer = opt) -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(data), target).backward()
            opt.step()

        for _ in range(3):  # warm-up (and compile)
            step()
        steps_fns[name] = step
    seconds = _median_times(steps_fns, rounds, steps, lambda: None)
    return {name: batch / s for name, s in seconds.items()}


def _load() -> str:
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "n/a"


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (noisier)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    parser.add_argument("--no-reference-convnet", action="store_true", help="skip the slow naive ConvNet")
    parser.add_argument(
        "--glibc-defaults",
        action="store_true",
        help=f"keep glibc's allocator defaults (by default the benchmark re-runs itself with GLIBC_TUNABLES={_REUSE})",
    )
    parser.add_argument("--reuse-memory", action="store_true", help=argparse.SUPPRESS)  # the default; old flag
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time with the process's CPU time instead of the wall clock: with --threads 1 it is blind "
        "to other processes competing for the cores (it still counts page faults as system time)",
    )
    parser.add_argument("--isa", nargs="+", metavar="LEVEL", default=None,
                        help=f"time the unit at these ISA levels ({', '.join(native.ISA_LEVELS)}, or 'all' that "
                             "this CPU runs), one table row each, instead of the full benchmark")
    parser.add_argument("--sweep", action="store_true",
                        help="time one unit's fwd+bwd at 1K to 16M elements (SiLU, AdAct training and eval, the "
                             "reference sum) instead of the full benchmark")
    parser.add_argument("--pool", default=None, metavar="NAMES",
                        help="with --sweep: time AdAct with this comma-separated pool (e.g. gelu,relu,silu,relu2) "
                             "against GELU alone, SiLU alone and the reference sum")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="--sweep on this device (default: cpu)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="--sweep in this dtype (default: float32)")
    parser.add_argument("--rounds", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--isa-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.pool and not args.sweep:
        parser.error("--pool goes with --sweep")
    if not args.glibc_defaults and os.environ.get("GLIBC_TUNABLES") != _REUSE:
        # glibc reads its tunables at process start: re-execute with them set.
        env = dict(os.environ, GLIBC_TUNABLES=_REUSE)
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    global _CLOCK
    if args.cpu_time:
        _CLOCK = time.process_time
    unit_rounds, conv_rounds = (5, 3) if args.quick else (15, 7)
    if args.isa_child:
        t = isa_row((64, 64, 32, 32), args.rounds or unit_rounds, 3)
        print(" ".join(f"{k}={v!r}" for k, v in t.items()))
        return

    print("# AdAct fused-kernel benchmark")
    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"cpu: {_cpu_model()} ({os.cpu_count()} logical cores visible), torch threads: {args.threads}")
    print(f"clock: {'process CPU time' if args.cpu_time else 'wall clock'}")
    print(f"torch {torch.__version__}, python {platform.python_version()}, ADACT_FUSED={fused_backend()}")
    print(f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '(unset: glibc defaults)')}")
    print(f"load average (1 min) at start: {_load()}")
    print()
    if args.sweep:
        where = (torch.cuda.get_device_name(0) if args.device == "cuda"
                 else f"CPU, ADACT_NATIVE_ISA={native.selected_isa()} (this CPU: {native.detect_isa()})")
        if args.pool:
            pool = tuple(name.strip() for name in args.pool.split(",") if name.strip())
            print(f"## fwd+bwd of one unit by input size, {args.dtype}, {where}; median per call, x GELU")
            run_pool_sweep(pool, args.rounds or unit_rounds, args.device, getattr(torch, args.dtype))
        else:
            print(f"## fwd+bwd of one unit by input size, {args.dtype}, {where}; median per call, x SiLU")
            run_sweep(args.rounds or unit_rounds, args.device, getattr(torch, args.dtype))
        print(f"load average (1 min) at end: {_load()}")
        return
    if args.isa:
        print(f"## fwd+bwd per ISA level, 64x64x32x32 fp32 (median ms, x SiLU at the same level); this CPU: {native.detect_isa()}")
        run_isa_levels(args.isa, unit_rounds, args.threads, args.cpu_time)
        print(f"load average (1 min) at end: {_load()}")
        return

    t = unit_speed("cpu", (64, 64, 32, 32), torch.float32, unit_rounds, 3)
    print("## 1. one unit, fwd+bwd, 64x64x32x32 fp32, CPU (ms, median)")
    for name, s in t.items():
        print(f"  {name:16s} {s * 1e3:9.2f} ms   x{s / t['silu']:.2f} SiLU")
    print()

    (fused_bytes, fused_all), (ref_bytes, ref_all) = saved_bytes_ratios(True), saved_bytes_ratios(False)
    eval_bytes, _ = saved_bytes_ratios(True, training=False)
    print("## 2. bytes saved for backward / input bytes (one unit, 64x64x32x32 fp32)")
    print(f"  distinct storages: fused train {fused_bytes:.4f}   fused eval {eval_bytes:.4f}   reference train {ref_bytes:.2f}")
    print(f"  every saved tensor: fused train {fused_all:.4f}   reference train {ref_all:.2f}")
    print()

    ips = convnet_images_per_s(conv_rounds, 3, with_reference=not args.no_reference_convnet)
    print("## 3. ConvNet(3, 10, 32) training, batch 64, AdamW (images/s, median)")
    for name, v in ips.items():
        print(f"  {name:16s} {v:9.1f} img/s   x{v / ips['relu']:.2f} ReLU")
    print()

    print("## 4. CUDA, fwd+bwd at 64M elements")
    cuda_rows: list[tuple[str, str]] = []
    if torch.cuda.is_available():
        for dtype in (torch.float32, torch.bfloat16):
            tc = unit_speed("cuda", (64 * 1024 * 1024,), dtype, unit_rounds, 5)
            name = str(dtype).split(".")[-1]
            cuda_rows.append((name, f"x{tc['fused_train'] / tc['silu']:.2f}"))
            print(f"  {name}: fused train x{tc['fused_train'] / tc['silu']:.2f} SiLU, "
                  f"eval x{tc['fused_eval'] / tc['silu']:.2f}, reference x{tc['reference_train'] / tc['silu']:.2f}")
    else:
        print("  not measured (no CUDA device)")
    print()

    print("## summary (target)")
    print(f"  AdAct/SiLU fwd+bwd, CPU, training      x{t['fused_train'] / t['silu']:.2f}   (<= 2.0; naive x{t['reference_train'] / t['silu']:.1f})")
    print(f"  AdAct/SiLU fwd+bwd, CPU, eval          x{t['fused_eval'] / t['silu']:.2f}")
    print(f"  saved bytes / input bytes, training    {fused_bytes:.4f}   (<= 1.25; naive {ref_bytes:.2f} "
          f"distinct, {ref_all:.2f} counting every saved tensor)")
    naive_ips = f"; naive x{ips['adact_reference'] / ips['relu']:.2f}" if "adact_reference" in ips else ""
    print(f"  ConvNet AdAct/ReLU images/s            x{ips['adact_fused'] / ips['relu']:.2f}   (>= 0.8{naive_ips})")
    cuda = ", ".join(f"{n} {r}" for n, r in cuda_rows) if cuda_rows else "not measured (no CUDA device)"
    print(f"  CUDA AdAct/SiLU fwd+bwd, 64M elements  {cuda}   (<= 1.3)")
    print(f"load average (1 min) at end: {_load()}")


if __name__ == "__main__":
    main()
