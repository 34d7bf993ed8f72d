"""The Ray Train runner on tiny data: two CPU workers, checkpoints on the S3 test server, a real
kill and resume, the final model loadable without Ray, the resource guard, and eval-svhn."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from jobs.ingest import ingest
from jobs.models import load_run
from jobs.runtime import keeps_free
from jobs.storage import exists, join, list_files, read_bytes
from jobs.train import (
    TrainError,
    TrainSettings,
    cpu_share,
    feed_workers,
    gpu_worker_cpus,
    run_training,
    worker_resources,
)
from pose.digit_task import DigitRecipe, DigitTask
from pose.models.digits import DigitModelConfig
from pose.synth.digits import write_svhn

# Exactly 3 epochs (min_steps=0: no stretching), peak learning rate 0.4 * 32 / 256 = 0.05.
TINY = DigitRecipe(model=DigitModelConfig(arch="wrn", depth=10, width=1), epochs=3, min_steps=0, batch_size=32, lr=0.4)
# `svhn_data` has 900 training digits, 45 of them (index % 20 == 0) held out for validation: with a
# global batch of 32, 855 // 32 = 26 optimiser steps per epoch, on 1 worker (32 a step) or 2 (16 each).
SVHN_STEPS = (900 - 45) // 32


@pytest.fixture(scope="module")
def svhn_data(ray_cluster, tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("svhn")
    write_svhn(root / "src", format="cropped", seed=5, train=900, test=200)
    ingest("svhn", str(root / "src"), str(root / "ingested"), progress=False)
    return str(root / "ingested")


def test_two_workers_checkpoint_to_s3_and_loss_falls(svhn_data, s3, capfd, monkeypatch):
    out = s3.make_bucket("runs") + "/svhn-two-workers"
    settings = TrainSettings(data=svhn_data, out=out, workers=2, seed=1, options=s3.options)
    # This run streams the rows from S3 every epoch (the path of a set too large to hold in Ray's
    # object store); the other runs here hold theirs.
    monkeypatch.setenv("POSE_JOBS_CACHE_FRACTION", "0")
    info = run_training(DigitTask(TINY), settings, TINY.epochs)
    assert "855 training rows, " in capfd.readouterr().err  # streamed, not held

    lines = [json.loads(line) for line in read_bytes(join(out, "metrics.jsonl"), s3.options).decode().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3]
    assert lines[-1]["loss"] < lines[0]["loss"]
    assert all(m["samples_per_s"] > 0 and 0 <= m["val_accuracy"] <= 1 for m in lines)
    assert info["epochs"] == 3 and info["task"] == "svhn"
    # The recipe's batch is the global one: 2 workers take half each, for the steps 1 worker runs.
    assert all((m["global_batch"], m["worker_batch"], m["steps"]) == (32, 16, SVHN_STEPS) for m in lines)
    assert (info["global_batch"], info["workers"], info["worker_batch"], info["steps_per_epoch"]) == (
        32,
        2,
        16,
        SVHN_STEPS,
    )
    assert (info["requested_epochs"], info["total_steps"]) == (3, 3 * SVHN_STEPS)
    checkpoints = [u for u in list_files(out, s3.options) if "/checkpoint_" in u and u.endswith("checkpoint.pt")]
    assert checkpoints, "checkpoints are written to the S3 run folder"
    assert exists(join(out, "curves.png"), s3.options)

    # The final model loads without Ray, weights only, and equals the last checkpoint's weights.
    info, state = load_run(out, s3.options)
    model = DigitTask(DigitRecipe.from_dict(info["recipe"])).build_model()
    model.load_state_dict(state)
    last = sorted(checkpoints)[-1]
    checkpoint = torch.load(io.BytesIO(read_bytes(last, s3.options)), map_location="cpu", weights_only=False)
    reference = DigitTask(TINY).build_model()
    reference.load_state_dict(checkpoint["model"])
    images = torch.randn(4, 3, 32, 32)
    model.eval(), reference.eval()
    torch.testing.assert_close(model(images), reference(images))


def test_killed_run_resumes_and_each_epoch_appears_once(svhn_data, tmp_path):
    out = tmp_path / "run"
    command = [
        str(Path(sys.executable).with_name("pose-jobs")),
        "train-svhn",
        "--data",
        svhn_data,
        "--out",
        str(out),
        "--workers",
        "2",
        "--epochs",
        "3",
        "--min-steps",
        "0",
        "--batch-size",
        "32",
        "--width",
        "1",
    ]
    log = tmp_path / "first-run.log"
    with log.open("w") as stderr:
        job = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 480  # generous: a loaded machine starts Ray and the first epoch slowly
        # Killed once epoch 1's line is in metrics.jsonl: rank 0 writes it after the checkpoint is reported.
        while time.monotonic() < deadline and job.poll() is None and not (out / "metrics.jsonl").exists():
            time.sleep(0.2)
        os.killpg(job.pid, signal.SIGKILL)  # the job's own process group only
        job.wait()
    assert list(out.glob("checkpoint_*")) and not (out / "model.pt").exists(), (
        f"expected to kill the run after its first checkpoint and before its end; its log:\n{log.read_text()[-2000:]}"
    )

    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resuming after epoch" in result.stderr
    # A set this small is read once and held in the object store, not read again every epoch.
    assert "855 training rows (held in the object store)" in result.stderr
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]
    assert json.loads((out / "model.json").read_text())["epochs"] == 3

    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "nothing to do" in again.stderr


def test_a_finished_run_is_known_by_the_epochs_asked_for(tmp_path):
    """A digit run on a small set trains more epochs than asked (its minimum steps): re-running the
    same command must find it finished, not train it again."""
    from jobs.storage import StorageOptions
    from jobs.train import finished_run

    (tmp_path / "model.json").write_text(json.dumps({"epochs": 143, "requested_epochs": 8, "total_steps": 2002}))
    assert finished_run(str(tmp_path), 8, StorageOptions())["epochs"] == 143
    assert finished_run(str(tmp_path), 143, StorageOptions()) is None
    (tmp_path / "model.json").write_text(json.dumps({"epochs": 3}))  # written before requested_epochs existed
    assert finished_run(str(tmp_path), 3, StorageOptions()) is not None


def test_resource_guard_refuses_what_the_cluster_cannot_grant(ray_cluster):
    use_gpu, resources = worker_resources(4, use_gpu=False, cpus_per_worker=None)
    assert not use_gpu and resources["CPU"] * 4 <= 2
    assert worker_resources(1, use_gpu=False, cpus_per_worker=None)[1] == {"CPU": 1.0}
    with pytest.raises(TrainError, match="Ray would wait forever"):
        worker_resources(4, use_gpu=False, cpus_per_worker=1.0)
    with pytest.raises(TrainError, match="GPUs"):
        worker_resources(1, use_gpu=True, cpus_per_worker=None)


def test_cpu_share_fills_big_nodes_and_fits_every_worker():
    assert cpu_share(1, [2.0]) == 1.0 and cpu_share(4, [2.0]) == 0.25 and cpu_share(1, [1.0]) == 0.5
    assert cpu_share(2, [16.0]) == 7.5  # not one CPU each: torch gets 7 threads per worker
    # 17 spare CPUs / 4 = 4.25 each would fit only 3 workers on the 16-CPU node and none on the other.
    assert cpu_share(4, [2.0, 16.0]) == 4.0
    assert cpu_share(3, [4.0, 4.0]) == 2.0  # 7 / 3 = 2.33 fits two workers, not three
    for workers, nodes in [(1, [2.0]), (4, [2.0]), (3, [4.0, 4.0]), (5, [2.0, 16.0]), (8, [1.0, 3.0, 8.0])]:
        share = cpu_share(workers, nodes)
        placed = sum(int(n / share + 1e-9) for n in nodes)
        assert placed >= workers and share * workers <= sum(nodes) - min(1.0, sum(nodes) / 2) + 1e-9


def _placements(workers: int, capacities: list[int]):
    """Every way to put `workers` reservations on nodes holding at most `capacities` each."""
    if not capacities:
        if workers == 0:
            yield ()
        return
    for here in range(min(workers, capacities[0]) + 1):
        for rest in _placements(workers - here, capacities[1:]):
            yield (here, *rest)


def test_cpu_share_leaves_a_whole_cpu_on_some_node_wherever_ray_places_the_workers():
    # Two equal nodes of 2 CPUs: 1.5 CPUs each left half a CPU per node and Ray Data's one-CPU
    # reading tasks nowhere to run (the job hung); four 16-CPU nodes the same at 15.75.
    assert cpu_share(2, [2.0, 2.0]) == 1.0 and cpu_share(4, [16.0] * 4) == 15.0
    for workers in range(1, 6):
        for nodes in (
            [2.0],
            [2.0, 2.0],
            [3.0, 3.0],
            [2.0, 4.0],
            [4.0, 4.0, 4.0],
            [16.0, 16.0],
            [2.0, 16.0],
            [1.0, 3.0, 8.0],
        ):
            share = cpu_share(workers, nodes)
            capacities = [int(n / share + 1e-9) for n in nodes]
            placements = list(_placements(workers, capacities))
            assert placements, (workers, nodes, share)
            for placement in placements:  # brute force, against keeps_free's counting argument
                assert any(n - k * share >= 1.0 - 1e-9 for n, k in zip(nodes, placement)), (
                    workers,
                    nodes,
                    share,
                    placement,
                )
            assert keeps_free(share, workers, nodes, 1.0)
    assert not keeps_free(1.5, 2, [2.0, 2.0], 1.0) and not keeps_free(15.75, 4, [16.0] * 4, 1.0)


def test_gpu_workers_reserve_their_nodes_cpus_for_feed_processes():
    def node(cpus, gpus=0.0, alive=True):
        return {"Alive": alive, "Resources": {"CPU": cpus, **({"GPU": gpus} if gpus else {})}}

    assert gpu_worker_cpus([node(16.0, 1.0)], 16.0, 1) == 15.0
    assert gpu_worker_cpus([node(96.0, 8.0), node(8.0)], 104.0, 8) == 95.0 / 8  # the CPU-only head does not count
    assert gpu_worker_cpus([node(96.0, 8.0), node(16.0, 1.0), node(64.0, 2.0, alive=False)], 112.0, 9) == 95.0 / 8
    assert gpu_worker_cpus([node(1.0, 1.0), node(4.0)], 5.0, 1) == 1.0  # too few on the GPU node: at most one
    assert feed_workers(True, {"GPU": 1, "CPU": 15.0}) == 14 and feed_workers(True, {"GPU": 1, "CPU": 1.0}) == 1
    assert feed_workers(False, {"CPU": 7.5}) == 0
    assert feed_workers(True, {"GPU": 1, "CPU": 15.0}, DigitTask()) == 0  # pixels already: nothing to prepare ahead


def test_eval_svhn_json_and_pictures(svhn_data, tmp_path, monkeypatch, s3):
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path)  # a relative --out must land here, not in a Ray worker's own directory
    run_training(
        DigitTask(DigitRecipe(model=TINY.model, epochs=1, min_steps=0, batch_size=32)),
        TrainSettings(data=svhn_data, out="run", workers=1),
        1,
    )
    assert (out / "model.pt").exists()
    # One worker: the same global batch and optimiser steps as the two-worker run above.
    metrics = json.loads((out / "metrics.jsonl").read_text())
    assert (metrics["global_batch"], metrics["worker_batch"], metrics["steps"]) == (32, 32, SVHN_STEPS)
    executable = str(Path(sys.executable).with_name("pose-jobs"))
    result = subprocess.run(
        [executable, "eval-svhn", "--data", svhn_data, "--model", str(out), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    figures = json.loads(result.stdout)
    assert figures["samples"] == 200 and 0 <= figures["accuracy"] <= 1 and len(figures["per_class"]) == 10
    assert sum(map(sum, figures["confusion"])) == 200
    assert all(Path(p).exists() for p in figures["pictures"])
    # --pictures takes an s3:// prefix as well as a folder.
    pictures = s3.make_bucket("pictures") + "/svhn"
    remote = subprocess.run(
        [executable, "eval-svhn", "--data", svhn_data, "--model", str(out), "--json", "--pictures", pictures],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, **s3.env()),
    )
    assert remote.returncode == 0, remote.stderr[-2000:]
    assert json.loads(remote.stdout)["pictures"] == [
        f"{pictures}/confusion-test.png",
        f"{pictures}/predictions-test.png",
    ]
    assert all(read_bytes(url, s3.options).startswith(b"\x89PNG") for url in json.loads(remote.stdout)["pictures"])
    missing = subprocess.run(
        [executable, "eval-svhn", "--data", svhn_data, "--model", str(tmp_path / "nothing")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and "not a trained model folder" in missing.stderr


def test_keypoints_train_evaluate_and_results_json(ray_cluster, tmp_path):
    """train-keypoints on two CPU workers for one epoch of tiny data, then eval-keypoints: PCK and
    COCO AP come out, the results JSON holds at most one result per ground-truth person, and pycocotools run
    on that file against the source annotations gives the AP that eval-keypoints reported."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from pose.synth.people import write_coco

    write_coco(tmp_path / "src", split="train", images=16, seed=21)
    write_coco(tmp_path / "src", split="val", images=4, seed=22)
    ingest("coco", str(tmp_path / "src"), str(tmp_path / "coco"), progress=False)

    executable = str(Path(sys.executable).with_name("pose-jobs"))
    common = ["--data", str(tmp_path / "coco")]
    tiny = ["--epochs", "1", "--batch-size", "8", "--input-size", "64x96"]

    # The feed processes that GPU workers use, forced on a CPU worker: the run trains and evaluates.
    result = subprocess.run(
        [executable, "train-keypoints", *common, "--out", str(tmp_path / "fed"), *tiny, "--feed-workers", "2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    fed = json.loads((tmp_path / "fed" / "model.json").read_text())["final"]
    assert fed["epoch"] == 1 and fed["loss"] > 0 and 0 <= fed["val_pck"] <= 1
    assert (fed["global_batch"], fed["worker_batch"]) == (8, 8) and fed["steps"] > 0
    result = subprocess.run(
        [executable, "train-keypoints", *common, "--out", str(tmp_path / "run"), "--workers", "2", *tiny],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 <= metrics["val_pck"] <= 1 and "val_ap" in metrics
    # 2 workers: half the global batch each, for the steps that 1 worker ran.
    assert (metrics["global_batch"], metrics["worker_batch"], metrics["steps"]) == (8, 4, fed["steps"])

    results_file = tmp_path / "results.json"
    result = subprocess.run(
        [
            executable,
            "eval-keypoints",
            *common,
            "--model",
            str(tmp_path / "run"),
            "--results",
            str(results_file),
            "--json",
            "--pictures",
            str(tmp_path / "pictures"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout)
    assert 0 <= figures["pck"] <= 1 and 0 <= figures["ap"] <= 1
    ground_truth = COCO(str(tmp_path / "src" / "annotations" / "person_keypoints_val2017.json"))
    results = json.loads(results_file.read_text())
    persons = [a for a in ground_truth.dataset["annotations"] if not a["iscrowd"] and a["num_keypoints"] > 0]
    # One prediction per annotated person (ground-truth boxes), then OKS-NMS as COCO keeps them.
    assert 0 < len(results) <= figures["instances"] == len(persons)
    assert {r["image_id"] for r in results} <= set(ground_truth.getImgIds())
    assert all(len(r["keypoints"]) == 17 * 3 and r["category_id"] == 1 for r in results)
    # Joints in the image's pixel frame, around the person whose box was cut (a crop-frame or
    # mis-mapped prediction lands elsewhere): within max(w, h) of a box centre, which holds the crop.
    boxes = {}
    for person in persons:
        boxes.setdefault(person["image_id"], []).append(person["bbox"])
    for result in results:
        joints = list(zip(result["keypoints"][0::3], result["keypoints"][1::3]))
        assert any(
            all(abs(x - (left + w / 2)) <= max(w, h) and abs(y - (top + h / 2)) <= max(w, h) for x, y in joints)
            for left, top, w, h in boxes[result["image_id"]]
        ), result
    # AP as pycocotools gives it for the file (0 for a model this briefly trained; the file and the
    # figure must still agree).
    check = COCOeval(ground_truth, ground_truth.loadRes(str(results_file)), "keypoints")
    check.evaluate()
    check.accumulate()
    check.summarize()
    assert check.stats[0] == pytest.approx(figures["ap"], abs=1e-9)
    assert (tmp_path / "pictures" / "keypoints-val.png").exists()


def test_a_run_folder_of_another_recipe_is_refused_not_resumed(tmp_path):
    """OUT holds a run of one recipe: the same recipe (asked for more epochs) goes on; another recipe
    or task is refused in one line naming what differs, before its checkpoints or model are taken."""
    from jobs.storage import StorageOptions
    from jobs.train import RUN_FILE, TrainError, check_same_run
    from pose.digit_task import DigitRecipe, DigitTask
    from pose.keypoint_task import KeypointRecipe, KeypointTask

    options = StorageOptions()
    run = DigitTask(DigitRecipe(epochs=3))
    check_same_run(run, str(tmp_path), options)  # an empty OUT: a new run
    (tmp_path / RUN_FILE).write_text(json.dumps(run.config()))
    check_same_run(DigitTask(DigitRecipe(epochs=30, min_steps=0)), str(tmp_path), options)

    with pytest.raises(TrainError, match=r"holds a run of another recipe \(recipe lr: 0\.2 there, 0\.05 here\)"):
        check_same_run(DigitTask(DigitRecipe(epochs=3, lr=0.05)), str(tmp_path), options)
    with pytest.raises(TrainError, match=r"task: \"svhn\" there, \"keypoints\" here"):
        check_same_run(KeypointTask(KeypointRecipe()), str(tmp_path), options)

    (tmp_path / RUN_FILE).unlink()  # a finished run from before run.json: its model.json says the same
    (tmp_path / "model.json").write_text(json.dumps({**run.config(), "epochs": 3}))
    with pytest.raises(TrainError, match="recipe lr"):
        check_same_run(DigitTask(DigitRecipe(epochs=3, lr=0.05)), str(tmp_path), options)


def test_a_loss_that_goes_non_finite_on_a_worker_is_one_line():
    from ray.train import WorkerGroupError
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback

    from jobs.train import TrainError, training_failure

    nan = FloatingPointError("detector: loss is nan at step 8 of the epoch; stopping training (lower the lr?)")
    wrapped = UserExceptionWithTraceback(nan, "Traceback (most recent call last):\n  ...\nFloatingPointError: ...")
    for failure in (nan, wrapped):  # as raised, and as Ray Train hands a worker's exception back
        error = training_failure("detector", WorkerGroupError("rank 0 failed\nTraceback ...", {0: failure}), 2)
        assert isinstance(error, TrainError) and "\n" not in str(error)
        assert str(error).startswith("detector: loss is nan at step 8") and "after 2 restart(s)" in str(error)

    other = training_failure("detector", WorkerGroupError("rank 1 failed", {1: KeyError("image")}), restarts=2)
    assert type(other) is RuntimeError and "rank 1 failed" in str(other)
