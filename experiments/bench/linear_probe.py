"""Linear-probe benchmark: the time of evaluate's linear probe at all labels (`linear_probe` as
`selfsup.evaluate.linear.rows_at` calls it: the 45-value L2 grid of `configs/transfer.py`
chosen on a 10% minival split, then the refit on train + minival) on CIFAR-10-sized features,
50,000 x 512 in 10 classes, and the same sweep with every fit from zero (`--cold`) for the
warm starts' gain. The features are synthetic: Gaussian classes (mean scale `--separation`)
through a random 512 x 512 linear map and a ReLU, non-negative and correlated like a ResNet's
pooled features; the test split is 10,000 more of them. Prints each fit (l2, iterations,
seconds) and the totals, wall and CPU seconds of this process.

  python experiments/bench/linear_probe.py [--cold] [--examples=50000 --dim=512]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import jax
import numpy as np

from selfsup.config import load_config_file
from selfsup.evaluate import linear
from selfsup.evaluate.subsets import make_label_splits

ROOT = Path(__file__).resolve().parents[2]


def synthetic_features(n: int, dim: int, classes: int, separation: float, seed: int):
    rng = np.random.default_rng(seed)
    means = separation * rng.normal(size=(classes, dim))
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    y = rng.integers(0, classes, n)
    x = np.maximum((means[y] + rng.normal(size=(n, dim))) @ mixing, 0)
    return x.astype(np.float32), y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=50_000)
    parser.add_argument("--test_examples", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--separation", type=float, default=0.1)
    parser.add_argument("--cold", action="store_true", help="every fit from zero")
    args = parser.parse_args()

    x, y = synthetic_features(
        args.examples + args.test_examples, args.dim, args.classes, args.separation, seed=0
    )
    train_x, train_y = x[: args.examples], y[: args.examples]
    test_x, test_y = x[args.examples :], y[args.examples :]
    config = load_config_file(ROOT / "configs" / "transfer.py")
    splits = make_label_splits(
        train_y, [1.0], num_classes=args.classes, minival_fraction=config.minival_fraction, seed=0
    )
    pool, minival = splits.subsets[1.0], splits.minival

    fits = []
    fit = linear.fit_logistic_regression

    def timed_fit(*a, start=None, **k):
        began = time.perf_counter()
        result = fit(*a, start=None if args.cold else start, **k)
        fits.append((k["l2"], result.num_iter, result.converged, time.perf_counter() - began))
        return result

    linear.fit_logistic_regression = timed_fit
    wall, cpu = time.perf_counter(), time.process_time()
    result = linear.linear_probe(
        train_x[pool], train_y[pool], train_x[minival], train_y[minival], test_x, test_y,
        num_classes=args.classes, l2_grid=list(config.linear.l2_grid), refit=True,
    )  # fmt: skip
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu

    print(f"{'l2':>10} {'iterations':>10} {'converged':>9} {'seconds':>8}")
    for l2, num_iter, converged, seconds in fits:
        print(f"{l2:10.3g} {num_iter:10d} {converged!s:>9} {seconds:8.2f}")
    mode = "every fit from zero" if args.cold else "warm starts along the L2 path"
    print(
        f"{mode}: {len(fits)} fits ({len(fits) - 1} + the refit), "
        f"{sum(f[1] for f in fits)} L-BFGS iterations, "
        f"{sum(not f[2] for f in fits)} stopped at max_iter; {wall:.0f} s wall, {cpu:.0f} CPU-s"
    )
    print(
        f"chosen l2 {result.l2:g}: minival {result.minival_accuracy:.4f}, "
        f"train {result.train_accuracy:.4f}, test {result.test_accuracy:.4f}"
    )
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"jax {jax.__version__} on {jax.devices()[0].platform}; load average {os.getloadavg()}"
    )


if __name__ == "__main__":
    main()
