"""Tests of the fused AdAct kernel (src/adact/fused*.py) against the plain reference sum.

The reference is :func:`adact.adact_reference` (one PyTorch op per candidate). The fused path
must give the same values and gradients (float64: 1e-6 relative, float32: 1e-5 relative plus a
tiny absolute tolerance), propagate NaN/inf the same way, save only the input for backward, and
keep working under ``torch.compile``, autocast and channel granularity. Speed is benchmarked in
benchmarks/bench_adact.py, never asserted here.
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import spy_on_backends
from torch import Tensor, nn

from adact import DEFAULT_CANDIDATES, AdAct, adact_reference, fused
from adact.fused import autograd as fused_autograd
from adact.fused import (
    backends,
    calibration,
    compiled,
    dispatch,
    inductor,
    keys,
    native,
)

RRELU_LOWER, RRELU_UPPER = 1.0 / 8.0, 1.0 / 3.0
TOL = {torch.float64: dict(rtol=1e-6, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6)}
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _auto_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts on the default backend (native/compiled, with fallbacks)."""
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)


def native_or_skip() -> None:
    try:
        native.native_kernels()
    except native.NativeBuildError as err:
        pytest.skip(f"native kernels unavailable here: {err}")


#: ISA levels this CPU can run besides "native" (each builds its own library: vector widths differ).
LEVELS = [level for level in native.runnable_levels() if level != "native"]


def extreme_values(dtype: torch.dtype) -> Tensor:
    tiny = 1e-40 if dtype == torch.float32 else 1e-310  # denormals
    vals = [1e4, -1e4, 88.0, -88.0, 89.0, -89.0, 0.0, -0.0, tiny, -tiny, 1e-3, -1e-3, 0.3, -0.3, 20.0, -20.0]
    return torch.tensor(vals, dtype=torch.float64).to(dtype)


def make_input(dtype: torch.dtype, shape: tuple[int, ...] = (4, 6, 50)) -> Tensor:
    x = torch.randn(shape, dtype=torch.float64) * 3
    ext = extreme_values(dtype).to(torch.float64)
    x.view(-1)[: ext.numel()] = ext
    return x.to(dtype)


def randomize(m: AdAct) -> AdAct:
    with torch.no_grad():
        m.logits.normal_(0.0, 1.5)
        if m.prelu_weight is not None:
            m.prelu_weight.uniform_(-0.5, 0.8)
    return m


def unit(granularity: str = "layer", c: int = 6, **kw: object) -> AdAct:
    extra = dict(granularity="channel", num_channels=c) if granularity == "channel" else {}
    return randomize(AdAct(**extra, **kw))  # type: ignore[arg-type]


def grads(y: Tensor, inputs: list[Tensor], g: Tensor) -> tuple[Tensor, ...]:
    return torch.autograd.grad(y, inputs, g)


def reference_of(m: AdAct, x: Tensor, training: bool = False) -> Tensor:
    return adact_reference(x, m.logits, m.prelu_weight, m.candidates, training)


# --------------------------------------------------------------------------------------------
# values and gradients against the reference
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_matches_reference_values_and_grads(dtype: torch.dtype, granularity: str) -> None:
    m = unit(granularity).to(dtype).eval()
    x = make_input(dtype).requires_grad_()
    g = torch.randn_like(x)
    params = [x, m.logits, m.prelu_weight]
    y = m(x)
    y_ref = reference_of(m, x)
    torch.testing.assert_close(y, y_ref, **TOL[dtype])
    got, want = grads(y, params, g), grads(y_ref, params, g)
    torch.testing.assert_close(got[0], want[0], **TOL[dtype])
    # Parameter gradients are sums over 1200 elements in another order: compare at the sum's scale.
    for a, b in zip(got[1:], want[1:]):
        scale = float(b.abs().max())
        torch.testing.assert_close(a, b, rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["rtol"] * scale)


def test_float32_grads_match_float64_truth() -> None:
    """float32 fused gradients are as close to the float64 truth as float32 allows."""
    m = unit().eval()
    x = torch.randn(64, 32, 8, 8) * 3
    g = torch.randn_like(x)
    xs = x.clone().requires_grad_()
    got = grads(m(xs), [xs, m.logits, m.prelu_weight], g)
    m64 = AdAct(fused=False).double().eval()
    m64.load_state_dict(m.state_dict())
    xd = x.double().requires_grad_()
    want = grads(m64(xd), [xd, m64.logits, m64.prelu_weight], g.double())
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_extreme_inputs_each_candidate(dtype: torch.dtype) -> None:
    """One-hot pools: every candidate alone matches its torch.nn.functional form on extreme inputs."""
    x = extreme_values(dtype)
    for name in DEFAULT_CANDIDATES:
        m = AdAct(candidates=[name]).to(dtype).eval()
        torch.testing.assert_close(m(x), reference_of(m, x), **TOL[dtype], msg=name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_nan_and_inf_propagate_as_in_reference(dtype: torch.dtype) -> None:
    special = torch.tensor([float("inf"), -float("inf"), float("nan"), 1.0, -1.0], dtype=dtype)
    m = unit().to(dtype).eval()
    x, x_ref = special.clone().requires_grad_(), special.clone().requires_grad_()
    y, y_ref = m(x), reference_of(m, x_ref)
    (gx,) = torch.autograd.grad(y.sum(), x)
    (gx_ref,) = torch.autograd.grad(y_ref.sum(), x_ref)
    for a, b in ((y, y_ref), (gx, gx_ref)):
        assert torch.equal(a.isnan(), b.isnan()), (a, b)
        assert torch.equal(a.isinf(), b.isinf()) and torch.equal(a[a.isinf()], b[b.isinf()]), (a, b)
        finite = a.isfinite()
        torch.testing.assert_close(a[finite], b[finite], **TOL[dtype])


@pytest.mark.parametrize(
    "candidates",
    [("relu",), ("mish", "elu"), ("silu", "relu", "prelu"), ("rrelu", "leaky_relu"), DEFAULT_CANDIDATES[::-1]],
    ids=["relu", "mish-elu", "silu-relu-prelu", "rrelu-leaky", "reversed"],
)
def test_subsets_and_orders(candidates: tuple[str, ...]) -> None:
    m = randomize(AdAct(candidates=candidates)).double().eval()
    x = make_input(torch.float64).requires_grad_()
    assert fused.fused_supported(m.candidates, x)
    y, y_ref = m(x), reference_of(m, x)
    torch.testing.assert_close(y, y_ref, **TOL[torch.float64])
    params = [x, m.logits] + ([m.prelu_weight] if m.prelu_weight is not None else [])
    for a, b in zip(grads(y, params, torch.ones_like(y)), grads(y_ref, params, torch.ones_like(y))):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_unsupported_candidates_fall_back_to_reference() -> None:
    # Pools outside the paper's seven run the generic kernels (tests/test_fused_generic.py); what
    # no kernel takes is an unknown name, or a non-float input.
    x = torch.randn(10)
    assert fused.fused_supported(("relu", "gelu"), x)
    assert not fused.fused_supported(("relu", "swish9"), x)
    assert not fused.fused_supported(DEFAULT_CANDIDATES, x.to(torch.int64))
    m = AdAct(candidates=["relu", "gelu"]).eval()
    torch.testing.assert_close(m(x), reference_of(m, x))


# --------------------------------------------------------------------------------------------
# gradcheck (float64: the eager kernels, the same math the compiler gets)
# --------------------------------------------------------------------------------------------


def away_from_kinks(shape: tuple[int, ...]) -> Tensor:
    x = torch.randn(shape, dtype=torch.float64)
    return x + 0.2 * torch.where(x >= 0, 1.0, -1.0)


@pytest.mark.parametrize("granularity", ["layer", "channel"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_gradcheck(granularity: str, training: bool) -> None:
    """Training mode uses a fixed seed, so the noise is a fixed function and gradcheck applies."""
    c = 3
    logits = torch.randn((c, 7) if granularity == "channel" else (7,), dtype=torch.float64, requires_grad=True)
    w = torch.rand(c if granularity == "channel" else 1, dtype=torch.float64, requires_grad=True)
    x = away_from_kinks((2, c, 5)).requires_grad_()
    seed = torch.tensor(12345, dtype=torch.int32)

    def f(x_: Tensor, l_: Tensor, w_: Tensor) -> Tensor:
        return fused_autograd.apply_fused(x_, l_, w_, seed, DEFAULT_CANDIDATES, training)

    assert torch.autograd.gradcheck(f, (x, logits, w))


def test_gradcheck_custom_op_route() -> None:
    """The custom op (what torch.compile sees) has the same autograd formula."""
    x = away_from_kinks((3, 4)).requires_grad_()
    logits = torch.randn(7, dtype=torch.float64, requires_grad=True)
    w = torch.rand(1, dtype=torch.float64, requires_grad=True)
    seed = torch.tensor(7, dtype=torch.int32)
    names = ",".join(DEFAULT_CANDIDATES)
    assert torch.autograd.gradcheck(
        lambda a, b, c: torch.ops.adact.fused_forward(a, b, c, seed, names, True), (x, logits, w)
    )
    torch.library.opcheck(torch.ops.adact.fused_forward.default, (x, logits, w, seed, names, True))


# --------------------------------------------------------------------------------------------
# RReLU noise
# --------------------------------------------------------------------------------------------


def rrelu_only() -> AdAct:
    return AdAct(candidates=["rrelu"]).train()


def test_training_slopes_are_uniform_in_rrelu_range() -> None:
    x = -(torch.rand(200_000) + 0.1)
    with torch.no_grad():
        slope = (rrelu_only()(x) / x).double()
    assert float(slope.min()) >= RRELU_LOWER - 1e-6 and float(slope.max()) <= RRELU_UPPER + 1e-6
    assert abs(float(slope.mean()) - (RRELU_LOWER + RRELU_UPPER) / 2) < 2e-3
    # Kolmogorov-Smirnov distance to U(1/8, 1/3): ~0.003 expected for 2e5 draws.
    u = ((slope - RRELU_LOWER) / (RRELU_UPPER - RRELU_LOWER)).sort().values
    ecdf = torch.arange(1, u.numel() + 1, dtype=torch.float64) / u.numel()
    assert float((ecdf - u).abs().max()) < 0.01
    # Neighbours are not correlated.
    centred = slope - slope.mean()
    assert abs(float((centred[1:] * centred[:-1]).mean() / centred.var())) < 0.01


def test_backward_uses_the_forwards_noise() -> None:
    m = rrelu_only()
    x = torch.cat([-(torch.rand(5000) + 0.01), torch.rand(100)]).requires_grad_()
    y = m(x)
    (gx,) = torch.autograd.grad(y.sum(), x)
    neg = x.detach() < 0
    # y = slope * x with slope the noise, so dy/dx must be y / x element by element.
    torch.testing.assert_close(gx[neg], (y / x).detach()[neg], rtol=1e-6, atol=0.0)
    assert torch.equal(gx[~neg], torch.ones(int((~neg).sum())))
    assert gx[neg].unique().numel() > 1000


@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_same_seed_same_results(granularity: str) -> None:
    m = unit(granularity).train()
    x = torch.randn(3, 6, 7, 5, requires_grad=True)
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        y = m(x)
        runs.append((y, *grads(y, [x, m.logits, m.prelu_weight], torch.ones_like(y))))
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    torch.manual_seed(124)
    assert not torch.equal(m(x), runs[0][0])  # a fresh seed is a fresh draw


def _noise_spec(index: np.ndarray, seed: int) -> np.ndarray:
    """rrelu_uniform's documented spec in numpy uint32: lowbias32, two 16-bit draws per hash."""
    e = index.astype(np.uint32)
    h = ((e >> np.uint32(5)) << np.uint32(4) | (e & np.uint32(15))) ^ np.uint32(seed)
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x7FEB352D)
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x846CA68B)
    h ^= h >> np.uint32(16)
    bits = np.where(e & np.uint32(16), h >> np.uint32(16), h & np.uint32(0xFFFF))
    return (bits.astype(np.float32) + np.float32(0.5)) * np.float32(2.0**-16)


def test_noise_hash_matches_uint32_spec() -> None:
    """rrelu_uniform is the documented hash: check it against numpy, eager and compiled."""
    index = torch.arange(0, 3000, dtype=torch.int32) * 9973 - 2**31  # negative int32 = indices >= 2**31
    seed = torch.tensor(0x5EED1234, dtype=torch.int32)
    with np.errstate(over="ignore"):
        expected = torch.from_numpy(_noise_spec(index.numpy(), 0x5EED1234))
    assert torch.equal(inductor.rrelu_uniform(index, seed), expected)
    compiled = torch.compile(inductor.rrelu_uniform, dynamic=True, fullgraph=True)
    assert torch.equal(compiled(index, seed), expected)


@pytest.mark.parametrize("backend", ["native", "compile", "eager", *(f"native:{level}" for level in LEVELS)])
@pytest.mark.parametrize("shape", [(4099,), (3, 5, 7, 11), (2, 4, 64)])
def test_every_backend_draws_the_spec_noise(monkeypatch: pytest.MonkeyPatch, backend: str, shape: tuple[int, ...]) -> None:
    """An RReLU-only unit's slopes are exactly the spec's draws, at any alignment (tails, rows), on every ISA."""
    backend, _, level = backend.partition(":")
    if level:
        monkeypatch.setenv(native.ISA_ENV_VAR, level)
    if backend == "native":
        native_or_skip()
    monkeypatch.setenv(dispatch.ENV_VAR, backend)
    for granularity in ("layer", "channel"):
        if granularity == "channel" and len(shape) == 1:
            continue
        m = AdAct(candidates=["rrelu"], granularity=granularity, num_channels=shape[1] if len(shape) > 1 else None)
        x = -(torch.rand(shape) + 0.5)
        torch.manual_seed(11)
        seed = int(torch.randint(0, 2**31, (), dtype=torch.int32))
        torch.manual_seed(11)
        with torch.no_grad():
            slope = m.train()(x) / x
        u = torch.from_numpy(_noise_spec(np.arange(x.numel()), seed)).view(shape)
        torch.testing.assert_close(slope, RRELU_LOWER + (RRELU_UPPER - RRELU_LOWER) * u, rtol=5e-7, atol=0.0)  # a wrong draw is off by >= 1e-5


def test_lane_layout_gives_flat_index() -> None:
    x = torch.empty(5, 3, 16)
    lanes = torch.arange(16, dtype=torch.int32)
    assert torch.equal(inductor.flat_index(x, lanes), inductor.flat_index(x, None))


def test_eval_mode_rrelu_uses_mean_slope() -> None:
    m = rrelu_only().eval()
    x = -torch.rand(100) - 0.1
    torch.testing.assert_close(m(x), x * (RRELU_LOWER + RRELU_UPPER) / 2, rtol=1e-6, atol=0.0)


# --------------------------------------------------------------------------------------------
# memory: only the input is saved
# --------------------------------------------------------------------------------------------


def saved_bytes(fn: object, x: Tensor) -> int:
    storages: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)  # type: ignore[operator]
    return sum(storages.values())


@pytest.mark.parametrize("granularity", ["layer", "channel"])
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_saves_only_the_input(granularity: str, training: bool) -> None:
    m = unit(granularity, c=16).train(training)
    x = torch.randn(8, 16, 16, 16, requires_grad=True)
    input_bytes = x.numel() * x.element_size()
    assert saved_bytes(m, x) <= 1.25 * input_bytes
    assert saved_bytes(m, x) < input_bytes + 1024  # the input, the parameters and an int32 seed
    ref = AdAct(fused=False).train(training)
    assert saved_bytes(ref, x) > 4 * input_bytes  # what the fusion saves


def test_custom_op_saves_only_the_input() -> None:
    x = torch.randn(4, 8, 32, requires_grad=True)
    logits = torch.zeros(7, requires_grad=True)
    w = torch.full((1,), 0.25, requires_grad=True)
    seed = torch.tensor(3, dtype=torch.int32)

    def op(t: Tensor) -> Tensor:
        return torch.ops.adact.fused_forward(t, logits, w, seed, ",".join(DEFAULT_CANDIDATES), True)

    assert saved_bytes(op, x) < x.numel() * x.element_size() + 1024


# --------------------------------------------------------------------------------------------
# layouts, dtypes, autocast
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_channels_last_and_strided_inputs(granularity: str) -> None:
    m = unit(granularity).eval()
    base = torch.randn(2, 6, 8, 10)
    for x in (base.to(memory_format=torch.channels_last), base[..., ::2], base.transpose(2, 3)):
        xg = x.clone().requires_grad_() if x.is_contiguous() else x.detach().requires_grad_()
        y = m(xg)
        assert y.stride() == torch.empty_like(xg).stride()
        torch.testing.assert_close(y, reference_of(m, xg), **TOL[torch.float32])
        (gx,) = torch.autograd.grad(y.sum(), xg)
        (gx_ref,) = torch.autograd.grad(reference_of(m, xg).sum(), xg)
        torch.testing.assert_close(gx, gx_ref, **TOL[torch.float32])


def test_channels_last_training_noise_is_consistent() -> None:
    m = rrelu_only()
    x = -(torch.rand(2, 3, 4, 5) + 0.1).to(memory_format=torch.channels_last).requires_grad_()
    y = m(x)
    (gx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    torch.testing.assert_close(gx, (y / x).detach(), rtol=1e-6, atol=0.0)


def test_empty_and_scalar_inputs() -> None:
    m = unit().train()
    empty = torch.empty(0, 3, requires_grad=True)
    y = m(empty)
    assert y.shape == (0, 3)
    y.sum().backward()
    scalar = torch.tensor(-2.0, requires_grad=True)
    m.eval()
    torch.testing.assert_close(m(scalar), reference_of(m, scalar))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
def test_low_precision_inputs_compute_in_float32(dtype: torch.dtype) -> None:
    m = unit().eval()
    x = (torch.randn(4, 6, 20) * 3).to(dtype).requires_grad_()
    y = m(x)
    assert y.dtype == dtype
    expected = reference_of(m, x.detach().float())
    torch.testing.assert_close(y.float(), expected, rtol=1e-2, atol=1e-2)
    (gx,) = torch.autograd.grad(y.float().sum(), x)
    assert gx.dtype == dtype and torch.isfinite(gx).all()


def test_bfloat16_autocast_after_conv() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), unit())
    x = torch.randn(2, 3, 10, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = net(x)
    assert y.dtype == torch.bfloat16  # the conv's output is bf16 under autocast, and so is AdAct's
    y.float().sum().backward()
    for p in net.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    net[1].fused = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_ref = net(x)
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=3e-2, atol=3e-2)


# --------------------------------------------------------------------------------------------
# torch.compile, backends
# --------------------------------------------------------------------------------------------


def test_torch_compile_of_a_model_with_adact() -> None:
    """fullgraph compile: the custom op is one opaque node, with its autograd formula."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 16), unit(), nn.Linear(16, 8), unit("channel", c=8), nn.Linear(8, 2)).train()
    compiled = torch.compile(net, fullgraph=True)
    x = torch.randn(32, 6)
    with torch._inductor.config.patch(fallback_random=True):  # the seeds come from eager's RNG stream
        runs = []
        for model in (compiled, net):
            torch.manual_seed(5)
            xi = x.clone().requires_grad_()
            y = model(xi)
            runs.append((y, *torch.autograd.grad(y.square().sum(), [xi, *net.parameters()])))
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_eager_backend_equals_compiled(monkeypatch: pytest.MonkeyPatch) -> None:
    m = unit().train()
    x = torch.randn(5, 6, 33, requires_grad=True)
    results = {}
    for backend in ("compile", "eager"):
        monkeypatch.setenv(dispatch.ENV_VAR, backend)
        torch.manual_seed(9)
        y = m(x)
        results[backend] = (y, *grads(y, [x, m.logits, m.prelu_weight], torch.ones_like(y)))
    for a, b in zip(results["compile"], results["eager"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.detach().abs().max()))


@pytest.mark.parametrize("granularity", ["layer", "channel"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(
    "names",
    [DEFAULT_CANDIDATES, ("rrelu",), ("silu",), ("mish",), ("elu",), ("silu", "mish"), ("relu", "rrelu", "mish"),
     ("elu", "prelu"), ("leaky_relu", "silu")],
    ids=lambda n: "+".join(n),
)  # fmt: skip
@pytest.mark.parametrize("isa", ["native", *LEVELS])
def test_native_equals_eager(
    monkeypatch: pytest.MonkeyPatch, isa: str, names: tuple[str, ...], training: bool, granularity: str
) -> None:
    """Every term combination, both layouts, aligned and ragged rows, extreme values, every ISA level."""
    monkeypatch.setenv(native.ISA_ENV_VAR, isa)
    native_or_skip()
    for shape in ((4, 6, 7, 5), (2, 6, 32, 32), (3, 6, 64)):
        m = unit(granularity, candidates=list(names)).train(training)
        x = make_input(torch.float32, shape).requires_grad_()
        g = torch.randn_like(x)
        params = [x, *m.parameters()]
        results = {}
        for backend in ("native", "eager"):
            monkeypatch.setenv(dispatch.ENV_VAR, backend)
            torch.manual_seed(3)
            y = m(x)
            results[backend] = (y, *grads(y, params, g))
        m64, x64 = copy.deepcopy(m).double(), x.detach().double().requires_grad_()
        torch.manual_seed(3)  # same seed: float64 runs the eager kernels, same noise
        y64 = m64(x64)
        truth = (y64, *grads(y64, [x64, *list(m64.parameters())], g.double()))
        for a, b in zip(results["native"][:2], results["eager"][:2]):  # y, grad_x: element by element
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * float(b.detach().abs().max()))
        # Parameter grads are sums with cancellation (the softmax's chain rule), so float32 kernels
        # are off by 1e-5 to 3e-4 of their scale: native must be about as close to the float64
        # truth as the eager float32 kernels are. The error is that of the extreme inputs' huge
        # terms, rounded differently by each level (FMA contraction, summation order by vector
        # width): measured up to 2.4x eager's at AVX2 (silu+mish), hence 3x. "native" is whichever
        # level this CPU has (AVX2 on AMD Zen 3: the same 2.4x), so it gets the same bound.
        for a, b, t in zip(results["native"][2:], results["eager"][2:], truth[2:]):
            scale = float(t.abs().max())
            err_native, err_eager = float((a.double() - t).abs().max()), float((b.double() - t).abs().max())
            assert err_native <= max(1e-4 * scale, 3 * err_eager), (err_native, err_eager, scale)


def test_native_is_deterministic_across_thread_counts() -> None:
    """Fixed work chunks, each summed on its own: the parameter sums do not depend on threads."""
    native_or_skip()
    m = unit("channel", c=6).train()
    x = torch.randn(8, 6, 40, 40, requires_grad=True)
    old = torch.get_num_threads()
    runs = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            torch.manual_seed(1)
            y = m(x)
            runs.append((y, *grads(y, [x, m.logits, m.prelu_weight], torch.ones_like(y))))
    finally:
        torch.set_num_threads(old)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


def test_native_build_is_cached_and_failures_are_clear(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    native_or_skip()
    first = native.build_native(tmp_path)
    assert first.parent == tmp_path and first.exists()
    calls = []
    monkeypatch.setattr(native.subprocess, "run", lambda *a, **k: calls.append(a))
    assert native.build_native(tmp_path) == first and not calls  # cached: no compiler call
    monkeypatch.undo()
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setattr(native.shutil, "which", lambda name: name if name.endswith("compiler") else None)
    with pytest.raises(native.NativeBuildError, match="no-such-compiler"):
        native.build_native(tmp_path / "other")
    monkeypatch.undo()
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(native.NativeBuildError, match=native.CACHE_ENV_VAR):
        native.build_native(blocker / "cache")  # not a directory


def test_native_build_falls_back_through_its_attempts(tmp_path: Path) -> None:
    native_or_skip()
    path = native.build_native(tmp_path, attempts=[("-fno-such-flag-anywhere",), ()])
    assert path.exists()
    with pytest.raises(native.NativeBuildError, match="no-such-flag"):
        native.build_native(tmp_path / "b", attempts=[("-fno-such-flag-anywhere",)])


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("granularity", ["layer", "channel"])
@pytest.mark.parametrize("isa", ["portable", *LEVELS])
def test_native_isa_builds_equal_native(tmp_path: Path, isa: str, training: bool, granularity: str) -> None:
    """Every ISA level's build (other vector widths and intrinsics), and one with no -march at all, agrees.

    Outputs and grad_x element by element, inf/NaN included; the parameter grads are sums whose
    lane order follows the vector width, so they agree to float32 summation error.
    """
    native_or_skip()
    fast = native.native_kernels()
    attempts = [()] if isa == "portable" else None
    portable = native.load_native(native.build_native(tmp_path, attempts=attempts, isa="native" if attempts else isa))
    assert portable.path != fast.path
    m = unit(granularity).train(training)
    names = m.candidates
    flags = inductor.kernel_flags(names, training, granularity == "channel")
    x = make_input(torch.float32, (3, 6, 70))
    x.view(-1)[-4:] = torch.tensor([float("inf"), -float("inf"), float("nan"), -1e-40])
    g = torch.randn_like(x)
    view = x if granularity == "channel" else x.view(-1)
    seed = torch.tensor(77, dtype=torch.int32)
    outs = []
    for kernels in (fast, portable):
        y, _ = kernels.forward(view, m.logits, m.prelu_weight, seed, names, flags)
        outs.append((y, *kernels.backward(g.view_as(view), view, m.logits, m.prelu_weight, seed, names, flags)))
    for i, (a, b) in enumerate(zip(*outs)):
        scale = float(b.nan_to_num(0.0, 0.0, 0.0).abs().max()) or 1.0  # NaN/inf parameter grads: equal_nan
        tol = 2e-6 if i < 2 else 2e-5  # y, grad_x | grad_logits, grad_slope
        torch.testing.assert_close(a, b, rtol=tol, atol=tol / 2 * scale, equal_nan=True)


def no_native(isa: str | None = None) -> native.NativeKernels:
    raise native.NativeBuildError("no C++ compiler found")


def broken_compile(key: dispatch.FusedKernelKey) -> object:
    def kernel(*args: object) -> object:
        raise RuntimeError("no C++ compiler")

    return kernel


def default_key(dtype: torch.dtype = torch.float32, training: bool = True) -> dispatch.DispatchKey:
    """The key of the default unit on a CPU input of ``dtype`` (float32 parameters)."""
    x, logits, slope = torch.empty(2, 3, dtype=dtype), torch.zeros(7), torch.zeros(1)
    return keys.dispatch_key(x, logits, slope, DEFAULT_CANDIDATES, training)


def test_native_backend_raises_where_auto_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "native_kernels", no_native)
    dispatch.reset_kernels()
    try:
        monkeypatch.setenv(dispatch.ENV_VAR, "native")
        with pytest.raises(native.NativeBuildError, match="no C\\+\\+ compiler"):
            unit().eval()(torch.randn(40))
        assert dispatch.explain("cpu", torch.float32, training=False) == (
            "error", "ADACT_FUSED=native but the native build failed: no C++ compiler found"
        )
        monkeypatch.setenv(dispatch.ENV_VAR, "auto")
        m, x = unit().eval(), torch.randn(40)
        with pytest.warns(RuntimeWarning, match="Inductor-compiled"):
            y = m(x)
        torch.testing.assert_close(y, reference_of(m, x), **TOL[torch.float32])
    finally:
        dispatch.reset_kernels()


class _SlowKernels(native.NativeKernels):
    """A deliberately slow native build: the real kernels behind a sleep."""

    def forward(self, *args: object) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        time.sleep(0.1)  # far beyond Inductor's ~1 ms, even on a loaded machine
        return super().forward(*args)  # type: ignore[arg-type]


def test_auto_picks_compile_over_a_slower_native_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """auto calibrates native against Inductor once, keeps the verdict beside the library, obeys it."""
    native_or_skip()
    real = native.native_kernels()
    slow = _SlowKernels(real.lib, tmp_path / "adact_native_slow.so", real.flags)
    monkeypatch.setattr(native, "native_kernels", lambda isa=None: slow)
    monkeypatch.setenv(dispatch.ENV_VAR, "auto")
    dispatch.reset_kernels()
    try:
        backend, why = dispatch.explain("cpu", torch.float32)
        assert backend == "compile" and "Inductor is faster" in why, why
        assert dispatch.choose(default_key()).backend is backends.COMPILE
        verdict = json.loads(next(tmp_path.glob("adact_native_slow.calibration-*.json")).read_text())
        assert verdict["winner"] == "compile" and verdict["native_ms"] > verdict["compiled_ms"] > 0
        calls = []
        monkeypatch.setattr(native.NativeKernels, "forward", lambda *a: calls.append(a))
        m, x = unit().train(), torch.randn(4, 6, 10)
        torch.manual_seed(5)
        y = m(x)  # through Inductor: the native forward is never called
        assert not calls
        monkeypatch.undo()
        monkeypatch.setattr(native, "native_kernels", lambda isa=None: slow)
        # A new process reads the verdict instead of measuring again.
        dispatch.reset_kernels()
        monkeypatch.setattr(calibration, "_measure", lambda k: pytest.fail("measured again"))
        assert calibration.calibrate(slow).winner == "compile"
        # ADACT_FUSED=native forces the native build, verdict or not.
        monkeypatch.setenv(dispatch.ENV_VAR, "native")
        assert dispatch.choose(default_key()).backend is backends.NATIVE
        assert backends.NATIVE.load("native") is slow
        assert dispatch.explain("cpu", torch.float32) == ("native", "ADACT_FUSED=native")
        torch.manual_seed(5)
        torch.testing.assert_close(m(x), y, **TOL[torch.float32])
    finally:
        dispatch.reset_kernels()


def test_auto_keeps_a_faster_native_build(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    native_or_skip()
    real = native.native_kernels()
    fast = native.NativeKernels(real.lib, tmp_path / "adact_native_fast.so", real.flags)
    monkeypatch.setattr(calibration, "_measure", lambda k: calibration.Calibration(1.0, 2.0, "native", 1, 1))
    monkeypatch.setattr(native, "native_kernels", lambda isa=None: fast)
    monkeypatch.setenv(dispatch.ENV_VAR, "auto")
    dispatch.reset_kernels()
    try:
        assert dispatch.explain("cpu", torch.float32) == (
            "native", "calibrated faster (native 1.00 ms vs Inductor 2.00 ms)"
        )
    finally:
        dispatch.reset_kernels()


def test_backend_off_uses_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(dispatch.ENV_VAR, "off")
    assert not fused.fused_supported(DEFAULT_CANDIDATES, torch.randn(3))
    monkeypatch.setenv(dispatch.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match="ADACT_FUSED='bogus' is not one of auto, native, compile, eager, off"):
        fused.fused_supported(DEFAULT_CANDIDATES, torch.randn(3))


def test_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compiled, "_compile", broken_compile)
    monkeypatch.setattr(native, "native_kernels", no_native)
    dispatch.reset_kernels()
    try:
        m = unit().eval()
        x = torch.randn(40, requires_grad=True)
        with pytest.warns(RuntimeWarning) as record:
            y = m(x)
            (gx,) = torch.autograd.grad(y.sum(), x)
        messages = [str(r.message) for r in record]
        # once that the native kernels are missing, once that compiling failed (the forward's
        # variant; the backward then runs eager without trying)
        assert len(messages) == 2 and "Inductor-compiled" in messages[0], messages
        assert "no C++ compiler" in messages[1] and "eager fused kernel" in messages[1]
        torch.testing.assert_close(y, reference_of(m, x), **TOL[torch.float32])
        (gx_ref,) = torch.autograd.grad(reference_of(m, x).sum(), x)
        torch.testing.assert_close(gx, gx_ref, **TOL[torch.float32])
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # decided: eager, no more attempts
            m(x).sum().backward()
        backend, why = dispatch.explain("cpu", torch.float32, training=False)
        assert backend == "eager" and why.startswith("compiling failed earlier in this process (RuntimeError"), why
    finally:
        dispatch.reset_kernels()
    monkeypatch.setenv(dispatch.ENV_VAR, "compile")
    monkeypatch.setattr(compiled, "_compile", broken_compile)
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        unit().eval()(torch.randn(40))
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):  # remembered: raised again, not retried
        unit().eval()(torch.randn(40))
    assert dispatch.explain("cpu", torch.float32, training=False)[0] == "error"
    dispatch.reset_kernels()


# --------------------------------------------------------------------------------------------
# the dispatcher: what explain() says is what runs, decided once per key
# --------------------------------------------------------------------------------------------


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the backends that ran, in order ("fwd:native", "bwd:native", "reference")."""
    log = spy_on_backends(monkeypatch, (backends.NATIVE, backends.COMPILE, backends.EAGER))
    real_direct = backends.NATIVE.direct

    def direct_spy(key: Any) -> Any:
        call = real_direct(key)
        if call is None:
            return None

        def logged(*args: torch.Tensor) -> torch.Tensor:
            log.append("fwd:native")
            y = call(*args)
            if y.grad_fn is not None:  # runs after the C++ backward node has run
                y.grad_fn.register_hook(lambda *_: log.append("bwd:native"))
            return y

        return logged

    monkeypatch.setattr(backends.NATIVE, "direct", direct_spy)
    monkeypatch.setattr(dispatch, "_choices", {})  # decided again, with the spy's direct call
    return log


def _runs_as_explained(dtype: torch.dtype, ran: list[str]) -> None:
    """The default unit in training mode on a CPU input runs where explain() says, both ways."""
    backend, why = dispatch.explain("cpu", dtype)
    m, x = AdAct().train(), torch.randn(4, 6, 5, dtype=dtype, requires_grad=True)
    ran.clear()
    if backend == "error":
        with pytest.raises(RuntimeError):  # the forced backend's failure (NativeBuildError is one)
            m(x)
        return
    m(x).float().sum().backward()
    assert ran == (["reference"] if backend == "reference" else [f"fwd:{backend}", f"bwd:{backend}"]), (backend, why)
    assert dispatch.explain("cpu", dtype) == (backend, why)  # running changed nothing


@pytest.mark.parametrize("setting", dispatch.BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=["f32", "bf16", "f64"])
def test_explain_is_what_runs(monkeypatch: pytest.MonkeyPatch, ran: list[str], setting: str, dtype: torch.dtype) -> None:
    monkeypatch.setenv(dispatch.ENV_VAR, setting)
    _runs_as_explained(dtype, ran)
    expected = {"off": "reference", "eager": "eager"}.get(setting)
    if dtype == torch.float64 and setting != "off":
        expected = "eager"
    if expected is not None:
        assert dispatch.explain("cpu", dtype)[0] == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_explain_is_what_runs_after_failures(monkeypatch: pytest.MonkeyPatch, ran: list[str], dtype: torch.dtype) -> None:
    """auto after a failed native build, then after a compile failing at first use: explain() follows."""
    monkeypatch.setattr(native, "native_kernels", no_native)
    dispatch.reset_kernels()
    try:
        with pytest.warns(RuntimeWarning, match="native C\\+\\+ kernels failed"):
            assert dispatch.explain("cpu", torch.float32) == ("compile", "the native build failed: no C++ compiler found")
        _runs_as_explained(dtype, ran)
        assert ran[0] == "fwd:compile"
        # The compiled kernels now fail at their first call (a fresh process: nothing compiled yet).
        backends.forget()
        monkeypatch.setattr(compiled, "_compile", broken_compile)
        m, x = AdAct().train(), torch.randn(4, 6, 5, dtype=dtype, requires_grad=True)
        ran.clear()
        with pytest.warns(RuntimeWarning, match="eager fused kernels instead"):
            m(x).float().sum().backward()
        assert ran == ["fwd:compile", "fwd:eager", "bwd:eager"]  # the failing call itself was rerun eagerly
        backend, why = dispatch.explain("cpu", dtype)
        assert backend == "eager" and "compiling failed earlier" in why
        _runs_as_explained(dtype, ran)
    finally:
        dispatch.reset_kernels()


def test_choose_is_cached_per_key_and_environment(monkeypatch: pytest.MonkeyPatch, ran: list[str]) -> None:
    decided: list[dispatch.DispatchKey] = []
    real = dispatch._decide
    monkeypatch.setattr(dispatch, "_decide", lambda key: decided.append(key) or real(key))
    monkeypatch.setattr(dispatch, "_choices", {})
    m, x = AdAct().train(), torch.randn(4, 6, 5, requires_grad=True)
    for _ in range(3):
        m(x).sum().backward()
    assert len(decided) == 1  # one decision serves every forward and backward of that key
    first = ran[0]
    monkeypatch.setenv(dispatch.ENV_VAR, "eager")
    ran.clear()
    m(x).sum().backward()
    assert len(decided) == 2 and decided[1].env.fused == "eager" and ran == ["fwd:eager", "bwd:eager"]
    monkeypatch.setenv(dispatch.ENV_VAR, " AUTO ")  # another spelling of auto: the same decision
    ran.clear()
    m(x).sum().backward()
    assert len(decided) == 2 and ran[0] == first
    m.eval()(x)  # another key: decided afresh
    assert len(decided) == 3 and not decided[2].training
    choice = dispatch.choose(decided[0])
    assert choice is dispatch.choose(decided[0])
    assert [r.backend for r in choice.rejected] == [b.name for b in backends.ORDER[: len(choice.rejected)]]


def test_choice_names_why_better_backends_were_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    choice = dispatch.choose(default_key(torch.bfloat16))
    assert choice.rejected[0] == dispatch.Rejection("native", "float32 inputs only", covered=False)
    key = keys.dispatch_key(torch.empty(3), torch.zeros(7, dtype=torch.float64), None, DEFAULT_CANDIDATES, True)
    assert "float32 parameters only" in dispatch.choose(key).rejected[0].reason
    gelu = keys.dispatch_key(torch.empty(3), torch.zeros(2), None, ("relu", "gelu"), False)
    choice = dispatch.choose(gelu)
    assert choice.backend is backends.GENERIC_COMPILE
    assert choice.rejected[0].reason == "no fused kernel for gelu (fused: relu, elu, leaky_relu, prelu, rrelu, silu, mish)"
    unknown = keys.dispatch_key(torch.empty(3), torch.zeros(2), None, ("relu", "swish9"), False)
    choice = dispatch.choose(unknown)
    assert choice.backend is backends.REFERENCE and "no fused kernel for swish9" in choice.reason
    bad = keys.dispatch_key(torch.empty(2, 3), torch.zeros(4, 7), torch.zeros(4), DEFAULT_CANDIDATES, False)
    assert bad.layout == "unsupported" and dispatch.choose(bad).backend is backends.REFERENCE
    monkeypatch.setenv(dispatch.ENV_VAR, "off")
    assert dispatch.explain("cuda", torch.float32) == ("reference", "ADACT_FUSED=off")
    with pytest.raises(ValueError, match="granularity 'row'; valid: layer, channel"):
        dispatch.explain("cpu", torch.float32, granularity="row")


def test_adact_uses_fused_path_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    import adact.unit as unit_module

    calls: list[str] = []
    real = fused_autograd.forward_impl
    monkeypatch.setattr(fused_autograd, "forward_impl", lambda *a: calls.append("fused") or real(*a))
    real_ref = unit_module.adact_reference
    monkeypatch.setattr(unit_module, "adact_reference", lambda *a: calls.append("reference") or real_ref(*a))
    real_ref_backend = backends.REFERENCE.forward
    monkeypatch.setattr(backends.REFERENCE, "forward", lambda *a: calls.append("reference") or real_ref_backend(*a))
    x = torch.randn(10, dtype=torch.float64)  # float64: the Python route (eager kernels)
    AdAct().double()(x)
    assert calls == ["fused"]
    calls.clear()
    AdAct()(x.float())  # float32 on CPU: the native torch op, no Python kernel call at all
    expected = [] if dispatch.explain("cpu", torch.float32)[0] == "native" else ["fused"]
    assert calls == expected
    calls.clear()
    AdAct(fused=False)(x)
    assert calls == ["reference"]


# --------------------------------------------------------------------------------------------
# CUDA (skipped without a device)
# --------------------------------------------------------------------------------------------


@CUDA
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_cuda_matches_reference(dtype: torch.dtype, granularity: str) -> None:
    m = unit(granularity).cuda().eval()
    x = make_input(torch.float32).cuda().to(dtype).requires_grad_()
    y = m(x)
    y_ref = reference_of(m, x.detach().float())
    tol = TOL[torch.float32] if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(y.float(), y_ref, **tol)
    y.float().sum().backward()
    assert torch.isfinite(m.logits.grad).all()


@CUDA
def test_cuda_training_noise_is_consistent() -> None:
    m = rrelu_only().cuda()
    x = -(torch.rand(10_000, device="cuda") + 0.1).requires_grad_()
    y = m(x)
    (gx,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(gx, (y / x).detach(), rtol=1e-6, atol=0.0)
    slope = (y / x).detach()
    assert float(slope.min()) >= RRELU_LOWER - 1e-6 and float(slope.max()) <= RRELU_UPPER + 1e-6
