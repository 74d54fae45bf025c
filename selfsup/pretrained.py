"""Pretrained encoders from wherever they are: a pretraining workdir's checkpoint, an export of
`python -m selfsup export`, or a torchvision ResNet or timm ViT state dict (.safetensors, or a
PyTorch pickle when torch is installed). `load_encoder` rebuilds one for inference;
`config.init_from` starts pretraining from one, or adds it as an evaluation row.

It reads only (nothing in a workdir changes) and imports no TensorFlow, so JAX code elsewhere
can load an encoder without the data stack: the checkpoint is read with orbax directly, and
only the variables asked for.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from safetensors import safe_open

from selfsup.config import ADDED_KEYS, ConfigError, load_saved_config
from selfsup.models import timm, torchvision
from selfsup.models.encoders import Encoder, architecture, describe, encoder_from_config
from selfsup.pretext import get_task
from selfsup.train.checkpoint import Checkpointer, check_fits
from selfsup.train.state import TrainState, split_model
from selfsup.workdir import check_made_by, made_by

Flat = dict[str, np.ndarray]  # Variables by "/"-joined flax path, e.g. "stage1/0/bn1/scale".
ENCODER_FILE = "encoder.safetensors"  # What `export` writes, in either format.
HEAD_FILE = "projection.safetensors"
# `config.init_from`'s optional labels of a state dict file (its keys say which it is).
STATE_DICT_PREFIXES = ("torchvision:", "timm:")
ITEM = "default"  # Orbax's folder for a checkpoint step's single item (the TrainState).
PICKLE_SUFFIXES = (".pth", ".pt", ".bin")
STEP_FLAGS = "export's --config.step, load_encoder's step="  # How a reader names a step.


@dataclasses.dataclass(frozen=True)
class EncoderWeights:
    """An encoder's variables and the `config.model` that builds it; `what` names where they
    came from, for messages."""

    model: ml_collections.ConfigDict
    params: Flat
    batch_stats: Flat
    what: str


@dataclasses.dataclass(frozen=True)
class RunVariables:
    """The variables of some top-level modules (`encoder`, `projection`) of a pretraining run's
    checkpoint, by module."""

    config: ml_collections.ConfigDict
    step: int
    params: dict[str, Flat]
    batch_stats: dict[str, Flat]


def _name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def flatten(tree) -> Flat:
    return {_name(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def pretraining_config(workdir: str | Path, flag: str) -> ml_collections.ConfigDict:
    """The config of the pretraining run in `workdir` (`flag` names where the path came from)."""
    if not Path(workdir).is_dir():
        raise ConfigError(f"{flag}={workdir} does not exist: pass a pretraining --workdir.")
    check_made_by(workdir, "pretrain", flag=flag)
    return load_saved_config(workdir)


def read_run(
    workdir: str | Path,
    *,
    step: int | None = None,
    modules: tuple[str, ...] = ("encoder",),
    flag: str = "path",
) -> RunVariables:
    """`modules`' variables in the checkpoint of `step` (default: the latest) of a run."""
    config = pretraining_config(workdir, flag)
    checkpointer = Checkpointer(workdir, read_only=True)
    if not (steps := checkpointer.steps()):
        raise ConfigError(
            f"{workdir} has no checkpoint yet: wait for the run's first one "
            "(config.checkpoint_every_steps), or pass a run that has saved one."
        )
    if step is not None and step not in steps:
        raise ConfigError(
            f"{workdir} has no checkpoint at step {step} (steps: {', '.join(map(str, steps))}): "
            "pass one of those."
        )
    step = checkpointer.verified_step(step, how=f"pass another step ({STEP_FLAGS})")
    folder = checkpointer.directory / str(step) / ITEM
    try:
        saved = ocp.StandardCheckpointHandler().metadata(folder).tree
    except Exception as e:  # Orbax and tensorstore raise many kinds.
        raise _damaged(workdir, step, e) from None
    if absent := [m for m in modules if m not in saved["params"]]:
        raise ConfigError(
            f"the {config.task} model of {workdir} has no {' or '.join(absent)} module: "
            "export its encoder alone (--config.head=False)."
        )
    wanted = {
        kind: {m: saved[kind].get(m, {}) for m in modules} for kind in ("params", "batch_stats")
    }
    check_fits(wanted, _abstract_modules(config, modules), f"checkpoint {folder.parent}")
    args = ocp.args.PyTreeRestore(
        item=wanted,
        restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted),
        partial_restore=True,
    )
    try:
        with ocp.PyTreeCheckpointer() as reader:
            tree = reader.restore(folder, args=args)
    except Exception as e:
        raise _damaged(workdir, step, e) from None
    variables = {kind: {m: flatten(tree[kind][m]) for m in modules} for kind in tree}
    return RunVariables(config, step, variables["params"], variables["batch_stats"])


def _abstract_modules(config: ml_collections.ConfigDict, modules: tuple[str, ...]) -> dict:
    """The shapes of `modules`' variables in the model `config` builds, as read_run reads them
    (a config.json edited after training no longer fits its checkpoints)."""
    _, params, batch_stats = split_model(
        nnx.eval_shape(lambda: get_task(config).build_model(nnx.Rngs(0)))
    )
    trees = {"params": params, "batch_stats": batch_stats}
    return {kind: {m: tree.get(m, {}) for m in modules} for kind, tree in trees.items()}


def _damaged(workdir, step: int, error: Exception) -> ConfigError:
    reason = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:150]}"
    return ConfigError(
        f"the checkpoint at step {step} of {workdir} does not load ({reason}): pass an older "
        f"step ({STEP_FLAGS})."
    )


def read_weights(
    path: str | Path, *, step: int | None = None, flag: str = "path"
) -> EncoderWeights:
    """The encoder in a pretraining workdir (its checkpoint of `step`, default the latest), an
    export folder, or a file (.safetensors of either export format, or a torchvision
    or timm state dict as .safetensors or a PyTorch pickle)."""
    path = Path(path)
    if path.is_dir() and made_by(path) == "export":
        path = path / ENCODER_FILE
    elif path.is_dir():
        run = read_run(path, step=step, flag=flag)
        what = f"{path} (step {run.step})"
        return EncoderWeights(
            run.config.model, run.params["encoder"], run.batch_stats["encoder"], what
        )
    tensors, metadata = read_tensors(path)
    if "conv1.weight" in tensors:
        return torchvision_weights(tensors, str(path))
    if "patch_embed.proj.weight" in tensors:
        return timm_weights(tensors, str(path))
    if "model" not in metadata:
        raise ConfigError(
            f"{path} is neither a torchvision ResNet nor a timm ViT state dict nor a selfsup "
            "export (no conv1.weight, patch_embed.proj.weight or model in its metadata): pass "
            "one of those."
        )
    model = _model(**json.loads(metadata["model"]))
    parts = {
        kind: {
            k.removeprefix(f"{kind}/"): v for k, v in tensors.items() if k.startswith(f"{kind}/")
        }
        for kind in ("params", "batch_stats")
    }
    return EncoderWeights(model, parts["params"], parts["batch_stats"], str(path))


def read_tensors(path: Path) -> tuple[Flat, dict[str, str]]:
    """(tensors, metadata) of a .safetensors file or a PyTorch pickle of a state dict."""
    if not path.is_file():
        raise ConfigError(
            f"{path} does not exist: pass a pretraining workdir, an export, or a .safetensors "
            "or .pth file."
        )
    if path.suffix in PICKLE_SUFFIXES:
        return read_pickle(path), {}
    try:
        with safe_open(path, framework="np") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for a file it cannot read.
        raise ConfigError(
            f"{path} is not a readable .safetensors file ({type(e).__name__}: {e}): pass a "
            f".safetensors file, or a PyTorch pickle named *{', *'.join(PICKLE_SUFFIXES)}."
        ) from None


def read_pickle(path: Path) -> Flat:
    """A state dict that torch.save wrote, loaded without running pickled code; one saved under
    the key "model" (MAE's released checkpoints) too."""
    try:
        import torch
    except ImportError:
        raise ConfigError(
            f"{path} is a PyTorch pickle, which only torch reads: pip install torch, or convert "
            "it where torch is installed: safetensors.torch.save_file(torch.load(path), "
            "'weights.safetensors')."
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch wraps the unpickler's many errors.
        raise ConfigError(f"{path} does not load as a PyTorch state dict ({e}).") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ConfigError(
            f"{path} holds no flat state dict of tensors: save model.state_dict() itself."
        )
    return {k: (v.float() if v.is_floating_point() else v).numpy() for k, v in state.items()}


def torchvision_weights(state: Flat, what: str) -> EncoderWeights:
    """The encoder a torchvision ResNet state dict holds (its classifier left out)."""
    depth, stem = torchvision.torchvision_architecture(state, what)
    model = _model(name="resnet", depth=depth, stem=stem, width=1.0)
    return _state_dict_weights(model, state, torchvision.from_torch, what)


def timm_weights(state: Flat, what: str) -> EncoderWeights:
    """The encoder a timm ViT state dict holds (its head and an MAE decoder left out)."""
    size, patch_size, grid = timm.timm_architecture(state, what)
    model = _model(name=size, patch_size=patch_size, image_size=grid * patch_size)
    return _state_dict_weights(model, state, timm.from_timm, what)


def _model(**keys) -> ml_collections.ConfigDict:
    """A `config.model` of the given keys; the others as ADDED_KEYS has them (so an export made
    before a key existed builds what the key's old value built)."""
    added = {k.removeprefix("model."): v for k, v in ADDED_KEYS.items() if k.startswith("model.")}
    return ml_collections.ConfigDict(dict(depth=50, stem="imagenet", width=1.0, **added) | keys)


def _state_dict_weights(model, state: Flat, convert, what: str) -> EncoderWeights:
    """`model`'s variables from `state` as `convert(state, {name: shape}, what)` reads them."""
    _, params, batch_stats = _abstract_encoder(model)
    shapes = {k: v.shape for k, v in {**flatten(params), **flatten(batch_stats)}.items()}
    variables = convert(state, shapes, what)
    return EncoderWeights(
        model,
        {k: variables[k] for k in flatten(params)},
        {k: variables[k] for k in flatten(batch_stats)},
        what,
    )


def _abstract_encoder(model: ml_collections.ConfigDict):
    """(graphdef, params, batch_stats) of `model`'s encoder, as shapes (nothing allocated)."""
    return split_model(nnx.eval_shape(lambda: encoder_from_config(model, rngs=nnx.Rngs(0))))


def filled(tree, flat: Flat, what: str):
    """`tree` (arrays or shapes) with each leaf replaced by the NumPy array of the same name in
    `flat`, cast to the leaf's dtype; ConfigError naming the names missing, extra or of another
    shape."""
    want = flatten(tree)
    problems = [f"missing {k}" for k in sorted(want.keys() - flat.keys())]
    problems += [f"unexpected {k}" for k in sorted(flat.keys() - want.keys())]
    problems += [
        f"{k} has shape {tuple(flat[k].shape)}, not {tuple(want[k].shape)}"
        for k in sorted(want.keys() & flat.keys())
        if tuple(flat[k].shape) != tuple(want[k].shape)
    ]
    if problems:
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        raise ConfigError(
            f"{what} does not fit the encoder it names ({'; '.join(problems[:3])}{more}): pass "
            "an unchanged export or checkpoint."
        )
    return jax.tree_util.tree_map_with_path(
        lambda path, leaf: np.asarray(flat[_name(path)], leaf.dtype), tree
    )


def build_encoder(weights: EncoderWeights) -> Encoder:
    graphdef, params, batch_stats = _abstract_encoder(weights.model)
    params, batch_stats = (
        jax.tree.map(jnp.asarray, filled(tree, flat, weights.what))
        for tree, flat in ((params, weights.params), (batch_stats, weights.batch_stats))
    )
    return nnx.merge(graphdef, params, batch_stats)


def load_encoder(path: str | Path, *, step: int | None = None) -> Encoder:
    """The encoder of a pretraining workdir (checkpoint `step`, default the latest), of an export
    folder or file, or of a torchvision ResNet or timm ViT state dict, with its weights and
    BatchNorm statistics. Call it as `encoder(images, train=False)` (NHWC float32 images, the inputs
    selfsup trained it on) for pooled features; `encoder.features(...)` gives every stage's."""
    return build_encoder(read_weights(path, step=step))


def init_weights(spec: str, model: ml_collections.ConfigDict) -> EncoderWeights:
    """The weights `config.init_from` names (`torchvision:FILE`, `timm:FILE`, or a path
    `load_encoder` takes), for an encoder of `model`, whose dtype and kernels they take."""
    path = spec
    for prefix in STATE_DICT_PREFIXES:
        path = path.removeprefix(prefix)
    weights = read_weights(path, flag="--config.init_from")
    have, want = architecture(weights.model), architecture(model)
    if have != want:
        flags = " ".join(
            f"--config.model.{k}={v:g}" if isinstance(v, float) else f"--config.model.{k}={v}"
            for k, v in have.items()
            if want.get(k) != v
        )
        raise ConfigError(
            f"config.init_from={spec} holds a {describe(weights.model)}, but config.model is a "
            f"{describe(model)}: set {flags}, or pass weights of a {describe(model)}."
        )
    return dataclasses.replace(weights, model=model)


def init_encoder(spec: str, model: ml_collections.ConfigDict) -> Encoder:
    """An encoder of `model` with the weights `config.init_from` names (an evaluation row)."""
    return build_encoder(init_weights(spec, model))


def init_train_state(state: TrainState, weights: EncoderWeights | None) -> TrainState:
    """A fresh pretraining state whose encoder starts from `weights` (`init_weights`; None
    leaves it as initialised). The optimizer state stays: optax's states start from the
    parameters' shapes, not their values."""
    if weights is None:
        return state

    def put(tree, flat: Flat):
        return jax.tree.map(
            lambda value, leaf: jax.device_put(value, leaf.sharding),
            filled(tree, flat, weights.what),
            tree,
        )

    return state.replace(
        params={**state.params, "encoder": put(state.params["encoder"], weights.params)},
        batch_stats={
            **state.batch_stats,
            "encoder": put(state.batch_stats["encoder"], weights.batch_stats),
        },
    )
