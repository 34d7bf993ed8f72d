"""pose.feed: numpy batches of a table, and the ordered threaded prefetch the training loop uses."""

import threading
import time

import numpy as np
import pyarrow as pa
import pytest

from pose.feed import BatchFeed, batches_of, prefetch


def test_batches_of_gives_every_row_once_as_numpy_columns():
    table = pa.table({"a": list(range(10)), "b": [[i, i] for i in range(10)]})
    batches = list(batches_of(table, 4))
    assert [len(b["a"]) for b in batches] == [4, 4, 2]
    assert np.concatenate([b["a"] for b in batches]).tolist() == list(range(10))
    assert isinstance(batches[0]["a"], np.ndarray)


@pytest.mark.parametrize("threads", [0, 1, 3])
def test_prefetch_keeps_order_whatever_finishes_first(threads):
    def slow_for_small(item):
        time.sleep(0.002 * (10 - item))  # early items finish last
        return item * item

    assert list(prefetch(range(10), slow_for_small, threads)) == [i * i for i in range(10)]


def test_prefetch_runs_ahead_on_threads_and_bounds_what_is_in_flight():
    started, running, most = [], [0], [0]
    lock = threading.Lock()

    def work(item):
        with lock:
            started.append(item)
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1
        return threading.current_thread().name

    results = prefetch(range(20), work, threads=3, ahead=4)
    first = next(results)
    time.sleep(0.1)
    assert first.startswith("prefetch")
    # While the caller holds item 0, at most `ahead` items beyond it have been started.
    assert len(started) <= 1 + 4
    assert most[0] >= 2  # several run at once
    assert len(list(results)) == 19
    assert most[0] <= 3


def test_prefetch_raises_the_items_error_at_its_place():
    def fail_on_three(item):
        if item == 3:
            raise ValueError("bad item 3")
        return item

    seen = []
    with pytest.raises(ValueError, match="bad item 3"):
        for value in prefetch(range(10), fail_on_three, threads=2):
            seen.append(value)
    assert seen == [0, 1, 2]


def test_prefetch_stopped_early_pulls_no_more_items():
    pulled = []

    def source():
        for i in range(100):
            pulled.append(i)
            yield i

    results = prefetch(source(), lambda x: x, threads=2, ahead=3)
    assert [next(results) for _ in range(5)] == [0, 1, 2, 3, 4]
    results.close()
    assert len(pulled) <= 5 + 3


def _tagged(batch: dict, epoch: int) -> dict:
    import os

    return {"x": batch["x"] * 10 + epoch, "pid": os.getpid()}


@pytest.mark.parametrize("processes", [False, True])
def test_batch_feed_prepares_in_order_on_threads_or_other_processes(processes):
    import os

    batches = [{"x": np.arange(i, i + 3)} for i in range(8)]
    with BatchFeed(_tagged, 2, processes=processes) as feed:
        for epoch in (0, 1):  # the same pool serves every epoch
            out = list(feed(iter(batches), epoch))
            assert [o["x"].tolist() for o in out] == [(b["x"] * 10 + epoch).tolist() for b in batches]
            pids = {o["pid"] for o in out}
            assert (os.getpid() not in pids) if processes else (pids == {os.getpid()})
    assert [o["x"].tolist() for o in BatchFeed(_tagged, 0)(batches, 2)] == [(b["x"] * 10 + 2).tolist() for b in batches]
