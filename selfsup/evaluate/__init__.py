"""Transfer evaluators. Each is an `Evaluator` in its module (`linear`, `knn`, `finetune`) and one
line in `evaluate.run.EVALUATORS`; every one returns rows of one shape (`row`), which the report
formats without knowing who made them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import ml_collections
import numpy as np
from flax import nnx

if TYPE_CHECKING:
    from pathlib import Path

    from selfsup.evaluate.target import Target

# One result: `encoder`, `method`, `label_fraction`, `num_labels`, `test_accuracy`,
# `minival_accuracy` (see `row`), then the settings that produced it, ending with `seconds`.
Row = dict[str, object]


# The depth whose results keep their plain names (`linear/test_accuracy`): the encoder's output.
PRE_LOGITS = "stage4"


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
