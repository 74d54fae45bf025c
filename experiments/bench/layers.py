"""Where the step's time goes, layer by layer, next to PyTorch: every convolution shape of a
benchmark's encoder (forward, input gradient, weight gradient), BatchNorm + ReLU and the ImageNet
stem's max-pool (forward and backward), each timed alone in JAX (the encoder's own conv and BN,
from the kernels `--kernels` selects, as `config.model.kernels` does) and in PyTorch eager (NCHW
and channels_last), in one process, min of repeats. Totals weight each shape by how often the
network uses it. The process reuses freed memory as the project's commands do
(`parallel.reuse_step_memory`), which glibc then does for PyTorch's tensors too.

  python experiments/bench/layers.py --model=resnet18_cifar   # also resnet50_224, relpatch
  python experiments/bench/layers.py --model=relpatch --kernels=xla   # XLA's own ops

JAX ops are jitted on their own, so XLA cannot fuse them with neighbours as it does in the real
step; with the CPU kernels a conv row is their conv arithmetic (`xla_cpu.conv_arithmetic`),
without the stored copies of its operands (`xla_cpu.stored`), which only pay off in the whole
network. The last row times the whole encoder, forward and backward without head, loss or
optimizer: its gap to the sum of the layers is what joining them costs or saves in each
framework.
"""

from __future__ import annotations

import argparse
import collections
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch_reference  # Next to this file.
from flax import nnx

import selfsup  # noqa: F401  Sets XLA:CPU flags before JAX starts its backend.
from selfsup import parallel
from selfsup.models import kernels as kernel_choices
from selfsup.models import xla_cpu
from selfsup.models.resnet import BLOCKS, STAGE_WIDTHS, ResNet
from selfsup.train.state import split_model

IMPLS = ("jax", "torch_eager", "torch_cl")
# (spatial size in, channels in, channels out, kernel, stride)
Conv = tuple[int, int, int, int, int]


# --model: ResNet depth, stem, input size, default encoder batch (as train_step.py's defaults).
MODELS = {
    "resnet18_cifar": (18, "cifar", 32, 512),  # SimCLR: 2 views of 256 images.
    "resnet50_224": (50, "imagenet", 224, 16),  # SimCLR: 2 views of 8 images.
    "relpatch": (18, "cifar", 16, 288),  # Relative patch: 9 patches of 32 images.
}


def resnet_layers(depth: int, stem: str, size: int) -> tuple[collections.Counter, ...]:
    """How often each conv shape and each BatchNorm shape (size, channels) occurs; the ImageNet
    stem's max-pool is a BatchNorm-free entry (size, channels) of its own."""
    block, counts = BLOCKS[depth]
    convs, norms, pools = collections.Counter(), collections.Counter(), collections.Counter()
    if stem == "imagenet":
        convs[(size, 3, 64, 7, 2)] += 1
        norms[(size // 2, 64)] += 1
        pools[(size // 2, 64)] += 1
        size //= 4
    else:
        convs[(size, 3, 64, 3, 1)] += 1
        norms[(size, 64)] += 1
    in_ch = STAGE_WIDTHS[0]
    for i, (width, count) in enumerate(zip(STAGE_WIDTHS, counts, strict=True)):
        out_ch = width * block.expansion
        for j in range(count):
            stride = 2 if i > 0 and j == 0 else 1
            out = size // stride
            if block.expansion == 1:
                convs[(size, in_ch, width, 3, stride)] += 1
                convs[(out, width, width, 3, 1)] += 1
                norms[(out, width)] += 2
            else:  # v1.5 bottleneck: the stride sits on the 3x3.
                convs[(size, in_ch, width, 1, 1)] += 1
                convs[(size, width, width, 3, stride)] += 1
                convs[(out, width, out_ch, 1, 1)] += 1
                norms[(size, width)] += 1
                norms[(out, width)] += 1
                norms[(out, out_ch)] += 1
            if stride != 1 or in_ch != out_ch:
                convs[(size, in_ch, out_ch, 1, stride)] += 1
                norms[(out, out_ch)] += 1
            in_ch, size = out_ch, out
    return convs, norms, pools


def best_time(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def jax_conv_parts(
    n: int, shape: Conv, rng, *, kernels: kernel_choices.Kernels
) -> dict[str, Callable[[], object]]:
    size, cin, cout, k, stride = shape
    pad = (k - 1) // 2
    x = jnp.asarray(rng.standard_normal((n, size, size, cin), np.float32))
    w = jnp.asarray(rng.standard_normal((k, k, cin, cout), np.float32) / np.sqrt(k * k * cin))
    g = jnp.asarray(rng.standard_normal((n, size // stride, size // stride, cout), np.float32))

    def conv(x, w):
        args = (x, w, (stride, stride), ((pad, pad), (pad, pad)))
        if kernels is kernel_choices.CPU:
            return xla_cpu.conv_arithmetic(*args)
        return kernels.conv(*args, dimension_numbers=("NHWC", "HWIO", "NHWC"))

    fwd = jax.jit(conv)
    dx = jax.jit(lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0])
    dw = jax.jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0])
    return {
        "forward": lambda: fwd(x, w).block_until_ready(),
        "input grad": lambda: dx(x, w, g).block_until_ready(),
        "weight grad": lambda: dw(x, w, g).block_until_ready(),
    }


def torch_conv_parts(
    n: int, shape: Conv, rng, channels_last: bool
) -> dict[str, Callable[[], object]]:
    size, cin, cout, k, stride = shape
    pad = (k - 1) // 2
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.from_numpy(rng.standard_normal((n, cin, size, size), np.float32)).to(
        memory_format=fmt
    )
    w = torch.from_numpy(rng.standard_normal((cout, cin, k, k), np.float32)).to(memory_format=fmt)
    g = torch.from_numpy(rng.standard_normal((n, cout, size // stride, size // stride), np.float32))
    g = g.to(memory_format=fmt)

    def backward(mask):  # The kernels autograd calls.
        return torch.ops.aten.convolution_backward(
            g, x, w, None, [stride] * 2, [pad] * 2, [1, 1], False, [0, 0], 1, mask
        )

    return {
        "forward": lambda: torch.nn.functional.conv2d(x, w, stride=stride, padding=pad),
        "input grad": lambda: backward([True, False, False]),
        "weight grad": lambda: backward([False, True, False]),
    }


def jax_norm(
    n: int, size: int, ch: int, rng, *, kernels: kernel_choices.Kernels
) -> Callable[[], object]:
    """The encoder's BatchNorm (training mode) + ReLU, forward and backward."""
    graphdef, state = nnx.split(kernels.norm(ch, momentum=0.9, epsilon=1e-5, rngs=nnx.Rngs(0)))
    x = jnp.asarray(rng.standard_normal((n, size, size, ch), np.float32))
    g = jnp.asarray(rng.standard_normal((n, size, size, ch), np.float32))

    def loss(state, x):
        return jnp.sum(jax.nn.relu(nnx.merge(graphdef, state)(x, use_running_average=False)) * g)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return lambda: jax.block_until_ready(grad(state, x))


def torch_norm(n: int, size: int, ch: int, rng, channels_last: bool) -> Callable[[], object]:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    bn = torch.nn.BatchNorm2d(ch, momentum=0.1, eps=1e-5)
    x = torch.from_numpy(rng.standard_normal((n, ch, size, size), np.float32))
    x = x.to(memory_format=fmt).requires_grad_()
    g = torch.from_numpy(rng.standard_normal((n, ch, size, size), np.float32)).to(memory_format=fmt)

    def step():
        torch.relu(bn(x)).backward(g)
        x.grad = None

    return step


def jax_pool(
    n: int, size: int, ch: int, rng, *, kernels: kernel_choices.Kernels
) -> Callable[[], object]:
    """The ImageNet stem's 3x3 stride-2 max-pool, forward and backward."""
    x = jnp.asarray(rng.standard_normal((n, size, size, ch), np.float32))
    g = jnp.asarray(rng.standard_normal((n, size // 2, size // 2, ch), np.float32))
    pool = jax.jit(jax.grad(lambda x: jnp.sum(kernels.pool(x, (3, 3), (2, 2), "SAME") * g)))
    return lambda: pool(x).block_until_ready()


def torch_pool(n: int, size: int, ch: int, rng, channels_last: bool) -> Callable[[], object]:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.from_numpy(rng.standard_normal((n, ch, size, size), np.float32))
    x = x.to(memory_format=fmt).requires_grad_()
    g = torch.from_numpy(rng.standard_normal((n, ch, size // 2, size // 2), np.float32))
    g = g.to(memory_format=fmt)

    def step():
        torch.nn.functional.max_pool2d(x, 3, 2, padding=1).backward(g)
        x.grad = None

    return step


def jax_encoder(
    depth: int, stem: str, n: int, size: int, rng, *, kernels: kernel_choices.Kernels
) -> Callable[[], object]:
    """The whole encoder (training mode), forward and backward of a sum over its features: what
    the layers cost together, without head, loss or optimizer."""
    graphdef, params, stats = split_model(
        ResNet(
            depth,
            stem=stem,
            conv=kernels.conv,
            norm=kernels.norm,
            pool=kernels.pool,
            rngs=nnx.Rngs(0),
        )
    )
    x = jnp.asarray(rng.uniform(size=(n, size, size, 3)).astype(np.float32))

    def loss(params):
        features = nnx.merge(graphdef, params, stats)(x, train=True)
        return jnp.sum(jnp.square(features))

    grad = jax.jit(jax.grad(loss))
    return lambda: jax.block_until_ready(grad(params))


def torch_encoder(
    depth: int, stem: str, n: int, size: int, rng, channels_last: bool
) -> Callable[[], object]:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = torch_reference.ResNet(depth, stem, 1.0).to(memory_format=fmt)
    x = torch.from_numpy(rng.uniform(size=(n, 3, size, size)).astype(np.float32))
    x = x.to(memory_format=fmt)

    def step():
        model.zero_grad(set_to_none=True)
        torch.square(model(x)).sum().backward()

    return step


def implementations(
    jax_fn: Callable, torch_fn: Callable, kernels: kernel_choices.Kernels, *args
) -> dict[str, object]:
    """`jax_fn(*args)` with `kernels` and `torch_fn(*args)` in both PyTorch layouts, by IMPLS
    name."""
    return {
        "jax": jax_fn(*args, kernels=kernels),
        "torch_eager": torch_fn(*args, channels_last=False),
        "torch_cl": torch_fn(*args, channels_last=True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=tuple(MODELS), default="resnet18_cifar")
    parser.add_argument("--views", type=int, default=0, help="encoder batch; 0: the model's")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kernels", choices=kernel_choices.KERNEL_NAMES, default="auto")
    args = parser.parse_args()
    parallel.reuse_step_memory()
    depth, stem, size, views = MODELS[args.model]
    n, rng = args.views or views, np.random.default_rng(0)
    kernels = kernel_choices.kernels_for(args.kernels)
    convs, norms, pools = resnet_layers(depth, stem, size)
    print(
        f"{args.model}: ResNet-{depth} layers at {n} inputs of {size} px, min of {args.repeats}; "
        f"kernels {args.kernels} ({'cpu' if kernels is kernel_choices.CPU else 'xla'}); "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"load average {os.getloadavg()[0]:.2f}; jax {jax.__version__}, torch {torch.__version__}; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}; torch threads {torch.get_num_threads()}"
    )
    print(f"| layer | x | part | {' | '.join(f'{i} ms' for i in IMPLS)} | jax ÷ eager |")
    print("|---|---|---|" + "---|" * len(IMPLS) + "---|")
    rows = []  # (kind, layer, count, part, {impl: function}).
    for shape, count in convs.items():
        parts = implementations(jax_conv_parts, torch_conv_parts, kernels, n, shape, rng)
        for part in ("forward", "input grad", "weight grad"):
            if shape[1] != 3 or part != "input grad":  # Nothing needs the images' gradient.
                fns = {i: parts[i][part] for i in IMPLS}
                rows.append((f"conv {part}", f"conv {shape}", count, part, fns))
    for kind, table, jax_fn, torch_fn in (
        ("BatchNorm + ReLU", norms, jax_norm, torch_norm),
        ("max-pool", pools, jax_pool, torch_pool),
    ):
        for (side, ch), count in table.items():
            fns = implementations(jax_fn, torch_fn, kernels, n, side, ch, rng)
            rows.append((kind, f"{kind} ({side}, {ch})", count, "fwd + bwd", fns))
    fns = implementations(jax_encoder, torch_encoder, kernels, depth, stem, n, size, rng)
    rows.append(("whole encoder", "whole encoder", 1, "fwd + bwd", fns))
    totals = collections.defaultdict(float)
    for kind, layer, count, part, fns in rows:
        ms = {i: 1e3 * best_time(fns[i], args.repeats) for i in IMPLS}
        for i in IMPLS:
            totals[(kind, i)] += count * ms[i] / 1e3
            if kind != "whole encoder":
                totals[("all layers", i)] += count * ms[i] / 1e3
        cells = " | ".join(f"{ms[i]:.1f}" for i in IMPLS)
        print(f"| {layer} | {count} | {part} | {cells} | {ms['torch_eager'] / ms['jax']:.2f} |")
    print(f"\n| weighted total | {' | '.join(f'{i} s' for i in IMPLS)} | jax ÷ eager |")
    print("|---|" + "---|" * len(IMPLS) + "---|")
    for kind in dict.fromkeys([row[0] for row in rows[:-1]] + ["all layers", "whole encoder"]):
        cells = " | ".join(f"{totals[(kind, i)]:.2f}" for i in IMPLS)
        print(f"| {kind} | {cells} | {totals[(kind, 'torch_eager')] / totals[(kind, 'jax')]:.2f} |")


if __name__ == "__main__":
    main()
