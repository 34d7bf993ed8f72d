"""Starting (or joining) Ray quietly, with nothing sent off this machine."""

from __future__ import annotations

import logging
import os
import sys
import time

# Ray reads this at import time of its usage-stats module: set it before `import ray` anywhere.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def init_ray(address: str | None = None, *, verbose: bool = False, num_cpus: int | None = None) -> None:
    """Join the Ray cluster at `address`, or start a local one (the embedded default).

    Ray's own logs and Ray Data's progress output stay quiet unless `verbose`.
    """
    import ray
    import ray.data

    if ray.is_initialized():
        return
    level = logging.INFO if verbose else logging.ERROR
    ray.init(
        address=address,
        num_cpus=num_cpus if address is None else None,
        include_dashboard=False if address is None else None,
        logging_level=level,
        log_to_driver=verbose,
        configure_logging=True,
    )
    if not verbose:
        _drop_startup_concurrency_warnings()
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = verbose
    context.print_on_execution_start = verbose
    for name in ("ray", "ray.data", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(level)


# The raylet warns each time the workers it started reach a multiple of its CPU count. Fractional
# CPU requests (`--workers 4` on 2 cores) and Ray Data's tasks reach it by design, so outside
# `--verbose` the driver drops that one message; every other raylet message (memory kills, dead
# workers) still prints.
STARTUP_CONCURRENCY_WARNING = "the maximum expected startup concurrency"


def _drop_startup_concurrency_warnings() -> None:
    from ray._private import worker as ray_worker

    printer = ray_worker.print_to_stdstream
    if getattr(printer, "drops_startup_warnings", False):
        return

    def print_to_stdstream(data, ignore_prefix: bool):
        lines = [line for line in data.get("lines", []) if STARTUP_CONCURRENCY_WARNING not in line]
        if lines:
            printer({**data, "lines": lines}, ignore_prefix=ignore_prefix)

    print_to_stdstream.drops_startup_warnings = True
    ray_worker.print_to_stdstream = print_to_stdstream


class Progress:
    """One line of progress on stderr, rewritten in place on a terminal, every few seconds in logs."""

    def __init__(self, label: str, total: int, unit: str):
        self.label, self.total, self.unit = label, total, unit
        self.started = time.monotonic()
        self.last_print = 0.0
        self.done = 0
        self.interactive = sys.stderr.isatty()

    def advance(self, steps: int, items: int) -> None:
        self.done += steps
        self.items = getattr(self, "items", 0) + items
        now = time.monotonic()
        if self.done < self.total and now - self.last_print < (0.5 if self.interactive else 5.0):
            return
        self.last_print = now
        elapsed = max(now - self.started, 1e-6)
        rate = self.items / elapsed
        remaining = (elapsed / self.done) * (self.total - self.done) if self.done else float("nan")
        shown = f"{rate:.0f}" if rate >= 10 else f"{rate:.2g}"
        line = f"{self.label}: {self.done}/{self.total} shards, {self.items} {self.unit}, {shown} {self.unit}/s, ETA {remaining:.0f}s"
        print(("\r" + line) if self.interactive else line, end="" if self.interactive and self.done < self.total else "\n", file=sys.stderr, flush=True)
