"""A text run's settings: nanoGPT's defaults for a language model, filled in and checked.

Part of the floor (standard library only): :class:`adact.config.TrainConfig` calls
:func:`resolve_text` for a ``text:PATH`` dataset, so one module owns what a language-modelling
run means by "the default".
"""

from __future__ import annotations

import math
from typing import Any

from adact.errors import UserError
from adact.modelspec import GPT_DEFAULTS, LM_CANDIDATES, is_language_model, parse_model_config

__all__ = ["LM_DEFAULTS", "TOKENIZERS", "resolve_text"]

TOKENIZERS: tuple[str, ...] = ("char", "bytes")
"""``--tokenizer``: the file's characters (nanoGPT's ``shakespeare_char``) or its bytes (256 symbols)."""

LM_DEFAULTS: dict[str, Any] = {
    "batch_size": 12, "weight_decay": 0.1, "schedule": "cosine", "candidates": LM_CANDIDATES, "grad_clip": 1.0,
    "betas": (0.9, 0.99), "decay_1d": False, "tokenizer": "char", "max_iters": 2000, "eval_interval": 250,
    "warmup_iters": 100, "block_size": 64,
}
"""A text run's settings when left unset: nanoGPT's ``shakespeare_char`` on a CPU (its README:
``--block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000
--lr_decay_iters=2000 --dropout=0.0``, with ``config/train_shakespeare_char.py``'s lr 1e-3, min_lr
1e-4, beta2 0.99, warmup 100, and ``train.py``'s weight decay 0.1 on 2-D weights only and gradient
clipping at 1.0)."""


def resolve_text(self: Any, image_only: dict[str, Any]) -> None:
    """Fill a text run's unset settings (a :class:`~adact.config.TrainConfig`, in place) and check them.

    Unset (None) settings get nanoGPT's ``shakespeare_char`` CPU values (:data:`LM_DEFAULTS`,
    :data:`~adact.modelspec.GPT_DEFAULTS`); ``image_only`` settings must keep their defaults.

    Raises:
        UserError: an image-only setting, a model that is not a language model, bad values.
    """
    images = [name for name, default in image_only.items() if getattr(self, name) != default]
    if images:
        verb = "applies" if len(images) == 1 else "apply"
        raise UserError(f"{', '.join(images)} {verb} only to image datasets, not to {self.dataset}")
    self.model = "gpt" if self.model is None else self.model
    if not is_language_model(self.model):
        raise UserError(f"{self.dataset} is text: it needs a language model (--model gpt or transformers:NAME), "
                        f"not {self.model}")
    if self.warmup_iters is None and self.max_iters is not None:
        # nanoGPT warms up for 100 of 2000 steps; a shorter budget (a smoke test) keeps that share.
        self.warmup_iters = min(LM_DEFAULTS["warmup_iters"], self.max_iters // 20)
    for name, value in LM_DEFAULTS.items():
        if getattr(self, name) is None:
            setattr(self, name, list(value) if isinstance(value, tuple) else value)
    if self.min_lr is None:
        self.min_lr = self.lr / 10  # nanoGPT: "min_lr should be ~= learning_rate/10 per Chinchilla"
    gpt_only = ("n_layer", "n_head", "n_embd", "dropout", "gpt_activation")
    if self.model == "gpt":
        for name, value in GPT_DEFAULTS.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.model_config is not None:
            raise UserError("--model-config configures a transformers:NAME model; --model gpt takes --n-layer, "
                            "--n-head, --n-embd, --block-size, --dropout")
    else:
        given = [name for name in gpt_only if getattr(self, name) is not None]
        if given:
            raise UserError(f"{', '.join(given)} shape --model gpt; give {self.model} its settings with "
                            f"--model-config key=value,...")
        parse_model_config(self.model_config)  # raises for a malformed one now
        self.model_config = self.model_config or ""
    if self.tokenizer not in TOKENIZERS:
        raise UserError(f"unknown tokenizer {self.tokenizer!r}; valid: {', '.join(TOKENIZERS)}")
    for name in ("max_iters", "eval_interval", "block_size", "n_layer", "n_head", "n_embd"):
        value = getattr(self, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UserError(f"{name} must be an integer >= 1, got {value!r}")
    assert self.max_iters is not None and self.eval_interval is not None  # resolved above
    if not 0 <= self.warmup_iters < self.max_iters:  # type: ignore[operator]
        raise UserError(f"warmup_iters must be in [0, max_iters={self.max_iters}), got {self.warmup_iters}")
    if not (math.isfinite(self.min_lr) and 0 <= self.min_lr <= self.lr):
        raise UserError(f"min_lr must be in [0, lr={self.lr}], got {self.min_lr}")
    if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
        raise UserError(f"dropout must be in [0, 1), got {self.dropout}")
    evaluations = -(-self.max_iters // self.eval_interval)  # an "epoch" of a text run is one evaluation interval
    if self.epochs is not None and self.epochs != evaluations:
        raise UserError(f"a text dataset's budget is in optimizer steps: use max_iters (--max-iters) and "
                        f"eval_interval (--eval-interval), not epochs ({self.epochs})")
    self.epochs = evaluations
