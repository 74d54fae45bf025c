"""Config loading and checks shared by every command.

Configs are Python files with `get_config(arg)` returning a locked `ConfigDict`; the CLI loads
them with `file.py[:arg]` and applies `--config.key=value` overrides. Here live the checks
that must fail before any compute, with one line naming the key and the fix.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.machinery
import importlib.util
import json
import math
import re
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_collections

from selfsup.files import write_atomically


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and the fix."""


def parse_runlocal(arg: str | None) -> bool:
    """Config-file argument: empty or `runlocal` (the ~2 minute CPU variant)."""
    if arg in (None, ""):
        return False
    if arg == "runlocal":
        return True
    raise ConfigError(f"unknown config argument {arg!r}: use `file.py` or `file.py:runlocal`.")


def resolve_model_dtype(config: ml_collections.ConfigDict, platform: str) -> None:
    """Replaces `config.model.dtype="auto"` with the compute dtype for `platform` (as
    `jax.default_backend()` names it): bfloat16 on "gpu" and "tpu", whose matrix units are built
    for it, float32 elsewhere (XLA:CPU convolves bf16 in float32: no faster, more memory).
    Pretraining resolves it before writing config.json, which so records the dtype that ran: a
    resume on the same backend matches it, one on another backend is refused as a config change
    instead of silently switching the arithmetic mid-run."""
    if config.model.dtype == "auto":
        config.model.dtype = "bfloat16" if platform in ("gpu", "tpu") else "float32"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_regex(value: object) -> bool:
    try:
        re.compile(value)
    except (re.error, TypeError):
        return False
    return True


# (value, the block holding its key, the config holding the rule's block) -> what the value
# must be, or None if it fits.
Relation = Callable[[Any, ml_collections.ConfigDict, ml_collections.ConfigDict], str | None]


@dataclasses.dataclass(frozen=True)
class Rule:
    """What one config value must be: `test(value)` says whether it is, `requirement` says so in
    the refusal (with why a bound is where it is). A value that also depends on other keys has a
    `relation(value, block, run)`: `block` holds the key, `run` holds the rule's block (the
    whole config, or one run of the demo's); it returns what the value must be, or None if it
    fits, and is checked once every key's own `test` passed, so the keys it reads are valid."""

    test: Callable[[Any], bool]
    requirement: str
    relation: Relation | None = None


def integer(low: int, high: int = 2**31 - 1, why: str = "") -> Rule:
    """An integer in [low, high]; the default `high` is what an int32 step counter holds."""
    return Rule(lambda v: _is_int(v) and low <= v <= high, f"an integer in [{low}, {high}]{why}")


def number(low: float, high: float, why: str = "", *, open_low=False, open_high=False) -> Rule:
    """A finite number between `low` and `high`, each bound included unless `open_...`."""

    def test(v) -> bool:
        return (
            _is_number(v)
            and (low < v if open_low else low <= v)
            and (v < high if open_high else v <= high)
        )

    span = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
    return Rule(test, f"a number in {span}{why}")


def probability(why: str = "") -> Rule:
    return number(0, 1, why)


def flag() -> Rule:
    return Rule(lambda v: isinstance(v, bool), "True or False")


def choice(*options, why: str = "") -> Rule:
    return Rule(lambda v: type(v) is type(options[0]) and v in options, f"one of {options}{why}")


def text(what: str = "a string") -> Rule:
    return Rule(lambda v: isinstance(v, str), what)


def sequence(item: Rule, example: str, *, min_len: int = 1, max_len: int = 64) -> Rule:
    """A tuple of `min_len`..`max_len` values that each pass `item`."""
    return Rule(
        lambda v: (
            isinstance(v, tuple | list)
            and min_len <= len(v) <= max_len
            and all(item.test(x) for x in v)
        ),
        f"a tuple of {f'{min_len} ' if min_len == max_len else ''}values, each "
        f"{item.requirement}, e.g. '{example}'",
    )


# Nothing a run holds comes near this many values in one array (a 1 GiB float32 array): a
# shape beyond it is a typo, refused before allocation rather than found out of memory.
MAX_ARRAY_VALUES = 2**28
CORRUPT_IMAGE_MODES = ("error", "skip")
STEPS = integer(1)
# Rules that several owners' keys share.
REGEX = Rule(_is_regex, "a Python regular expression, e.g. '(^|/)bias$'")
MAX_WIDTH = integer(1, 16384, " (4 times the widest published head's 4096)")
WEIGHT_DECAY = number(0, 1, open_high=True)
TEMPERATURE = number(
    0.01, 10, " (contrastive recipes: 0.07-0.5; below 0.01 the logits, cosines / T, pass 100)"
)

# The rules of keys every command's config may have, whatever task or evaluator owns it: a
# rule's name is the tail of the dotted key (`min_crop_area` covers every block's; `optim.`
# fine-tuning's optimizer too). Tasks and evaluators declare their own block's rules beside
# their `default_config()`; a command checks all of them (`check_values`) before any work.
VALUE_RULES: dict[str, Rule] = {
    "seed": integer(0, 2**32 - 1),
    "data": text("a data spec, e.g. 'tfds:cifar10', 'folder:/path' or 'builtin:shapes'"),
    "data_dir": text("a folder, or '' for TFDS's default"),
    "train_split": text("a split name, e.g. 'train'"),
    "eval_split": text("a split name, e.g. 'test'"),
    "init_from": text("'', `torchvision:FILE`, or a pretraining workdir or export"),
    "checkpoint": text("the --workdir of a pretraining run"),
    "corrupt_images": choice(*CORRUPT_IMAGE_MODES),
    "image_size": integer(8, 4096, " (pixels)"),
    # A batch is sharded over the devices, not streamed: beyond this it is a typo.
    "batch_size": integer(1, 65536, " (LARS's largest published batch: 32768)"),
    "total_steps": integer(0, why=" (0: from num_epochs)"),
    "num_epochs": number(0, 100_000, " (epochs)"),
    "log_every_steps": STEPS,
    "eval_every_steps": integer(0, why=" (0: never)"),
    "checkpoint_every_steps": STEPS,
    "keep_checkpoints": integer(1, 1000, " (each is a full copy of the training state)"),
    "online_probe_classes": integer(-1, 1_000_000, " (-1: the data's class count, 0: none)"),
    "optim.name": choice("lars", "larc", "sgd", "adamw"),
    # 0 keeps the weights (e.g. to evaluate init_from's weights as a run); a rate too large
    # diverges, which the NaN check stops in one line.
    "optim.learning_rate": number(0, math.inf, " (before batch-size scaling)", open_high=True),
    "optim.lr_scaling": choice("linear", "sqrt"),
    "optim.momentum": number(0, 1, open_high=True),
    "optim.beta2": number(0, 1, " (AdamW's; MAE: 0.95)", open_high=True),
    "optim.weight_decay": WEIGHT_DECAY,
    "optim.weight_decay_end": Rule(
        lambda v: v is None or WEIGHT_DECAY.test(v),
        "a number in [0, 1) (weight_decay's cosine end; DINO: 0.4), or unset for a constant decay",
    ),
    "optim.trust_coefficient": number(0, 1, open_low=True),
    "optim.warmup_epochs": number(0, 100_000, " (epochs)"),
    "optim.schedule": choice("cosine", "cosine_linspace", "piecewise"),
    "optim.min_learning_rate": Rule(
        number(0, math.inf, open_high=True).test,
        "a number in [0, inf) (the cosine's end, not scaled by the batch; DINO: 1e-6)",
        lambda v, block, _: (
            "0 (a piecewise schedule has no end value)"
            if v and block.schedule == "piecewise"
            else None
        ),
    ),
    "optim.clip_per_tensor": number(
        0, math.inf, " (each gradient tensor's L2 norm cap, 0: off; DINO: 3)", open_high=True
    ),
    "optim.frozen_first": sequence(
        Rule(
            lambda f: (
                isinstance(f, tuple | list)
                and len(f) == 2
                and _is_regex(f[0])
                and number(0, 100_000).test(f[1])
            ),
            "(regex, epochs without updates)",
        ),
        "(('(^|/)last_layer/', 1.0),)",
        min_len=0,
    ),
    "optim.normalize_after_step": Rule(
        _is_regex, "a Python regular expression, e.g. '^prototypes/kernel$', or '' for none"
    ),
    "optim.decay_epochs": sequence(number(0, 100_000), "(120, 160)", min_len=0),
    "optim.decay_factor": number(0, 1, open_low=True),
    "optim.param_groups": sequence(
        Rule(
            lambda g: (
                isinstance(g, tuple | list)
                and len(g) == 3
                and _is_regex(g[0])
                and number(0, 1e6).test(g[1])
                and g[2] in ("scheduled", "constant")
            ),
            "(regex, learning-rate multiplier >= 0, 'scheduled' or 'constant')",
        ),
        "(('^predictor/', 1.0, 'constant'),)",
        min_len=0,
    ),
    # Fine-tuning counts no epochs, and scales each update by its lr multiplier.
    "finetune.optim.frozen_first": Rule(
        lambda v: v in ((), []), "() (pretraining only; finetune.lr_multipliers' 0 freezes)"
    ),
    "finetune.optim.normalize_after_step": Rule(lambda v: v == "", "'' (pretraining only)"),
    "weight_decay_exclude": REGEX,
    "min_crop_area": number(0, 1, " (a fraction of the image)", open_low=True),
    "crop_proportion": number(0, 1, " (a fraction of the shorter side)", open_low=True),
    "minival_fraction": number(0, 1, ", e.g. 0.1", open_low=True, open_high=True),
    "label_fractions": sequence(number(0, 1, open_low=True), "(0.1, 1.0)"),
}


def rule_for(key: str, rules: dict[str, Rule]) -> tuple[str, Rule] | None:
    """The most specific of `rules` whose name ends dotted `key`, and that name."""
    parts = key.split(".")
    tails = (".".join(parts[i:]) for i in range(len(parts)))  # Longest first.
    return next(((tail, rules[tail]) for tail in tails if tail in rules), None)


def check_values(config: ml_collections.ConfigDict, *rule_sets: dict[str, Rule]) -> None:
    """Raises a ConfigError naming the first key whose value breaks its rule among `rule_sets`
    (each key's own test first, then the rules that relate keys)."""
    rules = {name: r for rule_set in rule_sets for name, r in rule_set.items()}
    found = [(key, value, rule_for(key, rules)) for key, value in flat_items(config)]
    found = [(key, value, *match) for key, value, match in found if match]
    for key, value, _, rule in found:
        try:
            ok = bool(rule.test(value))
        except (TypeError, ValueError, OverflowError):  # E.g. a string where a number belongs.
            ok = False
        if not ok:
            raise _invalid(key, value, rule.requirement)
    for key, value, name, rule in found:
        if rule.relation is None:
            continue
        nodes = [config]
        for part in key.split(".")[:-1]:
            nodes.append(nodes[-1][part])
        block, run = nodes[-1], nodes[len(key.removesuffix(name).split(".")) - 1]
        if requirement := rule.relation(value, block, run):
            raise _invalid(key, value, requirement)


def _invalid(key: str, value: object, requirement: str) -> ConfigError:
    return ConfigError(f"config.{key}={value!r} is invalid: set --config.{key} to {requirement}.")


def owner_rules(
    config: ml_collections.ConfigDict, registry: dict[str, str], package: str
) -> dict[str, Rule]:
    """The `VALUE_RULES` of each owner in `registry` (a name -> "module:object" map in
    `package`, as `TASKS`) whose block `<name>` the config has at any depth, as `<name>.<key>`;
    only the modules of those blocks are imported."""
    blocks = {part for key, _ in flat_items(config) for part in key.split(".")[:-1]}
    rules = {}
    for name in sorted(blocks & set(registry)):
        module = importlib.import_module(f"{package}.{registry[name].split(':')[0]}")
        rules |= {f"{name}.{key}": rule for key, rule in module.VALUE_RULES.items()}
    return rules


def flat_items(config: ml_collections.ConfigDict, prefix: str = ""):
    """(dotted key, value) of every value that is no ConfigDict, nested ones included."""
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from flat_items(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def save_config(config: ml_collections.ConfigDict, workdir: str | Path) -> None:
    write_atomically(Path(workdir, "config.json"), config.to_json_best_effort(indent=2) + "\n")


# Keys added after workdirs were written, each with the value that does what runs without the
# key did: a saved config.json that lacks one gets it, so older runs resume and evaluate as
# they were (a key under a block, e.g. `simclr.`, only where the saved config has that block).
ADDED_KEYS = {
    "corrupt_images": "error",
    "init_from": "",
    "model.dtype": "float32",
    "model.kernels": "auto",
    "model.name": "resnet",
    "model.patch_size": 16,
    "model.image_size": 224,
    "simclr.solarize": 0.0,
    "simclr.color_on_device": False,
    "optim.param_groups": [],  # As JSON holds the empty tuple.
    "optim.beta2": 0.999,
    "finetune.optim.beta2": 0.999,
    "optim.weight_decay_end": None,
    "optim.min_learning_rate": 0.0,
    "optim.clip_per_tensor": 0.0,
    "optim.frozen_first": [],
    "optim.normalize_after_step": "",
    "finetune.optim.weight_decay_end": None,
    "finetune.optim.min_learning_rate": 0.0,
    "finetune.optim.clip_per_tensor": 0.0,
    "finetune.optim.frozen_first": [],
    "finetune.optim.normalize_after_step": "",
    "finetune.drop_path": 0.0,
}


def read_saved_config(path: Path) -> dict:
    """A run's `config.json` as a dict, with `ADDED_KEYS` it predates filled in."""
    try:
        tree = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{path} is cut short or damaged ({e.msg} at line {e.lineno}): restore it, or delete "
            "it and re-run the pretrain command that made this workdir (it writes it again)."
        ) from None
    for key, value in ADDED_KEYS.items():
        *blocks, leaf = key.split(".")
        node = tree
        for block in blocks:
            node = node.get(block)
            if not isinstance(node, dict):
                break
        else:
            node.setdefault(leaf, value)
    return tree


def load_saved_config(workdir: str | Path) -> ml_collections.ConfigDict:
    """The config a pretraining run wrote into its workdir, locked."""
    path = Path(workdir, "config.json")
    if not path.exists():
        raise ConfigError(
            f"{workdir} has no config.json: --config.checkpoint must be the --workdir of a "
            "finished or running `python -m selfsup pretrain`."
        )
    tree = read_saved_config(path)
    if "task" not in tree:
        raise ConfigError(
            f"{workdir} is not a pretraining workdir (its config.json names no task; an "
            "evaluate workdir?): --config.checkpoint must be the --workdir of "
            "`python -m selfsup pretrain`."
        )
    config = ml_collections.ConfigDict(tree)
    config.lock()
    return config


def load_config_file(path: str | Path, arg: str | None = None) -> ml_collections.ConfigDict:
    """Loads `get_config(arg)` from a config file, locked (as `--config=path:arg` does).

    A config file is Python and runs as code; whatever goes wrong in it (a syntax error, an
    exception, no `get_config`, a result that is no ConfigDict) is a ConfigError naming the
    file and line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist: pass --config=configs/X.py.")
    loader = importlib.machinery.SourceFileLoader(f"selfsup_config_{path.stem}", str(path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    try:
        loader.exec_module(module)
        if not callable(getattr(module, "get_config", None)):
            raise ConfigError(
                f"config file {path} defines no get_config(arg): define one that returns an "
                "ml_collections.ConfigDict (see configs/)."
            )
        config = module.get_config(arg)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"config file {path} failed: {_code_error(e, path)}: fix it.") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(
            f"get_config in {path} returned a {type(config).__name__}, not an "
            "ml_collections.ConfigDict: return one (see configs/)."
        )
    config.lock()
    return config


def _code_error(error: Exception, path: Path) -> str:
    """`error` and where in `path` it arose, on one line (for a config file's own bug)."""
    if isinstance(error, SyntaxError):
        return f"{error.msg} at line {error.lineno}"
    lines = [f.lineno for f in traceback.extract_tb(error.__traceback__) if f.filename == str(path)]
    where = f" at line {lines[-1]}" if lines else ""
    message = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}{': ' + message if message else ''}{where}"
