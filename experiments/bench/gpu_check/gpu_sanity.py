"""GPU sanity checks for selfsup, run by check.sh from the repository root (one process, ~1 min).

- backend: JAX's default backend is the GPU; its memory limit, XLA_FLAGS, matmul precision, and
  the compute dtype `model.dtype="auto"` resolves to there (bfloat16).
- tensorflow: TensorFlow (the host pipeline) cannot see the GPU after selfsup's pipeline import.
- conv_paths: the CPU rewrites (`xla_cpu.conv_general_dilated`, what `model.kernels=cpu` runs;
  `auto` gives a GPU XLA's own convolution) against `lax.conv_general_dilated`, forward and both
  gradients, in full fp32;
  cuDNN convolutions and gathers (the CPU-only stored-operand copy) counted in the compiled HLO.
- max_pool, batch_norm: the custom gradients against autodiff of nnx.max_pool / the textbook BN.
- encoder_gpu_vs_cpu: a ResNet-50 (width 1/8, 64 px: every path incl. the 2x2 stage-4 matmuls)
  loss and parameter gradients on the GPU against the same program on XLA:CPU, full fp32.
- bf16: with model.dtype=bfloat16 the convolutions are bf16 on cuDNN, params/pooled features f32.
- linear_probe_precision: the L-BFGS probe (selfsup.evaluate.linear) under JAX's default fp32
  matmul precision (TF32 on this GPU) against full fp32: the probe's own matmuls ask for full
  fp32, so both must converge in the same iterations to the same accuracy.
- step_flops: FLOPs of the two benchmarked train steps from the lowered, backend-independent HLO
  (convolutions and dots exactly; elementwise ops 1 FLOP per element), for summary.py.

Every check runs on its own; one that fails is recorded and the rest run. Writes the results to
argv[1] (default sanity.json) after each check, so a timeout keeps what finished.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import selfsup  # noqa: F401  Sets XLA_FLAGS before JAX starts, as the commands do.
from selfsup.config import resolve_model_dtype

DIMS = ("NHWC", "HWIO", "NHWC")
FULL = "float32"  # jax.default_matmul_precision: no TF32.


def rel_err(a, b) -> float:
    """max |a - b| / max |b|."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


def tree_rel_err(a, b) -> float:
    """||a - b|| / ||b|| over all leaves of two pytrees."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    num = sum(float(np.sum((np.float64(x) - np.float64(y)) ** 2)) for x, y in zip(la, lb))
    den = sum(float(np.sum(np.float64(y) ** 2)) for y in lb)
    return float(np.sqrt(num / max(den, 1e-300)))


def check_backend():
    devices = jax.devices()
    info = {
        "jax": jax.__version__,
        "jaxlib": jax.lib.__version__,
        "backend": jax.default_backend(),
        "devices": [f"{d.platform}:{d.id} {d.device_kind}" for d in devices],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "preallocate": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", "default (75%)"),
    }
    with contextlib.suppress(Exception):
        info["default_matmul_precision"] = str(jax.config.jax_default_matmul_precision)
    with contextlib.suppress(Exception):
        info["bytes_limit_gib"] = round(devices[0].memory_stats()["bytes_limit"] / 2**30, 1)
    config = ml_collections.ConfigDict({"model": {"dtype": "auto"}})
    resolve_model_dtype(config, jax.default_backend())
    info["auto_model_dtype"] = config.model.dtype
    info["ok"] = jax.default_backend() == "gpu" and config.model.dtype == "bfloat16"
    return info


def check_tensorflow():
    try:
        import tensorflow as tf
    except ImportError:
        return {"ok": False, "tensorflow": "not installed: the CLI cannot read data"}
    from selfsup.data import pipeline  # noqa: F401  Hides the GPUs from TF on import.

    _ = tf.constant([1.0]) + 1.0  # Starts TF's runtime.
    visible = [d.name for d in tf.config.get_visible_devices("GPU")]
    return {
        "ok": not visible,
        "tensorflow": tf.__version__,
        "built_with_cuda": bool(tf.test.is_built_with_cuda()),
        "tf_visible_gpus": visible,
    }


def _conv_and_grads(conv, args, x, w):
    y, vjp = jax.vjp(lambda x, w: conv(x, w, *args, dimension_numbers=DIMS), x, w)
    g = jax.random.normal(jax.random.key(3), y.shape, y.dtype)
    return (y, *vjp(g))


def check_conv_paths():
    from selfsup.models import xla_cpu

    run = jax.jit(_conv_and_grads, static_argnums=(0, 1))
    cases = {}
    with jax.default_matmul_precision(FULL):
        for size, kernel, stride, cin, cout in [
            (2, 3, 1, 64, 64),  # pixel-pair matmul (relpatch stage 4)
            (3, 7, 2, 3, 16),  # pixel-pair matmul (ImageNet stem on a tiny image)
            (4, 3, 2, 64, 128),  # im2col matmul (stride-2 conv into a 2x2 stage)
            (8, 1, 2, 64, 256),  # 1x1 projection shortcut: strided slice + matmul
            (14, 1, 1, 256, 64),  # 1x1: matmul
            (8, 3, 2, 32, 64),  # lax, strided
            (56, 3, 1, 64, 64),  # lax
            (112, 7, 2, 3, 64),  # lax, ImageNet stem
        ]:
            pad = (kernel - 1) // 2
            args = ((stride, stride), ((pad, pad), (pad, pad)))
            x = jax.random.normal(jax.random.key(1), (4, size, size, cin))
            w = jax.random.normal(jax.random.key(2), (kernel, kernel, cin, cout))
            w = w / np.sqrt(kernel * kernel * cin)
            ours = run(xla_cpu.conv_general_dilated, args, x, w)
            ref = run(jax.lax.conv_general_dilated, args, x, w)
            cases[f"{size}px k{kernel} s{stride} {cin}->{cout}"] = {
                "max_rel_err": max(rel_err(a, b) for a, b in zip(ours, ref)),
            }
    worst = max(c["max_rel_err"] for c in cases.values())
    return {"ok": worst < 1e-4, "worst_rel_err": worst, "cases": cases}


def check_max_pool():
    from flax import nnx

    from selfsup.models import xla_cpu

    # Few distinct values: windows hold ties, whose gradient goes to the first maximum.
    x = jax.random.randint(jax.random.key(0), (4, 112, 112, 16), 0, 4).astype(jnp.float32)
    g = jax.random.normal(jax.random.key(1), (4, 56, 56, 16))

    def pool_ours(x):
        return xla_cpu.max_pool(x, (3, 3), (2, 2), padding="SAME")

    def pool_autodiff(x):
        return nnx.max_pool(x, (3, 3), (2, 2), padding="SAME")

    @functools.partial(jax.jit, static_argnums=0)
    def forward_and_grad(pool, x, g):
        y, vjp = jax.vjp(pool, x)
        return y, vjp(g)[0]

    ours, ref = forward_and_grad(pool_ours, x, g), forward_and_grad(pool_autodiff, x, g)
    fwd_equal = bool(np.array_equal(np.asarray(ours[0]), np.asarray(ref[0])))
    grad_err = rel_err(ours[1], ref[1])
    return {
        "ok": fwd_equal and grad_err < 1e-6,
        "forward_equal": fwd_equal,
        "grad_rel_err": grad_err,
    }


def check_batch_norm():
    from selfsup.models.xla_cpu import batch_norm_train

    eps = 1e-5
    k = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(k[0], (16, 28, 28, 64)) * 2.0 + 3.0
    scale = jax.random.uniform(k[1], (64,), minval=0.5, maxval=1.5)
    bias = jax.random.normal(k[2], (64,))
    dy = jax.random.normal(k[3], x.shape)

    def textbook(x, scale, bias):
        mean = x.mean(axis=(0, 1, 2))
        var = jnp.square(x - mean).mean(axis=(0, 1, 2))
        return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias

    @jax.jit
    def both(x, scale, bias, dy):
        y, vjp = jax.vjp(lambda x, s, b: batch_norm_train(x, s, b, eps)[0], x, scale, bias)
        y_ref, vjp_ref = jax.vjp(textbook, x, scale, bias)
        return (y, *vjp(dy)), (y_ref, *vjp_ref(dy))

    ours, ref = both(x, scale, bias, dy)
    errs = [rel_err(a, b) for a, b in zip(ours, ref)]
    return {"ok": max(errs) < 1e-4, "rel_err_y_dx_dscale_dbias": errs}


def _resnet50_tiny(dtype=jnp.float32):
    from flax import nnx

    from selfsup.models.resnet import ResNet

    return ResNet(
        50, stem="imagenet", width=0.125, zero_init_residual=False, dtype=dtype, rngs=nnx.Rngs(0)
    )


def check_encoder_gpu_vs_cpu():
    from flax import nnx

    from selfsup.train.state import split_model

    graphdef, params, stats = split_model(_resnet50_tiny())
    x = jax.random.uniform(jax.random.key(4), (8, 64, 64, 3))

    def loss(params, stats, x):
        features = nnx.merge(graphdef, params, stats)(x, train=True)
        return jnp.mean(jnp.square(features))

    value_and_grad = jax.jit(jax.value_and_grad(loss))
    cpu = jax.devices("cpu")[0]
    with jax.default_matmul_precision(FULL):
        gpu = jax.device_get(value_and_grad(params, stats, x))
        on_cpu = jax.device_get(value_and_grad(*jax.device_put((params, stats, x), cpu)))
    loss_err = rel_err(gpu[0], on_cpu[0])
    grad_err = tree_rel_err(gpu[1], on_cpu[1])
    return {
        "ok": loss_err < 1e-4 and grad_err < 1e-3,
        "loss_gpu": float(gpu[0]),
        "loss_rel_err": loss_err,
        "grad_rel_err": grad_err,
    }


def check_bf16():
    from flax import nnx

    model = _resnet50_tiny(jnp.bfloat16)
    graphdef, state = nnx.split(model)
    x = jax.random.uniform(jax.random.key(5), (8, 64, 64, 3))

    @jax.jit
    def features(state, x):
        return nnx.merge(graphdef, state).features(x, train=True)

    out = features(state, x)
    hlo = features.lower(state, x).compile().as_text()
    convs = [line.split("custom-call(")[0] for line in hlo.splitlines() if "__cudnn$conv" in line]
    params = {str(p.dtype) for p in jax.tree.leaves(nnx.state(model, nnx.Param))}
    info = {
        "stage4_dtype": str(out["stage4"].dtype),
        "pooled_dtype": str(out["pooled"].dtype),
        "param_dtypes": sorted(params),
        "cudnn_convs": len(convs),
        "cudnn_convs_bf16_out": sum("bf16[" in c for c in convs),
        "cudnn_convs_f32_out": sum("f32[" in c for c in convs),
        "pooled_finite": bool(np.isfinite(np.asarray(out["pooled"])).all()),
    }
    info["ok"] = (
        info["stage4_dtype"] == "bfloat16"
        and info["pooled_dtype"] == "float32"
        and info["param_dtypes"] == ["float32"]
        and info["cudnn_convs_f32_out"] == 0
        and info["pooled_finite"]
    )
    return info


def check_linear_probe_precision():
    from selfsup.evaluate import linear

    rng = np.random.default_rng(0)
    n, d, c = 20_000, 512, 10
    centres = rng.normal(size=(c, d))
    y = rng.integers(0, c, n)
    x = 0.05 * centres[y] + rng.normal(size=(n, d))  # Overlapping classes: a well-posed fit.
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    results = {}
    for name, ctx in (
        ("default_precision", contextlib.nullcontext()),
        ("float32", jax.default_matmul_precision(FULL)),
    ):
        with ctx:
            start = time.perf_counter()
            fit = linear.fit_logistic_regression(x, y, num_classes=c, l2=1e-3)
            seconds = time.perf_counter() - start
            accuracy = linear.accuracy(fit, x, y)
        results[name] = {
            "converged": fit.converged,
            "iterations": fit.num_iter,
            "seconds_incl_compile": round(seconds, 2),
            "train_accuracy": accuracy,
        }
    default, full = results["default_precision"], results["float32"]
    results["ok"] = full["converged"] and all(
        default[k] == full[k] for k in ("converged", "iterations", "train_accuracy")
    )
    return results


def check_step_flops():
    sys.path.insert(0, str(Path("experiments/bench").resolve()))
    import train_step as bench

    from selfsup import parallel
    from selfsup.pretext import get_task
    from selfsup.train.optim import make_optimizer
    from selfsup.train.pretext_step import jit_train_step
    from selfsup.train.state import abstract_train_state, model_graphdef

    mesh = parallel.make_mesh()
    sharding = parallel.batch_sharding(mesh)
    out = {"devices_in_mesh": int(mesh.devices.size)}
    r50 = int(os.environ.get("R50_BATCH", "256"))
    for model, batch, dtype in (
        ("resnet50_224", r50, "bfloat16"),
        ("resnet18_cifar", 256, "float32"),
    ):
        config = bench.project_config(model, batch, dtype)
        task = get_task(config)
        tx, schedule = make_optimizer(
            config.optim,
            batch_size=config.batch_size,
            total_steps=10_000,
            warmup_steps=0,
            steps_per_epoch=100.0,
        )
        state = abstract_train_state(task, tx, mesh=mesh)
        step = jit_train_step(
            task,
            model_graphdef(task.build_model),
            tx,
            schedule,
            seed=config.seed,
            mesh=mesh,
            total_steps=10_000,
        )
        size = config.image_size
        batch_spec = {
            "views": jax.ShapeDtypeStruct(
                (batch, 2, size, size, 3), jnp.float32, sharding=sharding
            ),
            "label": jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=sharding),
        }
        cost = step.lower(state, batch_spec).cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        out[model] = {"batch": batch, "dtype": dtype, "lowered_flops": float(cost["flops"])}
    return out


CHECKS = [
    check_backend,
    check_tensorflow,
    check_conv_paths,
    check_max_pool,
    check_batch_norm,
    check_encoder_gpu_vs_cpu,
    check_bf16,
    check_linear_probe_precision,
    check_step_flops,
]


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "sanity.json")
    results: dict[str, dict] = {}
    for check in CHECKS:
        name = check.__name__.removeprefix("check_")
        start = time.perf_counter()
        try:
            results[name] = {"ok": True, **(check() or {})}
        except Exception as e:
            traceback.print_exc()
            results[name] = {"ok": False, "error": f"{type(e).__name__}: {str(e)[:800]}"}
        results[name]["seconds"] = round(time.perf_counter() - start, 1)
        shown = json.dumps(results[name], default=str)
        print(
            f"[sanity] {name}: {'ok' if results[name]['ok'] else 'NOT OK'} {shown[:600]}",
            flush=True,
        )
        path.write_text(json.dumps(results, indent=1, default=str) + "\n")
        if name == "backend" and not results[name]["ok"]:
            break  # Nothing below means anything off the GPU.
    sys.exit(0 if all(r["ok"] for r in results.values()) else 1)


if __name__ == "__main__":
    main()
