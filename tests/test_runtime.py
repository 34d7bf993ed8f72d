"""The embedded Ray (`jobs.runtime.init_ray` without an address): every process of it listens on
loopback only, and running a job leaves the user's home alone."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

POSE_JOBS = str(Path(sys.executable).with_name("pose-jobs"))


def listeners(root: psutil.Process) -> set[tuple[str, str]]:
    """(address, process name) of every listening TCP socket of `root` and its descendants."""
    try:
        pids = {root.pid} | {child.pid for child in root.children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()
    found = set()
    for connection in psutil.net_connections(kind="tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.pid in pids:
            try:
                name = psutil.Process(connection.pid).name()
            except psutil.NoSuchProcess:
                continue
            found.add((connection.laddr.ip, name))
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)


def test_the_embedded_ray_listens_on_loopback_only_and_leaves_home_alone(tmp_path):
    """`pose-jobs ingest` on the local default: the GCS, the raylet, the agents, the driver's and
    every worker's servers, sampled while the job runs, listen on 127.0.0.1 only (they listened on
    all interfaces); HOME gets no `.ray/auth_token` (the tests' token file is RAY_AUTH_TOKEN_PATH)."""
    from pose.synth.digits import write_svhn

    write_svhn(tmp_path / "src", train=300, test=60, seed=3)
    home = tmp_path / "home"
    home.mkdir()
    job = subprocess.Popen(
        [POSE_JOBS, "ingest", "svhn", str(tmp_path / "src"), str(tmp_path / "dest"), "--shard-size", "60"],
        env={**os.environ, "HOME": str(home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    root, seen = psutil.Process(job.pid), set()
    deadline = time.monotonic() + 600
    while job.poll() is None and time.monotonic() < deadline:
        seen |= listeners(root)
        time.sleep(0.2)
    stdout, stderr = job.communicate(timeout=60)
    assert job.returncode == 0, stderr[-3000:]
    names = {name for _, name in seen}
    assert {"gcs_server", "raylet"} <= names, seen  # the sampling saw the Ray it checks
    assert any(name.startswith("ray::") for name in names), seen  # and its workers
    assert all(is_loopback(address) for address, _ in seen), sorted(seen)
    assert not (home / ".ray").exists() and not any(home.iterdir())


def test_a_job_waiting_for_resources_no_node_has_ends_in_one_line(ray_cluster):
    """An actor holds 1.5 of the 2 CPUs and a one-CPU task waits: nothing moves, so the watch ends
    the block with one line naming the request and what the node has free. A queue whose tasks run
    and finish, or progress, does not count as a stall."""
    import pytest
    import ray

    from jobs.runtime import StallError, StallWatch

    @ray.remote(num_cpus=1.5)
    class Holder:
        def ready(self):
            return True

    @ray.remote(num_cpus=1)
    def read():
        return 1

    holder = Holder.remote()
    ray.get(holder.ready.remote())
    waiting = read.remote()
    try:
        started = time.monotonic()
        with pytest.raises(StallError) as stalled:
            with StallWatch("train", progress=lambda: 0, seconds=3, interval=0.5):
                while time.monotonic() - started < 120:
                    time.sleep(0.1)
        message = str(stalled.value)
        assert message.startswith("train: no progress for 0.05 min: Ray waits for 1 x {CPU: 1}, which no node has free")
        assert "(free per node: {CPU: 0.5})" in message and "\n" not in message
    finally:
        ray.cancel(waiting, force=True)
        ray.kill(holder)

    steps = iter(range(10**6))
    with StallWatch("train", progress=lambda: next(steps), seconds=2, interval=0.5):
        blocker = Holder.remote()
        ray.get(blocker.ready.remote())
        queued = read.remote()
        time.sleep(5)  # a stall of resources, but progress moves
    ray.kill(blocker)
    assert ray.get(queued, timeout=120) == 1
