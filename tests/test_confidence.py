"""Confidence of a choice (src/adact/choice.py) and the discretization gap (src/adact/training/gap.py), in result.json."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from torch import nn

from adact import DEFAULT_CANDIDATES, AdAct, ConvNet
from adact.choice import (
    WEAK_MARGIN,
    confidence_from_mixture,
    confidence_from_weights,
    model_confidence,
    negative_prelu,
    normalised_entropy,
    unit_confidence,
)
from adact.choice import model_weights as adact_weights
from adact.config import TrainConfig
from adact.data import DataSplits, DeviceLoader
from adact.reporting.tables import render_confidence_text
from adact.runs.io import read_json
from adact.training.build import load_checkpoint
from adact.training.gap import discretization_gap, recompute_batchnorm
from adact.training.loop import train
from conftest import TINY



# --- normalised entropy -------------------------------------------------------------------------


def test_normalised_entropy_is_0_for_one_hot_and_1_for_uniform() -> None:
    assert float(normalised_entropy(torch.full((7,), 1 / 7))) == pytest.approx(1.0)
    assert float(normalised_entropy(torch.tensor([0.0, 1.0, 0.0]))) == 0.0
    # By hand: -(0.5 ln 0.5 + 0.25 ln 0.25 * 2) / ln 3 = 1.0397 / 1.0986
    assert float(normalised_entropy(torch.tensor([0.5, 0.25, 0.25]))) == pytest.approx(1.5 * math.log(2) / math.log(3))
    assert normalised_entropy(torch.ones(4, 1)).tolist() == [0.0] * 4  # one candidate: nothing to be unsure of


def test_normalised_entropy_gradient_is_finite_at_a_zero_weight() -> None:
    p = torch.tensor([0.0, 0.3, 0.7], requires_grad=True)
    normalised_entropy(p).backward()
    assert torch.isfinite(p.grad).all()


# --- per unit ----------------------------------------------------------------------------------


def test_confidence_from_weights_of_a_recorded_run_by_hand() -> None:
    """A result.json's best_weights (paths, candidates, mix) -> one JSON confidence per unit, in order."""
    w = {"paths": ["f.0", "f.1"], "candidates": ["relu", "elu", "mish"], "mix": [[0.2, 0.5, 0.3], [0.34, 0.33, 0.33]]}
    got = confidence_from_weights(w)
    assert [(c["path"], c["choice"], c["weak"]) for c in got] == [("f.0", "elu", False), ("f.1", "relu", True)]
    assert got[0]["margin"] == pytest.approx(0.2) and got[1]["margin"] == pytest.approx(0.01)
    assert got == [confidence_from_mixture(m, w["candidates"], p).to_json() for p, m in zip(w["paths"], w["mix"])]


def test_confidence_from_mixture_by_hand() -> None:
    c = confidence_from_mixture([0.2, 0.5, 0.3], ["relu", "elu", "mish"], path="a")
    assert (c.path, c.choice, c.agreement) == ("a", "elu", None)
    assert c.top == pytest.approx(0.5) and c.margin == pytest.approx(0.2) and not c.weak
    close = confidence_from_mixture([0.34, 0.33, 0.33], ["relu", "elu", "mish"])
    assert close.choice == "relu" and close.margin == pytest.approx(0.01) and close.weak
    tie = confidence_from_mixture([0.4, 0.4, 0.2], ["relu", "elu", "mish"])
    assert tie.choice == "relu" and tie.margin == 0.0 and tie.weak  # ties go to the first, as dominant() does
    assert confidence_from_mixture([1.0], ["mish"]).margin == 1.0  # no runner-up


def test_weak_flag_follows_the_margin_threshold() -> None:
    names = ["relu", "elu"]
    assert not confidence_from_mixture([0.5 + WEAK_MARGIN, 0.5 - WEAK_MARGIN], names).weak
    assert confidence_from_mixture([0.52, 0.48], names).weak
    assert not confidence_from_mixture([0.52, 0.48], names, weak_margin=0.01).weak


def test_fresh_unit_is_uniform_and_weak() -> None:
    c = unit_confidence(AdAct(), "u")
    assert c.choice == "relu" and c.top == pytest.approx(1 / 7) and c.margin == pytest.approx(0.0, abs=1e-7)
    assert c.entropy == pytest.approx(1.0) and c.weak and c.agreement is None


def test_channel_unit_agreement_and_mean_channel_entropy() -> None:
    unit = AdAct(granularity="channel", num_channels=4)
    with torch.no_grad():
        unit.logits.zero_()
        unit.logits[:3, 1] = 10.0  # three channels are sure of elu
        unit.logits[3, 6] = 1.0  # one leans to mish
    c = unit_confidence(unit)
    p = unit.mixture()
    assert c.choice == "elu" and c.agreement == pytest.approx(0.75)
    assert c.top == pytest.approx(float(p.mean(0)[1]), rel=1e-6)
    assert c.entropy == pytest.approx(float(normalised_entropy(p.double()).mean()), rel=1e-6)
    assert c.entropy < 0.5  # sharp channels: the entropy of the channel mean (near 0.7) would hide it


def test_lower_temperature_raises_confidence_not_the_choice() -> None:
    unit = AdAct()
    with torch.no_grad():
        unit.logits.copy_(torch.tensor([0.1, 0.0, 0.05, 0.0, 0.0, 0.3, 0.2]))
    warm = unit_confidence(unit)
    unit.set_temperature(0.1)
    cold = unit_confidence(unit)
    assert warm.choice == cold.choice == "silu"
    assert cold.top > warm.top and cold.margin > warm.margin and cold.entropy < warm.entropy
    assert warm.weak and not cold.weak


def test_prelu_slope_is_recorded_and_a_negative_one_flagged() -> None:
    unit = AdAct()
    with torch.no_grad():
        unit.logits.copy_(torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]))  # prelu
        unit.prelu_weight.fill_(-0.37)
    c = unit_confidence(unit, "u")
    assert c.choice == "prelu" and c.prelu_slope == pytest.approx(-0.37)
    assert negative_prelu(c) and negative_prelu(c.to_json())
    text = render_confidence_text([c])
    assert "-0.37" in text and "NEG-SLOPE" in text and "V-shaped" in text  # the mark, and a line saying what it means
    with torch.no_grad():
        unit.prelu_weight.fill_(0.1)
    assert not negative_prelu(unit_confidence(unit))  # a positive slope is a PReLU like the retrained one
    with torch.no_grad():
        unit.prelu_weight.fill_(-0.37)
        unit.logits[6] = 2.0  # mish: the slope of a candidate that is not chosen does not matter
    c = unit_confidence(unit)
    assert c.choice == "mish" and c.prelu_slope == pytest.approx(-0.37) and not negative_prelu(c)
    assert "NEG-SLOPE" not in render_confidence_text([c])


def test_channel_unit_records_the_mean_slope_and_old_records_are_not_flagged() -> None:
    unit = AdAct(granularity="channel", num_channels=4)
    with torch.no_grad():
        unit.prelu_weight.copy_(torch.tensor([-0.4, -0.2, 0.0, 0.2]))
    assert unit_confidence(unit).prelu_slope == pytest.approx(-0.1)
    assert unit_confidence(AdAct(candidates=["relu", "silu"])).prelu_slope is None  # no PReLU candidate
    old = confidence_from_mixture([0.1, 0.9], ["relu", "prelu"]).to_json()
    del old["prelu_slope"]  # a result.json written before slopes were recorded
    assert not negative_prelu(old)
    assert "NEG-SLOPE" not in render_confidence_text([old]) and "V-shaped" not in render_confidence_text([old])


def test_model_confidence_lists_units_in_module_order() -> None:
    net = ConvNet(1, 10, 16, channels=[4, 4, 4, 4])
    conf = model_confidence(net)
    assert [c.path for c in conf] == [f"features.{i}.2" for i in range(4)]
    assert adact_weights(net)["confidence"] == [c.to_json() for c in conf]


def test_confidence_argument_errors() -> None:
    with pytest.raises(ValueError, match="one weight per candidate"):
        confidence_from_mixture([0.5, 0.5], ["relu", "elu", "mish"])
    with pytest.raises(ValueError, match="channel_mix must be"):
        confidence_from_mixture([0.5, 0.5], ["relu", "elu"], channel_mix=[[1.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="weak_margin"):
        confidence_from_mixture([0.5, 0.5], ["relu", "elu"], weak_margin=2.0)
    with pytest.raises(TypeError, match="AdAct unit"):
        unit_confidence(nn.ReLU())  # type: ignore[arg-type]


# --- BatchNorm statistics and the gap ----------------------------------------------------------


def test_recompute_batchnorm_is_the_plain_average_over_batches() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.RReLU(), nn.BatchNorm1d(5))
    batches = [(torch.randn(8, 3) * 2 + 1, torch.zeros(8)) for _ in range(4)]
    used = recompute_batchnorm(model, batches + batches, max_batches=4)
    assert used == 4 and not model.training and model[2].momentum == 0.1  # momentum restored
    with torch.no_grad():
        h = [model[1](model[0](x)) for x, _ in batches]  # RReLU in eval mode: deterministic
    means = torch.stack([t.mean(0) for t in h])
    variances = torch.stack([t.var(0, unbiased=True) for t in h])
    torch.testing.assert_close(model[2].running_mean, means.mean(0))
    torch.testing.assert_close(model[2].running_var, variances.mean(0))
    assert recompute_batchnorm(nn.Linear(2, 2), batches) == 0
    with pytest.raises(ValueError, match="max_batches"):
        recompute_batchnorm(model, batches, max_batches=0)


def _loaders(digits: DataSplits) -> tuple[DeviceLoader, DeviceLoader]:
    return DeviceLoader(digits.train, 64, shuffle=True, seed=0), DeviceLoader(digits.test, 500)


def test_gap_is_zero_when_every_mixture_is_one_hot(digits: DataSplits) -> None:
    net = ConvNet(1, 10, digits.image_size, channels=[4, 8, 8, 8], adact_kwargs={"fused": False})
    with torch.no_grad():
        for i, act in enumerate(net.activations()):
            act.logits.zero_()
            act.logits[DEFAULT_CANDIDATES.index(["elu", "mish", "silu", "leaky_relu"][i])] = 60.0
    train_loader, test_loader = _loaders(digits)
    recompute_batchnorm(net, train_loader, 5)  # the mixture model's statistics from the same batches
    before = {k: v.clone() for k, v in net.state_dict().items()}
    train_loader.set_epoch(0)  # each iteration of a loader moves on to the next epoch's order
    r = discretization_gap(net, train_loader, test_loader, bn_batches=5)
    assert r.bn_batches == 5 and r.argmax_acc == r.mixture_acc and r.gap == 0.0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the model is not touched


def test_gap_of_a_mixed_model_is_measured_not_assumed(digits: DataSplits) -> None:
    torch.manual_seed(3)
    net = ConvNet(1, 10, digits.image_size, channels=[4, 8, 8, 8],
                  adact_kwargs={"fused": False, "init": "normal", "init_scale": 1.0})
    train_loader, test_loader = _loaders(digits)
    r = discretization_gap(net, train_loader, test_loader, bn_batches=3)
    assert r.gap == pytest.approx(r.argmax_acc - r.mixture_acc)
    assert 0.0 <= r.argmax_acc <= 1.0 and r.bn_batches == 3
    with pytest.raises(ValueError, match="no.*AdAct|none"):
        discretization_gap(ConvNet(1, 10, digits.image_size, activation="relu"), train_loader, test_loader)


# --- result.json --------------------------------------------------------------------------------


@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_result_json_holds_confidence_and_gap(tmp_path: Path, digits: DataSplits, granularity: str) -> None:
    result = train(TrainConfig(activation="adact", epochs=2, granularity=granularity, **TINY), tmp_path / "a",
                   data=digits, quiet=True)
    saved = read_json(tmp_path / "a" / "result.json")
    gap = saved["discretization_gap"]
    assert gap == result["discretization_gap"]
    # Measured on best.pt, the epoch whose accuracy the run reports.
    assert gap["epoch"] == saved["best_epoch"] and gap["mixture_acc"] == saved["best_test_acc"]
    assert gap["gap"] == pytest.approx(gap["argmax_acc"] - gap["mixture_acc"])
    model, _ = load_checkpoint(tmp_path / "a" / "best.pt")
    conf = saved["best_weights"]["confidence"]
    assert conf == [c.to_json() for c in model_confidence(model)]
    assert [c["choice"] for c in conf] == saved["best_weights"]["choices"]
    assert all((c["agreement"] is None) == (granularity == "layer") for c in conf)

    relu = train(TrainConfig(activation="relu", epochs=1, **TINY), tmp_path / "r", data=digits, quiet=True)
    assert "discretization_gap" not in relu and relu["best_weights"]["confidence"] == []


def test_runs_finished_before_gaps_get_theirs_without_training(tmp_path: Path, digits: DataSplits,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import adact.experiments.search
    import adact.training.loop
    from adact.experiments.workers import RunTask
    from adact.runs.folder import RunFolder

    cfg = TrainConfig(activation="adact", epochs=2, **TINY)
    run = tmp_path / "a"

    def previous() -> dict[str, object] | None:  # what a search skips instead of training
        return adact.experiments.search._previous(RunTask("digits", 0, "adact", str(run), asdict(cfg), True))

    measured = train(cfg, run, data=digits, quiet=True)["discretization_gap"]
    old = read_json(run / "result.json")
    del old["discretization_gap"]  # as an older adact wrote it
    conf = old["best_weights"].pop("confidence")
    (run / "result.json").write_text(json.dumps(old))
    assert previous() is None  # so a search hands it to train again

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(adact.training.loop, "_run", no_training)
    again = train(cfg, run, data=digits, quiet=True)
    assert again["discretization_gap"] == measured == read_json(run / "result.json")["discretization_gap"]
    assert again["best_weights"]["confidence"] == conf  # filled in from best.pt as well
    old["best_weights"]["confidence"] = conf
    assert {k: v for k, v in again.items() if k != "discretization_gap"} == old
    assert RunFolder(run).ended(cfg) == again
    assert previous() == {"status": "done", "message": "", "skipped": True, "best_test_acc": again["best_test_acc"],
                          "seconds": 0.0}
    (run / "best.pt").unlink()  # without its checkpoint a published run stays as it is
    (run / "result.json").write_text(json.dumps(old))
    assert "discretization_gap" not in train(cfg, run, data=digits, quiet=True)
