"""The AdAct paper's ConvNet, with the activation chosen by name, per model or per layer.

The paper (ICLR 2024 Tiny Papers) describes 4 blocks of conv -> batch norm -> activation ->
max-pool 2x2/2 followed by one linear layer, with Kaiming-uniform initialisation. Its table of
layer sizes is not in the text we have, so **the defaults here are our assumption**: 3x3
kernels, padding 1, channels (32, 64, 128, 256). Both are configurable.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.fx
from torch import Tensor, nn

from adact.act_factory import get_act_layer
from adact.activations import ActLayer
from adact.errors import UserError
from adact.paper import DEFAULT_CHANNELS
from adact.unit import AdAct

__all__ = ["ConvNet", "DEFAULT_CHANNELS", "convnet_from_choices"]

def _check_input(x: Tensor, in_channels: int, image_size: tuple[int, int]) -> None:
    if x.dim() != 4 or x.shape[1] != in_channels or tuple(x.shape[2:]) != tuple(image_size):
        raise UserError(
            f"ConvNet(in_channels={in_channels}, image_size={tuple(image_size)}) expects input of shape "
            f"(N, {in_channels}, {image_size[0]}, {image_size[1]}), got {tuple(x.shape)}"
        )


# A leaf for torch.fx: the check runs at call time instead of being traced, so adactify can
# trace a ConvNet to find shared activation call sites.
torch.fx.wrap("_check_input")


def _act_kwargs(act_cls: object, channels: int, adact_kwargs: dict[str, object]) -> dict[str, object]:
    if act_cls is AdAct:
        kwargs = dict(adact_kwargs)
        if kwargs.get("granularity") == "channel":
            kwargs.setdefault("num_channels", channels)
        return kwargs
    return {}


class ConvNet(nn.Module):
    r"""The AdAct paper's ConvNet: 4 x [conv -> BN -> activation -> max-pool 2x2/2] -> linear.

    Args:
        in_channels: input channels (1 for Fashion-MNIST/FER2013, 3 for CIFAR-10/SVHN). Default: 3.
        num_classes: number of logits. Default: 10.
        image_size: input height and width, an int or ``(H, W)``; fixes the linear layer's size.
            Default: 32.
        activation: ``"adact"``, any registry name, a module class, or a sequence with one of
            those per block (ConvNet-Optimized is built from a per-layer list). Default: ``"adact"``.
        channels: output channels of the conv blocks; its length is the number of blocks.
            Default: (32, 64, 128, 256) -- our assumption, see the module docstring.
        kernel_size: conv kernel size (odd, at most ``2 * min(image_size) - 1``); padding keeps the
            spatial size. Default: 3.
        adact_kwargs: keyword arguments for each :class:`adact.AdAct` unit (e.g.
            ``{"granularity": "channel"}``; ``num_channels`` is filled in per block).

    Shape:
        - Input: :math:`(N, \text{in\_channels}, H, W)` with ``(H, W) == image_size``.
        - Output: :math:`(N, \text{num\_classes})`.

    Example::

        >>> net = ConvNet(in_channels=1, num_classes=10, image_size=28, activation="adact")
        >>> net(torch.randn(8, 1, 28, 28)).shape
        torch.Size([8, 10])
        >>> fixed = ConvNet(1, 10, 28, activation=["leaky_relu", "mish", "mish", "mish"])
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        image_size: int | tuple[int, int] = 32,
        activation: ActLayer | Sequence[ActLayer] = "adact",
        channels: Sequence[int] = DEFAULT_CHANNELS,
        kernel_size: int = 3,
        adact_kwargs: dict[str, object] | None = None,
    ) -> None:
        channels = tuple(int(c) for c in channels)
        if not channels or any(c < 1 for c in channels):
            raise UserError(f"channels must be a non-empty sequence of positive ints, got {channels}")
        if in_channels < 1 or num_classes < 1:
            raise UserError(f"in_channels and num_classes must be >= 1, got {in_channels}, {num_classes}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise UserError(f"kernel_size must be a positive odd int, got {kernel_size}")
        h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if min(h, w) < 2 ** len(channels):
            raise UserError(
                f"image_size {(h, w)} is too small for {len(channels)} max-pool 2x2 blocks; "
                f"need at least {2 ** len(channels)} pixels per side"
            )
        if kernel_size > 2 * min(h, w) - 1:
            # Padding keeps any kernel "valid", but taps beyond 2 * side - 1 only ever see zero
            # padding while the cost grows with kernel_size**2: a typo, not a model.
            raise UserError(
                f"kernel_size {kernel_size} is larger than the {h}x{w} input images allow; use at most "
                f"{2 * min(h, w) - 1} (2 * side - 1; wider kernels only see zero padding; the default is 3)"
            )
        if isinstance(activation, (str, type)) or (callable(activation) and not isinstance(activation, Sequence)):
            acts: list[ActLayer] = [activation] * len(channels)  # type: ignore[list-item]
        else:
            acts = list(activation)  # type: ignore[arg-type]
            if len(acts) != len(channels):
                raise UserError(
                    f"activation list has {len(acts)} entries but the net has {len(channels)} "
                    f"conv blocks; give one name per block or a single name"
                )
        act_classes = [get_act_layer(a) for a in acts]  # resolve once; raises on bad names
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.image_size = (h, w)
        self.channels = channels
        self.kernel_size = kernel_size
        adact_kwargs = dict(adact_kwargs or {})

        blocks: list[nn.Module] = []
        c_in = in_channels
        for c_out, act_cls in zip(channels, act_classes):
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2),
                    nn.BatchNorm2d(c_out),
                    act_cls(**_act_kwargs(act_cls, c_out, adact_kwargs)),
                    nn.MaxPool2d(2, 2),
                )
            )
            c_in = c_out
            h, w = h // 2, w // 2
        self.features = nn.Sequential(*blocks)  # (N, C_in, H, W) -> (N, C_last, H/16, W/16)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(c_in * h * w, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-uniform conv and linear weights (the paper's init), zero biases."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_parameters()
            elif isinstance(m, AdAct):
                m.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, self.in_channels, self.image_size)
        x = self.features(x)  # (N, C_last, H/16, W/16)
        return self.classifier(self.flatten(x))  # (N, num_classes)

    def activations(self) -> list[nn.Module]:
        """The activation module of each block, in order."""
        return [block[2] for block in self.features]  # type: ignore[index]

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}, channels={list(self.channels)}"


def convnet_from_choices(choices: Sequence[str], **kwargs: object) -> ConvNet:
    """ConvNet-Optimized: a fresh ConvNet whose block ``i`` uses plain activation ``choices[i]``."""
    return ConvNet(activation=list(choices), **kwargs)  # type: ignore[arg-type]

