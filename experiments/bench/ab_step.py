"""The `jax` train step of two source trees, timed interleaved in one invocation:

  python experiments/bench/ab_step.py BEFORE_TREE AFTER_TREE [REPEATS] [--model=resnet18_cifar]

BEFORE_TREE and AFTER_TREE are checkouts (e.g. `git worktree add /tmp/before COMMIT`). Each
tree's own `train_step.worker` runs in its own process (so each imports its own `selfsup`,
and its own compiled program); per repeat, one timed step of each, the order reversed every
other repeat, so a noisy shared machine slows both alike. Prints each tree's samples, medians
and minima and their ratios.
"""

import argparse
import importlib.util
import multiprocessing
import statistics
import sys


class _FirstMessageAsText:
    """The worker's first message is its built `Mode`, a class of its own tree: sent as text."""

    def __init__(self, conn):
        self.conn, self.first = conn, True

    def send(self, message):
        self.conn.send(repr(message)[:300] if self.first else message)
        self.first = False

    def recv(self):
        return self.conn.recv()


def worker(conn, tree: str, args: argparse.Namespace) -> None:
    sys.path.insert(0, f"{tree}/experiments/bench")
    spec = importlib.util.spec_from_file_location(
        "train_step", f"{tree}/experiments/bench/train_step.py"
    )
    module = sys.modules["train_step"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # Puts `tree` first on sys.path.
    import selfsup

    conn.send(selfsup.__file__)
    module.worker(_FirstMessageAsText(conn), "jax", args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("repeats", type=int, nargs="?", default=7)
    parser.add_argument("--model", default="resnet18_cifar")
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    worker_args = argparse.Namespace(
        model=args.model, batch=args.batch, steps=1, warmup=1, torch_keep_freed_memory=False
    )
    context = multiprocessing.get_context("spawn")
    conns = {}
    for name in ("before", "after"):
        parent, child = context.Pipe()
        tree = getattr(args, name)
        context.Process(target=worker, args=(child, tree, worker_args), daemon=True).start()
        child.close()  # So that a worker that dies ends `recv` with EOFError, not a hang.
        print(name, "imports", parent.recv(), "built", parent.recv(), flush=True)
        conns[name] = parent
    samples = {"before": [], "after": []}
    for repeat in range(args.repeats):
        for name in ("before", "after") if repeat % 2 == 0 else ("after", "before"):
            conns[name].send("step")
            samples[name].append(conns[name].recv()[0])
    print("| tree | step s (median) | min | samples |\n|---|---|---|---|")
    for name, s in samples.items():
        values = ", ".join(f"{x:.2f}" for x in s)
        print(f"| {name} | {statistics.median(s):.2f} | {min(s):.2f} | {values} |")
    ratio = statistics.median(samples["after"]) / statistics.median(samples["before"])
    minima = min(samples["after"]) / min(samples["before"])
    print(f"after / before: {ratio:.3f} (medians), {minima:.3f} (minima)")
    for conn in conns.values():
        conn.send("stop")


if __name__ == "__main__":
    main()
