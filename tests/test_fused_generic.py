"""Tests of the generic fused kernels (src/adact/fused/generic.py): pools outside the paper's seven.

Against :func:`adact.adact_reference`: values and the three gradients (float64: the eager generic
math; float32: the Inductor-compiled kernels), both layouts, a per-channel slope, eval-mode RReLU,
extreme inputs (NaN where the reference gives NaN); the dispatcher's choice and reason for each
kind of pool; the fallbacks (a failed compile, ``ADACT_FUSED=eager``/``off``); memory (only the
input is kept for backward); and ``torch.compile`` of a model. Compiled variants are few (each
costs seconds to compile): most checks run the eager generic math, which is the same code.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from conftest import spy_on_backends
from torch import Tensor, nn

from adact import AdAct, adact_reference
from adact.activations import activation_functional, list_activations
from adact.fused import adact_fused, backends, compiled, dispatch, generic

TOL = {torch.float64: dict(rtol=1e-6, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6)}
GELU_POOL = ("gelu", "relu", "silu", "relu2")
GELU_TANH_POOL = ("gelu_tanh", "relu", "silu")
SLOPE_POOL = ("tanh", "hardswish", "prelu")
REST_POOL = ("elu", "leaky_relu", "rrelu", "mish", "sigmoid", "softplus", "selu", "celu", "hardtanh", "relu6",
             "identity")  # fmt: skip
#: Values where the candidates' formulas branch, saturate or overflow.
SPECIAL = [float("inf"), -float("inf"), float("nan"), 1e30, -1e30, 0.0, -0.0, 1e-3, -1e-3, 1.0, -1.0, 3.0, -3.0,
           6.0, -6.0, 20.0, 20.5, -20.0, 88.0, -88.0, 1e4, -1e4]  # fmt: skip


@pytest.fixture(autouse=True)
def _auto_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts on the default backend choice."""
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)


def randomized(candidates: tuple[str, ...], granularity: str = "layer", c: int = 6, **kw: Any) -> AdAct:
    extra = dict(granularity="channel", num_channels=c) if granularity == "channel" else {}
    m = AdAct(candidates=candidates, **extra, **kw)
    with torch.no_grad():
        m.logits.normal_(0.0, 1.5)
        if m.prelu_weight is not None:
            m.prelu_weight.uniform_(-0.5, 0.8)
    return m


def params(m: AdAct, x: Tensor) -> list[Tensor]:
    return [x, m.logits] + ([m.prelu_weight] if m.prelu_weight is not None else [])


def reference_of(m: AdAct, x: Tensor, training: bool = False) -> Tensor:
    return adact_reference(x, m.logits, m.prelu_weight, m.candidates, training)


def either(check: Callable[[Any], None], *variants: Any) -> None:
    """``check`` passes for one of the variants of the reference.

    ATen's own kernels disagree with each other at some non-finite inputs, and which way depends
    on the ISA: float32 GELU at +inf is inf on its scalar path and on AVX2, NaN in its AVX-512
    vectorised loop. adact's kernels give one answer on every ISA, so a test accepts either of
    ATen's (the vectorised and the scalar one), never a third.
    """
    failures: list[AssertionError] = []
    for v in variants:
        try:
            check(v)
            return
        except AssertionError as e:
            failures.append(e)
    raise failures[0]


def same_specials(a: Tensor, b: Tensor, **tol: float) -> None:
    """Equal NaN and inf positions (inf signs too), and close finite values."""
    assert torch.equal(a.isnan(), b.isnan()), (a, b)
    assert torch.equal(a.isinf(), b.isinf()) and torch.equal(a[a.isinf()], b[b.isinf()]), (a, b)
    finite = a.isfinite()
    torch.testing.assert_close(a[finite], b[finite], **tol)


def check_against_reference(m: AdAct, x: Tensor, dtype: torch.dtype) -> None:
    x = x.to(dtype).requires_grad_()
    m = m.to(dtype)
    g = torch.randn_like(x)
    y, y_ref = m(x), reference_of(m, x, m.training)
    torch.testing.assert_close(y, y_ref, **TOL[dtype])
    got, want = torch.autograd.grad(y, params(m, x), g), torch.autograd.grad(y_ref, params(m, x), g)
    torch.testing.assert_close(got[0], want[0], **TOL[dtype])
    for a, b in zip(got[1:], want[1:]):  # sums over the input in another order: at the sum's scale
        torch.testing.assert_close(a, b, rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["rtol"] * float(b.abs().max()))


# --------------------------------------------------------------------------------------------
# the table: every candidate, alone, equals its registry function and autograd, extremes included
# --------------------------------------------------------------------------------------------


def test_the_table_covers_the_registry() -> None:
    assert set(generic.GENERIC_CANDIDATES) == set(list_activations())
    assert "relu2" in generic.GENERIC_CANDIDATES and "gelu" in generic.GENERIC_CANDIDATES


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", sorted(generic.GENERIC_CANDIDATES))
def test_each_candidate_value_and_derivative(name: str, dtype: torch.dtype) -> None:
    """The kernels' per-candidate formulas against F.* and autograd, on extreme and branch-point inputs."""
    x = torch.cat([torch.tensor(SPECIAL, dtype=dtype), torch.randn(64, dtype=dtype) * 4])
    w = torch.tensor([0.3], dtype=dtype)
    fn = activation_functional(name)

    def reference(split: bool) -> tuple[Tensor, Tensor]:
        # split: every special value alone, so ATen computes it on its scalar path, not its vectorised one
        xr = x.clone().requires_grad_()
        parts = [xr[i : i + 1] for i in range(len(SPECIAL))] + [xr[len(SPECIAL):]] if split else [xr]
        y_ref = torch.cat([fn(p, w, False) for p in parts])
        (d_ref,) = torch.autograd.grad(y_ref, xr, torch.ones_like(y_ref))
        return y_ref.detach(), d_ref

    flags = generic.generic_flags((name,), False)
    coef = torch.tensor([1.0, 0.3], dtype=dtype)  # weight 1, slope 0.3
    y = generic.generic_forward(x, coef, flags)
    grad = torch.ones_like(x)
    gx, sums = generic.generic_backward(grad, x, coef, flags)

    def check(ref: tuple[Tensor, Tensor]) -> None:
        same_specials(y, ref[0], **TOL[dtype])
        same_specials(gx, ref[1], **TOL[dtype])
        torch.testing.assert_close(sums[0], ref[0].sum(), **TOL[dtype], equal_nan=True)  # S_k = sum(g * f_k)

    either(check, reference(False), reference(True))
    y_ref = reference(False)[0]
    finite = x.isfinite()
    _, finite_sums = generic.generic_backward(grad[finite], x[finite], coef, flags)
    torch.testing.assert_close(finite_sums[0], y_ref.detach()[finite].sum(), **TOL[dtype])


def test_absent_terms_are_left_out_not_multiplied_by_zero() -> None:
    """relu2 at inf is inf: a pool without it stays finite there, and one with it is inf, not NaN."""
    x = torch.tensor([float("inf"), 1e30, -1e30])
    m = randomized(("identity", "hardtanh", "relu6")).eval()
    torch.testing.assert_close(m(x), reference_of(m, x))
    m2 = randomized(("hardtanh", "relu2")).eval()
    y = m2(x)
    assert torch.equal(y.isinf(), torch.tensor([True, True, False])) and not y.isnan().any()


# --------------------------------------------------------------------------------------------
# pools against the reference
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("granularity", ["layer", "channel"])
@pytest.mark.parametrize("pool", [GELU_POOL, SLOPE_POOL, REST_POOL], ids=["gelu", "slope", "rest"])
def test_float64_matches_reference(pool: tuple[str, ...], granularity: str) -> None:
    m = randomized(pool, granularity).eval()
    check_against_reference(m, torch.randn(4, 6, 30, dtype=torch.float64) * 3, torch.float64)
    assert dispatch.explain("cpu", torch.float64, pool, granularity, False)[0] == "generic-eager"


@pytest.mark.parametrize(
    "pool, granularity", [(GELU_POOL, "layer"), (GELU_POOL, "channel"), (SLOPE_POOL, "channel")],
    ids=["gelu-layer", "gelu-channel", "slope-channel"],
)  # fmt: skip
def test_float32_compiled_matches_reference(pool: tuple[str, ...], granularity: str) -> None:
    m = randomized(pool, granularity).eval()
    assert dispatch.explain("cpu", torch.float32, pool, granularity, False)[0] == "generic-compile"
    check_against_reference(m, torch.randn(4, 6, 30) * 3, torch.float32)


def test_eager_math_matches_reference_in_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(dispatch.ENV_VAR, "eager")
    for pool in (REST_POOL, SLOPE_POOL):
        check_against_reference(randomized(pool).eval(), torch.randn(4, 6, 30) * 3, torch.float32)


def test_one_slope_shared_by_every_channel() -> None:
    """Per-channel logits (C, K) with a single PReLU slope (1,): the slope's gradient sums the channels."""
    x = (torch.randn(3, 5, 7, dtype=torch.float64) * 2).requires_grad_()
    logits = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    w = torch.tensor([0.2], dtype=torch.float64, requires_grad=True)
    y = adact_fused(x, logits, w, SLOPE_POOL, False)
    y_ref = adact_reference(x, logits, w, SLOPE_POOL, False)
    torch.testing.assert_close(y, y_ref)
    g = torch.randn_like(y)
    for a, b in zip(torch.autograd.grad(y, [x, logits, w], g), torch.autograd.grad(y_ref, [x, logits, w], g)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("granularity", ["layer", "channel"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_gelu_tanh_pool_matches_reference_through_the_fused_path(dtype: torch.dtype, granularity: str) -> None:
    """GPT-2's GELU in a pool: the generic kernels (eager in float64, compiled in float32) equal the reference."""
    m = randomized(GELU_TANH_POOL, granularity).eval()
    want = "generic-eager" if dtype == torch.float64 else "generic-compile"
    assert dispatch.explain("cpu", dtype, GELU_TANH_POOL, granularity, False)[0] == want
    check_against_reference(m, torch.randn(4, 6, 30, dtype=dtype) * 3, dtype)


def test_eval_mode_rrelu_in_a_custom_pool() -> None:
    m = randomized(("rrelu", "gelu")).double().eval()
    assert dispatch.explain("cpu", torch.float64, m.candidates, training=False)[0] == "generic-eager"
    check_against_reference(m, torch.randn(200, dtype=torch.float64) * 3, torch.float64)


@pytest.mark.parametrize(
    "pool",
    [("relu2", "identity", "hardtanh"), ("relu6", "leaky_relu", "prelu", "hardswish"), GELU_POOL, GELU_TANH_POOL],
    ids=["relu2", "slopes", "gelu", "gelu_tanh"],
)  # fmt: skip
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_extreme_inputs_equal_the_reference(dtype: torch.dtype, pool: tuple[str, ...]) -> None:
    """+-inf, NaN, +-1e30 and 0 through whole pools: values and all three gradients, NaN where the reference's are."""
    special = torch.tensor([float("inf"), -float("inf"), float("nan"), 1e30, -1e30, 0.0, 1.0, -2.0], dtype=dtype)
    m = randomized(pool).to(dtype).eval()
    for i in range(special.numel()):  # one special value per call, so that NaN sums do not hide the rest
        # First of 64: where ATen's vectorised loop computes it (its scalar tail differs at NaN).
        x = torch.cat([special[i : i + 1], torch.randn(63, dtype=dtype)]).requires_grad_()
        y = m(x)
        got = torch.autograd.grad(y.sum(), params(m, x))

        def reference(split: bool) -> tuple[Tensor, tuple[Tensor, ...]]:
            # split: the special value alone, on ATen's scalar path (see either())
            xr = x.detach().clone().requires_grad_()
            y_ref = torch.cat([reference_of(m, xr[:1]), reference_of(m, xr[1:])]) if split else reference_of(m, xr)
            return y_ref, torch.autograd.grad(y_ref.sum(), params(m, xr))

        def check(ref: tuple[Tensor, tuple[Tensor, ...]]) -> None:
            same_specials(y, ref[0], **TOL[dtype])
            for a, b in zip(got, ref[1]):
                same_specials(a, b, rtol=1e-5, atol=1e-5)

        either(check, reference(False), reference(True))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
def test_low_precision_inputs_compute_in_float32(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(dispatch.ENV_VAR, "eager")  # the same math as the compiled kernels, no compile
    m = randomized(GELU_POOL).eval()
    x = (torch.randn(4, 6, 20) * 3).to(dtype).requires_grad_()
    y = m(x)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), reference_of(m, x.detach().float()), rtol=1e-2, atol=1e-2)
    (gx,) = torch.autograd.grad(y.float().sum(), x)
    assert gx.dtype == dtype and torch.isfinite(gx).all()


# --------------------------------------------------------------------------------------------
# the dispatcher
# --------------------------------------------------------------------------------------------


def test_explain_for_each_kind_of_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    assert dispatch.explain("cpu", torch.float32, GELU_POOL) == (
        "generic-compile", "a pool outside the paper's seven: the generic kernels, Inductor (C++)"
    )  # fmt: skip
    assert dispatch.explain("cpu", torch.float64, GELU_POOL)[0] == "generic-eager"
    # The paper's pools never reach the generic kernels.
    for pool in (("relu", "silu"), ("rrelu", "mish"), ("prelu",)):
        assert dispatch.explain("cpu", torch.float32, pool)[0] in ("native", "compile"), pool
        assert dispatch.explain("cpu", torch.float64, pool)[0] == "eager", pool
    backend, why = dispatch.explain("cpu", torch.float32, ("gelu", "rrelu"), training=True)
    assert backend == "reference" and "training-mode rrelu" in why, why
    assert dispatch.explain("cpu", torch.float32, ("gelu", "rrelu"), training=False)[0] == "generic-compile"
    backend, why = dispatch.explain("cpu", torch.float32, ("gelu", "swish9"))
    assert backend == "reference" and why.startswith("no fused kernel for swish9 (generic: relu, "), why
    backend, why = dispatch.explain("cpu", torch.int64, GELU_POOL)
    assert backend == "reference" and "no fused kernels for torch.int64" in why, why
    monkeypatch.setenv(dispatch.ENV_VAR, "eager")
    assert dispatch.explain("cpu", torch.float32, GELU_POOL) == ("generic-eager", "ADACT_FUSED=eager")
    monkeypatch.setenv(dispatch.ENV_VAR, "off")
    assert dispatch.explain("cpu", torch.float32, GELU_POOL) == ("reference", "ADACT_FUSED=off")
    monkeypatch.setenv(dispatch.ENV_VAR, "compile")
    assert dispatch.explain("cpu", torch.float32, GELU_POOL)[0] == "generic-compile"


def test_unsupported_layout_goes_to_the_reference() -> None:
    x, logits, slope = torch.randn(2, 3), torch.zeros(4, 3), torch.zeros(4)  # 4 channels but x has 3
    key = dispatch.DispatchKey("cpu", torch.float32, SLOPE_POOL, "unsupported", False, (torch.float32,) * 2,
                               dispatch.current_env())  # fmt: skip
    choice = dispatch.choose(key)
    assert choice.backend is backends.REFERENCE and "fit neither layout" in choice.reason
    with pytest.raises(RuntimeError):  # the reference's own shape error: nothing fused tried it
        adact_fused(x, logits, slope, SLOPE_POOL, False)


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The generic backends that ran ("fwd:generic-eager", ...) and "reference", in order."""
    return spy_on_backends(monkeypatch, (backends.GENERIC_COMPILE, backends.GENERIC_EAGER))


def test_what_runs_is_what_explain_says(monkeypatch: pytest.MonkeyPatch, ran: list[str]) -> None:
    x = torch.randn(4, 6, 5, requires_grad=True)
    m = randomized(GELU_POOL).train()
    m(x).sum().backward()
    assert ran == ["fwd:generic-compile", "bwd:generic-compile"]
    monkeypatch.setenv(dispatch.ENV_VAR, "eager")
    ran.clear()
    m(x).sum().backward()
    assert ran == ["fwd:generic-eager", "bwd:generic-eager"]
    monkeypatch.setenv(dispatch.ENV_VAR, "off")
    ran.clear()
    m(x).sum().backward()
    assert ran == ["reference"]
    monkeypatch.delenv(dispatch.ENV_VAR)
    ran.clear()
    noisy = randomized(("gelu", "rrelu")).train()
    noisy(x).sum().backward()
    assert ran == ["reference"]


def broken_compile(key: dispatch.FusedKernelKey) -> object:
    def kernel(*args: object) -> object:
        raise RuntimeError("no C++ compiler")

    return kernel


def test_compile_failure_falls_back_to_the_eager_generic_math(monkeypatch: pytest.MonkeyPatch, ran: list[str]) -> None:
    monkeypatch.setattr(compiled, "_compile", broken_compile)
    dispatch.reset_kernels()
    try:
        m = randomized(GELU_POOL).eval()
        x = (torch.randn(40) * 3).requires_grad_()
        with pytest.warns(RuntimeWarning) as record:
            y = m(x)
            (gx,) = torch.autograd.grad(y.sum(), x)
        messages = [str(r.message) for r in record]
        assert len(messages) == 1, messages
        assert "Inductor-compiled generic kernels failed" in messages[0] and "eager generic kernels" in messages[0]
        assert ran == ["fwd:generic-compile", "fwd:generic-eager", "bwd:generic-eager"]
        torch.testing.assert_close(y, reference_of(m, x), **TOL[torch.float32])
        (gx_ref,) = torch.autograd.grad(reference_of(m, x).sum(), x)
        torch.testing.assert_close(gx, gx_ref, **TOL[torch.float32])
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # decided: eager, no more attempts, no more warnings
            m(x).sum().backward()
        backend, why = dispatch.explain("cpu", torch.float32, GELU_POOL, training=False)
        assert backend == "generic-eager" and why.startswith("compiling failed earlier in this process (RuntimeError")
        # Forced compile: the failure is raised, not hidden.
        monkeypatch.setenv(dispatch.ENV_VAR, "compile")
        assert dispatch.explain("cpu", torch.float32, GELU_POOL, training=False)[0] == "error"
        with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
            m(x)
    finally:
        dispatch.reset_kernels()


# --------------------------------------------------------------------------------------------
# the unit: trains, keeps only the input, compiles in a model
# --------------------------------------------------------------------------------------------


def test_a_custom_pool_unit_trains_and_saves_only_the_input() -> None:
    m = AdAct(candidates=["gelu", "relu", "silu", "relu2", "prelu"], granularity="channel", num_channels=8)
    x = torch.randn(4, 8, 16, 16, requires_grad=True)
    saved: list[Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = m(x)
    big = [t for t in saved if t.numel() > 100]
    assert len(big) == 1 and big[0].untyped_storage().data_ptr() == x.untyped_storage().data_ptr(), [
        tuple(t.shape) for t in saved
    ]
    # the logits, the kernels' coefficients (C x (K + 1)), the slope, a seed, the temperature
    assert sum(t.numel() for t in saved if t.numel() <= 100) <= 2 * m.logits.numel() + 3 * 8 + 2
    y.square().mean().backward()
    assert m.logits.grad is not None and m.logits.grad.abs().sum() > 0
    assert m.prelu_weight is not None and m.prelu_weight.grad is not None and x.grad is not None
    # A few steps of SGD move the mixture and lower a simple loss.
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    target = torch.relu(x.detach()) * 2.0
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = (m(x.detach()) - target).square().mean()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_torch_compile_of_a_model_with_a_custom_pool() -> None:
    """fullgraph: no graph break; the custom op runs the generic kernels, with the eager model's numbers."""
    net = nn.Sequential(nn.Linear(6, 16), randomized(GELU_POOL), nn.Linear(16, 8),
                        randomized(GELU_POOL, "channel", c=8), nn.Linear(8, 2)).train()  # fmt: skip
    compiled_net = torch.compile(net, fullgraph=True)
    x = torch.randn(32, 6)
    runs = []
    for model in (compiled_net, net):
        xi = x.clone().requires_grad_()
        y = model(xi)
        runs.append((y, *torch.autograd.grad(y.square().sum(), [xi, *net.parameters()])))
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
