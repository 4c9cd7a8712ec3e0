"""Tests of the activation registry (src/adact/activations.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adact import ACTIVATIONS, DEFAULT_CANDIDATES, AdAct, create_act, get_act_layer, list_activations
from adact.activations import RRELU_LOWER, RRELU_UPPER, GELUTanh, activation_functional, activation_name

NAMES = list_activations()


def test_default_pool_is_the_papers_seven() -> None:
    assert DEFAULT_CANDIDATES == ("relu", "elu", "leaky_relu", "prelu", "rrelu", "silu", "mish")
    assert AdAct().candidates == DEFAULT_CANDIDATES


def test_registry_contents() -> None:
    for name in DEFAULT_CANDIDATES + ("gelu", "tanh", "sigmoid", "hardswish", "softplus", "identity"):
        assert name in NAMES
    assert "adact" not in NAMES
    assert len(set(NAMES)) == len(NAMES)
    assert all(n == n.lower() for n in NAMES)
    assert set(NAMES) == set(ACTIVATIONS)


def test_list_activations_returns_a_copy() -> None:
    names = list_activations()
    names.append("bogus")
    assert "bogus" not in list_activations()


def test_rrelu_bounds_match_torch_defaults() -> None:
    m = nn.RReLU()
    assert RRELU_LOWER == m.lower == 1 / 8
    assert RRELU_UPPER == m.upper == 1 / 3


@pytest.mark.parametrize("name", NAMES)
def test_create_act_builds_the_registered_module(name: str) -> None:
    m = create_act(name)
    assert isinstance(m, nn.Module)
    assert type(m) is ACTIVATIONS[name]
    assert create_act(name) is not m  # a fresh instance per call


@pytest.mark.parametrize("name", NAMES)
def test_functional_equals_module(name: str) -> None:
    module = create_act(name).eval()  # prelu: slope 0.25; rrelu: eval slope
    fn = activation_functional(name)
    x = torch.cat([torch.randn(500) * 4, torch.tensor([0.0, -100.0, 100.0, -1e4, 1e4])])
    with torch.no_grad():
        torch.testing.assert_close(fn(x, torch.tensor([0.25]), False), module(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_functional_prelu_casts_slope_to_input_dtype(dtype: torch.dtype) -> None:
    x = torch.randn(3, 4, dtype=dtype)
    y = activation_functional("prelu")(x, torch.tensor([0.25]), False)
    assert y.dtype == dtype
    torch.testing.assert_close(y, torch.where(x >= 0, x, 0.25 * x))


def test_functional_prelu_per_channel_matches_module() -> None:
    c = 5
    module = nn.PReLU(c)
    with torch.no_grad():
        module.weight.uniform_(-1, 1)
    x = torch.randn(2, c, 3, 3)
    y = activation_functional("prelu")(x, module.weight.detach(), False)
    torch.testing.assert_close(y, module(x).detach())


def test_functional_training_flag_only_affects_rrelu() -> None:
    x = -torch.rand(2000) - 0.1
    for name in NAMES:
        fn = activation_functional(name)
        w = torch.tensor([0.25])
        y_train, y_eval = fn(x, w, True), fn(x, w, False)
        if name == "rrelu":
            ratio = y_train / x
            assert (ratio >= RRELU_LOWER - 1e-6).all() and (ratio <= RRELU_UPPER + 1e-6).all()
            assert ratio.std() > 0.01
            torch.testing.assert_close(y_eval, x * (RRELU_LOWER + RRELU_UPPER) / 2)
        else:
            assert torch.equal(y_train, y_eval), name


def test_get_act_layer_adact() -> None:
    assert get_act_layer("adact") is AdAct
    assert get_act_layer("AdAct") is AdAct
    assert isinstance(create_act("adact"), AdAct)
    m = create_act("adact", granularity="channel", num_channels=3)
    assert isinstance(m, AdAct) and m.num_channels == 3


def test_get_act_layer_names_and_callables() -> None:
    assert get_act_layer("relu") is nn.ReLU
    assert get_act_layer("ReLU") is nn.ReLU  # case-insensitive
    assert get_act_layer("leaky-relu") is nn.LeakyReLU
    assert get_act_layer(nn.GELU) is nn.GELU  # classes pass through
    factory = lambda: nn.LeakyReLU(0.2)  # noqa: E731
    assert get_act_layer(factory) is factory


def test_create_act_forwards_kwargs() -> None:
    m = create_act("leaky_relu", negative_slope=0.2)
    assert m.negative_slope == 0.2
    assert create_act("prelu", num_parameters=4).weight.shape == (4,)


@pytest.mark.parametrize("bad", ["swish2", "", "re lu", "adactt"])
def test_unknown_name_lists_valid_names(bad: str) -> None:
    for call in (get_act_layer, create_act, activation_functional):
        with pytest.raises(ValueError) as exc:
            call(bad)
        msg = str(exc.value)
        for name in NAMES:
            assert name in msg


@pytest.mark.parametrize("bad", [42, None, 3.5])
def test_non_name_non_callable_is_type_error(bad: object) -> None:
    with pytest.raises(TypeError):
        get_act_layer(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", NAMES)
def test_activation_name_round_trip(name: str) -> None:
    assert activation_name(create_act(name)) == name


def test_activation_name_of_non_registry_modules() -> None:
    assert activation_name(AdAct()) is None
    assert activation_name(nn.Linear(2, 2)) is None

    class MyReLU(nn.ReLU):
        pass

    assert activation_name(MyReLU()) is None  # exact class match only


def test_activation_name_of_gelu_reads_its_approximation() -> None:
    assert activation_name(nn.GELU()) == activation_name(nn.GELU(approximate="none")) == "gelu"
    assert activation_name(nn.GELU(approximate="tanh")) == "gelu_tanh"
    assert activation_name(GELUTanh()) == "gelu_tanh"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_gelu_tanh_is_torchs_tanh_gelu_bit_for_bit(dtype: torch.dtype) -> None:
    x = torch.cat([torch.randn(1000) * 5, torch.tensor([0.0, -0.0, 1e4, -1e4, 1e30, -1e30, float("inf"),
                                                        -float("inf"), float("nan")])]).to(dtype)  # fmt: skip
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = GELUTanh()(xa), nn.GELU(approximate="tanh")(xb)
    assert torch.equal(ya.isnan(), yb.isnan()) and torch.equal(ya.nan_to_num(), yb.nan_to_num())
    g = torch.randn_like(x)
    (ga,), (gb,) = torch.autograd.grad(ya, xa, g), torch.autograd.grad(yb, xb, g)
    assert torch.equal(ga.isnan(), gb.isnan()) and torch.equal(ga.nan_to_num(), gb.nan_to_num())
    assert torch.equal(activation_functional("gelu_tanh")(x, torch.tensor([0.25]), False).nan_to_num(),
                       yb.detach().nan_to_num())  # fmt: skip
