"""The hand-vectorised float32 CPU kernels (``csrc/adact_native.cpp``): building, caching and calling them.

Same math and layouts as :func:`adact.fused.inductor.kernel_forward` / ``kernel_backward`` (to float
rounding: the exponential and reciprocal are computed differently) and the same RReLU noise, bit
for bit. The C++ source ships with the package; at first use it is compiled with the system's
C++ compiler (``$CXX``, else ``c++``/``g++``/``clang++``) for this CPU (``-march=native``) and
OpenMP, into ``$ADACT_CACHE_DIR`` (default ``~/.cache/adact``), keyed by the source, the flags and
the CPU, so later processes load it in milliseconds. It is called through :mod:`ctypes`, which
releases the GIL for the call; threads: ``torch.get_num_threads()``.

:func:`native_kernels` raises :class:`NativeBuildError` when no compiler works; under
``ADACT_FUSED=auto`` :mod:`adact.fused.dispatch` then warns once and uses the Inductor-compiled
kernels.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from adact.errors import UserError
from adact.fused import inductor
from adact.fused.inductor import KernelFlags

__all__ = [
    "CACHE_ENV_VAR", "ISA_ENV_VAR", "ISA_LEVELS", "NativeBuildError", "NativeKernels", "build_native", "detect_isa", "flag_bits",
    "isa_flags", "lanes_for", "load_native", "native_kernels", "runnable_levels", "selected_isa",
]  # fmt: skip

CACHE_ENV_VAR = "ADACT_CACHE_DIR"
ISA_ENV_VAR = "ADACT_NATIVE_ISA"
_SOURCE = Path(__file__).with_name("csrc") / "adact_native.cpp"
_FLAGS = ("-O3", "-ffp-contract=fast", "-shared", "-fPIC", "-std=c++17")
# Tried in order: compilers without OpenMP (Apple's clang) or without -march=native (some ARM
# gccs spell it -mcpu) still get a kernel, single-threaded or for the baseline ISA.
_ATTEMPTS = (("-march=native", "-fopenmp"), ("-march=native",), ("-fopenmp",), ())

#: Instruction-set levels the kernels can be built for, and the compiler flags of each. The C++
#: source sizes its vectors to the target (16 float lanes with AVX-512, 8 with AVX, 4 with SSE and
#: NEON), so every level runs whole-register code. "native" is whatever this CPU has.
ISA_LEVELS: dict[str, tuple[str, ...]] = {
    "native": ("-march=native",),
    "x86-64-v4": ("-march=x86-64-v4",),  # AVX-512 (F, BW, CD, DQ, VL)
    "x86-64-v3": ("-march=x86-64-v3",),  # AVX2, FMA, BMI: most x86 CPUs since 2013-2015
    "avx-fma": ("-mavx", "-mfma"),  # AVX and FMA without AVX2: 256-bit floats, 128-bit integers
    "x86-64-v2": ("-march=x86-64-v2",),  # SSE4.2, POPCNT
    "x86-64": ("-march=x86-64",),  # SSE2: every x86-64 CPU
    "armv8-a": ("-march=armv8-a",),  # aarch64 with NEON (every aarch64 CPU)
}
# /proc/cpuinfo flags each x86 level needs (Linux spells SSE3 "pni" and LZCNT "abm").
_X86_V2 = frozenset({"cx16", "popcnt", "pni", "ssse3", "sse4_1", "sse4_2"})  # pni: SSE3
_X86_V3 = _X86_V2 | {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "movbe", "abm"}
_NEEDS: dict[str, frozenset[str]] = {
    "x86-64": frozenset(),
    "x86-64-v2": _X86_V2,
    "avx-fma": frozenset({"avx", "fma"}),
    "x86-64-v3": _X86_V3,
    "x86-64-v4": _X86_V3 | {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"},
}
_FLAG_BITS = {"linear": 1, "neg_linear": 2, "noisy": 4, "elu": 8, "silu": 16, "mish": 32}
_P, _I64, _I32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32


class NativeBuildError(RuntimeError):
    """The native kernels could not be compiled or loaded (the message has the compiler's output)."""


def _cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV_VAR)
    return Path(root) if root else Path.home() / ".cache" / "adact"


def _compiler() -> str:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return name
    raise NativeBuildError("no C++ compiler found (set CXX, or install g++ or clang++)")


def _cpu_id() -> str:
    # -march=native code must not be loaded on another CPU sharing the cache (e.g. a home
    # directory on NFS): the CPU's model and feature flags go into the cache key.
    try:
        info = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in info.splitlines() if ln.startswith(("model name", "flags", "Features"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def _cpu_flags() -> frozenset[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def runnable_levels() -> list[str]:
    """The levels of :data:`ISA_LEVELS` this machine's CPU can run, ``"native"`` first."""
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        flags = _cpu_flags()
        return ["native", *(level for level, needs in _NEEDS.items() if needs <= flags)]
    if machine in ("aarch64", "arm64"):
        return ["native", "armv8-a"]
    return ["native"]


def detect_isa() -> str:
    """The most capable named level this CPU runs, e.g. ``"x86-64-v3"`` (``platform.machine()`` if none)."""
    named = [level for level in runnable_levels() if level != "native"]
    order = list(ISA_LEVELS)
    return min(named, key=order.index) if named else platform.machine()


def isa_flags(isa: str) -> tuple[str, ...]:
    """The compiler flags of ``isa`` (a key of :data:`ISA_LEVELS`)."""
    if isa not in ISA_LEVELS:
        raise UserError(f"unknown ISA level {isa!r}; valid: {', '.join(ISA_LEVELS)}")
    return ISA_LEVELS[isa]


def lanes_for(isa: str) -> int:
    """float32 lanes per vector the kernels use at ``isa`` (as the C++ source picks them)."""
    level = detect_isa() if isa == "native" else isa
    return {"x86-64-v4": 16, "x86-64-v3": 8, "avx-fma": 8}.get(level, 4)


def _attempts(isa: str) -> tuple[tuple[str, ...], ...]:
    if isa == "native":
        return _ATTEMPTS
    flags = isa_flags(isa)
    return ((*flags, "-fopenmp"), flags)


def build_native(
    cache_dir: Path | None = None, attempts: Sequence[tuple[str, ...]] | None = None, isa: str = "native"
) -> Path:
    """Compile ``csrc/adact_native.cpp`` (or find it compiled) and return the shared library's path.

    Args:
        cache_dir: where the library goes (default ``$ADACT_CACHE_DIR`` or ``~/.cache/adact``).
        attempts: extra compiler flags to try, in order, until one compiles. Default: those of
            ``isa``; for ``"native"``, ``-march=native`` with OpenMP, then without OpenMP
            (single-threaded), then OpenMP for the baseline ISA, then neither.
        isa: a key of :data:`ISA_LEVELS`, for the default ``attempts``. Default: ``"native"``.

    Raises:
        NativeBuildError: no compiler, or every attempt failed (the message has their output).
    """
    return _build(cache_dir, _attempts(isa) if attempts is None else attempts)[0]


def compile_cached(
    prefix: str, cache_dir: Path | None, attempts: Sequence[tuple[bytes, Callable[[str], list[str]]]], what: str,
    timeout: float,
) -> tuple[Path, int]:
    """Find or build a shared library in the cache: the first of ``attempts`` that compiles wins.

    Each attempt is ``(key, argv)``: ``key`` names the file (``{prefix}_{sha256(key)[:20]}.so``,
    so a build is reused exactly when everything in its key is the same) and ``argv(out)`` is the
    compiler's command line writing to ``out``. Returns the library's path and the attempt's index.

    Raises:
        NativeBuildError: the cache cannot be written, or every attempt failed (with the compiler's output).
    """
    cache = cache_dir if cache_dir is not None else _cache_dir()
    errors = []
    for index, (key, argv) in enumerate(attempts):
        target = cache / f"{prefix}_{hashlib.sha256(key).hexdigest()[:20]}.so"
        if target.exists():
            return target, index
        try:
            cache.mkdir(parents=True, exist_ok=True)
            # Compile to a private name, then rename: concurrent processes never load a partial file.
            fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
            os.close(fd)
        except OSError as err:
            raise NativeBuildError(f"cannot write the kernel cache {cache} ({err}); set {CACHE_ENV_VAR}") from err
        cmd = argv(tmp)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            if proc.returncode == 0:
                os.replace(tmp, target)
                return target, index
            errors.append(f"$ {' '.join(cmd)}\n{proc.stderr.strip()[-3000:]}")
        except (OSError, subprocess.SubprocessError) as err:
            errors.append(f"$ {' '.join(cmd)}\n{err}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise NativeBuildError(f"compiling {what} failed:\n" + "\n\n".join(errors))


def _build(cache_dir: Path | None, attempts: Sequence[tuple[str, ...]]) -> tuple[Path, tuple[str, ...]]:
    """The library's path and the flags it was built with."""
    cxx = _compiler()
    source = _SOURCE.read_bytes()
    tries = [(*_FLAGS, *extra) for extra in attempts]

    def argv(flags: tuple[str, ...]) -> Callable[[str], list[str]]:
        return lambda out: [cxx, *flags, "-o", out, str(_SOURCE)]

    keyed = [(b"\0".join([source, cxx.encode(), " ".join(f).encode(), _cpu_id().encode()]), argv(f)) for f in tries]
    path, index = compile_cached("adact_native", cache_dir, keyed, "the native AdAct kernels", timeout=300)
    return path, tries[index]


def flag_bits(flags: KernelFlags) -> int:
    """The kernels' ``flags`` argument: one bit per term of ``flags``."""
    return sum(bit for name, bit in _FLAG_BITS.items() if getattr(flags, name))


def _ptr(t: Tensor) -> int:
    return t.data_ptr()


class NativeKernels(NamedTuple):
    """The loaded library's two entry points, wrapped to take and return tensors.

    Each runs a whole direction in one call: the mixture algebra (softmax, coefficients; on the
    way back the logit and slope gradients, in float64) and the pass over ``x``.
    """

    lib: ctypes.CDLL
    path: Path
    flags: tuple[str, ...] = ()  # the compiler flags it was built with (empty: unknown)

    def forward(
        self, x: Tensor, logits: Tensor, slope: Tensor, seed: Tensor, names: tuple[str, ...], flags: KernelFlags
    ) -> tuple[Tensor, Tensor]:
        """``(y, coef)`` for contiguous float32 ``x``: any shape, or ``(N, C, *)`` per channel."""
        rows, nmix, to_coef, from_sums, prelu = _problem(x, logits, names, flags)
        assert x.dtype == logits.dtype == slope.dtype == torch.float32 and x.is_contiguous()
        logits, slope = logits.detach().contiguous(), slope.detach().contiguous()
        y = torch.empty_like(x)
        coef = torch.empty((nmix, 7) if flags.channel else (7,), dtype=torch.float32)
        self.lib.adact_native_forward(
            _ptr(x), _ptr(y), _ptr(coef), rows, x.numel() // rows, nmix, len(names), _ptr(logits),
            _ptr(to_coef), _ptr(from_sums), prelu, _ptr(slope), slope.numel(), int(seed), flag_bits(flags),
            torch.get_num_threads(),
        )  # fmt: skip
        return y, coef

    def backward(
        self, grad: Tensor, x: Tensor, logits: Tensor, slope: Tensor, seed: Tensor, names: tuple[str, ...],
        flags: KernelFlags,
    ) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
        """``(grad_x, grad_logits, grad_slope)``; ``grad`` contiguous float32 like ``x``."""
        rows, nmix, to_coef, from_sums, prelu = _problem(x, logits, names, flags)
        assert x.dtype == grad.dtype == logits.dtype == slope.dtype == torch.float32
        assert x.is_contiguous() and grad.is_contiguous()
        logits, slope = logits.detach().contiguous(), slope.detach().contiguous()
        gx = torch.empty_like(x)
        grad_logits, grad_slope = torch.empty_like(logits), torch.empty_like(slope)
        self.lib.adact_native_backward(
            _ptr(grad), _ptr(x), _ptr(gx), _ptr(grad_logits), _ptr(grad_slope), rows, x.numel() // rows, nmix,
            len(names), _ptr(logits), _ptr(to_coef), _ptr(from_sums), prelu, _ptr(slope), slope.numel(),
            int(seed), flag_bits(flags), torch.get_num_threads(),
        )  # fmt: skip
        return gx, grad_logits, grad_slope


def _problem(x: Tensor, logits: Tensor, names: tuple[str, ...], flags: KernelFlags) -> tuple[int, int, Tensor, Tensor, int]:
    """Rows of ``x``, mixtures, the mixing matrices (float64) and PReLU's slot (-1: none)."""
    mixing = inductor.mixing_matrices(names, flags.noisy, torch.float64, x.device)
    nmix = logits.shape[0] if flags.channel else 1
    rows = x.shape[0] * x.shape[1] if flags.channel else 1
    prelu = names.index("prelu") if "prelu" in names else -1
    return rows, nmix, mixing.to_coef, mixing.from_sums, prelu


_lock = threading.Lock()


def load_native(path: Path, flags: tuple[str, ...] = ()) -> NativeKernels:
    """Load a library that :func:`build_native` built (any variant); ``flags``: what it was built with."""
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as err:
        raise NativeBuildError(f"loading {path} failed: {err}") from err
    lib.adact_native_forward.argtypes = [_P, _P, _P, _I64, _I64, _I64, _I64, _P, _P, _P, _I64, _P, _I64, _I32, _I32, _I32]
    lib.adact_native_forward.restype = None
    lib.adact_native_backward.argtypes = [
        _P, _P, _P, _P, _P, _I64, _I64, _I64, _I64, _P, _P, _P, _I64, _P, _I64, _I32, _I32, _I32,
    ]  # fmt: skip
    lib.adact_native_backward.restype = None
    return NativeKernels(lib, path, tuple(flags))


@functools.lru_cache(maxsize=None)
def _load(isa: str) -> NativeKernels:
    return load_native(*_build(None, _attempts(isa)))


def selected_isa() -> str:
    """The level ``$ADACT_NATIVE_ISA`` asks for (``"native"`` when unset)."""
    isa = os.environ.get(ISA_ENV_VAR, "").strip() or "native"
    if isa not in ISA_LEVELS:
        raise UserError(f"{ISA_ENV_VAR}={isa!r} is not one of {', '.join(ISA_LEVELS)}")
    return isa


def native_kernels(isa: str | None = None) -> NativeKernels:
    """The native kernels for ``isa``, built at the first call (a second or so) and cached on disk.

    Args:
        isa: a key of :data:`ISA_LEVELS`; default ``$ADACT_NATIVE_ISA``, else ``"native"``.
            A level the CPU cannot run builds, but its code would fault: see :func:`runnable_levels`.

    Raises:
        NativeBuildError: they cannot be built or loaded here.
    """
    isa = selected_isa() if isa is None else isa
    isa_flags(isa)
    with _lock:
        return _load(isa)
