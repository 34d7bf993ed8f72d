"""Shared fixtures: a real S3 server (SeaweedFS on 127.0.0.1, `s3.upload` copies a folder to it),
a local Ray for the whole test session, and tiny untrained models saved as run folders.

`make test` runs the suite on two pytest-xdist workers, a file at a time (`--dist loadfile`): each
worker is its own test session, with its own S3 server, its own Ray and its own Ray temp directory,
all on free ports and stopped by process id, so the two never meet (nor another engineer's Ray).
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path

import pytest
from s3server import S3TestServer, find_weed

# The modules that take longest, longest first: xdist hands out whole files in collection order
# (`--no-loadscope-reorder`), so starting with these lets both workers finish at about the same
# time. Measured on 2 cores; a module missing from the list just runs after them.
SLOWEST_MODULES = (
    "test_train.py",
    "test_cluster.py",
    "test_annotate.py",
    "test_faults.py",
    "test_ingest.py",
    "test_detector_jobs.py",
    "test_recipes.py",
    "test_runtime.py",
    "test_goldens.py",
    "test_detector.py",
    "test_model_loading.py",
    "test_keypoint_rcnn.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: place for place, name in enumerate(SLOWEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a module's own order is kept


def pytest_configure(config):
    """A Ray temp directory of this test process's own, for `ray.init` here and for every `pose-jobs`
    subprocess (they inherit RAY_TMPDIR): a local Ray started without an address never joins another
    one through /tmp/ray's "latest cluster" file, and its sockets and logs go with the session.
    A short path under /tmp: Ray's unix socket paths must stay under ~100 characters. (An xdist
    worker inherits its controller's RAY_TMPDIR and replaces it with its own.)"""
    config.ray_tmpdir = tempfile.mkdtemp(prefix="pj-ray-", dir="/tmp")
    os.environ["RAY_TMPDIR"] = config.ray_tmpdir
    # A local Ray turns token authentication on and, finding no token, writes one to the user's
    # ~/.ray/auth_token: the tests' Rays (in process and in `pose-jobs` subprocesses) use a token
    # file of this test process instead.
    token_path = Path(config.ray_tmpdir) / "auth_token"
    token_path.write_text(secrets.token_hex(32))
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token_path)
    # matplotlib's font cache and config would go to ~/.cache and ~/.config.
    os.environ["MPLCONFIGDIR"] = str(Path(config.ray_tmpdir) / "matplotlib")


def pytest_unconfigure(config):
    ray_tmpdir = getattr(config, "ray_tmpdir", None)
    if ray_tmpdir:
        shutil.rmtree(ray_tmpdir, ignore_errors=True)
        os.environ.pop("RAY_TMPDIR", None)
        os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
        os.environ.pop("MPLCONFIGDIR", None)


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
    os.environ.update(s3.env())
    import ray

    from jobs.runtime import init_ray

    init_ray(num_cpus=2)
    yield
    ray.shutdown()


# A COCO category id that is not a person: `tiny_models`' detector also finds dogs.
DOG = 18


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> tuple[str, str]:
    """(detector, keypoint model) run folders, as train-detector / train-keypoints leave them:
    untrained and small (inputs of 96-160 pixels, 40 proposals, 16 deconvolution channels), with
    the detector's person and dog logits raised so that it reports both in every image."""
    import torch

    from jobs.models import save_run
    from pose.keypoint_task import KeypointRecipe
    from pose.models.detector import DetectorConfig, build_detector
    from pose.models.keypoints import build_keypoint_model

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    config = DetectorConfig(min_size=96, max_size=160, proposals_per_image=40, detections_per_image=6)
    detector = build_detector(config)
    with torch.no_grad():
        detector.roi_heads.box_predictor.cls_score.bias[1] = 6.0
        detector.roi_heads.box_predictor.cls_score.bias[DOG] = 5.0
    recipe = KeypointRecipe(input_size=(64, 96), deconv_channels=16)
    keypoints = build_keypoint_model(recipe.model_config())
    keypoint_info = {"task": "keypoints", "recipe": recipe.to_dict(), "model": recipe.model_config().to_dict()}
    return (
        save_run(str(root / "detector"), {"task": "detector", "model": config.to_dict()}, detector.state_dict()),
        save_run(str(root / "keypoints"), keypoint_info, keypoints.state_dict()),
    )


@pytest.fixture
def kill_after_first_commit():
    """A function that runs a job's command line in its own process group, SIGKILLs that group as
    soon as DEST/_commits holds a commit marker (or the job ends, or `timeout` passes) and returns
    the number of markers: how a test cuts a run short mid-way. Only the job's own processes are
    killed, never another Ray on the machine."""
    import signal
    import subprocess
    import time

    def kill(command: list[str], dest: Path, timeout: float) -> int:
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
        job = subprocess.Popen(
            command, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        commits, deadline = Path(dest) / "_commits", time.monotonic() + timeout
        while time.monotonic() < deadline and job.poll() is None:
            if commits.exists() and any(commits.glob("*.json")):
                break
            time.sleep(0.05)
        os.killpg(job.pid, signal.SIGKILL)
        job.wait()
        return len(list(commits.glob("*.json")))

    return kill
