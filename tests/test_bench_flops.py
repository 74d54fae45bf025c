"""The benchmark's analytic model FLOPs (experiments/bench/flops.py) against published ResNet
figures and against a count of the multiply-adds in the traced model's own convolutions and
matmuls."""

import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from selfsup.config import load_config_file
from selfsup.models.resnet import ResNet
from selfsup.pretext import get_task

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments" / "bench"))
import flops  # noqa: E402


def traced_macs(jaxpr) -> int:
    """Multiply-adds of every conv_general_dilated and dot_general in a jaxpr, nested ones
    (jit, custom gradients, control flow) included: output elements x the products per element."""
    total = 0
    for eqn in jaxpr.eqns:
        out = math.prod(eqn.outvars[0].aval.shape)
        if eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += out * math.prod(lhs[d] for d in contract)
        elif eqn.primitive.name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            total += out * math.prod(rhs) // rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                sub = getattr(sub, "jaxpr", sub)  # A ClosedJaxpr holds its Jaxpr.
                if hasattr(sub, "eqns"):
                    total += traced_macs(sub)
    return total


def model_macs(module: nnx.Module, *inputs: jax.ShapeDtypeStruct, **kwargs) -> int:
    graphdef, state = nnx.split(module)
    jaxpr = jax.make_jaxpr(lambda s, *x: nnx.merge(graphdef, s)(*x, **kwargs))(state, *inputs)
    return traced_macs(jaxpr.jaxpr)


def images(n: int, size: int, *lead: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((n, *lead, size, size, 3), jnp.float32)


@pytest.mark.parametrize(
    "depth, published",
    # torchvision's ResNet-18 / ResNet-50 (v1.5) at 224 px: 1.81 / 4.09 GMACs ("GFLOPS" in its
    # model table), less the 1000-way classifier, which the encoder does not have.
    [(18, 1.81e9 - 512 * 1000), (50, 4.09e9 - 2048 * 1000)],
)
def test_resnet_at_224_px_matches_the_published_multiply_adds(depth, published):
    assert flops.resnet_macs(depth, "imagenet", 1.0, 224) == pytest.approx(published, rel=5e-3)


@pytest.mark.parametrize(
    "depth, stem, width, size",
    [(18, "cifar", 1.0, 32), (50, "imagenet", 1.0, 224), (50, "imagenet", 0.125, 96),
     (34, "cifar", 0.5, 24)],
)  # fmt: skip
def test_resnet_count_equals_the_traced_encoders_multiply_adds(depth, stem, width, size):
    # Every stage's map at least 3x3 (see the relative-patch case below).
    encoder = nnx.eval_shape(lambda: ResNet(depth, stem=stem, width=width, rngs=nnx.Rngs(0)))
    traced = model_macs(encoder, images(2, size), train=False)
    assert flops.resnet_macs(depth, stem, width, size) == traced / 2


@pytest.mark.parametrize(
    "name, model",
    [
        ("simclr_cifar10.py", {}),  # ResNet-18, CIFAR stem, 512-512-128 head.
        ("simclr_imagenet.py", {}),  # ResNet-50, ImageNet stem, 2048-2048-128 head.
        ("relpatch_cifar10.py", {}),  # ResNet-18 on 9 patches, 1000-d embedding, 4096 fusion.
        # ViT-Ti/4 at 32 px: 65 tokens, attention's two matmuls included.
        ("simclr_cifar10.py", dict(name="vit_tiny", patch_size=4, image_size=32)),
    ],
)
def test_step_count_equals_three_times_the_traced_task_models_forward(name, model):
    config = load_config_file(ROOT / "configs" / name)
    config.update(dict(online_probe_classes=0, batch_size=2))  # As the benchmark runs it.
    config.model.update(dtype="float32", **model)
    if config.task == "simclr":
        batch = images(2, config.image_size, 2)
    else:
        # 24 px patches: maps of at least 3x3, where every conv runs over its kernel's taps
        # (on smaller maps a matmul also multiplies the zeros between non-adjacent pixels).
        config.relpatch.update(dict(patch_size=24, crop_size=78, eval_smaller_size=78))
        batch = images(2, 24, 9)
    task = get_task(config)
    traced = model_macs(nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0))), batch, train=False)
    assert flops.train_step_flops(config) == 3 * 2 * traced
