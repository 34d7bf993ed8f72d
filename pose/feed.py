"""Feeding a training step: numpy batches of a pyarrow Table, and an ordered prefetch that prepares
the next batches (decode, augment, targets) on threads or processes while the current one trains.

Plain Python: `jobs/train.py` uses it on Ray Train workers, a benchmark or a notebook without Ray.
"""

from __future__ import annotations

import collections
import functools
import itertools
import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np


def batches_of(table, batch_size: int) -> Iterator[dict]:
    """Numpy batches (dict of column arrays) of a pyarrow Table, as Ray Data's iter_batches gives them."""
    for start in range(0, table.num_rows, batch_size):
        chunk = table.slice(start, batch_size)
        yield {name: _column_numpy(chunk[name]) for name in chunk.column_names}


def _column_numpy(column) -> np.ndarray:
    try:
        return column.to_numpy()
    except Exception:
        return np.asarray(column.to_pylist(), dtype=object)


def prefetch(
    items: Iterable, fn: Callable, threads: int, ahead: int | None = None, pool: Executor | None = None
) -> Iterator:
    """`fn(item)` for each item, in the items' order, computed by `threads` threads (or on `pool`,
    an executor of that many workers that the caller owns) while the caller works on earlier
    results; at most `ahead` results (default 2 x threads) wait or run at a time, so memory stays
    bounded. `threads` 0: computed inline, one at a time.

    `fn` must be safe to run on several threads at once (or picklable, for a process pool).
    Decoding and warping (Pillow) and numpy release the GIL for part of their time, so threads run
    partly in parallel. An exception in `fn` is raised here, at its item. The items are pulled on
    the caller's thread, so any iterator will do (Ray Data's too). Stopping early (break, close)
    cancels what has not started and drops the results in flight."""
    if threads <= 0:
        yield from map(fn, items)
        return
    ahead = max(1, ahead if ahead is not None else 2 * threads)
    owned = pool is None
    if owned:
        pool = ThreadPoolExecutor(threads, thread_name_prefix="prefetch")
    source = iter(items)
    pending = collections.deque(pool.submit(fn, item) for item in itertools.islice(source, ahead))
    try:
        while pending:
            future = pending.popleft()
            pending.extend(pool.submit(fn, item) for item in itertools.islice(source, 1))
            yield future.result()
    finally:
        for future in pending:
            future.cancel()
        if owned:
            pool.shutdown(wait=True)


class BatchFeed:
    """Prepares training batches ahead of the step: `prepare(batch, epoch)` (a task's
    `prepare_batch`) on `workers` threads, or on `workers` processes when `processes`.

    Threads share the GIL, so the keypoint batch (JPEG decode, affine warp, colour jitter, heatmaps) stops scaling after
    a few threads, far below what a GPU trains at. Processes scale with the cores; `prepare` and its owner are pickled
    once into each process (spawned, not forked: the parent may hold CUDA), batches go there and results come back
    pickled. Use as a context manager, or `close()`; the processes live across epochs."""

    def __init__(
        self, prepare: Callable[[dict, int], dict], workers: int, processes: bool = False, ahead: int | None = None
    ):
        self.prepare, self.workers, self.ahead = prepare, workers, ahead
        self.pool: Executor | None = None
        if processes and workers > 0:
            self.pool = ProcessPoolExecutor(
                workers, mp_context=multiprocessing.get_context("spawn"), initializer=_install, initargs=(prepare,)
            )
        elif workers > 0:
            self.pool = ThreadPoolExecutor(workers, thread_name_prefix="feed")

    def __call__(self, batches: Iterable[dict], epoch: int) -> Iterator[dict]:
        if isinstance(self.pool, ProcessPoolExecutor):
            return prefetch(
                batches, functools.partial(_prepare_installed, epoch=epoch), self.workers, self.ahead, self.pool
            )
        return prefetch(batches, functools.partial(self.prepare, epoch=epoch), self.workers, self.ahead, self.pool)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

    def __enter__(self) -> BatchFeed:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_installed: Callable | None = None  # in a feed process: the `prepare` it runs


def _install(prepare: Callable) -> None:
    global _installed
    _installed = prepare
    try:  # one feed process per core: no thread pools of its own
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def _prepare_installed(batch: dict, epoch: int) -> dict:
    return _installed(batch, epoch)
