"""The native kernels as a torch operator (``torch.ops.adact_native``): what a unit calls on float32 CPU inputs."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import Tensor, nn

from adact import DEFAULT_CANDIDATES, AdAct
from adact.fused import backends, dispatch, native, native_op

NAMES = tuple(DEFAULT_CANDIDATES)


@pytest.fixture(scope="module")
def op() -> native_op.NativeOp:
    try:
        native.native_kernels()
        return native_op.native_op()
    except native.NativeBuildError as err:
        pytest.skip(f"native operator unavailable here: {err}")


def params(channel: bool, requires_grad: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn((6, 7) if channel else (7,), generator=gen) * 1.5
    slope = torch.rand(6 if channel else 1, generator=gen) - 0.3
    x = torch.randn(3, 6, 5, 4, generator=gen) * 3
    x.view(-1)[:6] = torch.tensor([float("inf"), -float("inf"), float("nan"), 1e4, -1e4, -0.0])
    return x.requires_grad_(requires_grad), logits.requires_grad_(requires_grad), slope.requires_grad_(requires_grad)


@pytest.mark.parametrize("channel", [False, True], ids=["layer", "channel"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_opcheck(op: native_op.NativeOp, channel: bool, training: bool) -> None:
    """Schema, fake kernel, autograd registration and AOT dispatch, as torch.library checks them."""
    index = native_op.problem(native.native_kernels(), NAMES, training, channel)
    x, logits, slope = params(channel)
    x = x.detach().nan_to_num(0.0, 10.0, -10.0).requires_grad_()  # opcheck compares with NaN != NaN
    seed = torch.tensor(5, dtype=torch.int32) if training else None
    torch.library.opcheck(op.mix, (x, logits, slope, seed, index))


@pytest.mark.parametrize("channel", [False, True], ids=["layer", "channel"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_op_equals_the_ctypes_route_bit_for_bit(op: native_op.NativeOp, channel: bool, training: bool, layout: str) -> None:
    """Same kernels, same seed: the op and the ctypes calls give identical values and gradients."""
    kernels = native.native_kernels()
    index = native_op.problem(kernels, NAMES, training, channel)
    x, logits, slope = params(channel)
    if layout == "channels_last":
        x = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    elif layout == "strided":
        x = x.detach()[..., ::2].requires_grad_()
    seed = torch.tensor(1234, dtype=torch.int32)
    y = op.mix(x, logits, slope, seed, index)
    assert y.shape == x.shape and y.stride() == torch.empty_like(x).stride()
    g = torch.randn_like(y)
    gx, glogits, gslope = torch.autograd.grad(y, (x, logits, slope), g)
    key = backends.DispatchKey("cpu", torch.float32, NAMES, "channel" if channel else "layer", training,
                               (torch.float32, torch.float32), dispatch.current_env())  # fmt: skip
    y_ref, _ = backends.NATIVE.forward(key, x.detach(), logits.detach(), slope.detach(), seed)
    want = backends.NATIVE.backward(key, g, x.detach(), logits.detach(), slope.detach(), seed, None)
    torch.testing.assert_close(y.detach(), y_ref, rtol=0, atol=0, equal_nan=True)
    for a, b in zip((gx, glogits, gslope), want):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def test_a_unit_calls_the_op_and_its_noise_follows_manual_seed(op: native_op.NativeOp) -> None:
    if dispatch.explain("cpu", torch.float32)[0] != "native":
        pytest.skip("auto does not pick the native kernels on this machine")
    m = AdAct().train()
    x = -(torch.rand(4, 8, 16) + 0.1).requires_grad_()
    torch.manual_seed(7)
    y1 = m(x)
    assert "MixFunction" in y1.grad_fn.name()  # one C++ node, no Python autograd.Function
    torch.manual_seed(7)
    y2 = m(x)
    torch.manual_seed(8)
    y3 = m(x)
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    assert not torch.equal(y1, y3)
    # The seed is drawn like torch.randint's: the Python route reproduces the op's noise exactly.
    torch.manual_seed(7)
    seed = torch.randint(0, 2**31, (), dtype=torch.int32)
    y_py = backends.NATIVE.forward(
        backends.DispatchKey("cpu", torch.float32, NAMES, "layer", True, (torch.float32, torch.float32),
                             dispatch.current_env()),
        x.detach(), m.logits.detach(), m.prelu_weight.detach(), seed,
    )[0]  # fmt: skip
    torch.testing.assert_close(y1.detach(), y_py, rtol=0, atol=0)


def test_pool_without_prelu_and_eval_mode(op: native_op.NativeOp) -> None:
    m = AdAct(candidates=["silu", "mish", "elu"]).eval()
    with torch.no_grad():
        m.logits.normal_()
    x = torch.randn(2, 5, 9, requires_grad=True)
    y = m(x)
    want = AdAct(candidates=["silu", "mish", "elu"], fused=False).eval()
    want.load_state_dict(m.state_dict())
    torch.testing.assert_close(y, want(x), rtol=1e-5, atol=1e-6)
    (g,) = torch.autograd.grad(y.sum(), m.logits)
    (g_ref,) = torch.autograd.grad(want(x).sum(), want.logits)
    torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-6)
    with torch.inference_mode():
        torch.testing.assert_close(m(x.detach()), y.detach())


def test_double_backward_is_refused(op: native_op.NativeOp) -> None:
    index = native_op.problem(native.native_kernels(), NAMES, False, False)
    _, logits, slope = params(False)
    x = torch.randn(50, requires_grad=True)
    y = op.mix(x, logits, slope, None, index)
    with pytest.raises(RuntimeError, match="double backward"):  # refused at once, not at the second pass
        torch.autograd.grad(y.sum(), x, create_graph=True)
    (gx,) = torch.autograd.grad(op.mix(x, logits, slope, None, index).sum(), x)  # a first derivative is fine
    assert torch.isfinite(gx).all()


def test_unknown_problem_and_bad_inputs_are_clear_errors(op: native_op.NativeOp) -> None:
    x, logits, slope = params(False, requires_grad=False)
    with pytest.raises(RuntimeError, match="unknown problem"):
        op.mix(x, logits, slope, None, 10**6)
    index = native_op.problem(native.native_kernels(), NAMES, False, False)
    with pytest.raises(RuntimeError, match="float32 on CPU"):
        op.mix(x.double(), logits, slope, None, index)
    with pytest.raises(RuntimeError, match="logits for a pool of"):
        op.mix(x, logits[:3], slope, None, index)


def test_build_failure_falls_back_to_ctypes_with_one_warning(
    op: native_op.NativeOp, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object) -> int:
        raise native.NativeBuildError("no torch headers")

    monkeypatch.setattr(native_op, "problem", broken)
    monkeypatch.setattr(dispatch, "_choices", {})
    monkeypatch.setattr(backends.NATIVE, "_op_warned", False)
    monkeypatch.setenv(dispatch.ENV_VAR, "native")
    m = AdAct().train()
    x = torch.randn(3, 4, 5, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = m(x)
        y.sum().backward()
        m(x).sum().backward()
        monkeypatch.setattr(dispatch, "_choices", {})  # decided again: still warned only once
        m(x)
    msgs = [str(w.message) for w in caught if "torch operator" in str(w.message)]
    assert len(msgs) == 1 and "ctypes" in msgs[0] and "no torch headers" in msgs[0]
    assert "FusedAdActFunction" in y.grad_fn.name()  # the Python route, same kernels
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_compiled_graph_calls_the_op_without_graph_breaks(op: native_op.NativeOp) -> None:
    if dispatch.explain("cpu", torch.float32)[0] != "native":
        pytest.skip("auto does not pick the native kernels on this machine")
    model = nn.Sequential(nn.Linear(8, 16), AdAct(), nn.Linear(16, 4), AdAct(candidates=["silu", "elu"])).train()
    targets: list[str] = []

    def record(gm: torch.fx.GraphModule, inputs: list[Tensor]) -> object:
        targets.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    x = torch.randn(5, 8)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=record, fullgraph=True)
    torch.manual_seed(1)
    y = compiled(x)
    torch.manual_seed(1)
    torch.testing.assert_close(y, model(x))
    assert sum("adact_native" in t for t in targets) == 2, targets
    y.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_inductor_compiled_training_step_matches_eager(op: native_op.NativeOp) -> None:
    torch.manual_seed(0)
    # No RReLU: Inductor draws random numbers its own way, so its training noise differs from eager's.
    pool = [c for c in DEFAULT_CANDIDATES if c != "rrelu"]
    model = nn.Sequential(nn.Conv2d(3, 6, 3), AdAct(pool, granularity="channel", num_channels=6), nn.Flatten(),
                          nn.LazyLinear(2)).train()  # fmt: skip
    x = torch.randn(2, 3, 8, 8)
    model(x)
    compiled = torch.compile(model)
    for m in (model, compiled):
        m.zero_grad()
    torch.manual_seed(3)
    y_c = compiled(x)
    y_c.sum().backward()
    grads_c = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    torch.manual_seed(3)
    y_e = model(x)
    y_e.sum().backward()
    torch.testing.assert_close(y_c, y_e, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads_c, (p.grad for p in model.parameters())):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _native_here() -> None:
    if dispatch.explain("cpu", torch.float32)[0] != "native":
        pytest.skip("auto does not pick the native kernels on this machine")


def test_a_units_cached_op_follows_the_environment_mode_and_dtype(
    op: native_op.NativeOp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The unit keeps the dispatcher's answer between calls, and drops it when anything it depends on changes."""
    from adact import adact_reference

    _native_here()
    m, x = AdAct().eval(), torch.randn(4, 8, 16, requires_grad=True)
    with torch.no_grad():
        m.logits.normal_()
    want = adact_reference(x, m.logits, m.prelu_weight, NAMES, False)
    assert "MixFunction" in m(x).grad_fn.name()
    monkeypatch.setenv(dispatch.ENV_VAR, "off")  # at the very next call: the reference sum
    y = m(x)
    assert "MixFunction" not in y.grad_fn.name()
    torch.testing.assert_close(y, want, rtol=0, atol=0)
    monkeypatch.setenv(dispatch.ENV_VAR, "eager")
    assert "MixFunction" not in m(x).grad_fn.name()
    monkeypatch.delenv(dispatch.ENV_VAR)
    y = m(x)
    assert "MixFunction" in y.grad_fn.name()
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-6)
    m.train()  # the training problem: RReLU noise, drawn from the seed
    torch.manual_seed(0)
    a = m(x)
    torch.manual_seed(1)
    assert "MixFunction" in a.grad_fn.name() and not torch.equal(a, m(x))
    m.double()  # float64 parameters and inputs: the eager kernels, not the float32 op
    y64 = m(x.double())
    assert y64.dtype == torch.float64 and "MixFunction" not in y64.grad_fn.name()


def test_a_units_cached_op_is_dropped_by_reset_and_copies(op: native_op.NativeOp) -> None:
    import copy
    import pickle

    _native_here()
    m, x = AdAct().train(), torch.randn(2, 8, requires_grad=True)
    m(x)
    epoch = dispatch.epoch()
    dispatch.reset_kernels()
    assert dispatch.epoch() != epoch
    assert "MixFunction" in m(x).grad_fn.name()  # decided again, same answer
    for twin in (copy.deepcopy(m), pickle.loads(pickle.dumps(m))):
        assert "_direct" not in twin.__dict__
        torch.manual_seed(3)
        a = twin(x)
        torch.manual_seed(3)
        torch.testing.assert_close(a, m(x), rtol=0, atol=0)
