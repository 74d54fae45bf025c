"""Transfer evaluators. Each is an `Evaluator` in its module (`linear`, `knn`, `finetune`), with
the rules of its config block (`VALUE_RULES`), and one line in `EVALUATORS`; every one returns
rows of one shape (`row`), which the report formats without knowing who made them."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import ml_collections
import numpy as np
from flax import nnx

from selfsup.config import Rule, flag, owner_rules, sequence, text

if TYPE_CHECKING:
    from pathlib import Path

    from selfsup.evaluate.target import Target

# config.evaluators' names -> "module:object" in this package; a module is imported when used.
EVALUATORS = {
    "linear": "linear:EVALUATOR",
    "knn": "knn:EVALUATOR",
    "finetune": "finetune:EVALUATOR",
}

# One result: `encoder`, `method`, `label_fraction`, `num_labels`, `test_accuracy`,
# `minival_accuracy` (see `row`), then the settings that produced it, ending with `seconds`.
Row = dict[str, object]


# The depth whose results keep their plain names (`linear/test_accuracy`): the encoder's output.
PRE_LOGITS = "pre_logits"


def layer_method(method: str, layer: str) -> str:
    """A frozen evaluator's result name at `layer`: `method/layer`, but plain `method` at the
    pre-logits, so `linear/test_accuracy` is the classic linear-evaluation number at any sweep."""
    return method if layer == PRE_LOGITS else f"{method}/{layer}"


def at_each_layer(rows_at: Callable[..., list[Row]]) -> Callable[..., list[Row]]:
    """A frozen-feature evaluator `rows_at(target, config, name, layer, features)` run at every
    depth in `target.layers`, on that depth's frozen features."""

    def run(target: Target, config, name: str, encoder: nnx.Module) -> list[Row]:
        return [
            r
            for layer in target.layers
            for r in rows_at(
                target, config, name, layer, target.frozen_features(name, encoder, layer)
            )
        ]

    return run


def fraction_name(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def row(
    encoder: str,
    method: str,
    fraction: float,
    indices: np.ndarray,
    *,
    test_accuracy: float,
    minival_accuracy: float,
    **settings,
) -> Row:
    """A result row of `encoder` by `method`, trained on the labelled examples `indices` (a
    `fraction` of the training split); `settings` (ending with `seconds`) say how it was made."""
    return {
        "encoder": encoder,
        "method": method,
        "label_fraction": fraction,
        "num_labels": len(indices),
        "test_accuracy": test_accuracy,
        "minival_accuracy": minival_accuracy,
        **settings,
    }


@dataclasses.dataclass(frozen=True)
class Evaluator:
    """A transfer evaluator: `run(target, config, encoder_name, encoder)` gives its rows (one
    per label fraction and setting, made by `row`); `settings(config)` says in a sentence of
    report.md how its settings were chosen; `plot(rows, workdir, title)`, if any, draws its own
    figure of all the rows into the workdir and gives report.md's lines for it."""

    run: Callable[[Target, ml_collections.ConfigDict, str, nnx.Module], list[Row]]
    settings: Callable[[ml_collections.ConfigDict], str]
    plot: Callable[[Sequence[Row], Path, str], str] | None = None


def get_evaluator(name: str) -> Evaluator:
    """The evaluator `name` in `EVALUATORS` (`config.evaluators` passed `value_rules`)."""
    module, obj = EVALUATORS[name].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), obj)


def value_rules(config: ml_collections.ConfigDict) -> dict[str, Rule]:
    """The rules of the evaluate command's own keys and of every evaluator block the config
    has (each evaluator's `VALUE_RULES`, in its module)."""
    names = tuple(EVALUATORS)
    return {
        "evaluators": sequence(Rule(lambda v: v in names, f"one of {names}"), "(linear, knn)"),
        # Which depths and inputs exist is checked against the encoder and the task.
        "layers": sequence(text("a depth name"), "(pre_logits,)"),
        "features": text("an input the pretrained task offers, e.g. 'image'"),
        "random_init_baseline": flag(),
        **owner_rules(config, EVALUATORS, __name__),
    }
