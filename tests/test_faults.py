"""Jobs against storage that misbehaves: S3 faults injected by a proxy (tests/s3faults.py) in front
of the test server, outages shorter and longer than the retry window, a full disk and a
read-only one. What must hold: the output equals a clean run's (no row lost or duplicated), or
the job ends in one line on stderr and a re-run resumes."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from s3faults import KINDS, FaultProxy
from s3server import REGION, S3TestServer
from test_annotate import scene

from jobs.annotate import AnnotateSettings, annotate
from jobs.datasets import read_table
from jobs.ingest import ingest
from jobs.storage import StorageOptions, filesystem, join, list_files
from pose.synth.people import write_coco

TABLES = (("images", "image_id"), ("persons", "annotation_id"), ("person_crops", "annotation_id"), ("errors", "item"))
SHARD_IMAGES = 2  # 8 images: 4 shards, so an outage can land between them
DELAY_S = 0.5  # the "delay" fault here; benchmarks/faults.py uses 2 s


def through(proxy: FaultProxy, retry_seconds: float = 60.0) -> StorageOptions:
    return StorageOptions(endpoint_url=proxy.endpoint_url, region=REGION, retry_seconds=retry_seconds)


def assert_same_tables(dest: str, clean: str, options: StorageOptions, clean_options: StorageOptions) -> None:
    for table, key in TABLES:
        got, expected = (
            read_table(dest, table, options=options).sort_by(key),
            read_table(clean, table, options=clean_options).sort_by(key),
        )
        assert got.num_rows == expected.num_rows and len(set(got[key].to_pylist())) == got.num_rows, (
            table
        )  # none lost, none twice
        assert got.equals(expected), table


@pytest.fixture(scope="module")
def coco(s3, tmp_path_factory) -> tuple[str, str]:
    """(SRC, clean DEST): synthetic COCO on the test server and its ingest without faults."""
    folder = tmp_path_factory.mktemp("faults") / "coco"
    write_coco(folder, split="train", images=8, seed=5)
    src = s3.make_bucket("faults-src") + "/coco"
    s3.upload(folder, src)
    return src, s3.make_bucket("faults-out") + "/clean"


@pytest.fixture(scope="module")
def clean_ingest(ray_cluster, s3, coco) -> str:
    src, clean = coco
    ingest("coco", src, clean, s3.options, shard_size=SHARD_IMAGES, progress=False)
    return clean


@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_ingest_through_faults_equals_a_clean_run(ray_cluster, s3, coco, clean_ingest, rate):
    src, _ = coco
    dest = join(s3.make_bucket("faults-out"), f"faulty-{rate}")
    with FaultProxy(s3.endpoint_url, rate=rate, seed=int(rate * 100), delay_s=DELAY_S) as proxy:
        manifest = ingest("coco", src, dest, through(proxy), shard_size=SHARD_IMAGES, progress=False)
    assert manifest["accounting"]["train"]["balanced"]
    assert sum(proxy.injected.values()) >= rate * proxy.requests / 2, proxy.injected
    if rate >= 0.3:
        assert set(proxy.injected) == set(KINDS), proxy.injected
    assert_same_tables(dest, clean_ingest, s3.options, s3.options)


def test_annotate_through_faults_equals_a_clean_run(ray_cluster, s3, tiny_models):
    src = s3.make_bucket("faults-images") + "/images"
    fs, root = filesystem(src, s3.options)
    for i in range(4):
        buffer = io.BytesIO()
        Image.fromarray(scene(100 + i)).save(buffer, format="PNG")
        fs.pipe_file(f"{root}/{i}.png", buffer.getvalue())
    settings = AnnotateSettings(*tiny_models, shard_images=2, detector_batch=1)
    clean = s3.make_bucket("faults-annotated") + "/clean"
    annotate(src, clean, settings, s3.options, progress=False)
    dest = join(s3.make_bucket("faults-annotated"), "faulty")
    with FaultProxy(s3.endpoint_url, rate=0.3, seed=7, delay_s=DELAY_S) as proxy:
        manifest = annotate(src, dest, settings, through(proxy), progress=False)
    assert manifest["images"]["balanced"] and manifest["images"]["annotated"] == 4
    assert len(proxy.injected) >= 3, proxy.injected
    got, expected = (
        read_table(dest, "annotations", options=s3.options).sort_by("source"),
        read_table(clean, "annotations", options=s3.options).sort_by("source"),
    )
    assert got["source"].to_pylist() == expected["source"].to_pylist() and len(set(got["image_id"].to_pylist())) == 4
    for a, b in zip(got.to_pylist(), expected.to_pylist()):
        assert (
            a["image_id"] == b["image_id"]
            and len(a["detections"]) == len(b["detections"])
            and len(a["persons"]) == len(b["persons"])
        )
        np.testing.assert_allclose(
            [p["keypoints"] for p in a["persons"]], [p["keypoints"] for p in b["persons"]], atol=1e-3
        )
    assert len(list_files(join(dest, "results"), s3.options)) == len(list_files(join(clean, "results"), s3.options))


def test_outage_shorter_than_the_retry_window_is_ridden_out(ray_cluster, s3, coco, clean_ingest):
    src, _ = coco
    dest = join(s3.make_bucket("faults-out"), "restarted")
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.outage_after(lambda method, path: method == "PUT" and "/_commits/" in path, seconds=2)
        manifest = ingest("coco", src, dest, through(proxy, retry_seconds=60), shard_size=SHARD_IMAGES, progress=False)
    assert proxy.outages == 1 and manifest["shards"] == 4
    assert_same_tables(dest, clean_ingest, s3.options, s3.options)


def test_the_server_stopped_and_restarted_mid_job(ray_cluster, s3, clean_ingest, tmp_path):
    """A real restart: another SeaweedFS (the same identities, so Ray's workers can sign for it, and
    the same bucket names) is stopped with SIGTERM after the first shard commits, and started again
    on its data 3 s later; the proxy in front only holds every request from the first commit until
    the server is down, so the stop always lands mid-job. The job rides it out: equal to a clean run."""
    folder = tmp_path / "coco"
    write_coco(folder, split="train", images=8, seed=5)  # the bytes of the `coco` fixture
    server = S3TestServer(tmp_path / "s3")
    server.access_key, server.secret_key = s3.access_key, s3.secret_key
    with server, FaultProxy(server.endpoint_url) as proxy:
        server.upload(folder, server.make_bucket("faults-src") + "/coco")
        dest = join(server.make_bucket("faults-out"), "clean")
        proxy.hold_after(lambda method, path: method == "PUT" and "/_commits/" in path, lambda method, path: True)
        outcome = {}

        def run():
            try:
                outcome["manifest"] = ingest(
                    "coco", "s3://faults-src/coco", dest, through(proxy), shard_size=SHARD_IMAGES, progress=False
                )
            except BaseException as error:  # reported below, in the test's thread
                outcome["error"] = error

        job = threading.Thread(target=run)
        job.start()
        deadline = time.monotonic() + 300
        while not proxy.holding and job.is_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proxy.holding, outcome
        server.halt()
        proxy.release()  # the held requests now meet a server that is down
        time.sleep(3)
        server.resume()
        job.join(timeout=300)
        assert not job.is_alive() and "error" not in outcome, outcome
        assert outcome["manifest"]["shards"] == 4
        assert proxy.held > 0 and proxy.unanswered > 0  # requests met the stopped server
        assert_same_tables(dest, clean_ingest, through(proxy), s3.options)


def test_outage_longer_than_the_window_is_one_line_then_the_rerun_resumes(ray_cluster, s3, coco, clean_ingest):
    """The console script itself: what a user sees is one line on stderr, not Ray's traceback."""
    src, _ = coco
    dest = join(s3.make_bucket("faults-out"), "abandoned")
    with FaultProxy(s3.endpoint_url) as proxy:
        proxy.outage_after(lambda method, path: method == "PUT" and "/_commits/" in path, seconds=None)  # stays down
        command = [
            str(Path(sys.executable).with_name("pose-jobs")),
            "ingest",
            "coco",
            src,
            dest,
            "--shard-size",
            str(SHARD_IMAGES),
            "--endpoint-url",
            proxy.endpoint_url,
            "--storage-retry-seconds",
            "2",
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=dict(os.environ, **s3.env()))
        assert proxy.outages == 1
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
        assert (
            f"cannot reach endpoint {proxy.endpoint_url} after retrying for 2 s" in result.stderr
            and dest in result.stderr
        )
        committed = len(list_files(join(dest, "_commits"), s3.options))
        assert 0 < committed < 4, "the outage should land mid-job"
        proxy.start()
        manifest = ingest("coco", src, dest, through(proxy), shard_size=SHARD_IMAGES, progress=False)
    assert manifest["shards"] == 4
    assert_same_tables(dest, clean_ingest, s3.options, s3.options)


# ----------------------------------------------------------------------------------------------
# Local disks: a real small tmpfs and a real read-only bind mount where this machine allows
# mounting (root); tests/test_storage.py injects the same errno values where it does not.


@contextlib.contextmanager
def mounted(*arguments: str):
    target = arguments[-1]
    os.makedirs(target, exist_ok=True)
    result = subprocess.run(["mount", *arguments], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(
            f"cannot mount here ({result.stderr.strip() or 'mount failed'}): "
            "the injected errno tests in test_storage.py cover it"
        )
    try:
        yield target
    finally:
        subprocess.run(["umount", target], check=True)


def run_in_process(*args: str):
    """The typer app in this process (each pose-jobs start costs ~10 s of imports on 2 cores)."""
    from typer.testing import CliRunner

    from jobs.cli import app

    return CliRunner().invoke(app, list(args))


def test_full_disk_is_one_line_naming_dest(ray_cluster, tmp_path):
    src = tmp_path / "src"
    write_coco(src, split="train", images=8, seed=5)
    with mounted("-t", "tmpfs", "-o", "size=96k", "tmpfs", str(tmp_path / "small")) as small:
        dest = os.path.join(small, "out")
        result = run_in_process("ingest", "coco", str(src), dest, "--shard-size", str(SHARD_IMAGES))
    assert result.exit_code == 2, result.output
    assert (
        result.stderr.count("\n") == 1 and f"{dest}/" in result.stderr and "no space left on device" in result.stderr
    ), result.stderr


def test_read_only_dest_says_read_only(tmp_path):
    src = tmp_path / "src"
    write_coco(src, split="train", images=2, seed=5)
    (tmp_path / "writable").mkdir()
    with mounted("--bind", "-o", "ro", str(tmp_path / "writable"), str(tmp_path / "read-only")) as read_only:
        result = run_in_process("ingest", "coco", str(src), os.path.join(read_only, "out"))
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert (
        result.stderr.strip()
        == f"pose-jobs: error: {read_only}/out: read-only file system (choose a writable destination)"
    )
