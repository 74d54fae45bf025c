"""The `export` command: a pretraining run's encoder as a safetensors file that PyTorch or
another JAX program loads without the run's workdir, TensorFlow or pickle.

Formats: `torchvision` for a ResNet (the state dict of `torchvision.models.resnet18/34/50`,
loaded with `strict=True` once `fc` is `nn.Identity()`, and for the CIFAR stem `conv1`/`maxpool`
replaced as `selfsup.models.torchvision` says; `head` adds the projection head as an
`nn.Sequential`), `timm` for a ViT (the state dict of timm's `vit_<size>_patch<p>_<image size>`
made with `num_classes=0`, loaded with `strict=True`), and `flax` for either (the encoder's
parameters and BatchNorm statistics under selfsup's names). Each file's
metadata holds the run's `config.model`, so `selfsup.load_encoder` rebuilds the encoder from the
file alone. The command only reads the run; it writes into its own workdir.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import ml_collections
from safetensors.numpy import save_file

from selfsup import pretrained, report
from selfsup.config import ConfigError, check_values, choice, flag, integer, save_config
from selfsup.models import timm, torchvision
from selfsup.models.encoders import architecture, describe
from selfsup.workdir import claim

FORMATS = ("torchvision", "timm", "flax")
# The PyTorch format of each encoder family.
TORCH_FORMATS = {"resnet": "torchvision", "vit": "timm"}
# The export config's rules (`selfsup.config.check_values`).
VALUE_RULES = {
    "step": integer(0, why=" (a checkpoint's step; 0: the latest)"),
    "format": choice(*FORMATS),
    "head": flag(),
}


def check_config(config: ml_collections.ConfigDict) -> None:
    """Fails before any work on a config that cannot export."""
    if not config.checkpoint:
        raise ConfigError("export needs a pretraining run: pass --config.checkpoint=WORKDIR.")
    check_values(config, VALUE_RULES)
    if config.head and config.format != "torchvision":
        raise ConfigError(
            "config.head exports the projection head for PyTorch: use it with "
            "--config.format=torchvision (a flax export holds the encoder alone)."
        )
    model = pretrained.pretraining_config(config.checkpoint, "--config.checkpoint").model
    family = "resnet" if model.name == "resnet" else "vit"
    if config.format not in ("flax", TORCH_FORMATS[family]):
        raise ConfigError(
            f"{config.checkpoint} holds a {describe(model)}, which PyTorch reads as "
            f"--config.format={TORCH_FORMATS[family]} (or export --config.format=flax)."
        )
    if config.format == "torchvision" and model.width != 1:
        raise ConfigError(
            f"{config.checkpoint} has config.model.width={model.width:g}, and torchvision's "
            "ResNets have width 1 only: export it with --config.format=flax."
        )


def export(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, object]:
    """Writes the run's encoder (and head) into `workdir`; returns the summary it also writes."""
    check_config(config)
    start = time.perf_counter()
    modules = ("encoder", "projection") if config.head else ("encoder",)
    # Read (checksums verified, shapes checked against config.json) before anything is written.
    run = pretrained.read_run(
        config.checkpoint, step=config.step or None, modules=modules, flag="--config.checkpoint"
    )
    with claim(workdir, "export"):
        return _export(config, Path(workdir), run, modules, start)


def _export(
    config: ml_collections.ConfigDict,
    workdir: Path,
    run: pretrained.RunVariables,
    modules: tuple[str, ...],
    start: float,
) -> dict[str, object]:
    files = {}
    for module, name in zip(modules, (pretrained.ENCODER_FILE, pretrained.HEAD_FILE)):
        params, batch_stats = run.params[module], run.batch_stats[module]
        if config.format == "torchvision":
            tensors = torchvision.to_torch(
                params, batch_stats, batches=run.step, head=module != "encoder"
            )
        elif config.format == "timm":
            tensors = timm.to_timm(params)
        else:
            tensors = {f"params/{k}": v for k, v in params.items()}
            tensors |= {f"batch_stats/{k}": v for k, v in batch_stats.items()}
        files[name] = tensors
    # The encoder's file says how to rebuild it; the head's, only where it came from.
    source = {"format": config.format, "checkpoint": str(config.checkpoint), "step": str(run.step)}
    model = run.config.model
    for name, tensors in files.items():
        extra = {"model": json.dumps(model.to_dict())} if name == pretrained.ENCODER_FILE else {}
        save_file(tensors, workdir / name, metadata={**source, **extra})
    save_config(config, workdir)
    summary = {
        "export/checkpoint": str(config.checkpoint),
        "export/step": run.step,
        "export/format": config.format,
        "export/files": sorted(files),
        **{f"model/{key}": value for key, value in architecture(model).items()},
        "export/seconds": time.perf_counter() - start,
    }
    report.write_summary(workdir, summary)
    print(
        f"Exported the {describe(model)} of {config.checkpoint} at step "
        f"{run.step} as {config.format} weights: {', '.join(str(workdir / f) for f in files)} "
        f"({summary['export/seconds']:.1f} s)."
    )
    return summary
