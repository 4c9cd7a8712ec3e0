"""The native kernels built for aarch64 (NEON) and run under qemu-user agree with this machine's.

A C++ harness (``tests/native/harness.cpp``) includes the kernel source, reads inputs from a file
and writes the outputs, so no Python or torch is needed on the emulated side. Skipped where the
cross compiler (Debian: ``g++-aarch64-linux-gnu``) or ``qemu-aarch64`` (``qemu-user``) is missing.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from adact import DEFAULT_CANDIDATES, AdAct
from adact.activations import RRELU_LOWER, RRELU_UPPER
from adact.fused import inductor, native

HARNESS = Path(__file__).with_name("native") / "harness.cpp"
CROSS, QEMU = "aarch64-linux-gnu-g++", "qemu-aarch64"


@pytest.fixture(scope="module")
def arm_harness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (shutil.which(CROSS) and shutil.which(QEMU)):
        pytest.skip(f"needs {CROSS} and {QEMU} (Debian: g++-aarch64-linux-gnu qemu-user)")
    try:
        native.native_kernels()
    except native.NativeBuildError as err:
        pytest.skip(f"native kernels unavailable here: {err}")
    exe = tmp_path_factory.mktemp("arm") / "harness"
    cmd = [CROSS, "-O3", "-ffp-contract=fast", "-std=c++17", *native.ISA_LEVELS["armv8-a"], "-fopenmp", "-static",
           "-o", str(exe), str(HARNESS)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return exe


def run_arm(exe: Path, tmp: Path, x: torch.Tensor, g: torch.Tensor, m: AdAct, names: tuple[str, ...],
            flags: inductor.KernelFlags, seed: int) -> list[torch.Tensor]:  # fmt: skip
    mixing = inductor.mixing_matrices(names, flags.noisy, torch.float64, torch.device("cpu"))
    nmix = m.logits.shape[0] if flags.channel else 1
    rows = x.shape[0] * x.shape[1] if flags.channel else 1
    slope = m.prelu_weight.detach() if m.prelu_weight is not None else torch.zeros(1)
    header = [rows, x.numel() // rows, nmix, len(names), names.index("prelu") if "prelu" in names else -1,
              slope.numel(), seed, native.flag_bits(flags), 2, x.numel()]  # fmt: skip
    with open(tmp / "in.bin", "wb") as f:
        f.write(np.asarray(header, dtype=np.int64).tobytes())
        for t in (x, g, m.logits.detach(), slope):
            f.write(t.float().contiguous().numpy().tobytes())
        for t in (mixing.to_coef, mixing.from_sums):
            f.write(t.contiguous().numpy().tobytes())
    proc = subprocess.run([QEMU, str(exe), str(tmp / "in.bin"), str(tmp / "out.bin")], capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = torch.from_numpy(np.fromfile(tmp / "out.bin", dtype=np.float32))
    sizes = [x.numel(), nmix * 7, x.numel(), nmix * len(names), slope.numel()]
    return list(out.split(sizes))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("granularity", ["layer", "channel"])
@pytest.mark.parametrize("names", [DEFAULT_CANDIDATES, ("silu", "mish"), ("elu", "prelu")], ids="+".join)
def test_aarch64_build_equals_native(arm_harness: Path, tmp_path: Path, names: tuple[str, ...], training: bool,
                                     granularity: str) -> None:  # fmt: skip
    """Outputs and grad_x element by element (inf, NaN, denormals included); parameter grads to sum rounding."""
    torch.manual_seed(0)
    c = 6
    extra = dict(granularity="channel", num_channels=c) if granularity == "channel" else {}
    m = AdAct(candidates=list(names), **extra)  # type: ignore[arg-type]
    with torch.no_grad():
        m.logits.normal_(0.0, 1.5)
        if m.prelu_weight is not None:
            m.prelu_weight.uniform_(-0.5, 0.8)
    x = torch.randn(3, c, 70) * 3
    x.view(-1)[:10] = torch.tensor([0.0, -0.0, 1e-40, -1e-40, 88.0, -88.0, 1e4, -1e4, 20.0, -20.0])
    x.view(-1)[-4:] = torch.tensor([float("inf"), -float("inf"), float("nan"), -1e-40])
    g = torch.randn_like(x)
    # No gradient at the huge inputs: their terms (1e4 * g) would swamp the parameter sums, and with
    # silu+mish the logit grads are a difference of two nearly equal sums.
    g.view(-1)[:10] = 0.0
    flags = inductor.kernel_flags(names, training, granularity == "channel")
    view = x if flags.channel else x.view(-1)
    seed = 77
    kernels = native.native_kernels()
    slope = m.prelu_weight.detach() if m.prelu_weight is not None else torch.zeros(1)
    seed_t = torch.tensor(seed, dtype=torch.int32)
    y, coef = kernels.forward(view, m.logits.detach(), slope, seed_t, names, flags)
    here = [y.reshape(-1), coef.reshape(-1),
            *(t.reshape(-1) for t in kernels.backward(g.view_as(view), view, m.logits.detach(), slope, seed_t, names, flags))]  # fmt: skip
    arm = run_arm(arm_harness, tmp_path, x, g, m, names, flags, seed)
    for i, (a, b) in enumerate(zip(arm, here)):
        scale = float(b.nan_to_num(0.0, 0.0, 0.0).abs().max()) or 1.0
        tol = 2e-6 if i < 3 else 2e-5  # y, coef, grad_x | parameter grads (sums in another lane order)
        torch.testing.assert_close(a, b, rtol=tol, atol=tol / 2 * scale, equal_nan=True)


def test_aarch64_build_draws_the_same_noise(arm_harness: Path, tmp_path: Path) -> None:
    """RReLU's draws are the same bits on NEON (4 lanes) as on this CPU, at every alignment."""
    names = ("rrelu",)
    m = AdAct(candidates=list(names))
    x = -(torch.rand(4099) + 0.5)
    flags = inductor.kernel_flags(names, True, False)
    seed = 12345
    y_arm = run_arm(arm_harness, tmp_path, x, torch.ones_like(x), m, names, flags, seed)[0]
    y_here, _ = native.native_kernels().forward(x, m.logits.detach(), torch.zeros(1), torch.tensor(seed, dtype=torch.int32), names, flags)
    slope = y_arm / x
    assert bool(((slope >= RRELU_LOWER) & (slope <= RRELU_UPPER)).all())
    torch.testing.assert_close(y_arm, y_here, rtol=5e-7, atol=0.0)  # a different draw is off by >= 1e-5
