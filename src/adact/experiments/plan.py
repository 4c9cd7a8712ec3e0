"""What a search trains: :func:`plan` turns a :class:`~adact.config.SearchConfig` into its runs.

Per dataset and seed a search trains the AdAct model and each baseline (:func:`plan`), then,
once the AdAct run has ended, the optimized model with its choices (:func:`optimized_run`).
Every run's :class:`~adact.config.TrainConfig` is built here and nowhere else, so the output
folder's check (:func:`check_existing_runs`), the runner and the workers agree on what each
run folder holds.
"""

from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from adact.activations import ACTIVATIONS
from adact.choice import adact_units
from adact.config import SearchConfig, TrainConfig, is_language_model
from adact.errors import UserError
from adact.model_zoo import create_language_model, create_model, with_activation
from adact.runs.folder import RunFolder
from adact.training import distributed
from adact.training.build import build_model, check_searchable, model_spec, resolve_device
from adact.training.task import task_for

__all__ = ["PlannedRun", "check_existing_runs", "check_models", "optimized_run", "plan", "resolved_jobs", "train_config",
           "validate"]


@dataclass(frozen=True)
class PlannedRun:
    """One training run of a search: where it goes and with which settings."""

    dataset: str
    seed: int
    model: str  # "adact", a baseline's name, or "optimized"
    folder: RunFolder
    config: TrainConfig

    def config_json(self) -> dict[str, Any]:
        return asdict(self.config)


def validate(cfg: SearchConfig) -> None:
    """Every check of ``cfg`` that can be made before training: :meth:`SearchConfig.check`, the device, torchrun.

    Raises:
        UserError / FileNotFoundError: settings that cannot work, missing data, an unavailable device.
    """
    cfg.check()
    if cfg.jobs is not None and cfg.jobs > 1 and distributed.env().enabled:  # [distributed]
        raise UserError("--jobs runs separate trainings side by side, torchrun spreads one training over "
                        "several processes: use one or the other (under torchrun, leave --jobs out)")
    train_config(cfg, cfg.datasets[0], cfg.seeds[0], "adact")  # TrainConfig checks the rest
    resolve_device(cfg.train.device)  # an unavailable device fails here, before the output folder is made


def train_config(cfg: SearchConfig, dataset: str, seed: int, activation: str | list[str]) -> TrainConfig:
    """The :class:`TrainConfig` of one run: ``cfg.train`` with the dataset, seed and activation replaced."""
    if isinstance(activation, str) and activation in ACTIVATIONS and cfg.train.model not in ("convnet", "gpt"):
        # A one-activation baseline of a named model: that activation at every AdAct site, as
        # the per-site list such a model takes (the ConvNet and the GPT take the name itself).
        activation = [activation] * _site_count(cfg.train.model, cfg.train.model_config or "")
    if activation == "adact":
        return replace(cfg.train, dataset=dataset, seed=seed, activation=activation)
    # The other models have no mixtures: without the sharpening and warm-start settings their
    # configs stay the paper's, shareable with runs made without them (init_from stays: every
    # model of a search starts from the same weights).
    return replace(cfg.train, dataset=dataset, seed=seed, activation=activation, temperature_schedule=None,
                   entropy_weight=0.0, adact_lr_mult=1.0, warm_start=False)


@functools.lru_cache(maxsize=None)
def _site_count(model: str, model_config: str = "") -> int:
    """How many AdAct sites (activation calls) ``adactify`` finds in a named model.

    The count depends on the model's structure only, so it is taken once, on a randomly
    initialised copy with 10 classes and 3 input channels (the first conv and the head adapt);
    a language model with a vocabulary of 256 and its ``model_config``.
    """
    if is_language_model(model):
        built: torch.nn.Module = create_language_model(model, vocab_size=256, block_size=1, model_config=model_config)
        return len(adact_units(with_activation(built, "adact", example_inputs=torch.zeros(1, 1, dtype=torch.long))))
    built = create_model(model, num_classes=10, in_channels=3, pretrained=False)
    return len(adact_units(with_activation(built, "adact")))


def plan(cfg: SearchConfig) -> list[PlannedRun]:
    """The runs that need no other run first: AdAct and every baseline, per dataset and seed, in that order."""
    return [PlannedRun(ds, seed, model, RunFolder(cfg.run_dir(ds, seed, model)), train_config(cfg, ds, seed, model))
            for ds in cfg.datasets for seed in cfg.seeds for model in cfg.models[:-1]]


def optimized_run(cfg: SearchConfig, dataset: str, seed: int, choices: list[str]) -> PlannedRun:
    """The optimized run of a dataset and seed: every unit fixed to the AdAct run's choice."""
    return PlannedRun(dataset, seed, "optimized", RunFolder(cfg.run_dir(dataset, seed, "optimized")),
                      train_config(cfg, dataset, seed, choices))


def check_existing_runs(runs: list[PlannedRun], records: dict[str, dict[str, Any]] | None = None) -> None:
    """Refuse, before touching anything, an output folder whose runs were made with other settings or data.

    ``records`` maps a dataset to its :func:`~adact.data.fingerprint.data_record` (None: settings only,
    before the data is loaded).

    Raises:
        RunMismatchError: the first run folder holding other settings or other data (see :meth:`RunFolder.check`).
    """
    for run in runs:
        run.folder.check(run.config, hint="discard every run in it", data=(records or {}).get(run.dataset))


def check_models(cfg: SearchConfig, data: Any, dataset: str) -> None:
    """Build a dataset's AdAct model once on the CPU: impossible settings (a kernel wider than the
    images) and a model with nothing to search (no activation) fail before anything is written,
    not in a worker hours later."""
    config = train_config(cfg, dataset, cfg.seeds[0], "adact")
    task_for(config).check(data, config)  # one class, a class without training images...
    spec = model_spec(config, data)
    check_searchable(build_model(spec), spec)


def resolved_jobs(cfg: SearchConfig) -> int:
    """``cfg.jobs``, or by default: one process per CPU core on a CPU, one per GPU on CUDA.

    The paper's ConvNet is small, so on a CPU separate single-threaded runs use the cores far
    better than one run with several threads (and degrade less when the cores are shared).
    There are only ``(1 + baselines) * datasets * seeds`` runs free to start at once (Optimized
    waits for AdAct), so more processes would sit idle. Under torchrun every rank trains every
    run together, so there is one job. Worker ``i`` trains on ``cuda:(i mod GPUs)``.
    """
    if distributed.env().enabled:  # [distributed]
        return 1
    if cfg.jobs is not None:
        return cfg.jobs
    runs = (1 + len(cfg.baselines or [])) * len(cfg.datasets) * len(cfg.seeds)
    device = resolve_device(cfg.train.device)
    if device.type == "cuda":  # [distributed] independent runs side by side, one GPU each
        return max(1, min(torch.cuda.device_count(), runs))
    if device.type != "cpu":
        return 1
    return max(1, min(os.cpu_count() or 1, runs))

