"""One definition of a unit's choice: ``AdAct.choice()`` and the snapshots every reader goes through."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from adact import AdAct, ConvNet, dominant_activations, save_choices
from adact.choice import UnitSnapshot, snapshot, snapshots_from_record, weights_record


def _channel_unit() -> AdAct:
    unit = AdAct(granularity="channel", num_channels=3)
    with torch.no_grad():
        # Channels 0 and 1 prefer ELU a little, channel 2 prefers Mish a lot: the channel mean picks Mish,
        # although most channels' own argmax is ELU.
        unit.logits.zero_()
        unit.logits[0, 1] = unit.logits[1, 1] = 0.5
        unit.logits[2, 6] = 5.0
    return unit


def test_a_channel_units_choice_is_its_channel_mean_winner() -> None:
    unit = _channel_unit()
    assert unit.dominant() == ["elu", "elu", "mish"]  # each channel's own argmax
    name, weight = unit.choice()
    assert name == "mish" and weight == pytest.approx(float(unit.mixture().mean(0)[6]))
    net = torch.nn.Sequential(unit)
    assert dominant_activations(net) == {"0": ("mish", weight)}
    snap = snapshot(net)[0]
    assert (snap.choice, snap.weight, snap.granularity) == ("mish", weight, "channel")
    assert snap.confidence is not None and snap.confidence.choice == "mish"
    assert snap.confidence.agreement == pytest.approx(1 / 3)


def test_ties_go_to_the_first_candidate() -> None:
    assert AdAct().choice() == ("relu", pytest.approx(1 / 7))


def test_the_recorded_table_round_trips(tmp_path: object) -> None:
    net = ConvNet(activation="adact")
    with torch.no_grad():
        for i, m in enumerate(u for u in net.modules() if isinstance(u, AdAct)):
            m.logits.normal_(generator=torch.Generator().manual_seed(i))
    snaps = snapshot(net)
    record = json.loads(json.dumps(weights_record(snaps)))  # as result.json stores it
    assert snapshots_from_record(record) == snaps
    assert record["choices"] == [c for c, _ in dominant_activations(net).values()]
    assert set(record) == {"paths", "candidates", "choices", "choice_weights", "raw", "mix", "confidence"}
    # A record from before confidences: a per-layer unit's is computed from its weights, exactly
    # (its PReLU slope was not recorded, so it stays unknown).
    del record["confidence"]
    again = snapshots_from_record(record)
    assert [s.confidence for s in again] == [replace(s.confidence, prelu_slope=None) for s in snaps]
    # ... a per-channel unit's is not known from the channel mean.
    assert all(s.confidence is None for s in snapshots_from_record(record, granularity="channel"))


def test_save_choices_writes_the_same_choice(tmp_path: object) -> None:
    from pathlib import Path

    unit = _channel_unit()
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), unit)
    path = Path(str(tmp_path)) / "choices.json"
    save_choices(net, path)
    saved = json.loads(path.read_text())
    assert [site["choice"] for site in saved["sites"]] == ["mish"]
    assert isinstance(snapshot(net)[0], UnitSnapshot)
