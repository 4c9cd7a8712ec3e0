"""``adact info`` (also ``python -m adact.info``): what a bug report about speed or a kernel needs.

Modelled on ``python -m torch.utils.collect_env`` and ``python -m xformers.info``: versions, the
CPU and its instruction-set level, the native build (flags, cache path, or why it failed), the
fused backend each (device, dtype) gets and why (and a pool outside the paper's seven), and
auto's calibration timings.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

__all__ = ["collect", "main"]

#: The pool of the "custom pool" rows: one outside the paper's seven.
_CUSTOM_POOL: tuple[str, ...] = ("gelu", "relu", "silu", "relu2")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "CPU part")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compiler_version() -> str:
    from adact.fused import native

    try:
        cxx = native._compiler()
    except native.NativeBuildError as err:
        return str(err)
    try:
        first = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout.splitlines()
    except (OSError, subprocess.SubprocessError) as err:
        return f"{cxx} ({err})"
    return first[0] if first else cxx


def collect() -> list[tuple[str, str]]:
    """``(label, value)`` rows, in the order :func:`main` prints them.

    This builds the native kernels and runs auto's calibration if they have not run on this
    machine yet (seconds, once).
    """
    import torch

    import adact
    from adact.fused import backends, calibration, dispatch, keys, native, native_op

    rows = [
        ("adact", adact.__version__),
        ("torch", f"{torch.__version__} (CUDA build: {torch.version.cuda or 'none'})"),
        ("python", f"{platform.python_version()} on {platform.system()} {platform.machine()}"),
        ("CPU", f"{_cpu_model()}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}"),
        ("ISA level", f"{native.detect_isa()} ({native.lanes_for('native')} float32 lanes per vector)"),
        ("runnable levels", ", ".join(level for level in native.runnable_levels() if level != "native")),
        ("CUDA device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"),
        ("C++ compiler", _compiler_version()),
        (dispatch.ENV_VAR, os.environ.get(dispatch.ENV_VAR, "") or "auto (unset)"),
        (native.ISA_ENV_VAR, os.environ.get(native.ISA_ENV_VAR, "") or "native (unset)"),
        ("kernel cache", str(native._cache_dir())),
    ]
    env = keys.current_env()
    try:
        kernels = backends.NATIVE.load(env.isa)  # the dispatcher's own build attempt, shared
        rows.append(("native build", f"ok: {' '.join(kernels.flags)}"))
        rows.append(("native library", str(kernels.path)))
        try:
            rows.append(("native operator", f"ok: torch.ops.adact_native ({native_op.native_op().path})"))
        except native.NativeBuildError as err:
            rows.append(("native operator", f"FAILED, ctypes calls instead: {str(err).splitlines()[0]}"))
        if env.fused == "auto":
            cal = calibration.calibrate(kernels)
            compiled = "failed" if cal.compiled_ms is None else f"{cal.compiled_ms:.3f} ms"
            rows.append((
                "calibration",
                f"native {cal.native_ms:.3f} ms, Inductor {compiled} (fwd+bwd, {cal.elements} elements, "
                f"{cal.threads} threads): {cal.winner}",
            ))  # fmt: skip
    except native.NativeBuildError as err:
        rows.append(("native build", f"FAILED: {str(err).splitlines()[0]}"))
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:  # the default unit in training mode: what choose() decides for it
        for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            backend, why = dispatch.explain(device, dtype)
            rows.append((f"backend {device} {str(dtype).split('.')[-1]}", f"{backend}: {why}"))
        # A pool outside the paper's seven (the generic kernels), float32 in training mode.
        backend, why = dispatch.explain(device, torch.float32, _CUSTOM_POOL)
        rows.append((f"custom pool {device}", f"{backend}: {why} (pool {','.join(_CUSTOM_POOL)}, float32)"))
    return rows


def main() -> int:
    """Print :func:`collect`'s rows; returns the exit status."""
    rows = collect()
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
