"""The command line's options: argument types and the option groups the commands share.

Every default and every choice comes from :mod:`adact.config` (:func:`~adact.config.train_default`,
:class:`~adact.config.SearchConfig`), so an option and the setting it fills cannot disagree.
Imports nothing heavy: ``adact --help`` builds these without torch.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import NoReturn

from adact.config import (
    ACTIVATION_NAMES,
    GPT_DEFAULTS,
    LM_CANDIDATES,
    LM_DEFAULTS,
    TOKENIZERS,
    BAD_IMAGE_POLICIES,
    KEEP_CHECKPOINTS,
    DEVICES,
    FER_SPLITS,
    GRANULARITIES,
    NORMALIZE,
    OPTIMIZERS,
    SCHEDULES,
    SearchConfig,
    parse_model,
    parse_temperature_schedule,
    train_default,
)
from adact.dataspec import DatasetSpec
from adact.errors import UserError

__all__ = [
    "Parser",
    "activation",
    "activation_name",
    "add_data_args",
    "add_pipeline_args",
    "add_run_args",
    "dataset",
    "fraction",
    "int_at_least",
    "jobs",
    "model_spec",
    "non_negative_float",
    "positive_float",
    "temperatures",
]

_D = train_default  # every training option's default is TrainConfig's
_SEARCH = SearchConfig()  # ... and every search option's, SearchConfig's


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line: ``adact: error: ...`` (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"adact: error: {message} (see `{self.prog} --help`)\n")


def int_at_least(lo: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"must be >= {lo}, got {v}")
        return v

    return parse


def fraction(lo_inclusive: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        ok = (0.0 <= v < 1.0) if lo_inclusive else (0.0 < v < 1.0)
        if not ok:
            raise argparse.ArgumentTypeError(f"must be in {'[0' if lo_inclusive else '(0'}, 1), got {v}")
        return v

    return parse


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def positive_float(text: str) -> float:
    v = _number(text)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {v}")
    return v


def non_negative_float(text: str) -> float:
    v = _number(text)
    if not (v >= 0 and v != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {v}")
    return v


def temperatures(text: str) -> list[float]:
    try:
        return parse_temperature_schedule(text)
    except (UserError, TypeError):
        raise argparse.ArgumentTypeError(f"expected T0:T1 with two temperatures > 0 (e.g. 1:0.1), got {text!r}") from None


def jobs(text: str) -> int | None:
    return None if text == "auto" else int_at_least(1)(text)


def dataset(text: str) -> str:
    try:
        return str(DatasetSpec.parse(text))
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def model_spec(text: str) -> str:
    try:
        parse_model(text)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _unit_float(text: str) -> float:
    v = _number(text)
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {v}")
    return v


def activation_name(text: str) -> str:
    """A registry name (not ``adact`` or ``baseline``): a candidate, or a GPT's activation."""
    key = text.lower().replace("-", "_")
    if key in ACTIVATION_NAMES:
        return key
    raise argparse.ArgumentTypeError(f"unknown activation {text!r}; valid: {', '.join(ACTIVATION_NAMES)}")


def activation(text: str) -> str:
    key = text.lower().replace("-", "_")  # the registry's spelling rule: "Leaky-ReLU" is leaky_relu
    if key in ("adact", "baseline") or key in ACTIVATION_NAMES:
        return key
    raise argparse.ArgumentTypeError(f"unknown activation {text!r}; valid: adact, {', '.join(ACTIVATION_NAMES)}")


def add_data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", default=_D("data_dir"), metavar="DIR",
                   help=f"root folder of the datasets (default: {_D('data_dir')})")
    g.add_argument("--download", action="store_true", help="let torchvision download fmnist / cifar10 / svhn")
    g.add_argument("--val-fraction", type=fraction(True), default=_D("val_fraction"), metavar="F",
                   help="hold out this stratified fraction of train for validation-based selection (default: 0)")
    g.add_argument("--fer-split", choices=FER_SPLITS, default=_D("fer_split"),
                   help="fer2013: 'paper' = stratified 80/20 split of Training (default), 'official' = "
                        "Training vs PublicTest+PrivateTest")
    g.add_argument("--test-fraction", "--test-from-train", dest="test_from_train", type=fraction(False),
                   default=None, metavar="F",
                   help="carve the test set as a stratified fraction F of train (e.g. 0.2 for an npz FER copy; "
                        "an image folder without val/ or test/: default 0.2)")
    g.add_argument("--image-size", type=int_at_least(1), default=None, metavar="S",
                   help="resize every image to SxS (default: as stored)")
    g.add_argument("--normalize", choices=NORMALIZE, default=_D("normalize"),
                   help="'paper' = mean = std = 0.5 (default), 'imagenet' = ImageNet's per-channel statistics")
    g.add_argument("--on-bad-image", choices=BAD_IMAGE_POLICIES, default=_D("on_bad_image"),
                   help="image folders: skip an undecodable file with a warning (default; the count is reported) "
                        "or stop with an error naming it")
    g.add_argument("--cache-mb", type=non_negative_float, default=_D("cache_mb"), metavar="MIB",
                   help="image folders: decode once into memory when the uint8 images take at most this many MiB, "
                        f"else stream them from disk with DataLoader workers; 0: always stream (default: "
                        f"{_D('cache_mb'):g})")
    g.add_argument("--max-train-samples", type=int_at_least(1), default=None, metavar="N",
                   help="train on a fixed random subset of N images (smoke tests)")


def add_run_args(p: argparse.ArgumentParser, with_model: bool = True) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int_at_least(1), default=_D("epochs"),
                   help="passes over the training set (default: 15, the paper's; text datasets count optimizer "
                        "steps instead: --max-iters)")
    g.add_argument("--granularity", choices=GRANULARITIES, default=_D("granularity"),
                   help="AdAct weights per layer (the paper) or per channel (default: layer)")
    g.add_argument("--device", choices=DEVICES, default=_D("device"), help="auto = cuda, then mps, then cpu")
    g.add_argument("--bf16", action="store_true", help="bf16 autocast for forward passes (GPU)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
    g.add_argument("--reference", action="store_true",
                   help="AdAct's reference sum (one op per candidate) instead of the fused kernel")
    g.add_argument("--sync-bn", action="store_true",
                   help="under torchrun: BatchNorm statistics over the global batch of all ranks (default: per "
                        "rank, as in torchvision's reference trainers); no effect in one process")
    g.add_argument("--restart", action="store_true",
                   help="discard what the output folder holds (checkpoints, metrics, results) and train from "
                        "scratch; without it a rerun resumes, and a folder of other settings is refused")
    g.add_argument("--keep-checkpoints", choices=KEEP_CHECKPOINTS, default=_D("keep_checkpoints"),
                   help="what a finished run keeps: best (best.pt: the best epoch's weights, no optimizer state; "
                        "the default), last (last.pt: the final state, optimizer included, to train on elsewhere), "
                        "all (both, and last.prev.pt while training) or none (result.json and metrics.csv only). "
                        "An unfinished or diverged run always keeps last.pt, its resume point")
    g.add_argument("--batch-size", type=int_at_least(1), default=_D("batch_size"), metavar="N",
                   help="images (text: blocks of --block-size tokens) per step (default: 64; text: 12, nanoGPT's)")
    g.add_argument("--test-batch-size", type=int_at_least(1), default=_D("test_batch_size"), metavar="N",
                   help=f"default: {_D('test_batch_size')}")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=_D("optimizer"),
                   help="adamw (the paper's, default) or sgd (momentum 0.9, Nesterov)")
    g.add_argument("--lr", type=positive_float, default=_D("lr"), help=f"peak learning rate (default: {_D('lr'):g})")
    g.add_argument("--weight-decay", type=float, default=_D("weight_decay"), metavar="WD",
                   help="AdamW's decoupled weight decay, or SGD's L2 penalty (default: 0.01, torch's; text: 0.1 on "
                        "2-D weights only, nanoGPT's)")
    g.add_argument("--schedule", choices=SCHEDULES, default=_D("schedule"),
                   help="learning-rate schedule: none (constant, the paper's; default for images) or cosine (to 0, "
                        "or to --min-lr; default for text)")
    g.add_argument("--grad-clip", type=positive_float, default=_D("grad_clip"), metavar="NORM",
                   help="clip the gradient norm to NORM (default: off; text: 1.0, nanoGPT's)")
    g.add_argument("--betas", type=_unit_float, nargs=2, default=_D("betas"), metavar=("B1", "B2"),
                   help="AdamW's betas (default: torch's 0.9 0.999; text: 0.9 0.99, nanoGPT's)")
    g.add_argument("--candidates", type=activation_name, nargs="+", default=_D("candidates"), metavar="NAME",
                   help="the pool of every AdAct unit (default: the paper's relu elu leaky_relu prelu rrelu silu "
                        f"mish; text: {' '.join(LM_CANDIDATES)}). Names: {', '.join(ACTIVATION_NAMES)}")
    g.add_argument("--warmup-epochs", type=non_negative_float, default=_D("warmup_epochs"), metavar="E",
                   help="linear learning-rate warm-up over E epochs, per step (default: 0)")
    g.add_argument("--label-smoothing", type=fraction(True), default=_D("label_smoothing"), metavar="F",
                   help="cross-entropy label smoothing (default: 0, the paper's)")
    g.add_argument("--no-decay-adact", action="store_true",
                   help="exempt AdAct logits and PReLU slopes from weight decay (plain AdamW decays them)")
    g.add_argument("--hflip", action="store_true", help="random horizontal flips (the paper: none)")
    g.add_argument("--crop-padding", type=int_at_least(0), default=_D("crop_padding"), metavar="P",
                   help="random crops with P pixels of padding (default: 0 = off)")
    s = p.add_argument_group("sharpening of the AdAct mixtures (off by default: the paper has none)")
    s.add_argument("--temperature-schedule", type=temperatures, default=_D("temperature_schedule"), metavar="T0:T1",
                   help="anneal the softmax temperature of every AdAct unit geometrically from T0 to T1 over "
                        "training (logits divided by T; e.g. 1:0.1). Default: none (T = 1)")
    s.add_argument("--entropy-weight", type=non_negative_float, default=_D("entropy_weight"), metavar="LAMBDA",
                   help="add LAMBDA x the mean normalised entropy of the mixtures (0 one-hot, 1 uniform) to the "
                        "loss (default: 0)")
    s.add_argument("--adact-lr-mult", type=positive_float, default=_D("adact_lr_mult"), metavar="M",
                   help="learning rate of the AdAct logits = M x --lr (DARTS uses a smaller one; default: 1)")
    a = p.add_argument_group("model")
    a.add_argument("--warm-start", action="store_true",
                   help="AdAct units start as the activation they replace, exactly, and learn how far to move "
                        "from it through a gate that starts closed (for pretrained models; the original joins the "
                        "pool where it is missing). Default: uniform mixtures (the paper's)")
    a.add_argument("--init-from", default=_D("init_from"), metavar="PATH",
                   help="load a state dict or an adact checkpoint (a baseline run's best.pt) into the model as "
                        "written before it is converted; the AdAct model, the optimized model and the baselines "
                        "all start from it")
    if with_model:
        a.add_argument("--model", type=model_spec, default=_D("model"), metavar="SPEC",
                       help="convnet (the paper's, default for images), gpt (nanoGPT's decoder, default for text), "
                            "torchvision:NAME, timm:NAME (pip install 'adact[timm]'), transformers:NAME (a causal LM "
                            "of that model type from --model-config, random weights), path/to/file.py:factory or "
                            "package.module:factory (called with num_classes and in_channels where it takes them)")
        a.add_argument("--pretrained", action="store_true",
                       help="torchvision/timm weights, only if already on disk (nothing is downloaded)")
    a.add_argument("--channels", type=int_at_least(1), nargs="+", default=None, metavar="C",
                   help=f"ConvNet conv widths, one per block (our assumption, the paper's table is missing; default: "
                        f"{' '.join(map(str, _D('channels')))})")
    a.add_argument("--kernel-size", type=int_at_least(1), default=_D("kernel_size"), metavar="K",
                   help=f"ConvNet conv kernel (default: {_D('kernel_size')})")
    lm = p.add_argument_group("language models (--dataset text:PATH; defaults: nanoGPT's shakespeare_char on a CPU)")
    lm.add_argument("--tokenizer", choices=TOKENIZERS, default=_D("tokenizer"),
                    help="char: the file's sorted characters (default); bytes: 256 symbols, any file")
    lm.add_argument("--max-iters", type=int_at_least(1), default=_D("max_iters"), metavar="N",
                    help=f"optimizer steps in all (default: {LM_DEFAULTS['max_iters']})")
    lm.add_argument("--eval-interval", type=int_at_least(1), default=_D("eval_interval"), metavar="N",
                    help="steps between evaluations of the loss on the whole held-out split; the best evaluation is "
                         f"kept (default: {LM_DEFAULTS['eval_interval']})")
    lm.add_argument("--warmup-iters", type=int_at_least(0), default=_D("warmup_iters"), metavar="N",
                    help=f"linear learning-rate warm-up steps (default: {LM_DEFAULTS['warmup_iters']}, at most "
                         "max_iters / 20)")
    lm.add_argument("--min-lr", type=non_negative_float, default=_D("min_lr"), metavar="LR",
                    help="the cosine schedule's floor (default: lr / 10)")
    lm.add_argument("--block-size", type=int_at_least(1), default=_D("block_size"), metavar="T",
                    help=f"tokens per block: the context (default: {LM_DEFAULTS['block_size']})")
    lm.add_argument("--n-layer", type=int_at_least(1), default=_D("n_layer"), metavar="N",
                    help=f"--model gpt: transformer blocks (default: {GPT_DEFAULTS['n_layer']})")
    lm.add_argument("--n-head", type=int_at_least(1), default=_D("n_head"), metavar="N",
                    help=f"--model gpt: attention heads (default: {GPT_DEFAULTS['n_head']})")
    lm.add_argument("--n-embd", type=int_at_least(1), default=_D("n_embd"), metavar="N",
                    help=f"--model gpt: embedding width; each MLP is 4x wider (default: {GPT_DEFAULTS['n_embd']})")
    lm.add_argument("--dropout", type=fraction(True), default=_D("dropout"), metavar="P",
                    help=f"--model gpt: dropout (default: {GPT_DEFAULTS['dropout']:g})")
    lm.add_argument("--model-config", default=_D("model_config"), metavar="K=V,...",
                    help="transformers:NAME: its config's settings, e.g. n_layer=4,n_head=4,n_embd=128,n_positions=64")


def add_pipeline_args(p: argparse.ArgumentParser) -> None:
    """The options ``reproduce`` and ``search`` share: seeds and parallel jobs."""
    p.add_argument("--seeds", type=int_at_least(0), nargs="+", default=_SEARCH.seeds, metavar="SEED",
                   help=f"training seeds; the models of a dataset share each seed (default: {' '.join(map(str, _SEARCH.seeds))})")
    p.add_argument("--jobs", type=jobs, default=None, metavar="N",
                   help="independent runs trained in parallel processes, each with cores/N threads; on CUDA "
                        "worker i uses GPU i mod GPUs (default: auto = one per CPU core on a CPU, one per GPU "
                        "on CUDA). For one big run over several GPUs use torchrun instead (see the README)")
