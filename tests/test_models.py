"""Tests of the paper's ConvNet (src/adact/models.py)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from adact import AdAct, ConvNet
from adact.models import DEFAULT_CHANNELS, convnet_from_choices


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def convs(net: ConvNet) -> list[nn.Conv2d]:
    return [m for m in net.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize(
    "in_channels,size,num_classes",
    [(1, 28, 10), (3, 32, 10), (1, 48, 7), (3, 16, 5)],
    ids=["fashion-mnist", "cifar10", "fer2013", "tiny16"],
)
def test_forward_shape(in_channels: int, size: int, num_classes: int) -> None:
    net = ConvNet(in_channels=in_channels, num_classes=num_classes, image_size=size)
    y = net(torch.randn(2, in_channels, size, size))
    assert y.shape == (2, num_classes)
    assert torch.isfinite(y).all()
    net.eval()
    assert net(torch.randn(1, in_channels, size, size)).shape == (1, num_classes)


def test_structure_is_four_conv_bn_act_pool_blocks() -> None:
    net = ConvNet(in_channels=1, image_size=28)
    assert len(net.features) == 4
    c_in = 1
    for block, c_out in zip(net.features, DEFAULT_CHANNELS):
        conv, bn, act, pool = block
        assert isinstance(conv, nn.Conv2d) and (conv.in_channels, conv.out_channels) == (c_in, c_out)
        assert conv.kernel_size == (3, 3) and conv.padding == (1, 1)
        assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == c_out
        assert isinstance(act, AdAct)
        assert isinstance(pool, nn.MaxPool2d) and pool.kernel_size == 2 and pool.stride == 2
        c_in = c_out
    # 28 -> 14 -> 7 -> 3 -> 1
    assert net.classifier.in_features == DEFAULT_CHANNELS[-1] * 1 * 1


def test_non_square_image_size() -> None:
    net = ConvNet(in_channels=3, num_classes=4, image_size=(32, 48), channels=(4, 8))
    assert net(torch.randn(2, 3, 32, 48)).shape == (2, 4)
    assert net.classifier.in_features == 8 * 8 * 12


def test_per_layer_activation_list() -> None:
    acts = ["relu", "mish", "elu", "adact"]
    net = ConvNet(in_channels=1, image_size=28, activation=acts)
    types = [type(a) for a in net.activations()]
    assert types == [nn.ReLU, nn.Mish, nn.ELU, AdAct]
    for block, act in zip(net.features, net.activations()):
        assert block[2] is act
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_per_layer_list_accepts_classes() -> None:
    net = ConvNet(image_size=16, activation=[nn.GELU, "silu", nn.Tanh, "prelu"])
    assert [type(a) for a in net.activations()] == [nn.GELU, nn.SiLU, nn.Tanh, nn.PReLU]


def test_convnet_from_choices() -> None:
    net = convnet_from_choices(["leaky_relu", "mish", "mish", "mish"], in_channels=1, image_size=28)
    assert [type(a) for a in net.activations()] == [nn.LeakyReLU, nn.Mish, nn.Mish, nn.Mish]
    assert not any(isinstance(m, AdAct) for m in net.modules())
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_single_name_gives_one_instance_per_block() -> None:
    net = ConvNet(image_size=16, activation="prelu")
    acts = net.activations()
    assert all(type(a) is nn.PReLU for a in acts)
    assert len({id(a) for a in acts}) == 4  # not shared between blocks


@pytest.mark.parametrize("acts", [["relu"] * 3, ["relu"] * 5, []])
def test_wrong_length_activation_list(acts: list[str]) -> None:
    with pytest.raises(ValueError) as exc:
        ConvNet(activation=acts)
    msg = str(exc.value)
    assert "4" in msg and str(len(acts)) in msg


def test_wrong_length_activation_list_with_custom_depth() -> None:
    with pytest.raises(ValueError, match="2 conv blocks"):
        ConvNet(image_size=16, channels=(8, 8), activation=["relu", "elu", "silu"])


@pytest.mark.parametrize("act", ["swishy", ["relu", "relu", "nope", "relu"]])
def test_unknown_activation_name(act: object) -> None:
    with pytest.raises(ValueError, match="valid names"):
        ConvNet(activation=act)  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(2, 3, 28, 28), (2, 1, 32, 32), (2, 1, 28, 27), (1, 28, 28), (2, 1, 28, 28, 1)])
def test_wrong_input_shape_names_expected_shape(shape: tuple[int, ...]) -> None:
    net = ConvNet(in_channels=1, image_size=28, channels=(4, 4, 4, 4))
    with pytest.raises(ValueError) as exc:
        net(torch.randn(shape))
    msg = str(exc.value)
    assert "(N, 1, 28, 28)" in msg
    assert str(tuple(shape)) in msg


def test_kaiming_uniform_init() -> None:
    net = ConvNet(in_channels=3, image_size=32)
    layers = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(layers) == 5
    checked_std = 0
    for layer in layers:
        w = layer.weight.detach()
        fan_in = w[0].numel()
        bound = math.sqrt(6.0 / fan_in)  # kaiming_uniform_(nonlinearity="relu")
        assert float(w.abs().max()) <= bound
        assert torch.equal(layer.bias.detach(), torch.zeros_like(layer.bias))
        if w.numel() >= 10_000:
            std = float(w.std())
            assert abs(std / math.sqrt(2.0 / fan_in) - 1) < 0.05, (layer, std)
            assert float(w.abs().max()) > 0.95 * bound  # fills the interval
            checked_std += 1
    assert checked_std >= 3


def test_reset_parameters_reinitialises() -> None:
    net = ConvNet(image_size=16, channels=(8, 16))
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(0.5)
    net.reset_parameters()
    for conv in convs(net):
        assert torch.equal(conv.bias, torch.zeros_like(conv.bias))
        assert conv.weight.std() > 0
    for unit in net.activations():
        assert torch.equal(unit.logits, torch.zeros_like(unit.logits))
        assert torch.equal(unit.prelu_weight, torch.full_like(unit.prelu_weight, 0.25))
    bn = net.features[0][1]
    assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.equal(bn.bias, torch.zeros_like(bn.bias))


def test_adact_net_has_four_units_with_32_parameters() -> None:
    net = ConvNet(in_channels=1, image_size=28, activation="adact")
    units = [m for m in net.modules() if isinstance(m, AdAct)]
    assert len(units) == 4
    assert all(u.granularity == "layer" for u in units)
    assert sum(n_params(u) for u in units) == 32
    relu_net = ConvNet(in_channels=1, image_size=28, activation="relu")
    assert n_params(net) - n_params(relu_net) == 32


def test_adact_kwargs_channel_granularity() -> None:
    channels = (8, 16, 24)
    net = ConvNet(image_size=16, channels=channels, adact_kwargs={"granularity": "channel"})
    units = net.activations()
    assert all(isinstance(u, AdAct) and u.granularity == "channel" for u in units)
    assert [u.num_channels for u in units] == list(channels)
    assert [u.logits.shape for u in units] == [(c, 7) for c in channels]
    assert sum(n_params(u) for u in units) == 8 * sum(channels)
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_adact_kwargs_are_forwarded() -> None:
    net = ConvNet(image_size=16, adact_kwargs={"candidates": ("relu", "silu"), "init": "normal"})
    for u in net.activations():
        assert u.candidates == ("relu", "silu")
        assert u.init == "normal"
    # only AdAct blocks get them: a plain block in a mixed list is unaffected
    mixed = ConvNet(image_size=16, activation=["relu", "adact", "relu", "adact"], adact_kwargs={"granularity": "channel"})
    assert [type(a) for a in mixed.activations()] == [nn.ReLU, AdAct, nn.ReLU, AdAct]
    assert [a.num_channels for a in mixed.activations()[1::2]] == [DEFAULT_CHANNELS[1], DEFAULT_CHANNELS[3]]


@pytest.mark.parametrize("channels", [(8,), (4, 8), (4, 8, 16, 32, 64)])
def test_configurable_channels(channels: tuple[int, ...]) -> None:
    size = 2 ** len(channels)
    net = ConvNet(in_channels=2, num_classes=3, image_size=size, channels=channels)
    assert [c.out_channels for c in convs(net)] == list(channels)
    assert len(net.activations()) == len(channels)
    assert net.classifier.in_features == channels[-1]  # size / 2**blocks == 1
    assert net(torch.randn(2, 2, size, size)).shape == (2, 3)


@pytest.mark.parametrize("k", [1, 5, 7])
def test_configurable_kernel_size(k: int) -> None:
    net = ConvNet(image_size=32, channels=(4, 8, 8, 8), kernel_size=k)
    for conv in convs(net):
        assert conv.kernel_size == (k, k) and conv.padding == (k // 2, k // 2)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(kernel_size=4),
        dict(kernel_size=0),
        dict(channels=()),
        dict(channels=(8, 0)),
        dict(in_channels=0),
        dict(num_classes=0),
    ],
)
def test_bad_configuration(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ConvNet(**kwargs)


@pytest.mark.parametrize("image_size,channels", [(15, DEFAULT_CHANNELS), ((32, 8), DEFAULT_CHANNELS), (3, (4, 4))])
def test_too_small_image(image_size: object, channels: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="too small"):
        ConvNet(image_size=image_size, channels=channels)  # type: ignore[arg-type]


def test_kernel_wider_than_the_image_is_refused() -> None:
    with pytest.raises(ValueError, match="kernel_size 99 is larger than the 16x16 input images allow; use at most 31"):
        ConvNet(image_size=16, kernel_size=99)
    with pytest.raises(ValueError, match="at most 31"):
        ConvNet(image_size=16, kernel_size=33)
    assert ConvNet(image_size=16, kernel_size=31).kernel_size == 31  # every tap still sees a pixel


def test_smallest_allowed_image() -> None:
    net = ConvNet(image_size=16)  # 4 blocks: 16 -> 1
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_adact_net_trains_end_to_end() -> None:
    """One SGD step changes every AdAct unit's logits (and the slope where negatives get gradient).

    The last block's max-pool passes gradient only to each 2x2 window's maximum, usually
    positive after batch norm, so its PReLU slope may legitimately get a zero gradient.
    """
    net = ConvNet(in_channels=1, num_classes=3, image_size=16, channels=(4, 4, 4, 4))
    x, t = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 0])
    before = [(u.logits.detach().clone(), u.prelu_weight.detach().clone()) for u in net.activations()]
    nn.functional.cross_entropy(net(x), t).backward()
    with torch.no_grad():  # plain SGD step (torch.optim's first step imports dynamo: slow)
        for p in net.parameters():
            if p.grad is not None:
                p -= 0.5 * p.grad
    for u, (lg, _) in zip(net.activations(), before):
        assert u.prelu_weight.grad is not None
        assert not torch.equal(u.logits.detach(), lg)
    assert not torch.equal(net.activations()[0].prelu_weight.detach(), before[0][1])


def test_extra_repr() -> None:
    r = repr(ConvNet(image_size=(32, 48), channels=(4, 8)))
    assert "image_size=(32, 48)" in r and "channels=[4, 8]" in r
