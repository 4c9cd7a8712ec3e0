"""Tests of the AdAct unit (src/adact/unit.py).

The reference every path is checked against is written here from ``torch.nn`` modules, in
float64, independently of :func:`adact.adact_reference`. Equivalence tests run on both the
reference path (``fused=False``) and the default fused path (``fused=True``), which must give
the same values (it may fall back to the reference where the kernel does not apply).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from adact import DEFAULT_CANDIDATES, AdAct

FUSED = pytest.mark.parametrize("fused", [False, True], ids=["reference", "fused"])

RRELU_EVAL_SLOPE = (1.0 / 8.0 + 1.0 / 3.0) / 2.0

# Extreme values every path must handle: huge magnitudes, exact zero, and the range where
# exp() under/overflows in float32 (-88, -100, +-1e4).
EXTREMES = [1e4, -1e4, 0.0, -0.0, -88.0, -100.0, 88.0, 100.0, -20.0, 20.0, 1e-30, -1e-30]

# Tolerances for comparing against the float64 nn reference. float64 is only 1e-6 relative
# here because the unit currently takes softmax in float32 even for float64 logits; that
# precision loss is pinned separately by test_float64_keeps_float64_precision / gradcheck.
TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float64: dict(rtol=1e-6, atol=1e-7),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
}


def nn_modules(slope: Tensor) -> list[nn.Module]:
    """The paper's pool as torch.nn modules (float64), PReLU carrying ``slope`` ((1,) or scalar)."""
    prelu = nn.PReLU(num_parameters=1).double()
    with torch.no_grad():
        prelu.weight.copy_(slope.detach().reshape(1).double())
    mods = [nn.ReLU(), nn.ELU(), nn.LeakyReLU(), prelu, nn.RReLU(), nn.SiLU(), nn.Mish()]
    for m in mods:
        m.eval()
    return mods


def nn_reference(x: Tensor, logits: Tensor, slope: Tensor) -> Tensor:
    """sum_k softmax(logits)_k * module_k(x), in float64, eval mode, layer granularity."""
    xd = x.detach().double()
    p = torch.softmax(logits.detach().double(), dim=-1)
    out = torch.zeros_like(xd)
    for k, m in enumerate(nn_modules(slope)):
        out = out + p[k] * m(xd)
    return out


def nn_reference_channel(x: Tensor, logits: Tensor, slope: Tensor) -> Tensor:
    """Per-channel reference: channel c of dim 1 uses logits[c] and slope[c]."""
    return torch.stack(
        [nn_reference(x[:, c], logits[c], slope[c]) for c in range(x.shape[1])], dim=1
    )


def random_input(shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
    return (torch.randn(shape, dtype=torch.float64) * 3).to(dtype)


def extreme_input(dtype: torch.dtype) -> Tensor:
    return torch.cat([torch.tensor(EXTREMES, dtype=torch.float64), torch.randn(20, dtype=torch.float64)]).to(dtype)


def away_from_zero(shape: tuple[int, ...]) -> Tensor:
    """float64 input with |x| >= 0.2 so finite differences never straddle a kink at 0."""
    x = torch.randn(shape, dtype=torch.float64)
    return x + 0.2 * torch.where(x >= 0, 1.0, -1.0)


def randomize(m: AdAct) -> AdAct:
    with torch.no_grad():
        m.logits.normal_(0.0, 1.5)
        m.prelu_weight.uniform_(-0.5, 0.8)
    return m


# --------------------------------------------------------------------------------------------
# equivalence with the nn reference
# --------------------------------------------------------------------------------------------


@FUSED
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", ["random", "extreme"])
def test_matches_nn_reference_layer(fused: bool, dtype: torch.dtype, kind: str) -> None:
    m = randomize(AdAct(fused=fused)).to(dtype).eval()
    x = random_input((4, 5, 6), dtype) if kind == "random" else extreme_input(dtype)
    with torch.no_grad():
        y = m(x)
    assert y.dtype == dtype and y.shape == x.shape
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), nn_reference(x, m.logits, m.prelu_weight), **TOL[dtype])


@FUSED
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind", ["random", "extreme"])
def test_matches_nn_reference_channel(fused: bool, dtype: torch.dtype, kind: str) -> None:
    c = 3
    m = randomize(AdAct(granularity="channel", num_channels=c, fused=fused)).to(dtype).eval()
    if kind == "random":
        x = random_input((2, c, 4, 5), dtype)
    else:
        x = extreme_input(dtype).reshape(1, 1, -1).repeat(2, c, 1)  # (2, C, L)
    with torch.no_grad():
        y = m(x)
    assert y.dtype == dtype and y.shape == x.shape
    assert torch.isfinite(y).all()
    torch.testing.assert_close(
        y.double(), nn_reference_channel(x, m.logits, m.prelu_weight), **TOL[dtype]
    )


@FUSED
def test_zero_logits_is_uniform_average(fused: bool) -> None:
    m = AdAct(fused=fused).eval()  # default init: zeros -> uniform mixture
    x = random_input((50,))
    expected = sum(mod(x.double()) for mod in nn_modules(torch.tensor(0.25))) / 7
    torch.testing.assert_close(m(x).double(), expected, **TOL[torch.float32])


@FUSED
@pytest.mark.parametrize("k", range(7), ids=list(DEFAULT_CANDIDATES))
def test_one_hot_logits_reproduce_candidate(fused: bool, k: int) -> None:
    m = AdAct(fused=fused).eval()
    with torch.no_grad():
        m.logits.zero_()
        m.logits[k] = 1e4  # softmax is exactly one-hot in float32
        m.prelu_weight.fill_(0.3)
    assert torch.equal(m.mixture(), nn.functional.one_hot(torch.tensor(k), 7).float())
    prelu = nn.PReLU(init=0.3)
    module = [nn.ReLU(), nn.ELU(), nn.LeakyReLU(), prelu, nn.RReLU(), nn.SiLU(), nn.Mish()][k].eval()
    x = torch.cat([random_input((200,)), extreme_input(torch.float32)])
    with torch.no_grad():
        y, expected = m(x), module(x)
    if fused:  # a fused kernel may evaluate the formula differently: float32 rounding only
        torch.testing.assert_close(y, expected)
    else:
        assert torch.equal(y, expected), (y - expected).abs().max()


@FUSED
def test_training_mode_equals_eval_mode_without_rrelu(fused: bool) -> None:
    """Only RReLU differs between train and eval; without it the two modes agree."""
    cands = ("relu", "elu", "leaky_relu", "prelu", "silu", "mish")
    m = randomize(AdAct(candidates=cands, fused=fused))
    x = random_input((3, 40))
    y_train = m.train()(x)
    y_eval = m.eval()(x)
    torch.testing.assert_close(y_train, y_eval)


@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_fused_and_reference_gradients_agree(granularity: str) -> None:
    kw = dict(granularity=granularity, num_channels=4 if granularity == "channel" else None)
    ref = randomize(AdAct(fused=False, **kw)).eval()
    fus = AdAct(fused=True, **kw).eval()
    fus.load_state_dict(ref.state_dict())
    x = random_input((3, 4, 5))
    g = torch.randn_like(x)
    grads = []
    for m in (ref, fus):
        xi = x.clone().requires_grad_()
        m.zero_grad()
        (m(xi) * g).sum().backward()
        grads.append((xi.grad, m.logits.grad, m.prelu_weight.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------------------------


def _functional(m: AdAct):
    def f(x: Tensor, logits: Tensor, prelu_weight: Tensor) -> Tensor:
        return torch.func.functional_call(m, {"logits": logits, "prelu_weight": prelu_weight}, (x,))

    return f


@FUSED
@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_gradcheck_x_and_prelu_weight(fused: bool, granularity: str) -> None:
    c = 3
    kw = dict(granularity=granularity, num_channels=c if granularity == "channel" else None)
    m = randomize(AdAct(fused=fused, **kw)).double().eval()
    x = away_from_zero((2, c, 4)).requires_grad_()
    logits = m.logits.detach().clone()
    w = m.prelu_weight.detach().clone().requires_grad_()
    f = _functional(m)
    assert torch.autograd.gradcheck(lambda x_, w_: f(x_, logits, w_), (x, w))


@FUSED
@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_gradcheck_logits(fused: bool, granularity: str) -> None:
    c = 3
    kw = dict(granularity=granularity, num_channels=c if granularity == "channel" else None)
    m = randomize(AdAct(fused=fused, **kw)).double().eval()
    x = away_from_zero((2, c, 4))
    logits = m.logits.detach().clone().requires_grad_()
    w = m.prelu_weight.detach().clone()
    f = _functional(m)
    assert torch.autograd.gradcheck(lambda l_: f(x, l_, w), (logits,))


@FUSED
def test_float64_keeps_float64_precision(fused: bool) -> None:
    m = randomize(AdAct(fused=fused)).double().eval()
    x = random_input((200,), torch.float64)
    with torch.no_grad():
        y = m(x)
    torch.testing.assert_close(y, nn_reference(x, m.logits, m.prelu_weight), rtol=1e-12, atol=1e-12)


@FUSED
def test_training_backward_reaches_all_parameters(fused: bool) -> None:
    m = randomize(AdAct(fused=fused)).train()
    x = random_input((8, 16)).requires_grad_()
    m(x).pow(2).sum().backward()
    for p in (x.grad, m.logits.grad, m.prelu_weight.grad):
        assert p is not None and torch.isfinite(p).all() and p.abs().sum() > 0
    # softmax: the logits gradient sums to zero (adding a constant to all logits changes nothing)
    assert abs(float(m.logits.grad.sum())) < 1e-4 * float(m.logits.grad.abs().sum())


# --------------------------------------------------------------------------------------------
# reading the choice
# --------------------------------------------------------------------------------------------


def test_mixture_sums_to_one_layer() -> None:
    m = AdAct(init="normal", init_scale=2.0)
    p = m.mixture()
    assert p.shape == (7,)
    assert (p > 0).all()
    torch.testing.assert_close(p.sum(), torch.tensor(1.0))
    assert not p.requires_grad


def test_mixture_sums_to_one_channel() -> None:
    m = AdAct(granularity="channel", num_channels=5, init="uniform", init_scale=3.0)
    p = m.mixture()
    assert p.shape == (5, 7)
    torch.testing.assert_close(p.sum(-1), torch.ones(5))


def test_weights_dict_and_raw_weights() -> None:
    m = randomize(AdAct())
    d = m.weights_dict()
    assert list(d) == list(DEFAULT_CANDIDATES)
    assert math.isclose(sum(d.values()), 1.0, rel_tol=1e-6)
    torch.testing.assert_close(m.raw_weights(), m.logits.detach())
    mc = randomize(AdAct(granularity="channel", num_channels=4))
    assert math.isclose(sum(mc.weights_dict().values()), 1.0, rel_tol=1e-6)


@pytest.mark.parametrize("k", range(7))
def test_dominant_is_argmax_name(k: int) -> None:
    m = AdAct()
    with torch.no_grad():
        m.logits.copy_(torch.linspace(-1.0, 0.5, 7))
        m.logits[k] = 1.0
    assert m.dominant() == DEFAULT_CANDIDATES[k]


def test_dominant_per_channel_is_a_list() -> None:
    c = 6
    m = AdAct(granularity="channel", num_channels=c)
    winners = [3, 0, 6, 6, 2, 5]
    with torch.no_grad():
        m.logits.normal_(0, 0.1)
        for ch, k in enumerate(winners):
            m.logits[ch, k] = 2.0
    dom = m.dominant()
    assert isinstance(dom, list) and len(dom) == c
    assert dom == [DEFAULT_CANDIDATES[k] for k in winners]


def test_dominant_respects_custom_pool_order() -> None:
    m = AdAct(candidates=["mish", "gelu", "relu"])
    with torch.no_grad():
        m.logits.copy_(torch.tensor([0.0, 3.0, 1.0]))
    assert m.dominant() == "gelu"


# --------------------------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------------------------


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_default_unit_has_8_parameters() -> None:
    m = AdAct()
    assert n_params(m) == 8
    assert m.logits.shape == (7,) and m.prelu_weight.shape == (1,)
    assert {n for n, _ in m.named_parameters()} == {"logits", "prelu_weight"}


@pytest.mark.parametrize("c", [1, 5, 32])
def test_channel_unit_has_8_parameters_per_channel(c: int) -> None:
    m = AdAct(granularity="channel", num_channels=c)
    assert n_params(m) == c * 7 + c
    assert m.logits.shape == (c, 7) and m.prelu_weight.shape == (c,)


@FUSED
def test_custom_pool_without_prelu_has_no_slope(fused: bool) -> None:
    """A pool without PReLU has no slope parameter: K candidates give K parameters."""
    m = AdAct(candidates=["relu", "silu", "gelu"], fused=fused)
    assert n_params(m) == 3
    assert m.prelu_weight is None
    x = random_input((30,))
    m(x).sum().backward()
    assert m.logits.grad is not None and torch.isfinite(m.logits.grad).all()


# --------------------------------------------------------------------------------------------
# RReLU semantics
# --------------------------------------------------------------------------------------------


def _rrelu_only(fused: bool) -> AdAct:
    m = AdAct(fused=fused)
    with torch.no_grad():
        m.logits.zero_()
        m.logits[DEFAULT_CANDIDATES.index("rrelu")] = 1e4
    return m


@FUSED
def test_rrelu_eval_uses_mean_slope(fused: bool) -> None:
    m = _rrelu_only(fused).eval()
    x = -torch.rand(1000) * 10 - 1e-3
    y = m(x)
    torch.testing.assert_close(y, x * RRELU_EVAL_SLOPE, rtol=1e-6, atol=0.0)
    # deterministic in eval mode
    assert torch.equal(m(x), y)


@FUSED
def test_rrelu_train_draws_random_slopes(fused: bool) -> None:
    m = _rrelu_only(fused).train()
    neg = -torch.rand(20000) * 10 - 0.1
    pos = torch.rand(1000) * 10
    x = torch.cat([neg, pos])
    with torch.no_grad():
        y = m(x)
    ratio = y[: neg.numel()] / neg
    assert (ratio >= 1 / 8 - 1e-6).all() and (ratio <= 1 / 3 + 1e-6).all()
    assert ratio.unique().numel() > 100  # varies across elements
    assert abs(float(ratio.mean()) - RRELU_EVAL_SLOPE) < 0.005  # U(1/8, 1/3) has mean = eval slope
    assert torch.equal(y[neg.numel() :], pos)  # positives pass unchanged
    with torch.no_grad():
        assert not torch.equal(m(x), y)  # a fresh draw per call


# --------------------------------------------------------------------------------------------
# shapes, dtypes, autocast, compile
# --------------------------------------------------------------------------------------------


@FUSED
@pytest.mark.parametrize("shape", [(7,), (3, 4), (2, 3, 2, 2, 3)], ids=["1d", "2d", "5d"])
def test_layer_granularity_accepts_any_shape(fused: bool, shape: tuple[int, ...]) -> None:
    m = randomize(AdAct(fused=fused)).eval()
    x = random_input(shape)
    y = m(x)
    assert y.shape == x.shape
    # elementwise: the same as applying the unit to the flattened input
    torch.testing.assert_close(y.flatten(), m(x.flatten()))
    torch.testing.assert_close(y.double(), nn_reference(x, m.logits, m.prelu_weight), **TOL[torch.float32])


def test_layer_granularity_accepts_empty_and_scalar_input() -> None:
    m = AdAct(fused=False).eval()
    assert m(torch.empty(0, 3)).shape == (0, 3)
    y = m(torch.tensor(-2.0))
    assert y.shape == ()
    torch.testing.assert_close(y.double(), nn_reference(torch.tensor([-2.0]), m.logits, m.prelu_weight)[0])


@FUSED
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_output_dtype_matches_input(fused: bool, dtype: torch.dtype, granularity: str) -> None:
    kw = dict(granularity=granularity, num_channels=4 if granularity == "channel" else None)
    m = randomize(AdAct(fused=fused, **kw)).eval()  # float32 parameters
    x = random_input((2, 4, 6), dtype)
    with torch.no_grad():
        y = m(x)
    assert y.dtype == dtype and y.shape == x.shape
    assert torch.isfinite(y).all()
    ref = (
        nn_reference_channel(x, m.logits, m.prelu_weight)
        if granularity == "channel"
        else nn_reference(x, m.logits, m.prelu_weight)
    )
    torch.testing.assert_close(y.double(), ref, **TOL[torch.bfloat16 if dtype == torch.bfloat16 else torch.float32])


@FUSED
def test_bfloat16_backward(fused: bool) -> None:
    m = randomize(AdAct(fused=fused)).to(torch.bfloat16)
    x = random_input((4, 32), torch.bfloat16).requires_grad_()
    m(x).float().sum().backward()
    assert x.grad.dtype == torch.bfloat16
    assert m.logits.grad.dtype == torch.bfloat16
    assert torch.isfinite(x.grad.float()).all() and torch.isfinite(m.logits.grad.float()).all()


@FUSED
def test_autocast_bfloat16_after_linear(fused: bool) -> None:
    lin = nn.Linear(8, 16)
    act = randomize(AdAct(fused=fused))
    x = torch.randn(4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = lin(x)
        y = act(h)
    assert h.dtype == torch.bfloat16
    assert y.dtype == h.dtype and y.shape == h.shape
    act.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_eval = act(lin(x))
    torch.testing.assert_close(
        y_eval.double(), nn_reference(h.detach(), act.logits, act.prelu_weight), **TOL[torch.bfloat16]
    )
    act.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = act(lin(x)).float().pow(2).mean()
    loss.backward()
    assert act.logits.grad is not None and torch.isfinite(act.logits.grad).all()
    assert lin.weight.grad is not None and torch.isfinite(lin.weight.grad).all()


@FUSED
@pytest.mark.parametrize("shape", [(2, 5, 3, 4), (2, 5, 7), (3, 5)], ids=["NCHW", "NCL", "NC"])
def test_channel_granularity_broadcasts(fused: bool, shape: tuple[int, ...]) -> None:
    m = randomize(AdAct(granularity="channel", num_channels=5, fused=fused)).eval()
    x = random_input(shape)
    y = m(x)
    assert y.shape == x.shape
    torch.testing.assert_close(
        y.double(), nn_reference_channel(x, m.logits, m.prelu_weight), **TOL[torch.float32]
    )


def test_channel_units_are_independent_per_channel() -> None:
    """Channel c depends only on logits[c] / prelu_weight[c]."""
    m = randomize(AdAct(granularity="channel", num_channels=4, fused=False)).eval()
    x = random_input((2, 4, 9))
    y = m(x)
    with torch.no_grad():
        m.logits[2] += torch.randn(7) * 3
        m.prelu_weight[2] = -1.0
    y2 = m(x)
    keep = [0, 1, 3]
    assert torch.equal(y[:, keep], y2[:, keep])
    assert not torch.equal(y[:, 2], y2[:, 2])


def _compile_check(backend: str) -> None:
    torch._dynamo.reset()
    model = nn.Sequential(nn.Linear(8, 16), AdAct(), nn.Linear(16, 3)).eval()
    randomize(model[1])
    x = torch.randn(5, 8)
    compiled = torch.compile(model, backend=backend)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)


def test_torch_compile_traces_and_matches_eager() -> None:
    """Dynamo + AOTAutograd tracing (aot_eager: no C++ build, ~1 s)."""
    _compile_check("aot_eager")


@pytest.mark.slow
def test_torch_compile_inductor_matches_eager() -> None:
    """The default torch.compile backend (inductor, builds C++: ~15 s on 2 cores)."""
    _compile_check("inductor")


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------


def test_unknown_candidate_lists_valid_names() -> None:
    with pytest.raises(ValueError) as exc:
        AdAct(candidates=["relu", "swishy"])
    msg = str(exc.value)
    assert "swishy" in msg
    for name in DEFAULT_CANDIDATES + ("gelu", "tanh"):
        assert name in msg


@pytest.mark.parametrize("cands", [[], (), ["relu", "relu"], ["relu", "ReLU"], ["elu", "silu", "elu"]])
def test_empty_or_duplicate_candidates(cands: list[str]) -> None:
    with pytest.raises(ValueError):
        AdAct(candidates=cands)


@pytest.mark.parametrize("cands", ["relu", "relu,elu"])
def test_candidates_as_string_is_type_error(cands: str) -> None:
    with pytest.raises(TypeError):
        AdAct(candidates=cands)


def test_bad_granularity() -> None:
    with pytest.raises(ValueError) as exc:
        AdAct(granularity="neuron")
    assert "layer" in str(exc.value) and "channel" in str(exc.value)


@pytest.mark.parametrize("num_channels", [None, 0, -3])
def test_channel_granularity_needs_positive_num_channels(num_channels: int | None) -> None:
    with pytest.raises(ValueError):
        AdAct(granularity="channel", num_channels=num_channels)


@pytest.mark.parametrize("shape", [(2, 3, 5), (2, 5), (8,), (4, 8, 8)])
def test_channel_input_mismatch_names_expected_shape(shape: tuple[int, ...]) -> None:
    m = AdAct(granularity="channel", num_channels=4)
    with pytest.raises(ValueError) as exc:
        m(torch.randn(shape))
    msg = str(exc.value)
    assert "(N, 4, *)" in msg
    assert str(tuple(shape)) in msg


@pytest.mark.parametrize("kwargs", [dict(init="xavier"), dict(init_scale=-0.1), dict(init_scale=float("nan"))])
def test_bad_init(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        AdAct(**kwargs)


# --------------------------------------------------------------------------------------------
# repr, reset, init
# --------------------------------------------------------------------------------------------


def test_extra_repr() -> None:
    r = repr(AdAct(candidates=["relu", "mish"]))
    assert "relu" in r and "mish" in r and "candidates" in r
    assert "granularity='layer'" in r
    rc = AdAct(granularity="channel", num_channels=3).extra_repr()
    assert "granularity='channel'" in rc and "num_channels=3" in rc
    for name in DEFAULT_CANDIDATES:
        assert name in rc


@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_reset_parameters_restores_defaults(granularity: str) -> None:
    kw = dict(granularity=granularity, num_channels=3 if granularity == "channel" else None)
    m = randomize(AdAct(**kw))
    assert m.logits.abs().sum() > 0
    m.reset_parameters()
    assert torch.equal(m.logits, torch.zeros_like(m.logits))
    assert torch.equal(m.prelu_weight, torch.full_like(m.prelu_weight, 0.25))
    torch.testing.assert_close(m.mixture(), torch.full_like(m.mixture(), 1 / 7))


def test_prelu_init_is_used() -> None:
    m = AdAct(granularity="channel", num_channels=4, prelu_init=0.1)
    assert torch.equal(m.prelu_weight.detach(), torch.full((4,), 0.1))


@pytest.mark.parametrize("scale", [0.1, 2.0])
def test_init_normal_spread(scale: float) -> None:
    m = AdAct(granularity="channel", num_channels=300, init="normal", init_scale=scale)
    w = m.logits.detach()
    assert (w != 0).all()
    assert abs(float(w.mean())) < 0.1 * scale
    assert 0.9 * scale < float(w.std()) < 1.1 * scale  # 2100 draws of N(0, scale^2)
    assert float(w.abs().max()) < 6 * scale


@pytest.mark.parametrize("scale", [0.1, 2.0])
def test_init_uniform_spread(scale: float) -> None:
    m = AdAct(granularity="channel", num_channels=300, init="uniform", init_scale=scale)
    w = m.logits.detach()
    assert (w != 0).all()
    assert float(w.abs().max()) <= scale
    assert float(w.abs().max()) > 0.95 * scale  # fills the interval
    assert abs(float(w.std()) - scale / math.sqrt(3)) < 0.1 * scale


def test_random_inits_differ_between_units_and_reset() -> None:
    m = AdAct(init="normal")
    first = m.logits.detach().clone()
    m.reset_parameters()
    assert not torch.equal(first, m.logits.detach())
    assert (m.logits != 0).all()


def test_temperature_changes_take_effect_however_made() -> None:
    """T = 1 skips the division; every way of changing the buffer is seen at the next call."""
    import copy

    m = AdAct().eval()
    with torch.no_grad():
        m.logits.normal_()
    x = torch.randn(64)
    y1 = m(x)
    assert m.scaled_logits() is m.logits  # T = 1: no op
    m.set_temperature(0.5)
    y_half = m(x)
    assert not torch.equal(y1, y_half)
    with torch.no_grad():
        m.temperature.fill_(1.0)  # in place, outside set_temperature
    torch.testing.assert_close(m(x), y1, rtol=0, atol=0)
    twin = copy.deepcopy(m)
    twin.set_temperature(0.5)  # the copy's buffer restarts its version count
    torch.testing.assert_close(twin(x), y_half, rtol=0, atol=0)
    m.load_state_dict(twin.state_dict())
    torch.testing.assert_close(m(x), y_half, rtol=0, atol=0)
    m.temperature = torch.tensor(1.0)  # a new tensor
    torch.testing.assert_close(m(x), y1, rtol=0, atol=0)
