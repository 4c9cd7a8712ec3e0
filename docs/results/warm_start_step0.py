"""Step 0 of the warm-start experiment: what inserting AdAct units does to a pretrained network.

For the pretrained ResNet-18 (CIFAR-10, ``runs/pretrain-c10/best.pt``) it prints the CIFAR-10 test
accuracy of the network as trained, adactified cold (uniform mixtures, the paper's start) and
adactified warm (``init="original"``); and for each fine-tuning run folder given, the FER2013 test
accuracy of its model before the first step (built from the run's own config: the pretrained
weights, a new 7-class head, and its units).

    python docs/results/warm_start_step0.py runs/pretrain-c10/best.pt runs/ft-fer-cold runs/ft-fer-warm
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

import adact
from adact.config import TrainConfig
from adact.runs.io import read_json
from adact.training.build import build_model, load_checkpoint, load_data, model_spec
from adact.training.task import task_for


def main(pretrained: str, *folders: str) -> None:
    torch.set_num_threads(2)
    source, ckpt = load_checkpoint(pretrained)
    config = TrainConfig.from_dict(ckpt["config"])
    data = load_data(config)
    task = task_for(config)
    test = task.loaders(config, data, data.train, torch.device("cpu")).test
    for label, model in (("as trained", source),
                         ("adactified cold (uniform mixtures)", adact.adactify(copy.deepcopy(source))),
                         ("adactified warm (init='original')", adact.adactify(copy.deepcopy(source), init="original"))):
        print(f"CIFAR-10 test accuracy of the pretrained ResNet-18, {label}: {task.evaluate(model, test, False)[1]:.4f}")
    for folder in folders:
        for run in sorted(Path(folder).glob("*/seed*/*/config.json")):
            cfg = TrainConfig.from_dict(read_json(run))
            fer = load_data(cfg)
            torch.manual_seed(cfg.seed)  # what train() does before it builds the model
            model = build_model(model_spec(cfg, fer))
            loader = task_for(cfg).loaders(cfg, fer, fer.train, torch.device("cpu")).test
            acc = task_for(cfg).evaluate(model, loader, False)[1]
            print(f"{run.parent.relative_to(folder)} ({folder}): FER2013 test accuracy at step 0 {acc:.4f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
