"""Feature-extraction memory benchmark: the peak resident memory that `evaluate`'s frozen-feature
extraction (`selfsup.evaluate.features.extract_features`) adds, at two dataset sizes, each in
a fresh worker process set up as the commands set up theirs. Extraction must hold the pooled
features and no more: from the smaller to the larger size the peak may grow by at most
4 bytes x feature dimension per extra image (the float32 features themselves). A random-init
ResNet-18 (CIFAR stem, width 0.25: 128-d features) on synthetic 8 px images made inside tf.data
(no files, so the input itself does not grow with the size): small enough to run on a laptop
CPU in minutes at sizes whose difference in features (58.6 MiB at the default sizes) is far
above the noise: the peak also holds a step's transient buffers and the heap's state before,
which move it by 10-20 MiB between runs, so sizes closer together cannot tell a leak. Each size runs
with glibc's malloc as the commands set it (`parallel.reuse_step_memory`: freed memory kept,
never unmapped) and with glibc's defaults. Writes the "## Feature-extraction memory" section
of RESULTS.md next to this file.

  python experiments/bench/feature_memory.py --sizes=8000,128000
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Feature-extraction memory"
IMAGE_SIZE = 8
WIDTH = 0.25
BATCH = 256
WARMUP_IMAGES = 512  # A first extraction compiles the forward pass and fills the pools.


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakSampler:
    """The largest resident size seen every 2 ms while the block runs."""

    def __enter__(self):
        self.peak, self.done = resident_bytes(), threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.done.wait(0.002):
            self.peak = max(self.peak, resident_bytes())

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        self.peak = max(self.peak, resident_bytes())


def synthetic_source(num_images: int):
    """A `Source` of `num_images` distinct random PNGs in 10 classes, made on the fly."""
    import tensorflow as tf

    from selfsup.data.sources import Source

    def example(i):
        pixels = tf.random.stateless_uniform([IMAGE_SIZE, IMAGE_SIZE, 3], [i, 0], 0, 256, tf.int32)
        image = tf.io.encode_png(tf.cast(pixels, tf.uint8))
        return {"image": image, "label": i % 10, "origin": tf.strings.as_string(i)}

    def read(split, process_index, process_count):
        return tf.data.Dataset.range(num_images).shard(process_count, process_index).map(example)

    return Source("synthetic", 10, {"train": num_images}, read)


def worker(num_images: int, reuse: bool) -> dict:
    from selfsup import parallel

    if reuse:
        parallel.reuse_step_memory()  # As the commands do, before JAX starts a backend.
    import tensorflow as tf
    from flax import nnx

    from selfsup.data import pipeline
    from selfsup.evaluate.features import extract_features
    from selfsup.models.resnet import ResNet

    tf.config.set_visible_devices([], "GPU")
    mesh = parallel.make_mesh()
    encoder = ResNet(18, stem="cifar", width=WIDTH, rngs=nnx.Rngs(0))

    def to_float(image):
        return tf.cast(tf.reshape(image, [IMAGE_SIZE, IMAGE_SIZE, 3]), tf.float32) / 255

    def extract(n: int):
        ds = pipeline.eval_dataset(synthetic_source(n), "train", to_float, local_batch_size=BATCH)
        return extract_features(encoder, ds, mesh, what=f"{n} images", total=n)

    extract(WARMUP_IMAGES)
    before = resident_bytes()
    start = time.perf_counter()
    with PeakSampler() as sampler:
        features, labels = extract(num_images)
    seconds = time.perf_counter() - start
    assert features["stage4"].shape == (num_images, encoder.feature_dim)
    return {
        "images": num_images,
        "feature_dim": encoder.feature_dim,
        "before": before,
        "peak": sampler.peak,
        "after": resident_bytes(),  # The features still held.
        "seconds": seconds,
    }


def run_worker(num_images: int, reuse: bool) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, f"--worker={num_images}", f"--reuse={int(reuse)}"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def verdict(results: list[dict], label: str) -> str:
    small, large = results
    dim = small["feature_dim"]
    # Each worker's rise over its own start: the workers' start-up sizes differ by megabytes.
    growth = (large["peak"] - large["before"]) - (small["peak"] - small["before"])
    allowed = 4 * dim * (large["images"] - small["images"])
    per_image = growth / (large["images"] - small["images"])
    return (
        f"- {label}: the peak's rise grows by {growth / 2**20:.1f} MiB from {small['images']} to "
        f"{large['images']} images, {per_image:.0f} bytes per extra image; the bound (4 x {dim} "
        f"bytes per image) allows {allowed / 2**20:.1f} MiB: "
        f"{'holds' if growth <= allowed else 'FAILS'}."
    )


def section(runs: dict[str, list[dict]], command: str) -> str:
    dim = next(iter(runs.values()))[0]["feature_dim"]
    mib = 2**20
    rows = "\n".join(
        f"| {label} | {r['images']} | {r['before'] / mib:.1f} | {r['peak'] / mib:.1f} | "
        f"{(r['peak'] - r['before']) / mib:.1f} | {(r['after'] - r['before']) / mib:.1f} | "
        f"{r['seconds']:.1f} |"
        for label, results in runs.items()
        for r in results
    )
    verdicts = "\n".join(verdict(results, label) for label, results in runs.items())
    return f"""{SECTION}

`experiments/bench/feature_memory.py`: peak resident memory of frozen-feature extraction
(`extract_features`) at two dataset sizes, each in a fresh worker (random-init ResNet-18, CIFAR
stem, width {WIDTH}: {dim}-d features; synthetic {IMAGE_SIZE} px PNGs made in tf.data; batch
{BATCH}; one warm-up extraction of {WARMUP_IMAGES} images first, so compiling is not counted).

- Command: `{command}`
- Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; {
        platform.processor() or platform.machine()
    }, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}.

| malloc | images | RSS before (MiB) | peak (MiB) | peak - before | after - before | s |
|---|---:|---:|---:|---:|---:|---:|
{rows}

{verdicts}

"""


def write_section(text: str) -> None:
    path = Path(__file__).with_name("RESULTS.md")
    old = path.read_text()
    start = old.find(SECTION)
    if start < 0:
        path.write_text(old.rstrip("\n") + "\n\n" + text)
        return
    end = old.find("\n## ", start + len(SECTION))
    path.write_text(old[:start] + text + (old[end + 1 :] if end >= 0 else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="8000,128000", help="two dataset sizes, in images")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--reuse", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, bool(args.reuse))))
        return
    sizes = sorted(int(s) for s in args.sizes.split(","))
    runs = {
        label: [run_worker(n, reuse) for n in sizes]
        for label, reuse in (("commands'", True), ("glibc default", False))
    }
    text = section(runs, "python experiments/bench/feature_memory.py " + " ".join(sys.argv[1:]))
    print(text)
    write_section(text)


if __name__ == "__main__":
    main()
