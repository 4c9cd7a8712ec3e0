"""The native kernels as a real torch operator: ``torch.ops.adact_native.adact``, autograd in C++.

Calling the native kernels through :mod:`ctypes` from a Python ``autograd.Function`` costs about
0.3 ms per forward+backward on top of the kernels (pointer conversions, views, the Function's
bookkeeping): the whole cost of a small activation. ``csrc/adact_op.cpp`` registers the kernels
with ``TORCH_LIBRARY`` instead, with a C++ autograd node, so a unit's call is one dispatcher call,
like ``torch.nn.functional.silu``'s.

The kernels stay in their own library (:mod:`adact.fused.native`, one build per ISA level, about a
second); this operator library includes torch's headers, so it builds once per torch version and
compiler (half a minute, at first use, cached next to the kernels) whatever the ISA. It reaches a
kernel build through function pointers: :func:`problem` registers one (kernel build, pool,
training-mode RReLU, layout) combination per process and returns the index the op takes.

When this library cannot be built (no torch headers, an old compiler), :mod:`adact.fused.backends`
warns once and calls the same kernels through ctypes instead: same results, slower per call.
Fake kernels (for ``torch.compile``) are registered here, at load time.
"""

from __future__ import annotations

import ctypes
import platform
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from adact.fused import native
from adact.fused.inductor import kernel_flags, mixing_matrices

__all__ = ["NativeOp", "build_op", "native_op", "problem"]

_SOURCE = Path(__file__).with_name("csrc") / "adact_op.cpp"
_STANDARDS = ("-std=c++20", "-std=c++17")  # torch's headers need C++17; recent ones C++20


def _torch_dirs() -> tuple[Path, Path]:
    root = Path(torch.__file__).parent
    return root / "include", root / "lib"


def _flags(std: str) -> list[str]:
    include, lib = _torch_dirs()
    abi = int(torch.compiled_with_cxx11_abi())
    flags = [
        "-O2", std, "-shared", "-fPIC", f"-D_GLIBCXX_USE_CXX11_ABI={abi}", f"-I{include}",
        f"-I{include / 'torch' / 'csrc' / 'api' / 'include'}", f"-L{lib}", "-lc10", "-ltorch_cpu",
        f"-Wl,-rpath,{lib}",
    ]  # fmt: skip
    if platform.system() == "Darwin":
        flags.append("-undefined dynamic_lookup")
    return flags


def build_op(cache_dir: Path | None = None) -> Path:
    """Compile ``csrc/adact_op.cpp`` against this torch (or find it compiled); return the library's path.

    Args:
        cache_dir: where it goes (default ``$ADACT_CACHE_DIR`` or ``~/.cache/adact``, like the kernels).

    Raises:
        NativeBuildError: no compiler, or it failed for every C++ standard tried (the message has its output).
    """
    cxx = native._compiler()
    source = _SOURCE.read_bytes()
    version = [torch.__version__.encode(), str(torch.version.git_version).encode()]

    def attempt(flags: list[str]) -> tuple[bytes, Callable[[str], list[str]]]:
        key = b"\0".join([source, cxx.encode(), " ".join(flags).encode(), *version])
        return key, lambda out: [cxx, *flags[:2], str(_SOURCE), "-o", out, *flags[2:]]

    attempts = [attempt(_flags(std)) for std in _STANDARDS]
    return native.compile_cached("adact_op", cache_dir, attempts, "the adact_native torch operator", timeout=600)[0]


class NativeOp(NamedTuple):
    """The loaded operator library: its path and its three ops (``OpOverload``s, for direct calls)."""

    path: Path
    adact: Any  # (x, logits, slope, problem, noisy) -> y, differentiable
    mix: Any  # (x, logits, slope, seed?, problem) -> y, differentiable
    mix_backward: Any  # (grad, x, logits, slope, seed?, problem) -> (gx, glogits, gslope)


_lock = threading.Lock()


def _register_fakes() -> None:
    @torch.library.register_fake("adact_native::mix")
    def _mix_fake(x: Tensor, logits: Tensor, slope: Tensor, seed: Tensor | None, problem: int) -> Tensor:
        return torch.empty_like(x)

    @torch.library.register_fake("adact_native::mix_backward")
    def _mix_backward_fake(
        grad: Tensor, x: Tensor, logits: Tensor, slope: Tensor, seed: Tensor | None, problem: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        return torch.empty_like(x), torch.empty_like(logits), torch.empty_like(slope)


_loaded: list[NativeOp] = []
_failed: list[native.NativeBuildError] = []


def _load() -> NativeOp:
    path = build_op()
    try:
        torch.ops.load_library(str(path))
    except OSError as err:
        raise native.NativeBuildError(f"loading {path} failed: {err}") from err
    _register_fakes()
    ops = torch.ops.adact_native
    return NativeOp(path, ops.adact.default, ops.mix.default, ops.mix_backward.default)


def native_op() -> NativeOp:
    """The operator library, built at the first call (about half a minute, once per torch version) and loaded.

    The op names are process-wide, so the library is loaded once per process and never unloaded
    (:func:`adact.fused.dispatch.reset_kernels` keeps it).

    Raises:
        NativeBuildError: it cannot be built or loaded here (remembered: later calls raise it again).
    """
    if _loaded:
        return _loaded[0]
    with _lock:
        if _failed:
            raise _failed[0]
        if not _loaded:
            try:
                _loaded.append(_load())
            except native.NativeBuildError as err:
                _failed.append(err)
                raise
    return _loaded[0]


_problems: dict[tuple[Path, tuple[str, ...], bool, bool], int] = {}


def problem(kernels: native.NativeKernels, names: tuple[str, ...], training: bool, channel: bool) -> int:
    """The op's index for running pool ``names`` with ``kernels`` (registered at the first call per process)."""
    key = (kernels.path, names, training and "rrelu" in names, channel)
    index = _problems.get(key)
    if index is None:
        native_op()  # loads the library: register_problem is one of its ops
        flags = kernel_flags(names, training, channel)
        mixing = mixing_matrices(names, flags.noisy, torch.float64, torch.device("cpu"))
        def address(fn: Any) -> int:
            return ctypes.cast(fn, ctypes.c_void_p).value

        with _lock:
            index = _problems.get(key)
            if index is None:
                index = _problems[key] = torch.ops.adact_native.register_problem(
                    address(kernels.lib.adact_native_forward), address(kernels.lib.adact_native_backward),
                    mixing.to_coef, mixing.from_sums, names.index("prelu") if "prelu" in names else -1,
                    native.flag_bits(flags), channel,
                )  # fmt: skip
    return index
