"""Starting (or joining) Ray quietly, with nothing sent off this machine."""

from __future__ import annotations

import _thread
import logging
import os
import sys
import threading
import time

from pose.errors import UserError

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
    if address is None and not os.environ.get("RAY_ADDRESS"):
        listen_on_loopback()
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


def listen_on_loopback() -> None:
    """Make the Ray this process starts a single-machine Ray whose every server listens on 127.0.0.1.

    `ray.init()` takes the machine's network address as the node's address (it turns a given
    127.0.0.1 into that address), and the node's servers (GCS, raylet, object manager, every
    worker's and the agents') then listen on all interfaces: anyone who reaches the host could join
    the cluster or run code. Ray's switch for single-machine clusters (the default on macOS and
    Windows) makes the node's address loopback, and with it every listener. The switch is read when
    Ray is imported, so it is also set on the imported module; the variable passes it to the
    processes Ray starts. Never for a Ray that joins a cluster: other nodes must reach it."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


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


def alive_node_cpus() -> list[float]:
    """The CPUs of each alive node of the connected Ray cluster."""
    import ray

    return [node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node.get("Alive")] or [
        ray.cluster_resources().get("CPU", 0.0)
    ]


def cpu_share(workers: int, node_cpus: list[float], spare: float | None = None, keep: float = 1.0) -> float:
    """The most CPUs each of `workers` reservations (train workers, inference actors) can take on
    nodes of `node_cpus` CPUs while `spare` CPUs of the cluster stay unreserved (default: one, or
    half of them on a 1-CPU cluster) and, wherever Ray places them, some node keeps `keep` CPUs
    free for the data tasks that feed them (Ray Data's reading tasks take one CPU each).

    The spare CPUs alone are not enough: on two nodes of 2 CPUs, two workers of 1.5 CPUs leave half
    a CPU on each node and a one-CPU task nowhere to run, and Ray waits forever. 2 CPUs, 1 worker:
    1; 2 CPUs, 4 workers: 0.25; 16 CPUs, 2 workers: 7.5; 2 + 2 CPUs, 2 workers: 1; 4 x 16 CPUs,
    4 workers: 15; nodes of 2 and 16 CPUs, 4 workers: 4. Where no share leaves `keep` free (a
    1-CPU cluster), the share that only fits."""
    total = sum(node_cpus)
    if spare is None:
        spare = min(1.0, total / 2)
    share = (total - spare) / workers
    # The share shrinks to the next size that packs one more worker onto some node, or that leaves
    # `keep` CPUs beside k workers on some node.
    sizes = {n / k for n in node_cpus for k in range(1, workers + 1)} | {
        (n - keep) / k for n in node_cpus for k in range(1, workers + 1)
    }
    candidates = sorted({share, *sizes}, reverse=True)
    fitting = [c for c in candidates if 0 < c <= share and fits(c, workers, node_cpus)]
    for candidate in fitting:
        if keeps_free(candidate, workers, node_cpus, keep):
            return candidate
    return fitting[0] if fitting else share


def fits(cpus: float, workers: int, node_cpus: list[float]) -> bool:
    """Whether `workers` reservations of `cpus` CPUs each fit on the nodes."""
    return sum(int(n / cpus + 1e-9) for n in node_cpus) >= workers if cpus > 0 else True


def keeps_free(cpus: float, workers: int, node_cpus: list[float], keep: float) -> bool:
    """Whether every placement of `workers` reservations of `cpus` CPUs on the nodes leaves some
    node with `keep` CPUs unreserved.

    A placement leaves none when each node holds at least `least` reservations (the fewest that
    take it below `keep`) and at most `most` (as many as fit): such a placement exists exactly when
    the `least` of every node can be held (`least <= most`) and add up to at most `workers`."""
    if cpus <= 0:
        return True
    least = [int((n - keep + 1e-9) / cpus) + 1 if n >= keep else 0 for n in node_cpus]
    most = [int(n / cpus + 1e-9) for n in node_cpus]
    starved = all(lo <= hi for lo, hi in zip(least, most)) and sum(least) <= workers <= sum(most)
    return not starved


class StallError(UserError):
    """A job that waited for resources no node had free, with nothing moving, for the stall limit."""


# How long a job may make no progress while Ray waits for resources that no node has free, with
# nothing in the cluster changing, before it ends with one line naming them.
STALL_SECONDS = float(os.environ.get("POSE_JOBS_STALL_SECONDS", 600))


class StallWatch:
    """Ends a job that would wait forever: no progress (`progress()` returns the same value), Ray
    holding requests that fit no node's free resources, and the cluster's usage unchanged, for
    `seconds` on end. Then the main thread is interrupted and leaving the block raises StallError
    with one line naming what Ray waits for and what each node has free.

    A busy cluster queues requests too, but its tasks finish and its usage moves; a plan that
    leaves every node short of what a task needs stays still."""

    def __init__(self, label: str, progress, seconds: float | None = None, interval: float = 10.0):
        self.label, self.progress = label, progress
        self.seconds = STALL_SECONDS if seconds is None else seconds
        self.interval = min(interval, max(self.seconds / 4, 0.5))
        self.reason: str | None = None
        self.stop = threading.Event()

    def __enter__(self):
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, kind, error, traceback):
        self.stop.set()
        self.thread.join()
        if self.reason is not None and (kind is None or issubclass(kind, KeyboardInterrupt)):
            raise StallError(self.reason) from None
        return False

    def _run(self) -> None:
        last, since, still = self.progress(), time.monotonic(), None
        while not self.stop.wait(self.interval):
            now, current = time.monotonic(), self.progress()
            waiting, usage, free = self.unplaceable()
            if current != last or not waiting or usage != still:
                last, since, still = current, now, usage if waiting else None
                continue
            if now - since >= self.seconds:
                self.reason = self._describe(waiting, free)
                _thread.interrupt_main()
                return

    @staticmethod
    def unplaceable() -> tuple[list[tuple[dict, int]], tuple, list[dict]]:
        """(the requests Ray holds that fit no alive node's free resources, each with its count;
        every node's used resources, to see whether anything moves; every node's free resources)."""
        import ray
        from ray.autoscaler.v2.sdk import get_cluster_status

        try:
            status = get_cluster_status(ray.get_runtime_context().gcs_address)
        except Exception:  # the GCS is busy or going away: nothing to conclude
            return [], (), []
        nodes = [*status.active_nodes, *status.idle_nodes]
        free = [node.available_resources() for node in nodes]
        usage = tuple(
            sorted((node.node_id or node.ip_address, tuple(sorted(node.used_resources().items()))) for node in nodes)
        )
        demands = status.resource_demands
        waiting = []
        for demand in [*demands.ray_task_actor_demand, *demands.placement_group_demand]:
            for request in demand.bundles_by_count:
                wanted = {k: v for k, v in request.bundle.items() if v > 0}
                if not any(all(node.get(k, 0.0) >= v - 1e-9 for k, v in wanted.items()) for node in free):
                    waiting.append((wanted, request.count))
        return waiting, usage, free

    def _describe(self, waiting: list[tuple[dict, int]], free_per_node: list[dict]) -> str:
        wanted = ", ".join(f"{count} x {_resources(bundle)}" for bundle, count in waiting[:3])
        free = "; ".join(
            _resources({k: v for k, v in node.items() if k in ("CPU", "GPU")}) or "nothing" for node in free_per_node
        )
        minutes = self.seconds / 60
        return (
            f"{self.label}: no progress for {minutes:.3g} min: Ray waits for {wanted}, which no node has free "
            f"(free per node: {free}); use fewer --workers or give the job's workers fewer CPUs"
        )


def _resources(bundle: dict) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(bundle.items())) + "}"


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
        line = (
            f"{self.label}: {self.done}/{self.total} shards, {self.items} {self.unit}, {shown} {self.unit}/s, "
            f"ETA {remaining:.0f}s"
        )
        print(
            ("\r" + line) if self.interactive else line,
            end="" if self.interactive and self.done < self.total else "\n",
            file=sys.stderr,
            flush=True,
        )
