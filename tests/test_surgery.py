"""Tests for adact.surgery: adactify, dominant_activations, optimize, adact_units."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import Tensor, nn

from adact.activations import DEFAULT_CANDIDATES
from adact.models import ConvNet
from adact.surgery import AdactifyReport, CallSites, adact_units, adactify, dominant_activations, optimize
from adact.unit import AdAct

torchvision = pytest.importorskip("torchvision")


def _one_hot(units: list[tuple[str, AdAct]], name: str, value: float = 100.0) -> None:
    """Make every unit (numerically) exactly activation ``name``."""
    with torch.no_grad():
        for _, u in units:
            u.logits.zero_()
            u.logits[..., u.candidates.index(name)] = value


# --- adactify: call sites ---------------------------------------------------------------------


def test_resnet18_gets_one_unit_per_call_site_and_reproduces_relu() -> None:
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)

    net, report = adactify(model, return_report=True)

    # The model stays a ResNet with its methods; the shared relu became a per-call dispatcher.
    assert net is model and type(net) is torchvision.models.ResNet and hasattr(net, "_forward_impl")
    units = adact_units(net)
    assert len({id(u) for _, u in units}) == 17  # stem + 2 per BasicBlock x 8
    assert report.n_units == 17 and report.n_params == 8 * 17
    assert report.method == "inplace" and len(report.sites) == 17 and report.traced == ()
    assert {"layer1.0.relu.0", "layer1.0.relu.1"} <= set(report.sites)
    assert set(report.replaced) == {"ReLU"}
    assert isinstance(net.layer1[0].relu, CallSites)
    assert not any(isinstance(m, nn.ReLU) for m in net.modules())

    # Mixtures pinned to ReLU reproduce the original network (eval: BN uses running stats).
    _one_hot(units, "relu")
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref)

    # Each call site learns on its own: both units of a block get (different) gradients.
    with torch.no_grad():
        for _, u in units:
            u.logits.zero_()  # unsaturated mixtures, so every logit gets a gradient
    net.train()
    out = net(x)
    assert out.shape == ref.shape
    out.square().mean().backward()
    grads = [u.logits.grad for _, u in units]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    a, b = net.layer1[0].relu[0].logits.grad, net.layer1[0].relu[1].logits.grad
    assert not torch.equal(a, b)


def test_shared_module_in_traceable_model_gets_distinct_units() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)
            self.act = nn.ReLU()

        def forward(self, x: Tensor) -> Tensor:
            return self.act(self.fc2(self.act(self.fc1(x))))

    model = Twice()
    net, report = adactify(model, return_report=True)
    assert net is model and type(net) is Twice
    units = dict(adact_units(net))
    assert report.sites == ("act.0", "act.1")
    assert [d.how for d in report.details] == ["call_site", "call_site"]
    assert len({id(u) for u in units.values()}) == 2
    for _ in range(2):  # the dispatcher restarts at each forward
        net(torch.randn(3, 4)).sum().backward()
    assert all(u.logits.grad is not None and u.logits.grad.abs().sum() > 0 for u in units.values())
    # Called outside its caller's forward more often than it has sites: a clear error.
    net.act.next_site = 2
    with pytest.raises(RuntimeError, match="call sites"):
        net.act(torch.randn(1, 4))


def test_shared_module_keeps_training_branches() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.act = nn.ReLU()

        def forward(self, x: Tensor) -> Tensor:
            h = self.act(self.fc(x))
            if self.training:
                return self.act(h) * 0.0
            return self.act(h) + 1.0

    net = adactify(Branchy())
    x = torch.randn(2, 4)
    assert torch.equal(net.train()(x), torch.zeros(2, 4))
    assert (net.eval()(x) >= 1.0 - 0.1).all()  # the eval branch runs after .eval()


class _Untraceable(nn.Module):
    """Data-dependent control flow (untraceable by torch.fx) around a shared ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.fc0, self.fc = nn.Linear(4, 4), nn.Linear(4, 4)
        self.body = nn.Module()  # a nested path for the report to name
        self.body.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        h = self.body.act(self.fc0(x))
        if h.sum() > 0:
            h = self.fc(h)
        return self.body.act(h)


def test_shared_module_in_untraceable_model_split_by_example_pass() -> None:
    model = _Untraceable()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the example pass checks sharing: no warning is due
        net, report = adactify(model, example_inputs=torch.ones(2, 4), return_report=True)
    assert net is model and report.sites == ("body.act.0", "body.act.1")
    assert report.untraced and report.untraced[0][0] == "" and "TraceError" in report.untraced[0][1]
    net(torch.ones(2, 4)).sum().backward()
    assert all(u.logits.grad is not None for _, u in adact_units(net))


def test_untraceable_without_example_inputs_uses_built_inputs_or_warns() -> None:
    # A first Linear: adactify builds a batch, whose pass splits the shared ReLU as example_inputs would.
    _, report = adactify(_Untraceable(), return_report=True)
    assert report.sites == ("body.act.0", "body.act.1") and report.verified == ("train", "eval")
    with pytest.warns(UserWarning, match="example_inputs"):
        net = adactify(_Untraceable(), verify=False)
    assert isinstance(net.body.act, AdAct)


def test_convnet_replaced_in_place_at_block_paths() -> None:
    model = ConvNet(activation="relu")
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the probe checks sharing, so no warning is due
        net, report = adactify(model, example_inputs=x, return_report=True)
    assert net is model and type(net) is ConvNet
    paths = [p for p, _ in adact_units(net)]
    assert paths == [f"features.{i}.2" for i in range(4)] == list(report.sites)
    assert report.method == "inplace" and report.n_params == 8 * 4
    assert net(x).shape == (2, 10)


def test_probe_leaves_batchnorm_statistics_untouched() -> None:
    model = ConvNet(activation="relu").train()
    before = copy.deepcopy(model.state_dict())
    adactify(model, example_inputs=torch.randn(4, 3, 32, 32) + 3.0)
    after = model.state_dict()
    for key, value in before.items():
        if "running" in key or "num_batches" in key:
            assert torch.equal(after[key], value), key


def test_channel_granularity_infers_channels_from_example_inputs() -> None:
    x = torch.randn(2, 3, 32, 32)
    net, report = adactify(
        ConvNet(activation="relu"), example_inputs=x, granularity="channel", return_report=True
    )
    units = [u for _, u in adact_units(net)]
    assert [u.num_channels for u in units] == [32, 64, 128, 256]
    assert report.n_params == sum(c * 8 for c in (32, 64, 128, 256))
    net(x).sum().backward()

    with pytest.raises(ValueError, match="example_inputs"):
        adactify(ConvNet(activation="relu"), granularity="channel")


def test_prelu_slope_seeds_unit() -> None:
    net = adactify(nn.Sequential(nn.Linear(3, 3), nn.PReLU(init=0.1)))
    assert isinstance(net[1], AdAct)
    torch.testing.assert_close(net[1].prelu_weight.detach(), torch.tensor([0.1]))


def test_targets_select_types_and_bad_targets_raise() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2), nn.Tanh())
    net = adactify(model, targets=[nn.Tanh])
    assert isinstance(net[1], nn.ReLU) and isinstance(net[3], AdAct)
    with pytest.raises(TypeError, match="activation names .* or nn.Module subclasses"):
        adactify(model, targets=[3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="unknown target 'rleu'; valid names: relu"):
        adactify(model, targets="rleu")
    by_name = adactify(copy.deepcopy(model), targets="tanh")
    assert isinstance(by_name[1], nn.ReLU) and isinstance(by_name[3], AdAct)
    with pytest.raises(ValueError, match="num_channels"):
        adactify(model, adact_kwargs={"num_channels": 3})


# --- adactify: nn.TransformerEncoderLayer ------------------------------------------------------


def test_transformer_encoder_layer_with_gelu_module() -> None:
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, activation=nn.GELU(), batch_first=True)
    original = copy.deepcopy(layer).eval()
    x = torch.randn(3, 5, 16)

    net, report = adactify(layer, candidates=(*DEFAULT_CANDIDATES, "gelu"), return_report=True)
    assert net is layer and isinstance(net.activation, AdAct) and report.n_units == 1
    assert net.activation_relu_or_gelu == 0  # the native-GELU fast path must be off

    net.train()
    net(x).sum().backward()
    assert net.activation.logits.grad is not None

    # Eval + no_grad is where the fast path would run: a GELU-pinned unit matches the original...
    _one_hot(adact_units(net), "gelu")
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), original(x), rtol=1e-4, atol=1e-5)
        # ...and a ReLU-pinned one really applies ReLU there, not the cached native GELU.
        _one_hot(adact_units(net), "relu")
        relu_ref = copy.deepcopy(original)
        relu_ref.activation, relu_ref.activation_relu_or_gelu = nn.ReLU(), 1
        torch.testing.assert_close(net(x), relu_ref(x), rtol=1e-4, atol=1e-5)


def test_transformer_encoder_nested_tensor_path_disabled() -> None:
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, activation=nn.ReLU(), batch_first=True)
    enc = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=True)
    net, report = adactify(enc, return_report=True)
    assert report.n_units == 2 and net.use_nested_tensor is False
    net.eval()
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[0, 3:] = True
    with torch.no_grad():
        assert net(torch.randn(2, 5, 16), src_key_padding_mask=mask).shape == (2, 5, 16)


# --- dominant_activations -------------------------------------------------------------------


def test_dominant_activations_order_and_values() -> None:
    net = ConvNet(activation="adact")
    choices = ["leaky_relu", "mish", "relu", "prelu"]
    with torch.no_grad():
        for (_, u), name in zip(adact_units(net), choices):
            u.logits.zero_()
            u.logits[u.candidates.index(name)] = 2.0
    expected_w = float(torch.softmax(torch.tensor([2.0] + [0.0] * 6), 0)[0])
    dom = dominant_activations(net)
    assert list(dom) == [f"features.{i}.2" for i in range(4)]
    assert [n for n, _ in dom.values()] == choices
    for _, w in dom.values():
        assert w == pytest.approx(expected_w)


def test_dominant_activation_of_channel_unit_is_channel_mean_winner() -> None:
    unit = AdAct(("relu", "elu"), granularity="channel", num_channels=3)
    with torch.no_grad():
        # Two channels lean slightly to relu, one strongly to elu: the mean favours elu.
        unit.logits.copy_(torch.tensor([[0.0, 10.0], [0.1, 0.0], [0.1, 0.0]]))
    net = nn.Sequential(nn.Conv2d(3, 3, 1), unit)
    name, weight = dominant_activations(net)["1"]
    assert unit.dominant() == ["elu", "relu", "relu"]
    assert name == "elu"
    assert weight == pytest.approx(float(unit.mixture().mean(0)[1]))


# --- optimize ----------------------------------------------------------------------------------


def _trained_like_convnet() -> ConvNet:
    net = ConvNet(activation="adact")
    with torch.no_grad():
        for (_, u), name in zip(adact_units(net), ["leaky_relu", "mish", "prelu", "relu"]):
            u.logits.zero_()
            u.logits[u.candidates.index(name)] = 3.0
            u.prelu_weight.fill_(0.1)
    return net


def test_optimize_replaces_units_with_plain_modules() -> None:
    net = _trained_like_convnet()
    before = copy.deepcopy(net.state_dict())
    x = torch.randn(2, 3, 32, 32)

    fixed = optimize(net)

    # The original is untouched.
    assert all(isinstance(m, AdAct) for m in net.activations())
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not any(isinstance(m, AdAct) for m in fixed.modules())
    names = [n for n, _ in dominant_activations(net).values()]
    assert [type(m) for m in fixed.activations()] == [nn.LeakyReLU, nn.Mish, nn.PReLU, nn.ReLU]
    assert names == ["leaky_relu", "mish", "prelu", "relu"]
    assert fixed(x).shape == net(x).shape
    torch.testing.assert_close(fixed.features[2][2].weight.detach(), torch.tensor([0.1]))

    reset = optimize(net, reinit=True)
    torch.testing.assert_close(reset.features[2][2].weight.detach(), torch.tensor([0.25]))

    # State dict round trip into the optimized copy of an identical model.
    twin = optimize(copy.deepcopy(_trained_like_convnet()), reinit=True)
    twin.load_state_dict(fixed.state_dict())
    fixed.eval(), twin.eval()
    with torch.no_grad():
        torch.testing.assert_close(twin(x), fixed(x))


def test_optimize_channel_prelu_keeps_per_channel_slopes() -> None:
    unit = AdAct(granularity="channel", num_channels=4)
    with torch.no_grad():
        unit.logits[:, unit.candidates.index("prelu")] = 5.0
        unit.prelu_weight.copy_(torch.tensor([0.1, 0.2, 0.3, 0.4]))
    fixed = optimize(nn.Sequential(nn.Conv2d(2, 4, 1), unit))
    assert isinstance(fixed[1], nn.PReLU) and fixed[1].num_parameters == 4
    torch.testing.assert_close(fixed[1].weight.detach(), torch.tensor([0.1, 0.2, 0.3, 0.4]))


def test_optimize_resnet_with_call_sites_reproduces_adact_resnet() -> None:
    net = adactify(torchvision.models.resnet18(weights=None))
    _one_hot(adact_units(net), "relu")
    fixed = optimize(net).eval()
    assert type(fixed) is torchvision.models.ResNet
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fixed(x), net.eval()(x))
    assert sum(isinstance(m, nn.ReLU) for m in fixed.modules()) == 17


def test_report_str_mentions_counts() -> None:
    _, report = adactify(nn.Sequential(nn.Linear(2, 2), nn.SiLU()), return_report=True)
    assert isinstance(report, AdactifyReport)
    assert "1 AdAct units (8 parameters)" in str(report)


def test_example_pass_through_a_block_called_twice() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.act = nn.ReLU()

        def forward(self, x: Tensor) -> Tensor:
            return self.act(self.fc(self.act(x)))

    class Reuse(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = Block()

        def forward(self, x: Tensor) -> Tensor:
            return self.block(self.block(x))  # one module, so one set of units, used twice

    x = torch.randn(2, 4)
    net, report = adactify(Reuse(), example_inputs=x, granularity="channel", return_report=True)
    assert report.sites == ("block.act.0", "block.act.1")
    assert [u.num_channels for _, u in adact_units(net)] == [4, 4]
    net(x).sum().backward()


def test_failed_adactify_leaves_the_model_as_it_was() -> None:
    class Mixed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.act = nn.ReLU()

        def forward(self, x: Tensor) -> Tensor:
            return torch.relu(self.act(self.fc(self.act(x))).unsqueeze(1))  # (N, 1, 4) at the call

    model = Mixed()
    before = dict(model.__dict__)
    with pytest.raises(ValueError, match="channel_dim"):
        adactify(model, example_inputs=torch.randn(2, 4), granularity="channel")
    assert type(model.act) is nn.ReLU and "forward" not in model.__dict__ and not model._forward_pre_hooks
    assert set(model.__dict__) == set(before) and set(model._modules) == {"fc", "act"}
    assert model(torch.randn(2, 4)).shape == (2, 1, 4)
