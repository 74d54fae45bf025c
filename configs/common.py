"""What every pretraining config shares, as functions (big_vision's configs/common.py): a root
recipe is `pretraining(...)` given what differs, plus its task's block, so a key every run has
is added here once. configs/ is no package; a config file loads this file by its path:

  common = runpy.run_path(str(Path(__file__).with_name("common.py")))
  config = common["pretraining"]("simclr", simclr.default_config(), runlocal, ...)
"""

import ml_collections
from ml_collections import config_dict

# Parameters that no weight decay (and no LARS adaptation) applies to: biases, BatchNorm scales.
BIAS_AND_SCALE = r"(^|/)(bias|scale)$"


def imagenet(image_size: int | None = 224) -> dict:
    """ImageNet-1k from TFDS (prepared in `data_dir`), evaluated on its validation split;
    `image_size` None for tasks that crop their own sizes (patch tasks)."""
    data = dict(data="tfds:imagenet2012", eval_split="validation")
    return data if image_size is None else {**data, "image_size": image_size}


def cifar10() -> dict:
    """CIFAR-10 from TFDS at its own 32 px, evaluated on its test split."""
    return dict(data="tfds:cifar10", eval_split="test", image_size=32)


def encoder(name: str, **keys) -> ml_collections.ConfigDict:
    """The encoder block (selfsup.models.encoders): `name` "resnet" (`depth`, `stem`, `width`,
    `kernels`) or a ViT, "vit_tiny" / "vit_small" / "vit_base" (`patch_size`; `image_size`, the
    side its position embeddings are made for); each family ignores the other's keys, so
    `--config.model.name` switches families.
    dtype: the compute dtype, "float32" or "bfloat16" (float32 parameters, optimizer state,
    heads and loss either way); "auto" is bfloat16 on a GPU or TPU and float32 on a CPU, and
    config.json records which ran (docs/usage.md). kernels: "xla" (XLA's own conv, BatchNorm and
    max-pool), "cpu" (rewrites of them that XLA:CPU runs faster, equal up to rounding) or "auto"
    (the rewrites on a CPU backend, XLA's ops elsewhere)."""
    block = dict(name=name, depth=50, stem="imagenet", width=1.0, kernels="auto")
    block.update(patch_size=16, image_size=224, dtype="auto")
    return ml_collections.ConfigDict({**block, **keys})


def resnet(depth: int = 50, *, stem: str = "imagenet", width: float = 1.0):
    """A ResNet-`depth` encoder block."""
    return encoder("resnet", depth=depth, stem=stem, width=width)


def optimizer(
    name: str,
    learning_rate: float,
    *,
    schedule: str,
    warmup_epochs: float,
    weight_decay: float = 1e-4,
    weight_decay_exclude: str = BIAS_AND_SCALE,
    decay_epochs: tuple[int, ...] = (),
    param_groups: tuple = (),
    weight_decay_end: float | None = None,
    min_learning_rate: float = 0.0,
    clip_per_tensor: float = 0.0,
    frozen_first: tuple = (),
    normalize_after_step: str = "",
) -> ml_collections.ConfigDict:
    """`name` "sgd", "lars" (trust coefficient 0.001), "larc" (SwAV's: apex LARC around SGD) or
    "adamw", the learning rate scaled linearly by batch / 256, momentum (AdamW's beta1) 0.9;
    `schedule` "cosine" (to `min_learning_rate`), "cosine_linspace" (the same as DINO and SwAV
    build it: the warmup reaches the peak one step sooner) or "piecewise" (x0.1 at each of
    `decay_epochs`), after `warmup_epochs` of linear warmup; `param_groups` ((regex, multiplier,
    "scheduled" | "constant"), ...): groups of parameters with their own learning rate;
    `weight_decay_end`: the decay's cosine end (None: constant); `clip_per_tensor`: each gradient
    tensor's L2 norm cap (0: off); `frozen_first` ((regex, epochs), ...): parameters held for
    their first epochs; `normalize_after_step`: a regex of parameters L2-normalised along axis 0
    after each step ("": none) (selfsup.train.optim.make_optimizer)."""
    return ml_collections.ConfigDict(
        dict(
            name=name,
            learning_rate=learning_rate,
            lr_scaling="linear",
            momentum=0.9,  # AdamW's beta1.
            beta2=0.999,  # AdamW only.
            weight_decay=weight_decay,
            weight_decay_exclude=weight_decay_exclude,
            # None: weight_decay at every step. Typed, so that --config can set a float.
            weight_decay_end=config_dict.FieldReference(weight_decay_end, field_type=float),
            trust_coefficient=0.001,  # LARS and LARC only.
            warmup_epochs=warmup_epochs,
            schedule=schedule,
            min_learning_rate=min_learning_rate,  # Cosine schedules only; not batch-scaled.
            decay_epochs=decay_epochs,  # Piecewise schedule only.
            decay_factor=0.1,
            param_groups=param_groups,  # () = one rate for all parameters.
            clip_per_tensor=clip_per_tensor,
            frozen_first=frozen_first,
            normalize_after_step=normalize_after_step,
        )
    )


def revisiting_schedule() -> dict:
    """Kolesnikov et al. 2019 ("Revisiting self-supervised visual representation learning"):
    SGD at 0.1 x batch / 256 for 35 epochs, 5 of warmup, x0.1 at epochs 15 and 25."""
    return dict(
        num_epochs=35.0,
        optim=optimizer("sgd", 0.1, schedule="piecewise", warmup_epochs=5.0, decay_epochs=(15, 25)),
        checkpoint_every_steps=5000,
    )


def pretraining(
    task: str,
    task_config: ml_collections.ConfigDict,
    runlocal: bool,
    *,
    data: dict,
    batch_size: int,
    num_epochs: float,
    model: ml_collections.ConfigDict,
    optim: ml_collections.ConfigDict,
    local: dict,
    checkpoint_every_steps: int = 2000,
) -> ml_collections.ConfigDict:
    """A pretraining config of `task` (its block `task_config` under the task's name) on `data`
    (`imagenet()`, `cifar10()`); `runlocal` shrinks it to a ~2 minute CPU run on the same code
    path: ResNet-18 at width 1/8 (a ViT: ViT-Tiny/8), 60 steps, with `local`'s batch_size (and
    image_size)."""
    config = ml_collections.ConfigDict()
    config.task = task
    config.data = data["data"]
    config.data_dir = ""  # Where TFDS/builtin datasets are prepared; "" = TFDS's default.
    config.train_split = "train"
    config.eval_split = data["eval_split"]
    config.seed = 0
    # The encoder's weights at step 0 (a resume restores its checkpoint): "" = random init;
    # `torchvision:FILE` (a torchvision ResNet state dict, .safetensors or .pth), or a selfsup
    # pretraining workdir or export, of config.model's architecture.
    config.init_from = ""
    # An image that does not decode: "error" stops with its file named; "skip" leaves such
    # images out (one decoding pass over the splits read, at start) and counts them in
    # summary.json as data/skipped_images.
    config.corrupt_images = "error"
    if "image_size" in data:
        config.image_size = data["image_size"]
    config.batch_size = batch_size  # Images (a task makes its views, patches or copies of each).
    config.num_epochs = num_epochs
    config.total_steps = 0  # > 0 overrides num_epochs.
    config.model = model
    config[task] = task_config
    config.optim = optim
    # A linear classifier on stop-gradient features trained alongside (the task says which),
    # logged as online_probe/*: -1 = the data's class count, 0 = off. Never the reported linear
    # probe, which `evaluate` fits offline.
    config.online_probe_classes = -1
    config.log_every_steps = 100
    # Held-out pretext metrics (the task's loss and accuracy on eval_split); 0 = never.
    config.eval_every_steps = 5000
    config.checkpoint_every_steps = checkpoint_every_steps
    config.keep_checkpoints = 3
    if runlocal:
        config.update(local)
        config.model.update(depth=18, width=0.125)
        if config.model.name != "resnet":  # 8 px patches: 16 of them on a 32 px image.
            size = config.get("image_size", config.model.image_size)
            config.model.update(name="vit_tiny", patch_size=8, image_size=size)
        config.total_steps = 60
        config.optim.warmup_epochs = 0.0
        config.update(log_every_steps=10, checkpoint_every_steps=30, eval_every_steps=30)
    return config
