"""Progress lines: a training run's images/s and ETA, and progress of long work other than
training steps (feature extraction, a probe's sweep)."""

from __future__ import annotations

import time


class Throughput:
    """Images/s and ETA since the first report (which compilation would skew), minus time
    excluded for non-training work (held-out evaluation)."""

    def __init__(self, *, start_step: int, total_steps: int, batch_size: int):
        self.total_steps, self.batch_size = total_steps, batch_size
        self.since, self.first = (time.perf_counter(), start_step), True

    def exclude(self, seconds: float) -> None:
        self.since = (self.since[0] + seconds, self.since[1])

    def report(self, step: int) -> tuple[float, str]:
        """(images/s, '  N images/s  ETA 1m02s') at `step`."""
        start_time, start_step = self.since
        rate = (step - start_step) * self.batch_size / max(time.perf_counter() - start_time, 1e-9)
        if self.first:
            self.since, self.first = (time.perf_counter(), step), False
        eta = (self.total_steps - step) * self.batch_size / max(rate, 1e-9)
        return rate, f"  {rate:.1f} images/s  ETA {format_duration(eta)}"


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """A progress line for long work other than training steps (feature extraction, a probe's
    sweep): `what: done/total unit  rate unit/s  ETA`, printed when `every_s` seconds have passed
    since the last one, and once more at the end if any was printed; silent for short work."""

    def __init__(self, what: str, total: int, *, unit: str = "images", every_s: float = 10.0):
        self.what, self.total, self.unit, self.every_s = what, total, unit, every_s
        self.done, self.start = 0, time.perf_counter()
        self.last = self.start

    def advance(self, count: int) -> None:
        """`count` more done (at most `total` in all: a padded last batch counts its real part)."""
        self.done = min(self.done + count, self.total)
        now = time.perf_counter()
        finished = self.done >= self.total
        if now - self.last >= self.every_s or (finished and self.last > self.start):
            rate = self.done / max(now - self.start, 1e-9)
            eta = format_duration((self.total - self.done) / max(rate, 1e-9))
            print(
                f"  {self.what}: {self.done}/{self.total} {self.unit}  {rate:.1f} {self.unit}/s"
                f"  ETA {eta}",
                flush=True,
            )
            self.last = now
