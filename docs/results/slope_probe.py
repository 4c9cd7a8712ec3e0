"""The argmax model of a finished AdAct run with its learned PReLU slopes kept, reset to 0.25 (PReLU's
initial value), or set to 0 (ReLU): is the negative slope what breaks the argmax model?

Usage (from the repository root; needs the run's best.pt, which published folders do not keep)::

    PYTHONPATH=src python docs/results/slope_probe.py runs/table1-fmnist/npz-fmnist/seed2/adact

Each line is the argmax model's test accuracy, measured as in the run's result.json
(``discretization_gap``: BatchNorm statistics recomputed on 100 training batches, no retraining).
Only the slope is changed, in every unit; which candidate each unit keeps is unchanged.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from adact.choice import adact_units
from adact.config import TrainConfig
from adact.training.build import load_checkpoint, load_data, train_subset
from adact.training.gap import discretization_gap
from adact.training.task import task_for


def main(run: Path) -> None:
    torch.set_num_threads(1)
    saved = json.loads((run / "config.json").read_text())
    cfg = TrainConfig(**{k: v for k, v in saved.items() if k in TrainConfig.__dataclass_fields__})
    data = load_data(cfg, True)
    loaders = task_for(cfg).loaders(cfg, data, train_subset(cfg, data), torch.device("cpu"))
    train_loader, test_loader = loaders.train, loaders.test
    for slope in ("kept", 0.25, 0.0):
        model, _ = load_checkpoint(run / "best.pt", torch.device("cpu"))
        if slope != "kept":
            for _, unit in adact_units(model):
                with torch.no_grad():
                    unit.prelu_weight.fill_(slope)
        train_loader.set_epoch(0)  # the batches result.json's gap used
        gap = discretization_gap(model, train_loader, test_loader).to_json()
        print(f"{run}: slope {slope}: argmax {gap['argmax_acc']:.4f}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
