"""Sharpening (src/adact/training/sharpen.py): the unit's temperature on both paths, the schedule, the entropy
penalty, the logits' learning rate, and the training options that use them."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from adact import AdAct, ConvNet, adact_reference
from adact.choice import normalised_entropy
from adact.config import TrainConfig, config_diff, parse_temperature_schedule
from adact.data import DataSplits
from adact.runs.io import read_json
from adact.training.loop import train
from adact.training.sharpen import TemperatureSchedule, mixture_entropy, param_groups, set_temperature
from conftest import TINY

GRANULARITY = pytest.mark.parametrize("granularity", ["layer", "channel"])


def _pair(granularity: str, temperature: float) -> tuple[AdAct, AdAct]:
    """A reference and a fused unit with the same random logits and slope at ``temperature``."""
    kw: dict[str, Any] = dict(granularity=granularity, num_channels=4 if granularity == "channel" else None)
    ref = AdAct(fused=False, init="normal", init_scale=1.0, **kw).eval()
    with torch.no_grad():
        ref.prelu_weight.uniform_(0.05, 0.5)
    ref.set_temperature(temperature)
    fus = AdAct(fused=True, **kw).eval()
    fus.load_state_dict(ref.state_dict())
    return ref, fus


def _grads(m: AdAct, x: Tensor, g: Tensor, entropy_weight: float) -> list[Tensor]:
    xi = x.clone().requires_grad_()
    m.zero_grad()
    loss = (m(xi) * g).sum() + entropy_weight * mixture_entropy(m)
    loss.backward()
    return [xi.grad, m.logits.grad, m.prelu_weight.grad]


# --- the unit's temperature ---------------------------------------------------------------------


@GRANULARITY
def test_temperature_divides_the_logits_on_both_paths(granularity: str) -> None:
    ref, fus = _pair(granularity, 0.3)
    x = torch.randn(3, 4, 5)
    expected = adact_reference(x, ref.logits.detach() / 0.3, ref.prelu_weight.detach(), ref.candidates)
    torch.testing.assert_close(ref(x), expected)
    torch.testing.assert_close(fus(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ref.mixture(), torch.softmax(ref.logits.detach() / 0.3, -1))


@GRANULARITY
@pytest.mark.parametrize("temperature", [0.2, 1.0, 3.0])
@pytest.mark.parametrize("entropy_weight", [0.0, 0.7])
def test_temperature_and_entropy_gradients_match_the_reference(granularity: str, temperature: float,
                                                               entropy_weight: float) -> None:
    ref, fus = _pair(granularity, temperature)
    x = torch.randn(3, 4, 5)
    g = torch.randn_like(x)
    for a, b in zip(_grads(ref, x, g, entropy_weight), _grads(fus, x, g, entropy_weight)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@GRANULARITY
@pytest.mark.parametrize("fused", [False, True], ids=["reference", "fused"])
def test_gradcheck_logits_at_a_temperature(granularity: str, fused: bool) -> None:
    kw: dict[str, Any] = dict(granularity=granularity, num_channels=3 if granularity == "channel" else None)
    m = AdAct(fused=fused, init="normal", init_scale=1.0, temperature=0.4, **kw).double().eval()
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    x = x + 0.2 * x.sign()  # away from the kinks at 0
    w = m.prelu_weight.detach().clone()

    def f(logits: Tensor) -> Tensor:
        out = torch.func.functional_call(m, {"logits": logits, "prelu_weight": w}, (x,))
        return out.sum() + 0.5 * normalised_entropy(torch.softmax(logits / 0.4, -1)).mean()

    assert torch.autograd.gradcheck(f, (m.logits.detach().clone().requires_grad_(),))


def test_entropy_gradient_is_zero_at_uniform_and_sharpens_otherwise() -> None:
    unit = AdAct()
    mixture_entropy(unit).backward()
    assert float(unit.logits.grad.abs().max()) < 1e-6  # the uniform mixture is the entropy's maximum
    with torch.no_grad():
        unit.logits.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.2]))
    unit.logits.grad = None
    mixture_entropy(unit).backward()
    # Descending the entropy raises the leader's logit above the rest.
    assert int(torch.argmin(unit.logits.grad)) == 5


def test_unit_temperature_default_state_and_errors() -> None:
    unit = AdAct()
    assert float(unit.temperature) == 1.0 and "temperature" not in repr(unit)
    x = torch.randn(4, 6)
    torch.testing.assert_close(AdAct(fused=False).eval()(x), adact_reference(x, unit.logits, unit.prelu_weight), rtol=0,
                               atol=0)  # T = 1 computes exactly what the paper's unit does
    unit.set_temperature(0.25)
    assert "temperature=0.25" in repr(unit)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="temperature must be finite and > 0"):
            unit.set_temperature(bad)
        with pytest.raises(ValueError, match="temperature"):
            AdAct(temperature=bad)
    with pytest.raises(TypeError, match="temperature must be a number"):
        unit.set_temperature("0.5")  # type: ignore[arg-type]
    assert float(unit.temperature) == 0.25


def test_temperature_is_saved_and_old_state_dicts_load_at_one() -> None:
    unit = AdAct(temperature=0.3)
    state = unit.state_dict()
    assert float(state["temperature"]) == pytest.approx(0.3)
    fresh = AdAct()
    fresh.load_state_dict(state)
    assert float(fresh.temperature) == pytest.approx(0.3)
    old = {k: v for k, v in state.items() if k != "temperature"}  # written before temperatures existed
    fresh.load_state_dict(old)
    assert float(fresh.temperature) == 1.0


def test_set_temperature_reaches_every_unit() -> None:
    net = ConvNet(1, 10, 16, channels=[4, 4, 4, 4])
    assert set_temperature(net, 0.5) == 4
    assert [float(u.temperature) for u in net.activations()] == [0.5] * 4


# --- the schedule -------------------------------------------------------------------------------


def test_schedule_is_geometric_from_t0_to_t1() -> None:
    s = TemperatureSchedule(1.0, 0.01, total_steps=5)
    assert [s(i) for i in range(5)] == pytest.approx([1.0, 10 ** -0.5, 0.1, 10 ** -1.5, 0.01])
    assert s(99) == pytest.approx(0.01)  # past the end: stays at T1
    assert TemperatureSchedule(2.0, 0.5, total_steps=1)(0) == 0.5
    assert [TemperatureSchedule(0.5, 0.5, 3)(i) for i in range(3)] == [0.5] * 3
    assert "t0=1, t1=0.01" in repr(s)


@pytest.mark.parametrize("args, match", [((0.0, 1.0, 3), "t0"), ((1.0, -1.0, 3), "t1"), ((1.0, 0.1, 0), "total_steps"),
                                         ((1.0, math.nan, 3), "t1")])
def test_schedule_errors(args: tuple[float, float, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TemperatureSchedule(*args)  # type: ignore[arg-type]


def test_parse_temperature_schedule() -> None:
    assert parse_temperature_schedule("1:0.1") == [1.0, 0.1]
    assert parse_temperature_schedule([2, 0.5]) == [2.0, 0.5]
    for bad, match in (("1", "T0:T1"), ("1:0.1:3", "T0:T1"), ("a:b", "two numbers"), ("0:1", "T0"), ("1:-2", "T1"),
                       ("1:inf", "T1")):
        with pytest.raises(ValueError, match=match):
            parse_temperature_schedule(bad)


# --- parameter groups ---------------------------------------------------------------------------


def test_param_groups_keep_the_historical_layout_at_mult_1() -> None:
    net = ConvNet(1, 10, 16, channels=[4, 4, 4, 4])
    params = list(net.parameters())
    one = param_groups(net, 0.01)
    assert len(one) == 1 and one[0]["params"] == params and "lr" not in one[0]
    two = param_groups(net, 0.01, decay_adact=False)
    assert [g["weight_decay"] for g in two] == [0.01, 0.0] and len(two[1]["params"]) == 8  # logits + slope x 4


def test_param_groups_give_the_logits_their_own_lr() -> None:
    net = ConvNet(1, 10, 16, channels=[4, 4, 4, 4])
    groups = param_groups(net, 0.01, decay_adact=False, adact_lr_mult=0.1, lr=1e-3)
    logits = {id(u.logits) for u in net.activations()}
    slopes = {id(u.prelu_weight) for u in net.activations()}
    by_ids = {frozenset(id(p) for p in g["params"]): g for g in groups}
    assert by_ids[frozenset(logits)]["lr"] == pytest.approx(1e-4) and by_ids[frozenset(logits)]["weight_decay"] == 0
    assert by_ids[frozenset(slopes)]["lr"] == 1e-3 and by_ids[frozenset(slopes)]["weight_decay"] == 0
    assert sum(len(g["params"]) for g in groups) == len(list(net.parameters()))
    relu = param_groups(ConvNet(1, 10, 16, activation="relu"), 0.01, adact_lr_mult=0.1, lr=1e-3)
    assert len(relu) == 1  # no AdAct parameters: no empty groups
    with pytest.raises(ValueError, match="adact_lr_mult"):
        param_groups(net, 0.01, adact_lr_mult=0.0, lr=1e-3)
    with pytest.raises(ValueError, match="base lr"):
        param_groups(net, 0.01, adact_lr_mult=0.5)


# --- training with the options ------------------------------------------------------------------


def _column(run: Path, name: str) -> list[float]:
    with open(run / "metrics.csv", newline="") as f:
        return [float(r[name]) for r in csv.DictReader(f)]


def test_train_config_checks_the_sharpening_options() -> None:
    assert TrainConfig(temperature_schedule="1:0.1").temperature_schedule == [1.0, 0.1]  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="entropy_weight"):
        TrainConfig(entropy_weight=-1.0)
    with pytest.raises(ValueError, match="adact_lr_mult"):
        TrainConfig(adact_lr_mult=0.0)
    with pytest.raises(ValueError, match="T1"):
        TrainConfig(temperature_schedule=[1.0, 0.0])
    with pytest.raises(ValueError, match="entropy_weight sharpen AdAct mixtures, but activation 'relu' has no AdAct"):
        TrainConfig(activation="relu", entropy_weight=0.1)
    TrainConfig(activation=["relu", "adact", "mish", "mish"], temperature_schedule=[1.0, 0.5])  # one AdAct block


def test_configs_saved_before_the_options_existed_still_match() -> None:
    old = {k: v for k, v in vars(TrainConfig()).items()
           if k not in ("temperature_schedule", "entropy_weight", "adact_lr_mult")}
    assert config_diff(old, vars(TrainConfig())) == []
    assert config_diff(old, vars(TrainConfig(entropy_weight=0.1))) == ["entropy_weight 0.0 -> 0.1"]


def test_schedule_anneals_during_training_and_is_saved(tmp_path: Path, digits: DataSplits) -> None:
    cfg = TrainConfig(activation="adact", epochs=2, temperature_schedule=[1.0, 0.1], keep_checkpoints="last", **TINY)
    train(cfg, tmp_path / "run", data=digits, quiet=True)
    temps = _column(tmp_path / "run", "temperature")
    steps = 4  # 256 images, batch 64
    sched = TemperatureSchedule(1.0, 0.1, 2 * steps)
    assert temps == pytest.approx([sched(steps - 1), sched(2 * steps - 1)])  # the last step of each epoch
    assert temps[-1] == pytest.approx(0.1)
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["model"]
    assert float(last["features.0.2.temperature"]) == pytest.approx(0.1)  # a reloaded model computes the same


def test_entropy_penalty_sharpens_the_mixtures(tmp_path: Path, digits: DataSplits) -> None:
    plain = TrainConfig(activation="adact", epochs=2, seed=1, **TINY)
    sharp = TrainConfig(activation="adact", epochs=2, seed=1, entropy_weight=5.0, adact_lr_mult=100.0,
                        keep_checkpoints="last", **TINY)  # last.pt holds the optimizer state
    train(plain, tmp_path / "plain", data=digits, quiet=True)
    train(sharp, tmp_path / "sharp", data=digits, quiet=True)
    h_plain, h_sharp = _column(tmp_path / "plain", "mixture_entropy"), _column(tmp_path / "sharp", "mixture_entropy")
    assert h_sharp[-1] < h_plain[-1] - 0.05
    # train_loss stays the cross-entropy: the penalty is not mixed into the reported loss.
    assert all(0.0 < v < 5.0 for v in _column(tmp_path / "sharp", "train_loss"))
    opt = torch.load(tmp_path / "sharp" / "last.pt", weights_only=True)["optimizer"]
    assert sorted(g["lr"] for g in opt["param_groups"]) == pytest.approx([1e-3, 1e-3, 0.1])
    res = read_json(tmp_path / "sharp" / "result.json")
    assert res["config"]["entropy_weight"] == 5.0 and res["config"]["adact_lr_mult"] == 100.0


def test_sharpened_run_resumes_to_the_same_numbers(tmp_path: Path, digits: DataSplits,
                                                   kill_at_step: Any) -> None:
    cfg = TrainConfig(activation="adact", epochs=2, seed=2, temperature_schedule=[2.0, 0.2], entropy_weight=0.5,
                      adact_lr_mult=3.0, **TINY)
    train(cfg, tmp_path / "straight", data=digits, quiet=True)
    disarm = kill_at_step(6)  # the 2nd step of epoch 2
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "killed", data=digits, quiet=True)
    disarm()
    train(cfg, tmp_path / "killed", data=digits, quiet=True)
    a, b = read_json(tmp_path / "straight" / "result.json"), read_json(tmp_path / "killed" / "result.json")
    for key in ("best_test_acc", "final_test_acc", "weights", "best_weights", "discretization_gap"):
        assert a[key] == b[key], key
    assert _column(tmp_path / "straight", "temperature") == _column(tmp_path / "killed", "temperature")


def test_saved_choices_record_the_temperature_of_their_weights(tmp_path: Path) -> None:
    from adact import save_choices

    net = ConvNet(1, 10, 16, channels=[4, 4, 4, 4], adact_kwargs={"init": "normal", "init_scale": 1.0})
    set_temperature(net, 0.5)
    save_choices(net, tmp_path / "c.json")
    site = read_json(tmp_path / "c.json")["sites"][0]
    unit = net.activations()[0]
    assert site["temperature"] == 0.5
    assert list(site["weights"].values()) == pytest.approx(torch.softmax(unit.logits.detach() / 0.5, -1).tolist())
