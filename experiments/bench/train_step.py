"""The pretraining step of this project next to a plain PyTorch reference, alternating.

The JAX side is the project's own step: the task's model and loss from `selfsup.pretext`, the
optimizer from `selfsup.train.optim`, jitted as pretraining runs it
(`pretext_step.jit_train_step`: donated state, batch sharded over the mesh) in a process set up
as `python -m selfsup` sets up its own (`parallel.reuse_step_memory`). The PyTorch side is the
same network and loss written plainly (ResNet v1.5 or timm's `VisionTransformer`, projection
head or patch-pair head, NT-Xent or 8-way cross-entropy, SGD with momentum), run eager in fp32,
eager channels_last, under `torch.compile` and eager channels_last with bf16 autocast. Both
sides use SGD with momentum 0.9 and weight decay 1e-4 (the SimCLR recipe's LARS adds a
per-tensor norm, well under 0.1% of the step's FLOPs). Each mode runs in its own worker process,
as each framework runs alone in training, so no mode's threads, heap or allocator state reach
another's; one invocation alternates them, one timed sample each per repeat (order reversed
every other repeat) after warm-up, so a shared machine's load weighs on all alike. The table
gives medians.

Every mode runs on the same single device: JAX's first device (a mesh of one) and PyTorch's
`cuda:0` on a GPU host (the same GPU under any CUDA_VISIBLE_DEVICES), the CPU on a CPU. MFU is
model FLOPs per second over the peak of the row's precision: the model FLOPs are counted
analytically (`flops.py`: convolutions and matmuls, 3x the forward pass), the same for every
mode, with XLA's `cost_analysis()` count of the compiled JAX step printed beside them. fp32 rows
run TF32 convolutions and matmuls on an NVIDIA GPU (both frameworks' default for convolutions,
JAX's for matmuls, PyTorch's with `set_float32_matmul_precision("high")`, which its workers set
on a GPU) and count against the dense TF32 peak, bf16 rows against the dense bf16 peak, both
from a table of data sheets; on a CPU the peaks are the best fp32 and bf16 matmul FLOP/s that
any worker's framework measured after every repeat.
Peak memory is, on a CPU, how far one step raises the worker's peak resident memory above its
resident memory before the step (Linux `clear_refs`), for both frameworks alike; on a GPU it is
XLA's buffer plan for JAX (exact there) and the allocator's peak above the step's start for
PyTorch. Kernel CPU s is the system CPU time of the worker per step: on a CPU mostly page
faults, the kernel zeroing the pages of buffers that glibc's malloc maps afresh for every large
allocation. The project's processes keep freed memory for reuse instead (`jax_no_reuse`: the
project's step without that, as before `parallel.reuse_step_memory`); PyTorch's run with
glibc's defaults, as PyTorch runs out of the box, or keep it too with `--torch_keep_freed_memory`
(RESULTS.md).

  python experiments/bench/train_step.py --model=resnet18_cifar --batch=256 --repeats=3
  python experiments/bench/train_step.py --model=vit_small_224 --batch=16 --repeats=3
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import datetime
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import flops  # noqa: E402  Beside this file.

from selfsup import parallel  # noqa: E402
from selfsup.config import load_config_file  # noqa: E402
from selfsup.pretext import get_task  # noqa: E402
from selfsup.train.optim import make_optimizer  # noqa: E402
from selfsup.train.pretext_step import jit_train_step  # noqa: E402
from selfsup.train.state import create_train_state, model_graphdef  # noqa: E402

MODES = (
    "jax",
    "jax_bf16",
    "jax_no_reuse",
    "torch_eager",
    "torch_cl",
    "torch_compile",
    "torch_cl_bf16",
)
BF16_MODES = ("jax_bf16", "torch_cl_bf16")
PRECISIONS = ("fp32", "bf16")  # Of the peaks: fp32 is TF32 on a GPU.
# Dense (not sparse) tensor-core peaks in TFLOP/s from the vendors' data sheets: (bf16, TF32).
# The first name that occurs in the device's name wins, so more specific names come first. NVL
# parts run at lower clocks and power than SXM ones; PCIe likewise.
GPU_PEAK_TFLOPS = (
    ("H100 NVL", (835.0, 418.0)),
    ("H100 PCIe", (756.0, 378.0)),
    ("H200 NVL", (835.0, 418.0)),
    ("GH200", (989.0, 495.0)),
    ("H100", (989.0, 495.0)),  # SXM.
    ("H200", (989.0, 495.0)),  # SXM.
    ("H800", (989.0, 495.0)),
    ("B200", (2250.0, 1125.0)),
    ("A100", (312.0, 156.0)),
    ("A800", (312.0, 156.0)),
    ("L40S", (362.0, 183.0)),
    ("L40", (181.0, 90.5)),
    ("L4", (121.0, 60.0)),
    ("A10", (125.0, 62.5)),
)


# SimCLR with a ViT, as the ResNet rows: {--model: (config.model.name, patch size, image side,
# projection head's hidden width)}. ViT-Ti/4 on CIFAR's 32 px (64 patches) with the CIFAR
# recipe's 512-wide head; ViT-S/16 at 224 px (196 patches) with SimCLR's ImageNet head, 2048 wide.
VITS = {"vit_tiny_cifar": ("vit_tiny", 4, 32, 512), "vit_small_224": ("vit_small", 16, 224, 2048)}
MODELS = ("resnet18_cifar", "resnet50_224", "relpatch", *VITS)


def project_config(model: str, batch: int, dtype: str) -> ml_collections.ConfigDict:
    """The config whose step is measured: the project's recipe for `model`, optimizer SGD."""
    if model == "relpatch":
        config = load_config_file(REPO / "configs/relpatch_cifar10.py")
    else:
        config = load_config_file(REPO / "configs/simclr_cifar10.py")
    if model == "resnet50_224":
        # SimCLR's ImageNet setting: ResNet-50, 224 px, a 2048-2048-128 projection head.
        config.model.update(depth=50, stem="imagenet")
        config.image_size = 224
        config.simclr.proj_hidden_dim = 2048
    if model in VITS:
        name, patch_size, size, hidden = VITS[model]
        config.model.update(name=name, patch_size=patch_size, image_size=size)
        config.image_size = size
        config.simclr.proj_hidden_dim = hidden
    config.model.dtype = dtype
    config.batch_size = batch
    config.online_probe_classes = 0  # The PyTorch reference has no online probe.
    config.optim.name = "sgd"
    return config


def host_batch(config: ml_collections.ConfigDict, rng: np.random.Generator) -> dict:
    """Random inputs of the task's shape, NHWC: SimCLR's two views or relpatch's 9 patches."""
    b = config.batch_size
    if config.task == "relpatch":
        p = config.relpatch.patch_size
        images = {"patches": rng.standard_normal((b, 9, p, p, 3), np.float32)}
    else:
        s = config.image_size
        images = {"views": rng.uniform(size=(b, 2, s, s, 3)).astype(np.float32)}
    return {**images, "label": np.zeros((b,), np.int32)}


@dataclasses.dataclass
class Mode:
    name: str
    step: Callable[[], None] | None  # One training step, returned once finished (None: sent).
    compile_s: float | None = None
    flops_per_step: float | None = None
    compiler_memory: int | None = None  # XLA's own account: arguments + outputs + temporaries.
    peak_memory: int | None = None
    times: list[float] = dataclasses.field(default_factory=list)
    kernel_times: list[float] = dataclasses.field(default_factory=list)  # System CPU seconds.


def compile_jax_step(
    config: ml_collections.ConfigDict, batch: dict
) -> tuple[jax.stages.Compiled, Callable[[], None], float]:
    """The project's step for `config`, compiled for `batch` as pretraining compiles it: the
    compiled step, a function running one step on fresh state, and the compile seconds."""
    task = get_task(config)
    # One device, as PyTorch uses one: on a multi-GPU host JAX would otherwise shard over all.
    mesh = jax.make_mesh(
        (1,), (parallel.DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
        devices=jax.devices()[:1],
    )  # fmt: skip
    tx, schedule = make_optimizer(
        config.optim,
        batch_size=config.batch_size,
        total_steps=10_000,
        warmup_steps=0,
        steps_per_epoch=100.0,
    )
    state = create_train_state(task, tx, seed=config.seed, mesh=mesh)
    graphdef = model_graphdef(task.build_model)
    step = jit_train_step(
        task,
        graphdef,
        tx,
        schedule,
        seed=config.seed,
        mesh=mesh,
        total_steps=10_000,
        steps_per_epoch=100.0,
    )
    batch = jax.device_put(batch, parallel.batch_sharding(mesh))
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start

    def run() -> None:
        nonlocal state
        state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))

    return compiled, run, compile_s


def jax_mode(name: str, config: ml_collections.ConfigDict, batch: dict) -> Mode:
    compiled, run, compile_s = compile_jax_step(config, batch)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost  # A list of one in older JAX.
    memory = compiled.memory_analysis()
    compiler_memory = (
        memory.argument_size_in_bytes
        + memory.output_size_in_bytes
        - memory.alias_size_in_bytes
        + memory.temp_size_in_bytes
    )
    return Mode(name, run, compile_s, float(cost["flops"]), compiler_memory)


def torch_mode(name: str, config: ml_collections.ConfigDict, batch: dict) -> Mode:
    import torch
    import torch_reference

    device = "cuda:0" if torch.cuda.is_available() else "cpu"  # JAX's first device too.
    if device != "cpu":  # fp32 matmuls in TF32 too, as JAX's and both frameworks' convolutions.
        torch.set_float32_matmul_precision("high")
    torch.manual_seed(0)
    model = torch_reference.build(config).to(device)
    channels_last = name in ("torch_cl", "torch_cl_bf16")
    images = batch["patches"] if config.task == "relpatch" else batch["views"]
    # [N, V, H, W, C] -> [N*V, C, H, W]: each image's views or patches stay adjacent.
    x = torch.from_numpy(images.reshape(-1, *images.shape[2:])).permute(0, 3, 1, 2)
    x = x.contiguous().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    loss_fn = model.loss
    if name == "torch_compile":
        loss_fn = torch.compile(model.loss)
    autocast = torch.autocast(
        device.split(":")[0], dtype=torch.bfloat16, enabled=name == "torch_cl_bf16"
    )

    def run() -> None:
        with autocast:
            loss = loss_fn(x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device != "cpu":
            torch.cuda.synchronize()

    compile_s = None
    if name == "torch_compile":
        start = time.perf_counter()
        run()  # Compiles forward and backward.
        compile_s = time.perf_counter() - start
    return Mode(name, run, compile_s)


def peak_memory(mode: Mode, *, on_gpu: bool) -> int:
    """Bytes one step needs above what is allocated before it; runs one step."""
    if on_gpu and mode.compiler_memory is not None:
        mode.step()
        return mode.compiler_memory  # XLA:GPU plans every buffer ahead: its account is exact.
    if on_gpu:
        import torch

        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        mode.step()
        return torch.cuda.max_memory_allocated() - before

    def status(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise KeyError(key)

    # Freed memory glibc kept (compilation's, here) would be reused without raising the peak.
    ctypes.CDLL(None).malloc_trim(0)
    before = status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # Resets VmHWM to the current RSS.
    mode.step()
    return status("VmHWM") - before


def kernel_seconds() -> float:
    """System CPU seconds this process has used: on a CPU mostly page faults, the kernel zeroing
    the pages of freshly mapped buffers."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


def matmul_peak_flops(framework: str, precision: str, n: int = 2048, repeats: int = 3) -> float:
    """The best matmul FLOP/s of `framework` ("jax" or "torch") on this CPU in `precision`
    ("fp32" or "bf16")."""
    if framework == "jax":
        dtype = jnp.bfloat16 if precision == "bf16" else jnp.float32
        a = jax.random.normal(jax.random.key(0), (n, n), dtype)
        dot = jax.jit(jnp.dot)

        def matmul() -> None:
            dot(a, a).block_until_ready()

    else:
        import torch

        t = torch.randn(n, n, dtype=torch.bfloat16 if precision == "bf16" else torch.float32)

        def matmul() -> None:
            torch.mm(t, t)

    matmul()
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        matmul()
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def worker(conn: Connection, name: str, args: argparse.Namespace) -> None:
    """Builds mode `name` in this process, reports it, then serves "step", "peak" and "stop"."""
    sys.path.insert(0, str(Path(__file__).parent))  # torch_reference, next to this file.
    framework = "jax" if name.startswith("jax") else "torch"
    if framework == "jax" and name != "jax_no_reuse":
        parallel.reuse_step_memory()  # As `python -m selfsup` sets up its process.
    elif args.torch_keep_freed_memory:
        parallel.keep_freed_host_memory()  # A PyTorch step runs on the main thread: all it takes.
    config = project_config(args.model, args.batch, "bfloat16" if name == "jax_bf16" else "float32")
    batch = host_batch(config, np.random.default_rng(0))
    try:
        mode = (jax_mode if framework == "jax" else torch_mode)(name, config, batch)
    except Exception as e:  # torch.compile needs a C++ toolchain on CPU, Triton on GPU.
        conn.send(f"unavailable ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
        return
    if framework == "jax":
        on_gpu, device = jax.default_backend() == "gpu", jax.devices()[0].device_kind
    else:
        import torch

        on_gpu = torch.cuda.is_available()
        device = torch.cuda.get_device_name(0) if on_gpu else "cpu"
    mode.peak_memory = peak_memory(mode, on_gpu=on_gpu)  # Also the first warm-up step.
    for _ in range(args.warmup):
        mode.step()
    conn.send((dataclasses.replace(mode, step=None), on_gpu, device))
    while (command := conn.recv()) != "stop":
        if command in PRECISIONS:  # A CPU's matmul peak; asked on a CPU only.
            conn.send(matmul_peak_flops(framework, command))
            continue
        start, kernel_start = time.perf_counter(), kernel_seconds()
        for _ in range(args.steps):
            mode.step()
        conn.send(((time.perf_counter() - start) / args.steps,
                   (kernel_seconds() - kernel_start) / args.steps))  # fmt: skip


def machine() -> dict:
    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in cpuinfo.read_text().splitlines()
            if ln.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    versions = {"jax": jax.__version__, "jaxlib": jax.lib.__version__}
    import flax

    versions["flax"] = flax.__version__
    try:
        import torch

        versions["torch"] = torch.__version__
    except ImportError:
        pass
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "versions": versions,
    }


def gpu_peaks(device_kind: str) -> tuple[dict[str, float], str]:
    """{"bf16": FLOP/s, "fp32": FLOP/s (TF32)} of an NVIDIA GPU from the table, and a note."""
    for name, (bf16, tf32) in GPU_PEAK_TFLOPS:
        if name in device_kind:
            note = f"{name} dense peaks (data sheet): bf16 {bf16:g}, TF32 {tf32:g} TFLOP/s"
            return {"bf16": bf16 * 1e12, "fp32": tf32 * 1e12}, note
    raise SystemExit(f"no peaks known for {device_kind!r}: pass --peak_tflops=BF16,TF32.")


def precision(mode: str, *, on_gpu: bool) -> str:
    """The arithmetic a mode's convolutions and matmuls run in: bf16, TF32 (fp32 on an NVIDIA
    GPU) or fp32."""
    if mode in BF16_MODES:
        return "bf16"
    return "tf32" if on_gpu else "fp32"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=MODELS, required=True)
    parser.add_argument("--batch", type=int, default=256, help="images per step")
    parser.add_argument("--repeats", type=int, default=5, help="timed samples per mode")
    parser.add_argument("--steps", type=int, default=1, help="steps per timed sample")
    parser.add_argument("--warmup", type=int, default=0, help="untimed steps after the first")
    parser.add_argument("--modes", default=",".join(MODES), help=f"subset of {','.join(MODES)}")
    parser.add_argument(
        "--peak_tflops", default="", help="BF16,FP32 peaks (FP32: TF32 on a GPU); default: "
        "measured on a CPU, looked up on a GPU"
    )  # fmt: skip
    parser.add_argument("--json", default="", help="also write the results to this file")
    parser.add_argument(
        "--torch_keep_freed_memory",
        action="store_true",
        help="PyTorch's processes too serve large allocations from glibc's heap and keep what is "
        "freed (no mmap, no trim), as the project's do; see RESULTS.md",
    )
    args = parser.parse_args()
    modes = args.modes.split(",")
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown modes {sorted(unknown)}: use {','.join(MODES)}")

    info = machine()
    info["load_average_start"] = os.getloadavg()
    info["malloc"] = "jax keeps freed memory (jax_no_reuse: glibc defaults); torch: " + (
        "keeps freed memory" if args.torch_keep_freed_memory else "glibc defaults"
    )
    workers, on_gpu, info["device"] = start_workers(modes, args)
    if args.peak_tflops:
        bf16, fp32 = (float(v) * 1e12 for v in args.peak_tflops.split(","))
        peaks, info["peak"] = {"bf16": bf16, "fp32": fp32}, f"--peak_tflops={args.peak_tflops}"
    elif on_gpu:
        peaks, info["peak"] = gpu_peaks(info["device"])
    else:
        peaks = dict.fromkeys(PRECISIONS, 0.0)
    measure_peaks = not args.peak_tflops and not on_gpu

    for r in range(args.repeats):
        for name in workers if r % 2 == 0 else list(workers)[::-1]:
            conn, mode = workers[name]
            conn.send("step")
            step_s, kernel_s = conn.recv()
            mode.times.append(step_s)
            mode.kernel_times.append(kernel_s)
        if measure_peaks:  # Between the steps, so a shared machine's load weighs on both alike.
            for conn, _ in workers.values():
                for p in PRECISIONS:
                    conn.send(p)
                    peaks[p] = max(peaks[p], conn.recv())
        print(f"repeat {r + 1}/{args.repeats} done", flush=True)
    for conn, _ in workers.values():
        conn.send("stop")
    if measure_peaks:
        info["peak"] = "matmul peaks measured in this run: " + ", ".join(
            f"{p} {peaks[p] / 1e9:.0f} GFLOP/s" for p in PRECISIONS
        )
    info["load_average_end"] = os.getloadavg()
    config = project_config(args.model, args.batch, "float32")  # Either dtype: the same FLOPs.
    info["model_flops_per_step"] = flops.train_step_flops(config)
    info["xla_flops_per_step"] = next(
        (m.flops_per_step for _, m in workers.values() if m.flops_per_step), None
    )
    info["peaks_flops"] = peaks
    rows = [
        result_row(mode, args, info["model_flops_per_step"], peaks, on_gpu=on_gpu)
        for _, mode in workers.values()
    ]
    print_table(args, info, rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), **info, "rows": rows}, indent=1))


def start_workers(
    modes: list[str], args: argparse.Namespace
) -> tuple[dict[str, tuple[Connection, Mode]], bool, str]:
    """One worker process per mode, built one at a time, so no compilation competes with
    another: {mode: (connection, Mode)}, whether they run on a GPU, and the device's name."""
    context = multiprocessing.get_context("spawn")
    workers: dict[str, tuple[Connection, Mode]] = {}
    devices = {}  # Mode -> (on a GPU, device name).
    for name in modes:
        conn, child = context.Pipe()
        context.Process(target=worker, args=(child, name, args), daemon=True).start()
        child.close()  # So a worker that dies ends `recv` with EOFError instead of a hang.
        built = conn.recv()
        if isinstance(built, str):
            print(f"{name}: {built}")
            continue
        workers[name] = (conn, built[0])
        devices[name] = built[1:]
        print(f"{name}: built and warmed up", flush=True)
    if len({on_gpu for on_gpu, _ in devices.values()}) > 1:
        raise SystemExit(f"the modes ran on different devices ({devices}): on a GPU host, "
                         "install PyPI's CUDA torch (pip uninstall torch; pip install -e "
                         "'.[bench]'), as gpu_check/check.sh does")  # fmt: skip
    on_gpu, device = next(iter(devices.values()))
    return workers, on_gpu, device


def result_row(
    mode: Mode, args: argparse.Namespace, model_flops: float, peaks: dict, *, on_gpu: bool
) -> dict:
    step_s = statistics.median(mode.times)
    arithmetic = precision(mode.name, on_gpu=on_gpu)
    peak = peaks["bf16" if arithmetic == "bf16" else "fp32"]
    return {
        "mode": mode.name,
        "precision": arithmetic,
        "images_per_s": args.batch / step_s,
        "step_s": step_s,
        "step_s_all": mode.times,
        "kernel_s": statistics.median(mode.kernel_times),
        "compile_s": mode.compile_s,
        "peak_memory_mb": mode.peak_memory / 2**20,
        "compiler_memory_mb": mode.compiler_memory and mode.compiler_memory / 2**20,
        "mfu": model_flops / step_s / peak if peak else None,
    }


def print_table(args, info, rows) -> None:
    def fmt(value, spec):
        return "" if value is None else format(value, spec)

    speed = {row["mode"]: row["images_per_s"] for row in rows}
    model_flops, xla_flops = info["model_flops_per_step"], info["xla_flops_per_step"]
    print(
        f"\n{args.model}, batch {args.batch}, {args.repeats} repeats x {args.steps} step(s); "
        f"{info['date']}; {info['cpu']} ({info['cpu_cores']} cores), device {info['device']}; "
        f"load average {info['load_average_start'][0]:.2f} -> {info['load_average_end'][0]:.2f}; "
        f"{' '.join(f'{k} {v}' for k, v in info['versions'].items())}; "
        f"XLA_FLAGS={info['xla_flags']!r}; malloc: {info['malloc']}"
    )
    print(
        f"MFU against: {info['peak']}; FLOPs/step: model {model_flops:.4g}, XLA cost analysis "
        f"{fmt(xla_flops, '.4g')}"
        + (f" ({xla_flops / model_flops:.2f}x model)" if xla_flops else "")
    )
    print(
        "| mode | precision | images/s | jax ÷ this | jax_bf16 ÷ this | step s (median) "
        "| kernel CPU s | compile s | peak memory MB | MB/image | XLA memory MB | MFU |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        ratios = [
            fmt(speed[ours] / row["images_per_s"], ".2f") if ours in speed else ""
            for ours in ("jax", "jax_bf16")
        ]
        print(
            f"| {row['mode']} | {row['precision']} | {row['images_per_s']:.3g} | {ratios[0]} "
            f"| {ratios[1]} | {row['step_s']:.3f} | {row['kernel_s']:.2f} "
            f"| {fmt(row['compile_s'], '.1f')} | {row['peak_memory_mb']:.0f} "
            f"| {row['peak_memory_mb'] / args.batch:.2f} | {fmt(row['compiler_memory_mb'], '.0f')} "
            f"| {fmt(row['mfu'] and 100 * row['mfu'], '.1f')}% |"
        )


if __name__ == "__main__":
    main()
