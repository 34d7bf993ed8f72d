"""Shared fixtures: a real S3 server (SeaweedFS on 127.0.0.1) for the whole test session."""

from __future__ import annotations

import pytest

from s3server import S3TestServer, find_weed


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tests share 2 cores with Ray workers and the S3 server: more torch threads than free cores
    makes OpenMP spin and runs small forward passes many times slower."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def s3(tmp_path_factory) -> S3TestServer:
    """The session's S3 server: `.endpoint_url`, `.access_key`, `.secret_key`, `.env()`, `.make_bucket()`, `.options`.

    Fails (rather than skips) without the `weed` binary: the S3 tests are core.
    """
    try:
        find_weed()
    except FileNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)
    server = S3TestServer(tmp_path_factory.mktemp("s3server"))
    with server:
        yield server


@pytest.fixture
def s3_env(s3, monkeypatch) -> S3TestServer:
    """The S3 server, with its AWS_* variables (credentials, endpoint, region) set for this test."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    yield s3


@pytest.fixture(scope="session")
def ray_cluster(s3):
    """One local 2-CPU Ray for the session, started after the S3 variables are set so that its
    workers see them (workers take their environment from the process that starts Ray)."""
    import os

    os.environ.update(s3.env())
    import ray

    from jobs.runtime import init_ray

    init_ray(num_cpus=2)
    yield
    ray.shutdown()
