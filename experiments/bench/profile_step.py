"""Where the JAX train step spends its time on this machine: one profiled step, its XLA
operations grouped by kind (forward, input-gradient and weight-gradient convolutions, layout
transposes, the rest), with the slowest operations and their shapes.

  python experiments/bench/profile_step.py --model=resnet18_cifar --batch=64

Operations are named in the compiled HLO; each fusion's kind is read from the body of the
computation it calls (a convolution in a transposed JVP is an input gradient; one without
source metadata is a weight gradient, which XLA derives from the forward convolution).
"""

from __future__ import annotations

import argparse
import collections
import re
import tempfile
from pathlib import Path

import jax
import numpy as np
from tensorflow.tsl.profiler.protobuf import xplane_pb2
from train_step import compile_jax_step, host_batch, project_config


def op_kinds(hlo: str) -> dict[str, tuple[str, str]]:
    """Instruction name -> (kind, result shape and convolution window)."""
    bodies = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^(%[\w.\-]+) \(.*?\{\n(.*?)^\}", hlo, re.S | re.M)
    }
    kinds = {}
    for line in hlo.splitlines():
        m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+) ", line)
        if not m:
            continue
        name, shape = m.groups()
        called = re.search(r"calls=(%[\w.\-]+)", line)
        body = bodies.get(called.group(1), "") if called else line
        conv = next((ln for ln in body.splitlines() if " convolution(" in ln), None)
        if conv:
            window = re.search(r"window=\{([^}]*)\}", conv).group(1)
            if "transpose(jvp" in conv:
                kind = "convolution: input gradient"
            elif "op_name" in conv:
                kind = "convolution: forward"
            else:
                kind = "convolution: weight gradient"
            kinds[name] = (kind, f"{shape} window {window}")
        elif " dot(" in body:
            kinds[name] = ("dot", shape)
        elif "transpose" in name:
            kinds[name] = ("layout transpose", shape)
        else:
            kinds[name] = ("other", shape)
    return kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("resnet18_cifar", "resnet50_224", "relpatch"))
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--top", type=int, default=15, help="slowest operations to list")
    args = parser.parse_args()
    config = project_config(args.model, args.batch, args.dtype)
    compiled, run, _ = compile_jax_step(config, host_batch(config, np.random.default_rng(0)))
    run()  # Warm-up.
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            run()
        space = xplane_pb2.XSpace()
        space.ParseFromString(next(Path(trace_dir).rglob("*.xplane.pb")).read_bytes())
    kinds = op_kinds(compiled.as_text())
    seconds = collections.Counter()
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                if names.get(event.metadata_id) in kinds:
                    seconds[names[event.metadata_id]] += event.duration_ps / 1e12
    total = sum(seconds.values())
    by_kind = collections.Counter()
    for name, s in seconds.items():
        by_kind[kinds[name][0]] += s
    print(f"{args.model}, batch {args.batch}, {args.dtype}: {total:.2f} s in XLA operations")
    for kind, s in by_kind.most_common():
        print(f"  {s:7.2f} s  {100 * s / total:5.1f}%  {kind}")
    print("slowest operations:")
    for name, s in seconds.most_common(args.top):
        print(f"  {s:7.3f} s  {kinds[name][0]}: {kinds[name][1]}")


if __name__ == "__main__":
    main()
