"""Job commands submitted to a real two-node Ray cluster (`ray start` on this machine, token
authentication on, S3 test server credentials only in the nodes' environment), and the pieces of
submission that need no cluster.

One cluster serves the module: a head node and a worker node with 3 logical CPUs each, so that two
training workers of 2 CPUs each cannot share a node (one lands on each) and one CPU per node stays
free for the Ray Data tasks that feed them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from raycluster import RayTestCluster
from s3faults import FaultProxy
from typer.testing import CliRunner

import jobs.submit
from jobs.cli import app
from jobs.submit import is_dashboard_address

POSE_JOBS = str(Path(sys.executable).with_name("pose-jobs"))


# ------------------------------------------------------------------------------------------------
# Without a cluster


def test_dashboard_addresses_submit_and_gcs_addresses_join():
    """Inside a job Ray sets RAY_ADDRESS to the GCS address: the inner command joins, never submits again."""
    assert is_dashboard_address("http://head:8265") and is_dashboard_address("https://ray.example.com")
    assert (
        not is_dashboard_address("10.0.0.1:6379")
        and not is_dashboard_address("auto")
        and not is_dashboard_address(None)
    )


def test_submitted_command_line_is_the_command_without_address_and_local_paths_absolute(monkeypatch, tmp_path):
    submitted = {}
    monkeypatch.setattr(
        jobs.submit, "submit", lambda address, argv, wait: submitted.update(address=address, argv=argv, wait=wait) or 0
    )
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        app,
        [
            "train-svhn",
            "--data",
            "out/svhn",
            "--out",
            "s3://b/runs/svhn",
            "--workers",
            "2",
            "--no-gpu",
            "--address",
            "http://head:8265",
            "--no-wait",
        ],
    )
    assert result.exit_code == 0, result.output
    assert submitted == {
        "address": "http://head:8265",
        "argv": [
            "pose-jobs",
            "train-svhn",
            "--data",
            str(tmp_path / "out/svhn"),
            "--out",
            "s3://b/runs/svhn",
            "--workers",
            "2",
            "--no-gpu",
        ],
        "wait": False,
    }
    assert "--data out/svhn is a path on this machine" in result.output

    result = CliRunner().invoke(
        app,
        ["ingest", "coco", "s3://b/coco", "s3://b/out", "--split", "val", "--split", "train", "--anon"],
        env={"RAY_ADDRESS": "http://head:8265"},
    )
    assert result.exit_code == 0, result.output
    assert submitted["argv"] == [
        "pose-jobs",
        "ingest",
        "coco",
        "s3://b/coco",
        "s3://b/out",
        "--split",
        "val",
        "--split",
        "train",
        "--anon",
    ]
    assert submitted["wait"] is True


def test_jobs_commands_need_an_address():
    result = CliRunner().invoke(app, ["jobs", "list"], env={"RAY_ADDRESS": None})
    assert result.exit_code == 2 and "give --address http://HEAD:8265" in result.output


# ------------------------------------------------------------------------------------------------
# On a two-node cluster


@pytest.fixture(scope="module")
def cluster(s3, tmp_path_factory):
    # The nodes reach S3 through a proxy that forwards everything as it is, until a test holds some
    # requests (`cluster.proxy.hold_after`) to stop a job at a point of its choosing.
    with FaultProxy(s3.endpoint_url) as proxy:
        env = {**s3.env(), "AWS_ENDPOINT_URL": proxy.endpoint_url}
        with RayTestCluster(tmp_path_factory.mktemp("raycluster"), env=env) as cluster:
            # Two equal nodes: a plan that splits the spare CPU between them leaves neither a whole CPU.
            cluster.start_head(num_cpus=2)
            cluster.worker = cluster.add_node(num_cpus=2)
            cluster.proxy = proxy
            yield cluster


def run_cli(cluster, *args, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """`pose-jobs ARGS` as a client of `cluster`: its token, and no AWS variables at all (the
    cluster's nodes have their own)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_"))}
    environment.update(cluster.client_env())
    environment.update(env or {})
    return subprocess.run([POSE_JOBS, *args], env=environment, capture_output=True, text=True, timeout=timeout)


def test_missing_or_wrong_token_is_one_line(cluster, tmp_path):
    no_token = {"RAY_AUTH_MODE": "", "RAY_AUTH_TOKEN_PATH": "", "HOME": str(tmp_path)}  # no ~/.ray/auth_token there
    missing = run_cli(cluster, "jobs", "list", "--address", cluster.dashboard_url, env=no_token)
    assert missing.returncode == 2 and "requires an authentication token" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1

    wrong = run_cli(
        cluster, "jobs", "list", "--address", cluster.dashboard_url, env={**no_token, "RAY_AUTH_TOKEN": "not-the-token"}
    )
    assert wrong.returncode == 2 and "refused the authentication token" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1

    unknown = run_cli(cluster, "jobs", "status", "no-such-job", "--address", cluster.dashboard_url)
    assert unknown.returncode == 2 and "no job no-such-job" in unknown.stderr


def read_metrics(s3, url: str) -> list[dict]:
    bucket, _, key = url[len("s3://") :].partition("/")
    try:
        body = s3.client().get_object(Bucket=bucket, Key=f"{key}/metrics.jsonl")["Body"].read()
    except s3.client().exceptions.NoSuchKey:
        return []
    return [json.loads(line) for line in body.decode().splitlines()]


def train_workers_on(cluster, node_id: str) -> list[dict]:
    """The alive Ray Train workers on a node (the state API's actors)."""
    actors = cluster.get("/api/v0/actors", detail="1", limit="10000")["data"]["result"]["result"]
    return [
        actor
        for actor in actors
        if actor.get("state") == "ALIVE"
        and "RayTrainWorker" in actor.get("class_name", "")
        and actor.get("node_id") == node_id
    ]


def registered_checkpoints(s3, url: str) -> list:
    """The checkpoints Ray Train's controller has registered for the run at `url` (its snapshot)."""
    bucket, key = url.removeprefix("s3://").split("/", 1)
    try:
        body = s3.client().get_object(Bucket=bucket, Key=f"{key}/checkpoint_manager_snapshot.json")["Body"].read()
    except s3.client().exceptions.NoSuchKey:
        return []
    return json.loads(body).get("checkpoint_results", [])


@pytest.mark.timeout(1200)
def test_two_workers_train_on_two_equal_nodes(cluster, s3, tmp_path):
    """train-svhn --workers 2 on nodes of 2 CPUs each: the plan gives each worker one CPU, so a node
    keeps a whole CPU for Ray Data's reading tasks (1.5 CPUs each hung with the workers idle)."""
    from pose.synth.digits import write_svhn

    bucket = s3.make_bucket("equal")
    write_svhn(tmp_path / "src", train=256, test=64, seed=5)
    client = s3.client()
    for path in (tmp_path / "src").iterdir():
        client.upload_file(str(path), "equal", f"src/{path.name}")
    ingest = run_cli(cluster, "ingest", "svhn", f"{bucket}/src", f"{bucket}/svhn", "--address", cluster.dashboard_url)
    assert ingest.returncode == 0, ingest.stderr[-3000:]
    train_args = ["train-svhn", "--data", f"{bucket}/svhn", "--out", f"{bucket}/runs/svhn", "--workers", "2",
                  "--epochs", "1", "--min-steps", "0", "--batch-size", "64",
                  "--address", cluster.dashboard_url]  # fmt: skip
    train = run_cli(cluster, *train_args, timeout=900)
    assert train.returncode == 0, train.stderr[-3000:] + train.stdout[-3000:]
    assert "{'CPU': 1.0}" in train.stdout + train.stderr
    assert [m["epoch"] for m in read_metrics(s3, f"{bucket}/runs/svhn")] == [1]


@pytest.mark.timeout(1800)
def test_ingest_and_train_on_two_nodes_then_a_lost_node(cluster, s3, tmp_path):
    """ingest coco and train-keypoints --workers 2 submitted with --address: the workers train on
    both nodes, checkpoints go to S3; the worker node is killed after the first epoch and replaced
    (as an autoscaler would) while epoch 2's checkpoint write is held, so that the loss always lands
    before epoch 2 is committed: the run resumes from its checkpoint and trains no epoch twice. Then
    annotate, submitted the same way, with the trained keypoint model."""
    from pose.synth.people import write_coco

    bucket = s3.make_bucket("cluster")
    write_coco(tmp_path / "src", split="train", images=16, seed=31)
    write_coco(tmp_path / "src", split="val", images=4, seed=32)
    client = s3.client()
    for path in (tmp_path / "src").rglob("*"):
        if path.is_file():
            client.upload_file(str(path), "cluster", f"src/{path.relative_to(tmp_path / 'src')}")

    ingest = run_cli(
        cluster,
        "ingest",
        "coco",
        f"{bucket}/src",
        f"{bucket}/coco",
        "--shard-size",
        "8",
        "--address",
        cluster.dashboard_url,
    )
    assert ingest.returncode == 0, ingest.stderr[-3000:] + ingest.stdout[-3000:]
    assert "pose-jobs: submitted pose-jobs-ingest-coco-" in ingest.stderr
    assert "train: 16 images" in ingest.stdout and "all accounted for" in ingest.stdout

    out = f"{bucket}/runs/keypoints"
    # Once epoch 1's metrics are written, the next checkpoint's files (checkpoint_<date>/, not Ray Train's
    # checkpoint_manager_snapshot.json) wait until the node is replaced.
    checkpoint_file = re.compile(r"/cluster/runs/keypoints/checkpoint_\d")
    cluster.proxy.hold_after(
        lambda method, path: method == "PUT" and path.startswith("/cluster/runs/keypoints/metrics.jsonl"),
        lambda method, path: method in ("PUT", "POST") and checkpoint_file.match(path) is not None,
    )
    # Three workers of one CPU (the default share on 2 + 2 CPUs): both nodes train, one CPU stays free.
    train_args = ["train-keypoints", "--data", f"{bucket}/coco", "--out", out, "--workers", "3",
                  "--epochs", "2", "--batch-size", "6", "--input-size", "64x96"]  # fmt: skip
    submitted = run_cli(cluster, *train_args, "--address", cluster.dashboard_url, "--no-wait", timeout=120)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert job_id.startswith("pose-jobs-train-keypoints-")

    deadline = time.monotonic() + 1200
    while not (first := read_metrics(s3, out)):
        assert time.monotonic() < deadline, run_cli(
            cluster, "jobs", "logs", job_id, "--address", cluster.dashboard_url
        ).stdout[-3000:]
        time.sleep(3)
    head, worker = cluster.nodes[0].node_id, cluster.worker.node_id
    assert set(first[0]["nodes"]) == {head, worker}  # training workers on both nodes
    # Rank 0 writes the metrics line once it reported the checkpoint; Ray Train's controller registers
    # it a moment later (its snapshot lists it): only then is epoch 1 safe from the node's loss.
    while not registered_checkpoints(s3, out):
        assert time.monotonic() < deadline
        time.sleep(1)

    cluster.kill_node(cluster.worker)
    replacement = cluster.add_node(num_cpus=2, name="replacement")
    # Released once the restarted worker group trains on the replacement: the old group (whose rank 0
    # may wait on the held upload) is gone by then, and cannot finish epoch 2 after all.
    while not train_workers_on(cluster, replacement.node_id):
        assert time.monotonic() < deadline
        time.sleep(1)
    cluster.proxy.release()

    followed = run_cli(cluster, "jobs", "logs", job_id, "--follow", "--address", cluster.dashboard_url, timeout=1500)
    assert followed.returncode == 0, followed.stdout[-4000:] + followed.stderr[-2000:]
    metrics = read_metrics(s3, out)
    # Epoch 2 resumed from epoch 1's checkpoint: epoch 1 is the one trained before the node was lost.
    assert [m["epoch"] for m in metrics] == [1, 2] and metrics[0] == first[0]
    assert set(metrics[-1]["nodes"]) == {head, replacement.node_id}
    model = json.loads(client.get_object(Bucket="cluster", Key="runs/keypoints/model.json")["Body"].read())
    assert model["epochs"] == 2
    checkpoints = [
        o["Key"] for o in client.list_objects_v2(Bucket="cluster", Prefix="runs/keypoints/checkpoint_")["Contents"]
    ]
    assert checkpoints

    status = run_cli(cluster, "jobs", "status", job_id, "--address", cluster.dashboard_url)
    assert status.returncode == 0 and f"{job_id}: SUCCEEDED" in status.stdout
    listed = run_cli(cluster, "jobs", "list", "--address", cluster.dashboard_url)
    assert job_id in listed.stdout and "pose-jobs ingest coco" in listed.stdout

    # annotate over the cluster: the images of the val split with a tiny detector (a run folder on S3
    # whose person logit is raised, so every image has person boxes) and the keypoint model just trained.
    import io

    import torch

    from pose.models.detector import DetectorConfig, build_detector

    torch.manual_seed(0)
    config = DetectorConfig(min_size=96, max_size=160, proposals_per_image=40, detections_per_image=6)
    detector = build_detector(config)
    with torch.no_grad():
        detector.roi_heads.box_predictor.cls_score.bias[1] = 6.0
    weights = io.BytesIO()
    torch.save(detector.state_dict(), weights)
    client.put_object(Bucket="cluster", Key="models/detector/model.pt", Body=weights.getvalue())
    client.put_object(
        Bucket="cluster",
        Key="models/detector/model.json",
        Body=json.dumps({"task": "detector", "model": config.to_dict()}).encode(),
    )
    annotated = run_cli(
        cluster, "annotate", f"{bucket}/src/val2017", f"{bucket}/annotated", "--detector", f"{bucket}/models/detector",
        "--keypoints", out, "--address", cluster.dashboard_url,
    )  # fmt: skip
    assert annotated.returncode == 0, annotated.stderr[-3000:] + annotated.stdout[-3000:]
    manifest = json.loads(client.get_object(Bucket="cluster", Key="annotated/manifest.json")["Body"].read())
    assert manifest["images"] == {"listed": 4, "annotated": 4, "errors": 0, "balanced": True}
    keypoint_results = json.loads(
        client.get_object(Bucket="cluster", Key="annotated/results/keypoints.json")["Body"].read()
    )
    assert keypoint_results and all(len(r["keypoints"]) == 51 for r in keypoint_results)

    # The S3 secret lives only in the nodes' environment: never in a job's command, environment or logs.
    for job in cluster.get("/api/jobs/"):
        assert s3.secret_key not in json.dumps(job)
        assert s3.secret_key not in cluster.get(f"/api/jobs/{job['submission_id']}/logs")["logs"]


def test_quiet_driver_drops_only_the_startup_concurrency_warning(monkeypatch, capsys):
    from ray._private import worker as ray_worker

    import jobs.runtime

    printed = []
    monkeypatch.setattr(
        ray_worker, "print_to_stdstream", lambda data, ignore_prefix: printed.append(list(data["lines"]))
    )
    jobs.runtime._drop_startup_concurrency_warnings()
    jobs.runtime._drop_startup_concurrency_warnings()  # a second call does not wrap it twice
    warning = (
        "WARNING: 8 PYTHON worker processes have been started on node: abc with address: 10.0.0.1, which is 4x "
        "the maximum expected startup concurrency (2). This could be a result of using a large number of actors"
    )
    killed = "Task was killed due to the node running low on memory."
    ray_worker.print_to_stdstream({"lines": [warning], "pid": "raylet", "is_err": False}, ignore_prefix=False)
    ray_worker.print_to_stdstream({"lines": [warning, killed], "pid": "raylet", "is_err": False}, ignore_prefix=False)
    assert printed == [[killed]]
