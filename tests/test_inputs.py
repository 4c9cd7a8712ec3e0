"""Issue 25: each unit's input statistics, its learned function over them, and |mixture - chosen|."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY
from torch import nn

import adact.inputs
from adact import AdAct
from adact.choice import adact_units, snapshot, snapshots_from_record, weights_record
from adact.config import TrainConfig
from adact.inputs import QUANTILES, InputRecorder, InputStats, function_gap
from adact.models import ConvNet
from adact.reporting.analyze import analyze_run
from adact.runs.checkpoint import read_checkpoint
from adact.runs.io import read_json
from adact.training.loop import train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _own_inputs(model: nn.Module, batches: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every unit's inputs, caught by hooks of the test's own: what the recorder must agree with."""
    seen: dict[str, list[torch.Tensor]] = {}
    handles = [u.register_forward_pre_hook(lambda m, a, p=p: seen.setdefault(p, []).append(a[0].detach().clone()))
               for p, u in adact_units(model)]
    with torch.no_grad():
        for x in batches:
            model(x)
    for h in handles:
        h.remove()
    return {p: torch.cat([t.flatten() for t in ts]).double() for p, ts in seen.items()}


@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_recorded_statistics_are_those_of_the_units_inputs(granularity: str) -> None:
    model = ConvNet(1, 10, 16, channels=(4, 8, 8, 8), adact_kwargs={"granularity": granularity}).eval()
    batches = [torch.randn(2, 1, 16, 16) * 3 for _ in range(3)]  # 2 * 4 * 16 * 16 = 2048 values: all kept
    with InputRecorder(adact_units(model)) as rec, torch.no_grad():
        for x in batches:
            model(x)
    stats = rec.stats()
    truth = _own_inputs(model, batches)
    assert list(stats) == [p for p, _ in adact_units(model)] and all(not u._forward_pre_hooks for _, u in
                                                                     adact_units(model))
    for path, x in truth.items():
        s = stats[path]
        assert s.count == s.sampled == x.numel()  # every channel counted, every batch
        assert (s.min, s.max) == (float(x.min()), float(x.max()))
        assert s.mean == pytest.approx(float(x.mean()), rel=1e-6, abs=1e-9)
        assert s.std == pytest.approx(float(x.std(unbiased=False)), rel=1e-5)
        assert np.allclose(s.quantiles, torch.quantile(x, torch.tensor(QUANTILES, dtype=torch.float64)), atol=1e-6)
        counts, _ = np.histogram(x.numpy(), np.array(s.edges))
        assert np.allclose(s.hist, counts / x.numel())
        assert s.below + sum(s.hist) + s.above == pytest.approx(1.0)


def test_large_inputs_are_subsampled_without_moving_the_global_rng(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(adact.inputs, "MAX_SAMPLE", 6000)  # the third batch thins the kept values by 2
    unit = AdAct().eval()  # in training mode RReLU itself draws from the global RNG
    batches = [torch.rand(10_000) * 2 - 1 for _ in range(3)]  # U(-1, 1), 30,000 values
    state = torch.get_rng_state()
    with InputRecorder([("u", unit)]) as rec, torch.no_grad():
        for x in batches:
            unit(x)
    assert torch.equal(torch.get_rng_state(), state)
    s = rec.stats()["u"]
    every = torch.cat(batches).double()
    assert s.count == 30_000 and (s.min, s.max) == (float(every.min()), float(every.max()))
    assert s.sampled < 6000
    assert s.quantile(0.5) == pytest.approx(0.0, abs=0.06) and s.quantile(0.25) == pytest.approx(-0.5, abs=0.06)


def test_function_gap_is_the_mean_difference_over_the_inputs() -> None:
    x = torch.randn(4000, dtype=torch.float64)
    rec = adact.inputs._Unit()
    rec.add(x)
    stats = rec.stats()
    assert stats is not None
    # Half ReLU, half identity, choice ReLU: |mixture - relu| = |min(x, 0)| / 2.
    gap = function_gap(["relu", "identity"], [0.5, 0.5], None, "relu", stats)
    inside = x[(x >= stats.edges[0]) & (x <= stats.edges[-1])]
    assert gap == pytest.approx(float(inside.clamp(max=0).abs().mean() / 2), rel=0.03)
    assert function_gap(["relu", "identity"], [1.0, 0.0], None, "relu", stats) == 0.0
    # A negative PReLU slope inside the mixture: the chosen PReLU is V-shaped, far from the mixture.
    assert function_gap(["relu", "prelu"], [0.4, 0.6], -0.5, "prelu", stats) == pytest.approx(
        0.4 * float(inside.clamp(max=0).abs().mul(0.5).mean()), rel=0.03)


def test_inputs_travel_with_the_snapshot_record() -> None:
    model = ConvNet(1, 10, 16, channels=(4, 4, 4, 4)).eval()
    with InputRecorder(adact_units(model)) as rec, torch.no_grad():
        model(torch.randn(2, 1, 16, 16))
    units = snapshot(model, inputs=rec.stats())
    record = json.loads(json.dumps(weights_record(units)))
    back = snapshots_from_record(record)
    assert [u.inputs for u in back] == [u.inputs for u in units]
    assert [u.function_gap for u in back] == [u.function_gap for u in units]
    assert all(isinstance(u.inputs, InputStats) and u.function_gap is not None for u in back)
    old = {k: v for k, v in record.items() if k != "inputs"}  # a record from before inputs were
    assert "inputs" not in weights_record(snapshot(model)) and snapshots_from_record(old)[0].function_gap is None


def test_a_run_records_inputs_and_analyze_draws_the_functions(tmp_path: Path, digits: object,
                                                              one_thread: None) -> None:
    run = tmp_path / "run"
    result = train(TrainConfig(activation="adact", epochs=1, **TINY), run, data=digits, quiet=True)
    inputs = result["best_weights"]["inputs"]
    first = InputStats.from_json(inputs[0])
    assert len(inputs) == 4 and first.count == 360 * 4 * 16 * 16  # the whole test set, all 4 channels
    assert read_checkpoint(run / "best.pt")["units"]["inputs"] == inputs  # and in the checkpoints
    text, files = analyze_run(run)
    assert "|mix-chosen|" in text and (run / "functions.png").read_bytes()[:8] == PNG_MAGIC
    assert run / "functions.svg" in files
    # A published folder from before inputs were recorded: no checkpoints, no inputs; still drawn, and said so.
    old = tmp_path / "old"
    shutil.copytree(run, old, ignore=shutil.ignore_patterns("*.pt", "functions.*"))
    res = read_json(old / "result.json")
    del res["best_weights"]["inputs"]
    (old / "result.json").write_text(json.dumps(res))
    text, files = analyze_run(old)
    assert "inputs not recorded" in text and (old / "functions.png").read_bytes()[:8] == PNG_MAGIC
