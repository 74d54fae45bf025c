"""Config files: every one loads plain and with `runlocal`, locked, with every key declared."""

from pathlib import Path

import pytest

from selfsup.cli import check_config_values, value_rules
from selfsup.config import (
    ConfigError,
    check_values,
    flat_items,
    load_config_file,
    load_saved_config,
    resolve_model_dtype,
    rule_for,
    save_config,
)

ROOT = Path(__file__).resolve().parents[1]
# configs/ and the studies' own configs in experiments/ (files with a `get_config`).
CONFIGS = sorted(
    p
    for p in [*(ROOT / "configs").glob("*.py"), *(ROOT / "experiments").glob("*/*.py")]
    if "def get_config(" in p.read_text()  # Not configs/common.py, the pieces they share.
)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_config_loads_locked_with_and_without_runlocal(path):
    config = load_config_file(path)
    runlocal = load_config_file(path, "runlocal")
    assert set(config.keys()) == set(runlocal.keys())
    # The demo's config holds a pretraining and a probe config per pretext task.
    runs = (
        [c for task in config.tasks.values() for c in task.values()]
        if "tasks" in config
        else [config]
    )
    for run in runs:  # An export reads a checkpoint alone: no data, nothing random.
        assert ("seed" in run and "data" in run) or path.name == "export.py"
    with pytest.raises(AttributeError, match="batch_sise"):
        config.batch_sise = 8
    with pytest.raises(ConfigError, match="runlocal"):
        load_config_file(path, "fast")


@pytest.mark.parametrize(
    "name",
    ["simclr_cifar10.py", "simclr_imagenet.py", "relpatch_imagenet.py", "relpatch_cifar10.py"],
)
def test_runlocal_shrinks_pretraining(name):
    path = ROOT / "configs" / name
    full, small = load_config_file(path), load_config_file(path, "runlocal")
    assert small.total_steps and small.total_steps <= 100
    assert small.model.width < full.model.width and small.batch_size < full.batch_size


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_simclr_configs_default_to_the_simclr_recipe_on_the_host(path):
    for arg in (None, "runlocal"):
        config = load_config_file(path, arg)
        runs = [t.pretrain for t in config.tasks.values()] if "tasks" in config else [config]
        simclr_runs = [r for r in runs if "task" in r and r.task == "simclr"]
        if "simclr" in str(path.relative_to(ROOT)) or path.name == "demo.py":
            assert simclr_runs
        for run in simclr_runs:
            assert run.simclr.solarize == 0.0 and run.simclr.color_on_device is False


def test_simclr_imagenet_is_the_published_recipe():
    from selfsup.train.optim import peak_learning_rate

    config = load_config_file(ROOT / "configs" / "simclr_imagenet.py")
    assert (config.data, config.image_size, config.batch_size, config.num_epochs) == (
        "tfds:imagenet2012",
        224,
        4096,
        100,
    )
    assert (config.model.depth, config.model.stem, config.model.width) == (50, "imagenet", 1.0)
    s = config.simclr
    assert (s.temperature, s.color_strength, s.blur, s.crop, s.min_crop_area) == (
        0.1,
        1.0,
        True,
        True,
        0.08,
    )
    assert (s.proj_layers, s.proj_hidden_dim, s.proj_out_dim) == (3, 2048, 128)
    o = config.optim
    assert (o.name, o.weight_decay, o.warmup_epochs, o.schedule) == ("lars", 1e-4, 10.0, "cosine")
    # 0.075 * sqrt(4096), which the README notes equals 0.3 with linear scaling at this batch.
    assert peak_learning_rate(o, 4096) == pytest.approx(4.8)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file("configs/nope.py")


def test_a_value_out_of_range_is_named_with_its_fix():
    config = load_config_file(ROOT / "configs" / "simclr_cifar10.py", "runlocal")
    config.checkpoint_every_steps = 0
    with pytest.raises(ConfigError) as error:
        check_config_values(config)
    assert str(error.value) == (
        "config.checkpoint_every_steps=0 is invalid: set --config.checkpoint_every_steps to an "
        "integer in [1, 2147483647]."
    )


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_model_computes_in_float32_on_a_cpu(path):
    for arg in (None, "runlocal"):
        config = load_config_file(path, arg)
        runs = [t.pretrain for t in config.tasks.values()] if "tasks" in config else [config]
        for run in [r for r in runs if "model" in r]:
            resolve_model_dtype(run, "cpu")
            assert run.model.dtype == "float32"


@pytest.mark.parametrize("name", ["simclr_cifar10", "simclr_imagenet", "relpatch_cifar10",
                                  "relpatch_imagenet"])  # fmt: skip
def test_published_recipes_compute_in_bf16_on_gpus_and_tpus(name):
    for platform, dtype in (("gpu", "bfloat16"), ("tpu", "bfloat16"), ("cpu", "float32")):
        config = load_config_file(ROOT / "configs" / f"{name}.py")
        assert config.model.dtype == "auto"
        resolve_model_dtype(config, platform)
        assert config.model.dtype == dtype


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("platform", ["cpu", "gpu", "tpu", "some_plugin"])
def test_an_explicit_dtype_is_kept_on_every_backend_and_auto_is_float32_off_gpus_and_tpus(
    dtype, platform
):
    config = load_config_file(ROOT / "configs" / "simclr_cifar10.py")
    config.model.dtype = dtype
    resolve_model_dtype(config, platform)
    assert config.model.dtype == dtype
    config.model.dtype = "auto"
    resolve_model_dtype(config, platform)
    assert config.model.dtype == ("bfloat16" if platform in ("gpu", "tpu") else "float32")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_config_passes_the_value_rules(path):
    for arg in (None, "runlocal"):
        check_config_values(load_config_file(path, arg))


@pytest.mark.parametrize(
    "config_file, key, value, requirement",
    [
        ("simclr_cifar10.py", "seed", -1, "an integer in [0, 4294967295]"),
        ("simclr_cifar10.py", "seed", 2**64, "an integer in [0, 4294967295]"),
        ("simclr_cifar10.py", "image_size", 0, "an integer in [8, 4096] (pixels)"),
        ("simclr_cifar10.py", "image_size", 100000, "an integer in [8, 4096] (pixels)"),
        (
            "simclr_cifar10.py",
            "model.width",
            0.0,
            "a number in [0.015625, 16] (a multiplier; SimCLR's widest ResNet: 4)",
        ),
        (
            "simclr_cifar10.py",
            "simclr.min_crop_area",
            2.0,
            "a number in (0, 1] (a fraction of the image)",
        ),
        ("simclr_cifar10.py", "optim.warmup_epochs", -1.0, "a number in [0, 100000] (epochs)"),
        (
            "simclr_cifar10.py",
            "optim.learning_rate",
            -1.0,
            "a number in [0, inf) (before batch-size scaling)",
        ),
        (
            "relpatch_cifar10.py",
            "optim.decay_epochs",
            ("(5,x)",),
            "a tuple of values, each a number in [0, 100000], e.g. '(120, 160)'",
        ),
        (
            "simclr_cifar10.py",
            "optim.weight_decay_exclude",
            "(",
            "a Python regular expression, e.g. '(^|/)bias$'",
        ),
        ("transfer.py", "minival_fraction", 0.0, "a number in (0, 1), e.g. 0.1"),
        (
            "transfer.py",
            "knn.ks",
            (0,),
            "a tuple of values, each an integer in [1, 2147483647] (capped at the number of "
            "labels), e.g. '(20, 200)'",
        ),
        (
            "transfer.py",
            "label_fractions",
            (0.0,),
            "a tuple of values, each a number in (0, 1], e.g. '(0.1, 1.0)'",
        ),
        (
            "transfer.py",
            "finetune.freeze_stages",
            (-1,),
            "a tuple of values, each an integer in [0, 4096] (0 trains all, the encoder's last "
            "depth the head only), e.g. '(0, 4)'",
        ),
        (
            "transfer.py",
            "finetune.min_crop_area",
            0.0,
            "a number in (0, 1] (a fraction of the image)",
        ),
        (
            "transfer.py",
            "crop_proportion",
            1.5,
            "a number in (0, 1] (a fraction of the shorter side)",
        ),
        ("transfer.py", "knn.temperature", 1e-30, "a number in [0.02, 10] (DINO: 0.07)"),
        (
            "demo.py",
            "tasks.relpatch.pretrain.optim.weight_decay_exclude",
            "[",
            "a Python regular expression, e.g. '(^|/)bias$'",
        ),
    ],
)
def test_a_value_that_cannot_work_is_refused_naming_key_and_fix(
    config_file, key, value, requirement
):
    config = load_config_file(ROOT / "configs" / config_file, "runlocal")
    *blocks, leaf = key.split(".")
    node = config
    for block in blocks:
        node = node[block]
    with node.ignore_type():
        node[leaf] = value
    with pytest.raises(ConfigError) as error:
        check_config_values(config)
    assert str(error.value) == (
        f"config.{key}={value!r} is invalid: set --config.{key} to {requirement}."
    )


@pytest.mark.parametrize(
    "source, message",
    [
        (
            "def get_config(:\n    pass\n",
            "config file {path} failed: invalid syntax at line 1: fix it.",
        ),
        (
            "import ml_collections\n\ndef get_config(arg=None):\n    raise RuntimeError('boom')\n",
            "config file {path} failed: RuntimeError: boom at line 4: fix it.",
        ),
        (
            "def get_config(arg=None):\n    return {'seed': 0}\n",
            "get_config in {path} returned a dict, not an ml_collections.ConfigDict: return one "
            "(see configs/).",
        ),
        (
            "SEED = 0\n",
            "config file {path} defines no get_config(arg): define one that returns an "
            "ml_collections.ConfigDict (see configs/).",
        ),
    ],
)
def test_a_broken_config_file_is_one_line_naming_it(source, message, tmp_path):
    path = tmp_path / "broken.py"
    path.write_text(source)
    with pytest.raises(ConfigError) as error:
        load_config_file(path)
    assert str(error.value) == message.format(path=path)


@pytest.mark.parametrize("text", ["", '{"task": "simclr", "seed"'])
def test_a_damaged_config_json_is_named_with_the_fix(text, tmp_path):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ConfigError) as error:
        load_saved_config(tmp_path)
    assert str(error.value).startswith(f"{tmp_path / 'config.json'} is cut short or damaged (")
    assert str(error.value).endswith(
        "): restore it, or delete it and re-run the pretrain command that made this workdir "
        "(it writes it again)."
    )


def test_an_evaluate_workdir_is_no_checkpoint(tmp_path):
    save_config(load_config_file(ROOT / "configs" / "transfer.py"), tmp_path)
    with pytest.raises(ConfigError, match="is not a pretraining workdir"):
        load_saved_config(tmp_path)


# What the walk below tries that the checks accept, by rule: each is a documented setting
# that runs (the off switch, or the start of a range), not a value that fails later.
ACCEPTED = {
    "seed": {0},
    "total_steps": {0},  # Steps from num_epochs.
    "num_epochs": {0},  # One step (or total_steps' count).
    "eval_every_steps": {0},  # No held-out metrics.
    "online_probe_classes": {-1, 0},  # The data's class count; no online probe.
    "step": {0},  # Export the latest checkpoint.
    "optim.learning_rate": {0, 1e30},  # Keeps the weights; diverges, stopped in one line.
    "optim.momentum": {0},
    "optim.beta2": {0},  # AdamW scales by the last gradient alone.
    "optim.weight_decay": {0},
    "optim.warmup_epochs": {0},
    "optim.decay_epochs": {(0,)},  # The piecewise schedule decays at once.
    "optim.weight_decay_end": {None, 0},  # Constant decay; decay to none.
    "optim.min_learning_rate": {0, 1e30},  # To zero; diverges, stopped in one line.
    "optim.clip_per_tensor": {0, 1e30},  # Off; a cap no gradient reaches.
    "byol.base_momentum": {0},  # The target copies the online network each step.
    "moco.momentum": {0},  # Likewise the key encoder.
    "dino.momentum_teacher": {0},  # Likewise DINO's teacher.
    "dino.center_momentum": {0},  # The centre is the last batch's mean.
    "dino.warmup_teacher_temp_epochs": {0},  # teacher_temp from the start.
    "dino.drop_path": {0},  # No stochastic depth.
    "dino.local_crops_number": {0},  # The two global crops only.
    "swav.local_crops_number": {0},  # Likewise.
    "swav.queue_length": {0},  # No queue.
    "swav.epoch_queue_starts": {0},  # The queue from the first step.
    **{f"{task}.color_strength": {0} for task in ("simclr", "moco", "simsiam")},  # No jitter.
    "barlow_twins.lambd": {0},  # No off-diagonal term.
    **{f"vicreg.{term}_coeff": {0} for term in ("sim", "std", "cov")},  # Without that term.
    "simclr.solarize": {0},
    **{f"{task}.crop_padding": {0} for task in ("rotation", "exemplar")},
    **{f"{t}.grayscale_probability": {0} for t in ("relpatch", "jigsaw", "exemplar")},
    **{f"{task}.{key}": {0} for task in ("relpatch", "jigsaw") for key in ("dropout", "min_gap")},
    "jigsaw.permutation_seed": {0},
    "finetune.warmup_steps": {0},
    "finetune.freeze_stages": {(0,)},  # Fine-tune every stage.
    "finetune.drop_path": {0},  # No stochastic depth.
    "linear.l2_grid": {(0,)},  # No penalty.
}


def tried_values(value) -> list:
    """In place of `value`: a wrong type (None, and another), zero, negative and huge."""
    if isinstance(value, tuple):
        item = value[0] if value else 0.5
        wrong = (0,) if isinstance(item, str) else (item, "x")
        return [None, wrong, (0,), (-1,), (10**12,), (1e30,)]
    if isinstance(value, bool | str):
        return [None, 1]  # ConfigDict refuses other types for these keys.
    if isinstance(value, int):
        return [None, True, "x", 0, -1, 10**12]
    return [None, "x", 0, -1, 1e30, float("nan")]  # True would be 1.0 here.


@pytest.mark.parametrize("name", [p.name for p in CONFIGS if p.parent.name == "configs"])
def test_every_key_refuses_a_bad_value_in_one_line_or_takes_a_value_that_works(name):
    """Each key of the file (plain and `runlocal`) with each of `tried_values`: the config's
    own types refuse it, or the checks every command makes before any work refuse it in one
    line naming the key, or it is in ACCEPTED; never another exception (or a hang)."""
    for arg in (None, "runlocal"):
        config = load_config_file(ROOT / "configs" / name, arg)
        rules = value_rules(config)
        for key, value in list(flat_items(config)):
            *blocks, leaf = key.split(".")
            node = config
            for block in blocks:
                node = node[block]
            rule_name = rule_for(key, rules)[0]  # Every key has a rule.
            for bad in tried_values(value):
                try:
                    node[leaf] = bad
                except TypeError:
                    continue  # As --config.<key>=<bad> is refused by the command line.
                bad = node[leaf]  # As the config holds it (0 in a float key is 0.0).
                try:
                    check_values(config, rules)
                    assert bad in ACCEPTED.get(rule_name, ()), f"{key}={bad!r} was accepted"
                except ConfigError as e:
                    assert str(e).startswith(f"config.{key}={bad!r} is invalid: set --config.")
                    assert "\n" not in str(e)
                finally:
                    with node.ignore_type():
                        node[leaf] = value
