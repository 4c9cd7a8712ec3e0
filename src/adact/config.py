"""Every setting of adact, declared once: option choices, datasets, models, training and search configs.

The command line reads its defaults and choices from here, the trainer and the search take the
dataclasses, and run folders store them as JSON, so a setting has one name, one default and
one check. This module imports nothing heavy (no torch, no numpy): ``adact --help`` reads it.

* :func:`parse_model` and :class:`ModelSpec`: a ``--model`` argument, and everything a model is
  rebuilt from (stored in checkpoints);
* :class:`TrainConfig`: one training run (``config.json``);
* :class:`SearchConfig` and :class:`Preset`: ``adact search`` / ``adact reproduce``;
* :func:`config_diff`: the one comparison of two runs' settings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from adact.dataspec import DatasetSpec
from adact.errors import UserError
from adact.lmconfig import LM_DEFAULTS, TOKENIZERS, resolve_text
from adact.modelspec import (
    GPT_DEFAULTS,
    LM_CANDIDATES,
    ModelSpec,
    is_language_model,
    parse_model,
    parse_model_config,
)
from adact.paper import DEFAULT_CHANNELS

__all__ = [
    "ACTIVATION_NAMES",
    "BAD_IMAGE_POLICIES",
    "BASELINE",
    "GPT_DEFAULTS",
    "KEEP_CHECKPOINTS",
    "LM_CANDIDATES",
    "LM_DEFAULTS",
    "TOKENIZERS",
    "DEVICES",
    "FER_SPLITS",
    "GRANULARITIES",
    "NORMALIZE",
    "OPTIMIZERS",
    "PAPER",
    "PRESETS",
    "SCHEDULES",
    "SEARCH",
    "ModelSpec",
    "Preset",
    "SearchConfig",
    "TrainConfig",
    "check_positive",
    "config_diff",
    "is_language_model",
    "models_for",
    "parse_model",
    "parse_model_config",
    "parse_temperature_schedule",
    "train_default",
]

# --- option choices ------------------------------------------------------------------------

FER_SPLITS: tuple[str, ...] = ("paper", "official")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")

GRANULARITIES: tuple[str, ...] = ("layer", "channel")
"""AdAct logits per layer (the paper's) or per channel."""

NORMALIZE: tuple[str, ...] = ("paper", "imagenet")
"""``--normalize``: mean = std = 0.5 (the paper's), or ImageNet's per-channel statistics."""

OPTIMIZERS: tuple[str, ...] = ("adamw", "sgd")
SCHEDULES: tuple[str, ...] = ("none", "cosine")
BAD_IMAGE_POLICIES: tuple[str, ...] = ("skip", "error")
KEEP_CHECKPOINTS: tuple[str, ...] = ("best", "last", "all", "none")
"""``--keep-checkpoints``: what a finished run keeps (see :func:`adact.runs.checkpoint.prune`)."""

ACTIVATION_NAMES: tuple[str, ...] = (
    "relu", "elu", "leaky_relu", "prelu", "rrelu", "silu", "mish", "gelu", "tanh", "sigmoid", "hardswish",
    "softplus", "selu", "celu", "hardtanh", "relu6", "identity", "relu2",
    "gelu_tanh",
)
"""The activation registry's names, in registry order: :data:`adact.activations.ACTIVATIONS` maps
each to its module (and checks at import that it maps exactly these)."""

#: The ``activation`` of a run that trains the model as written.
BASELINE = "baseline"



def _check_choice(name: str, value: Any, valid: Sequence[str]) -> None:
    if value not in valid:
        raise UserError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")


def _names(names: Sequence[str]) -> str:
    """``"a applies"`` / ``"a, b apply"``: the subject of a message about settings."""
    return f"{', '.join(names)} {'applies' if len(names) == 1 else 'apply'}"


def check_positive(name: str, value: float) -> float:
    """``value`` as a float; TypeError for a non-number, UserError unless finite and > 0 (messages name ``name``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"{name} must be finite and > 0, got {value}")
    return float(value)



# --- training ------------------------------------------------------------------------------


def parse_temperature_schedule(text: str | Sequence[float]) -> list[float]:
    """``"T0:T1"`` (or a pair of numbers) as ``[T0, T1]``, both finite and > 0.

    Raises:
        UserError: not two numbers separated by ``:``, or a temperature that is not > 0.
    """
    if isinstance(text, str):
        parts = text.split(":")
        if len(parts) != 2:
            raise UserError(f"temperature schedule must be T0:T1 (e.g. 1:0.1), got {text!r}")
        try:
            pair = [float(p) for p in parts]
        except ValueError:
            raise UserError(f"temperature schedule must be two numbers T0:T1 (e.g. 1:0.1), got {text!r}") from None
    else:
        pair = list(text)
        if len(pair) != 2:
            raise UserError(f"temperature schedule must be two temperatures [T0, T1], got {pair!r}")
    return [check_positive("T0", pair[0]), check_positive("T1", pair[1])]


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as config.json and inside checkpoints.

    Protocol defaults are the paper's: AdamW, lr 1e-3, cross-entropy, batch 64 (test 1000), 15
    epochs, test accuracy every epoch, the best kept. Weight decay is AdamW's default 0.01; the
    paper calls plain ``AdamW(model.parameters(), lr=1e-3)``, so by default it also decays the
    AdAct logits (pulling the mixture towards uniform) and the PReLU slope; ``decay_adact=False``
    exempts them.
    """

    dataset: str = "digits"  # a name from DATASETS, "npz:PATH" or "imagefolder:PATH"
    data_dir: str = "data"  # root folder of the named datasets
    download: bool = False  # let torchvision download fmnist / cifar10 / svhn
    fer_split: str = "paper"  # fer2013: "paper" (Training split 80/20) or "official"
    test_from_train: float | None = None  # carve the test set from train (fraction), e.g. 0.2 for FER npz
    val_fraction: float = 0.0  # fraction of train held out for validation-based model selection
    split_seed: int = 0  # seed of the fixed data splits (not the training seed)
    image_size: int | None = None  # resize images to image_size x image_size (None: as stored)
    normalize: str = "paper"  # "paper" (mean = std = 0.5) or "imagenet"
    on_bad_image: str = "skip"  # image folders: "skip" undecodable files (counted) or stop with an "error"
    cache_mb: float = 4096.0  # image folders: decode into memory up to this many MiB, else stream from disk (0: always)
    keep_checkpoints: str = "best"  # what a finished run keeps: best.pt, last.pt, all (+ last.prev.pt) or none
    model: str | None = None  # None: "convnet" (the paper's) for images, "gpt" for text; "torchvision:NAME",
    # "timm:NAME", "transformers:NAME", "file.py:factory", "pkg.mod:f"
    pretrained: bool = False  # torchvision/timm weights, only if already on disk (nothing is downloaded)
    activation: str | list[str] = "adact"  # "adact", "baseline", a registry name (convnet), or one name per site
    granularity: str = "layer"  # AdAct logits per "layer" (paper) or per "channel"
    channels: list[int] = field(default_factory=lambda: list(DEFAULT_CHANNELS))  # conv widths (ours)
    kernel_size: int = 3  # conv kernel (ours; the paper's table is missing)
    epochs: int | None = None  # passes over the training set (None: 15); text: evaluations (max_iters / eval_interval)
    batch_size: int | None = None  # training images (text: blocks) per step (None: 64; text: 12, nanoGPT's)
    test_batch_size: int = 1000  # images per evaluation batch
    optimizer: str = "adamw"  # "adamw" (the paper's) or "sgd" (momentum 0.9, Nesterov)
    lr: float = 1e-3  # peak learning rate
    weight_decay: float | None = None  # AdamW's decoupled decay (None: 0.01, torch's; text: 0.1), or SGD's L2 penalty
    schedule: str | None = None  # "none" (constant lr; None for images, the paper's) or "cosine" (None for text)
    warmup_epochs: float = 0.0  # linear warm-up from 0 over this many epochs (per step)
    label_smoothing: float = 0.0  # cross-entropy label smoothing (the paper: none)
    decay_adact: bool = True  # also decay AdAct logits and PReLU slopes (plain AdamW does)
    hflip: bool = False  # random horizontal flips (off: the paper uses no augmentation)
    crop_padding: int = 0  # random-crop padding in pixels (0 = off)
    seed: int = 0  # seeds init, shuffling, RReLU noise
    device: str = "auto"  # auto | cpu | cuda | mps
    bf16: bool = False  # bf16 autocast for forward passes
    compile: bool = False  # torch.compile the model
    fused: bool = True  # AdAct's fused kernel (False: the reference sum)
    max_train_samples: int | None = None  # subsample the training set (smoke tests only)
    # Sharpening (adact.training.sharpen; off by default, the paper has none). Settings older
    # configs lack count as these defaults (config_diff), so adding one never orphans a run folder.
    temperature_schedule: list[float] | None = None  # [T0, T1]: AdAct softmax temperature annealed T0 -> T1
    entropy_weight: float = 0.0  # lambda: lambda * mean normalised entropy of the mixtures joins the loss
    adact_lr_mult: float = 1.0  # learning rate of the AdAct logits relative to lr
    warm_start: bool = False  # AdAct units start as the activation they replace (pretrained models)
    init_from: str | None = None  # a state dict or adact checkpoint loaded into the model as written
    # Added for language models; None means "the task's default", resolved in __post_init__ (text:
    # nanoGPT's shakespeare_char CPU settings; images: unchanged, so image configs read as before).
    candidates: list[str] | None = None  # AdAct pool (None: the paper's seven; text: LM_CANDIDATES)
    grad_clip: float | None = None  # clip the gradient norm to this (None: off; text: 1.0)
    betas: list[float] | None = None  # AdamW's (beta1, beta2) (None: torch's (0.9, 0.999); text: (0.9, 0.99))
    decay_1d: bool | None = None  # decay 1-D parameters (biases, norms, AdAct logits) too (None: yes; text: no)
    tokenizer: str | None = None  # text: "char" (the file's characters) or "bytes" (256 symbols)
    max_iters: int | None = None  # text: optimizer steps in all (2000)
    eval_interval: int | None = None  # text: steps between evaluations of the held-out loss (250)
    warmup_iters: int | None = None  # text: linear warm-up steps (100)
    min_lr: float | None = None  # text: the cosine schedule's floor (lr / 10)
    block_size: int | None = None  # text: tokens per block, the context (64)
    n_layer: int | None = None  # --model gpt: transformer blocks (4)
    n_head: int | None = None  # --model gpt: attention heads (4)
    n_embd: int | None = None  # --model gpt: embedding width (128)
    dropout: float | None = None  # --model gpt: dropout (0)
    gpt_activation: str | None = None  # --model gpt: its MLPs' activation as written (gelu, GPT-2's)
    model_config: str | None = None  # transformers:NAME: "key=value,..." for its config

    def __post_init__(self) -> None:
        self.dataset = str(DatasetSpec.parse(self.dataset))  # one spelling of a dataset everywhere
        if DatasetSpec.parse(self.dataset).is_text:
            self._resolve_text()
        else:
            self._resolve_images()
        if self.epochs < 1:
            raise UserError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1 or self.test_batch_size < 1:
            raise UserError(f"batch sizes must be >= 1, got {self.batch_size}, {self.test_batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"lr must be a positive finite number, got {self.lr}")
        if self.weight_decay < 0:
            raise UserError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise UserError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        for name, value, valid in (("device", self.device, DEVICES), ("granularity", self.granularity, GRANULARITIES),
                                   ("optimizer", self.optimizer, OPTIMIZERS), ("schedule", self.schedule, SCHEDULES),
                                   ("normalize", self.normalize, NORMALIZE),
                                   ("on_bad_image", self.on_bad_image, BAD_IMAGE_POLICIES),
                                   ("keep_checkpoints", self.keep_checkpoints, KEEP_CHECKPOINTS)):
            _check_choice(name, value, valid)
        if not 0.0 <= self.label_smoothing < 1.0:
            raise UserError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0.0 <= self.warmup_epochs <= self.epochs:
            raise UserError(f"warmup_epochs must be in [0, epochs={self.epochs}], got {self.warmup_epochs}")
        if self.image_size is not None and self.image_size < 1:
            raise UserError(f"image_size must be >= 1, got {self.image_size}")
        if not self.cache_mb >= 0:
            raise UserError(f"cache_mb must be >= 0 (0: always stream from disk), got {self.cache_mb}")
        kind, _ = parse_model(self.model)
        if kind in ("convnet", "gpt"):
            self.model = kind
        elif isinstance(self.activation, str) and self.activation not in ("adact", BASELINE):
            raise UserError(f"--model {self.model} trains 'adact', 'baseline' or one activation per AdAct site, "
                            f"not {self.activation!r}")
        self.channels = [int(c) for c in self.channels]
        if self.temperature_schedule is not None:
            self.temperature_schedule = parse_temperature_schedule(self.temperature_schedule)
        if not (math.isfinite(self.entropy_weight) and self.entropy_weight >= 0):
            raise UserError(f"entropy_weight must be finite and >= 0, got {self.entropy_weight}")
        if not (math.isfinite(self.adact_lr_mult) and self.adact_lr_mult > 0):
            raise UserError(f"adact_lr_mult must be finite and > 0, got {self.adact_lr_mult}")
        acts = [self.activation] if isinstance(self.activation, str) else list(self.activation)
        sharpening = {"temperature_schedule": self.temperature_schedule is not None,
                      "entropy_weight": self.entropy_weight != 0.0, "adact_lr_mult": self.adact_lr_mult != 1.0}
        if "adact" not in acts and any(sharpening.values()):
            # A typo-level mistake (sharpening a ReLU run) would otherwise train the plain model silently.
            given = ", ".join(k for k, v in sharpening.items() if v)
            raise UserError(f"{given} sharpen AdAct mixtures, but activation {self.activation!r} has no AdAct "
                            f"unit; use activation 'adact' or drop {given}")

    def _resolve_images(self) -> None:
        """Image data: the paper's defaults; settings that only a language model reads are refused."""
        text_only = [name for name in _TEXT_ONLY if getattr(self, name) is not None]
        if text_only:
            raise UserError(f"{_names(text_only)} only to text datasets (text:PATH), not to {self.dataset}")
        self.model = "convnet" if self.model is None else self.model
        if is_language_model(self.model):
            raise UserError(f"--model {self.model} is a language model: it trains on a text file (--dataset text:PATH), "
                            f"not on {self.dataset}")
        self.epochs = 15 if self.epochs is None else self.epochs
        self.batch_size = 64 if self.batch_size is None else self.batch_size
        self.weight_decay = 0.01 if self.weight_decay is None else self.weight_decay
        self.schedule = "none" if self.schedule is None else self.schedule
        self._check_common()

    def _resolve_text(self) -> None:
        resolve_text(self, _IMAGE_ONLY)
        self._check_common()

    def _check_common(self) -> None:
        if self.init_from is not None and not Path(self.init_from).expanduser().is_file():
            raise FileNotFoundError(f"--init-from: no file {self.init_from!r}; pass a state dict or an adact "
                                    f"checkpoint (best.pt, last.pt)")
        if self.gpt_activation is not None:
            _check_choice("gpt_activation", self.gpt_activation, ACTIVATION_NAMES)
        if self.candidates is not None:
            self.candidates = list(self.candidates)
            bad = [c for c in self.candidates if c not in ACTIVATION_NAMES]
            if bad or len(self.candidates) < 2 or len(set(self.candidates)) != len(self.candidates):
                raise UserError(f"candidates must be 2 or more distinct activation names, got {self.candidates}; "
                                f"valid: {', '.join(ACTIVATION_NAMES)}")
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise UserError(f"grad_clip must be a finite number > 0, got {self.grad_clip}")
        if self.betas is not None:
            self.betas = [float(b) for b in self.betas]
            if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
                raise UserError(f"betas must be two numbers in [0, 1), got {self.betas}")

    @property
    def is_text(self) -> bool:
        """A language-modelling run (``text:PATH``)."""
        return DatasetSpec.parse(self.dataset).is_text

    @property
    def total_steps(self) -> int | None:
        """Optimizer steps in all when the budget is in steps (text), else None (epochs x batches)."""
        return self.max_iters

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @property
    def activation_label(self) -> str:
        """``adact``, ``baseline``, a name, or ``optimized`` for a per-site list (progress lines)."""
        return self.activation if isinstance(self.activation, str) else "optimized"

    def data_key(self) -> tuple[Any, ...]:
        """The settings that decide a run's data splits: runs with equal keys share one loaded dataset."""
        return (self.dataset, self.data_dir, self.val_fraction, self.split_seed, self.fer_split,
                self.test_from_train, self.image_size, self.on_bad_image, self.cache_mb, self.tokenizer)


def _field_default(f: Any) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


_TRAIN_DEFAULTS: dict[str, Any] = {f.name: _field_default(f) for f in fields(TrainConfig)}
#: Settings only a text run reads (None for image runs).
_TEXT_ONLY = ("tokenizer", "max_iters", "eval_interval", "warmup_iters", "min_lr", "block_size", "n_layer", "n_head",
              "n_embd", "dropout", "gpt_activation", "model_config")
#: Settings only an image run reads, with the value a text run must leave them at.
_IMAGE_ONLY: dict[str, Any] = {
    k: _TRAIN_DEFAULTS[k] for k in ("fer_split", "test_from_train", "image_size", "normalize", "on_bad_image",
                                    "hflip", "crop_padding", "max_train_samples", "channels", "kernel_size",
                                    "pretrained", "warmup_epochs")}
#: Settings that change how data is held, not what is trained: a run resumes across them.
_NEUTRAL_KEYS = frozenset({"cache_mb", "keep_checkpoints"})


def train_default(name: str) -> Any:
    """The default of :class:`TrainConfig` field ``name`` (what ``--help`` shows)."""
    return _TRAIN_DEFAULTS[name]


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``"key old -> new"`` for every setting of ``new`` that ``old`` has with another value.

    A setting ``old`` lacks counts as its default (it was saved before the setting existed, so
    that is what the run was trained with), so such a run folder still matches a config that
    leaves it at the default.
    """
    return [f"{k} {old.get(k, _TRAIN_DEFAULTS.get(k))!r} -> {new[k]!r}" for k in new
            if k not in _NEUTRAL_KEYS and old.get(k, _TRAIN_DEFAULTS.get(k)) != new[k]]


# --- search and reproduce ------------------------------------------------------------------


def models_for(baselines: Sequence[str] = ("relu",)) -> tuple[str, ...]:
    """The models of a search with these baselines, in table order: AdAct, baselines, Optimized."""
    return ("adact", *baselines, "optimized")


@dataclass(frozen=True)
class Preset:
    """What distinguishes ``adact reproduce`` from ``adact search``: names, the baseline, the selection."""

    name: str
    baseline: str  # the baseline's run folder name and activation
    manifest: str  # the settings file in the output folder
    table: str  # stem of the table files
    title: str  # of the report
    command: str  # the command that writes such a folder
    val_choices: bool  # choices from the validation-selected epoch when there is a validation split
    out: str  # the default output folder

    @property
    def models(self) -> tuple[str, str, str]:
        """The models with the preset's default baseline (a config's are :attr:`SearchConfig.models`)."""
        return ("adact", self.baseline, "optimized")


SEARCH = Preset("search", BASELINE, "search.json", "table", "AdAct search report", "adact search", True, "runs/search")
PAPER = Preset("paper", "relu", "reproduce.json", "table1", "AdAct reproduction report", "adact reproduce", False,
               "runs/reproduce")
PRESETS: dict[str, Preset] = {p.name: p for p in (SEARCH, PAPER)}


@dataclass
class SearchConfig:
    """Settings of ``adact search`` / ``adact reproduce``.

    ``train`` holds every training setting; each run's :class:`TrainConfig` is it with the
    dataset, seed and activation replaced (see :func:`adact.experiments.plan.plan`).
    ``baselines`` are the run folders compared with (None: the preset's, ``["baseline"]`` for
    search, ``["relu"]`` for the paper); search always keeps the model as written first.
    ``sync_bn`` synchronises BatchNorm over the ranks under torchrun.
    """

    datasets: list[str] = field(default_factory=lambda: ["digits"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    out: str = SEARCH.out
    jobs: int | None = None  # parallel training processes; None = auto (see experiments.plan.resolved_jobs)
    quiet: bool = False
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str = "search"  # a key of PRESETS
    baselines: list[str] | None = None  # None: the preset's (search: the model as written; paper: relu)
    sync_bn: bool = False  # under torchrun: BatchNorm over the global batch (adact.training.distributed)

    def __post_init__(self) -> None:
        if isinstance(self.train, dict):  # read back from a manifest
            self.train = TrainConfig.from_dict(self.train)
        _check_choice("preset", self.preset, tuple(PRESETS))
        self.datasets = [str(DatasetSpec.parse(d)) for d in self.datasets]
        if self.baselines is None:  # also a manifest from before baselines existed
            self.baselines = [self.spec.baseline]
        self.baselines = list(self.baselines)
        if self.preset == "search" and BASELINE not in self.baselines:
            # search compares with the model as written first; --baselines adds to it.
            self.baselines = [BASELINE, *self.baselines]

    @property
    def models(self) -> tuple[str, ...]:
        """The models of each dataset and seed: AdAct, the baselines, Optimized."""
        return models_for(self.baselines or [])

    @property
    def spec(self) -> Preset:
        return PRESETS[self.preset]

    def check(self) -> None:
        """Raise :class:`UserError` (or FileNotFoundError) for settings that cannot work, before any training.

        The checks that need torch (the device, torchrun) are :func:`adact.experiments.plan.validate`'s.
        """
        if not self.datasets:
            raise UserError("no datasets given")
        slugs: dict[str, str] = {}
        for ds in self.datasets:
            spec = DatasetSpec.parse(ds)
            spec.check(self.train.data_dir)
            spec.check_out(self.out, self.train.data_dir)
            if spec.slug in slugs:
                raise UserError(f"datasets {slugs[spec.slug]!r} and {ds!r} would share the folder {spec.slug!r}; "
                                f"rename one of them")
            slugs[spec.slug] = ds
        text = DatasetSpec.parse(self.train.dataset).is_text
        mixed = [ds for ds in self.datasets if DatasetSpec.parse(ds).is_text != text]
        if mixed:
            kind = "text files" if text else "image datasets"
            raise UserError(f"this search's training settings are for {kind} ({self.train.dataset}), but "
                            f"{', '.join(mixed)} {'is' if len(mixed) == 1 else 'are'} not: search text files and image "
                            f"datasets separately (their models and settings differ)")
        if not self.seeds:
            raise UserError("no seeds given")
        if len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise UserError(f"seeds must be distinct non-negative integers, got {self.seeds}")
        if self.jobs is not None and self.jobs < 1:
            raise UserError(f"jobs must be >= 1, got {self.jobs}")
        valid = ACTIVATION_NAMES if self.preset == "paper" else (BASELINE, *ACTIVATION_NAMES)
        if not self.baselines:
            raise UserError(f"give at least one baseline activation (the paper's is relu); valid: {', '.join(valid)}")
        for b in self.baselines:
            if b not in valid:
                raise UserError(f"unknown baseline activation {b!r}; valid: {', '.join(valid)}")
        if len(set(self.baselines)) != len(self.baselines):
            raise UserError(f"baselines must be distinct, got {self.baselines}")
        if self.train.max_train_samples is not None and self.train.max_train_samples < 1:
            raise UserError(f"max_train_samples must be >= 1, got {self.train.max_train_samples}")
        if self.preset == "paper" and self.train.model != "convnet":
            raise UserError("adact reproduce trains the paper's ConvNet; use adact search for --model")

    def run_dir(self, dataset: str, seed: int, model: str) -> Path:
        return self.seed_dir(dataset, seed) / model

    def seed_dir(self, dataset: str, seed: int) -> Path:
        return Path(self.out) / DatasetSpec.parse(dataset).slug / f"seed{seed}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
