"""A unit's output is an ordinary tensor: in-place ops after it work on every path."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

import pytest
import torch
import torch.distributed as dist
from torch import Tensor, nn

from adact.surgery import adactify


class _InPlaceAfter(nn.Module):
    def __init__(self, op: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.op = op

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


_OPS: dict[str, Callable[[], nn.Module]] = {
    "relu_inplace": lambda: nn.ReLU(inplace=True),
    "add_": lambda: _InPlaceAfter(lambda x: x.add_(1.0)),
    "mul_": lambda: _InPlaceAfter(lambda x: x.mul_(2.0)),
}


def _model(after: str, fused: bool) -> nn.Module:
    # The example: a unit followed by an in-place op; targets given as a class.
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Hardswish(), _OPS[after](), nn.Conv2d(8, 4, 1))
    net = adactify(model, targets=(nn.Hardswish,), adact_kwargs={"fused": fused})
    assert isinstance(net[2], nn.ReLU) or after != "relu_inplace"  # the ReLU stays as it is
    return net


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("after", list(_OPS))
def test_inplace_after_unit_forward_backward(after: str, fused: bool) -> None:
    torch.manual_seed(0)
    net = _model(after, fused)
    x = torch.randn(2, 3, 8, 8)
    net(x).square().mean().backward()
    assert net[1].logits.grad is not None and torch.isfinite(net[1].logits.grad).all()
    # Same gradients as out-of-place: the in-place op did not corrupt what the unit saved.
    twin = _model(after, fused)
    twin.load_state_dict(net.state_dict())
    twin.eval(), net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), twin(x))


@pytest.mark.parametrize("fused", [True, False])
def test_inplace_after_unit_bf16_autocast_and_channels_last(fused: bool) -> None:
    net = _model("relu_inplace", fused)
    x = torch.randn(2, 3, 8, 8).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    out.float().sum().backward()
    assert net[1].logits.grad is not None


def test_inplace_after_unit_in_ddp_gloo() -> None:
    net = _model("relu_inplace", True)
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method=f"file://{os.path.join(tmp, 'store')}", rank=0, world_size=1)
        try:
            ddp = nn.parallel.DistributedDataParallel(net)
            for _ in range(2):
                ddp(torch.randn(2, 3, 8, 8)).sum().backward()
        finally:
            dist.destroy_process_group()
    assert net[1].logits.grad is not None


def test_mobilenet_v3_hardswish_units_train_with_inplace_relus() -> None:
    torchvision = pytest.importorskip("torchvision")
    net, report = adactify(
        torchvision.models.mobilenet_v3_small(weights=None, num_classes=5), targets=(nn.Hardswish,), return_report=True
    )
    assert report.n_units == 19
    x = torch.randn(2, 3, 32, 32)
    net(x).sum().backward()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    out.float().sum().backward()
