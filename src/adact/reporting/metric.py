"""What a run's metric is called and which way is better: the one place reports learn it.

A result.json names its metric (``"metric": "acc"`` or ``"loss"``) and its direction
(``"higher_is_better"``); one written before tasks existed names neither and is an image
classifier's: accuracy, higher is better. Every table, note and progress line takes its words
from a :class:`Metric`, so accuracy keeps exactly the words it always had and a loss says that
lower is better. Differences are never sign-flipped: they stay model − baseline, and the words
say which sign is good.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from adact.dataspec import DatasetSpec

__all__ = ["ACC", "LOSS", "MIXED", "SELECTIONS", "Metric", "gap_metric", "metric_of_summary"]


#: selection id -> (result.json key prefix, human title for accuracy). The loss's best title differs
#: (see :meth:`Metric.selection_title`): "best" means the lowest loss there.
SELECTIONS: dict[str, tuple[str, str]] = {
    "best": ("best", "best-on-test (the paper's selection, optimistic)"),
    "final": ("final", "final epoch (no selection)"),
    "val": ("val_selected", "validation-selected epoch (honest selection)"),
}


@dataclass(frozen=True)
class Metric:
    """A task's metric: its short name (``acc``, ``loss``) and whether larger values are better."""

    name: str = "acc"
    higher_is_better: bool = True

    @classmethod
    def of(cls, result: Mapping[str, Any] | None) -> Metric:
        """The metric of a result.json (or a summary entry); one that names none is accuracy."""
        if not result or "metric" not in result:
            return ACC
        name = str(result["metric"])
        return cls(name, bool(result.get("higher_is_better", name != "loss")))

    @classmethod
    def guess(cls, dataset: str) -> Metric:
        """The metric a dataset's runs will have, for labelling a dataset none of whose runs has ended yet."""
        return LOSS if DatasetSpec.parse(dataset).is_text else ACC

    @property
    def is_acc(self) -> bool:
        return self.name == "acc"

    @property
    def is_loss(self) -> bool:
        return self.name == "loss"

    def key(self, selection: str) -> str:
        """The result.json key of ``selection`` (a key of :data:`SELECTIONS`): ``best_test_acc``, ..."""
        return f"{SELECTIONS[selection][0]}_test_{self.name}"

    @property
    def is_mixed(self) -> bool:
        return self.name == MIXED_NAME

    @property
    def noun(self) -> str:
        """Short: ``accuracy``, ``loss`` (``metric`` for datasets of different tasks)."""
        return {"acc": "accuracy", "loss": "loss", MIXED_NAME: "metric"}.get(self.name, self.name)

    @property
    def extreme(self) -> str:
        """Which end is best: ``highest`` or ``lowest``."""
        return "highest" if self.higher_is_better else "lowest"

    @property
    def unit(self) -> str:
        """Unit and direction in words (``nats/token, lower is better``); empty for accuracy, as today's text."""
        if self.is_acc or self.is_mixed:
            return ""
        return ("nats/token, " if self.is_loss else "") + f"{'higher' if self.higher_is_better else 'lower'} is better"

    @property
    def described(self) -> str:
        """The metric with its unit and direction, for a table title; accuracy stays plain ``test accuracy``."""
        if self.is_acc:
            return "test accuracy"
        if self.is_mixed:
            return "test metric (each dataset's own: see its row)"
        return f"{'held-out loss' if self.is_loss else f'test {self.name}'} ({self.unit})"

    @property
    def progress(self) -> str:
        """How a progress line names the best value: ``best test acc``, ``best test loss``."""
        return f"best test {self.name}"

    def selection_title(self, selection: str) -> str:
        """A table section's title; for a lower-is-better metric "best" is the lowest value."""
        if selection == "best" and self.is_mixed:
            return "best-on-test (each run's best test evaluation, optimistic)"
        if selection == "best" and not self.higher_is_better:
            return f"best-on-test (the evaluation with the {self.extreme} test {self.name}, optimistic)"
        return SELECTIONS[selection][1]

    @property
    def direction_note(self) -> str:
        """A sentence under difference columns on which sign is good; empty for accuracy (today's text)."""
        if self.is_mixed:
            return ("Differences are model − baseline for every dataset: for an accuracy a positive one, for a loss "
                    "a negative one means the model is better.\n")
        if self.higher_is_better:
            return "" if self.is_acc else f"Higher {self.name} is better: a positive difference means the model is better.\n"
        return (f"Lower {self.noun} is better: a negative difference (model − baseline) means the model is better "
                "than the baseline.\n")

    def ppl(self, value: float | None) -> float | None:
        """Perplexity exp(loss) of a per-token loss in nats; None for other metrics and missing values."""
        if not self.is_loss or value is None:
            return None
        return math.exp(value) if value < 700 else math.inf  # exp overflows past ~709


#: The name of :data:`MIXED`.
MIXED_NAME = "mixed"

ACC = Metric("acc", True)
LOSS = Metric("loss", False)
#: What a summary whose datasets have different metrics reports in: words only; each row names its own
#: metric, and no direction holds for all of them (``higher_is_better`` means nothing here).
MIXED = Metric(MIXED_NAME, True)


def gap_metric(gap: Mapping[str, Any]) -> str:
    """The metric name a discretization-gap record is in: it reads ``mixture_<name>`` / ``argmax_<name>``.

    Gap records of image runs (all from before the field existed) are accuracy's.
    """
    return str(gap.get("metric", "acc"))


def metric_of_summary(summary: Mapping[str, Any]) -> Metric:
    """The one metric of every dataset of a summary (:func:`adact.reporting.stats.build_summary`).

    :data:`MIXED` when the datasets' metrics differ; summaries from before the metric was
    recorded are accuracy's.
    """
    found = {Metric.of(e) for e in summary.values()}
    if len(found) > 1:
        return MIXED
    return next(iter(found), ACC)
