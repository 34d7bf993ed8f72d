"""The ingest job end to end: synthetic COCO and SVHN in the real formats, local and on the S3 test
server, with bad input mixed in; every input accounted for; re-runs idempotent."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.io

from jobs.datasets import read_table
from jobs.ingest import IngestError, ingest
from jobs.storage import filesystem, join, list_files, read_bytes
from pose.crops import cut_person_crop
from pose.images import decode_image
from pose.synth.digits import write_svhn
from pose.synth.people import write_coco

# ----------------------------------------------------------------------------------------------
# COCO


@pytest.fixture(scope="module")
def coco_source(tmp_path_factory) -> tuple[Path, dict]:
    """Synthetic COCO (folders) with bad input planted: a corrupt, an empty and a missing image, an
    annotation pointing at no image, and one with a keypoint outside its image."""
    root = tmp_path_factory.mktemp("coco") / "src"
    write_coco(root, split="train", images=12, seed=3)
    write_coco(root, split="val", images=6, seed=4)
    annotation_file = root / "annotations" / "person_keypoints_train2017.json"
    document = json.loads(annotation_file.read_text())
    images = sorted(document["images"], key=lambda i: i["id"])
    corrupt, empty, missing = images[1], images[2], images[3]
    (root / "train2017" / corrupt["file_name"]).write_bytes(b"\xff\xd8 definitely not a jpeg")
    (root / "train2017" / empty["file_name"]).write_bytes(b"")
    (root / "train2017" / missing["file_name"]).unlink()
    lost_images = {corrupt["id"], empty["id"], missing["id"]}
    victim = next(
        a
        for a in document["annotations"]
        if a["image_id"] not in lost_images and a["num_keypoints"] > 0 and not a["iscrowd"]
    )
    image = next(i for i in images if i["id"] == victim["image_id"])
    joint = next(j for j in range(17) if victim["keypoints"][3 * j + 2] > 0)
    victim["keypoints"][3 * joint] = image["width"] + 50
    dangling = {**victim, "id": 99_999_999, "image_id": 424_242}
    dangling["keypoints"] = [0] * 51
    document["annotations"].append(dangling)
    annotation_file.write_text(json.dumps(document))
    planted = {
        "lost_images": lost_images,
        "lost_annotations": {a["id"] for a in document["annotations"] if a["image_id"] in lost_images}
        | {victim["id"], dangling["id"]},
        "outside": victim["id"],
        "dangling": dangling["id"],
    }
    return root, planted


def test_coco_local_ingest_accounts_for_everything(ray_cluster, coco_source, tmp_path):
    src, planted = coco_source
    dest = str(tmp_path / "out")
    manifest = ingest("coco", str(src), dest, shard_size=4, progress=False)

    train = json.loads((src / "annotations" / "person_keypoints_train2017.json").read_text())
    val = json.loads((src / "annotations" / "person_keypoints_val2017.json").read_text())
    assert manifest["accounting"]["train"]["inputs"] == {"images": 12, "annotations": len(train["annotations"])}
    assert all(entry["balanced"] for entry in manifest["accounting"].values())
    assert manifest["shards"] == 3 + 2

    images, persons, crops, errors = (read_table(dest, t) for t in ("images", "persons", "person_crops", "errors"))
    assert images.num_rows == 12 - 3 + 6
    assert sorted(images.filter(pa.compute.equal(images["split"], "train"))["image_id"].to_pylist()) == sorted(
        i["id"] for i in train["images"] if i["id"] not in planted["lost_images"]
    )
    error_rows = errors.to_pylist()
    lost = {int(r["item"].split()[1]) for r in error_rows if r["kind"] == "image"}
    assert lost == planted["lost_images"]
    lost_annotations = {int(r["item"].split()[1]) for r in error_rows if r["kind"] == "annotation"}
    assert lost_annotations == planted["lost_annotations"]
    reasons = {r["item"]: r for r in error_rows}
    assert "outside the" in reasons[f"annotation {planted['outside']}"]["reason"]
    assert "does not list" in reasons[f"annotation {planted['dangling']}"]["reason"]
    assert any(r["stage"] == "decode" and "empty" in r["reason"] for r in error_rows)
    assert any(r["stage"] == "read" for r in error_rows if r["kind"] == "image")
    assert persons.num_rows + len(lost_annotations) == len(train["annotations"]) + len(val["annotations"])

    # Persons keep every COCO field exactly.
    by_id = {a["id"]: a for a in train["annotations"] + val["annotations"]}
    for row in persons.to_pylist():
        source = by_id[row["annotation_id"]]
        np.testing.assert_allclose(row["keypoints"], source["keypoints"], atol=1e-3)
        np.testing.assert_allclose(row["bbox"], source["bbox"], atol=1e-3)
        assert row["iscrowd"] == bool(source["iscrowd"]) and row["num_keypoints"] == source["num_keypoints"]
        assert json.loads(row["segmentation"]) == source["segmentation"]

    # Crops: one per non-crowd person with keypoints, pixels as cut from the source image.
    eligible = persons.filter(
        pa.compute.and_(pa.compute.invert(persons["iscrowd"]), pa.compute.greater(persons["num_keypoints"], 0))
    )
    assert crops.num_rows == eligible.num_rows > 0
    row = crops.slice(0, 1).to_pylist()[0]
    image_info = next(i for i in train["images"] + val["images"] if i["id"] == row["image_id"])
    split_folder = "train2017" if image_info in train["images"] else "val2017"
    original = decode_image((src / split_folder / image_info["file_name"]).read_bytes())
    source = by_id[row["annotation_id"]]
    expected = cut_person_crop(original, np.asarray(source["bbox"]), np.asarray(source["keypoints"]).reshape(17, 3))
    stored = decode_image(row["crop"])
    assert stored.shape == expected.pixels.shape
    assert np.abs(stored.astype(int) - expected.pixels.astype(int)).mean() < 3  # JPEG round trip only
    np.testing.assert_allclose(np.asarray(row["keypoints"]).reshape(17, 3), expected.keypoints, atol=1e-3)


def test_coco_rerun_changes_nothing(ray_cluster, coco_source, tmp_path):
    src, _ = coco_source
    dest = tmp_path / "out"
    ingest("coco", str(src), str(dest), shard_size=4, progress=False)
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in dest.rglob("*") if p.is_file()}
    time.sleep(0.05)
    ingest("coco", str(src), str(dest), shard_size=4, progress=False)
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in dest.rglob("*") if p.is_file()}
    assert set(after) == set(before)
    changed = [p for p in after if after[p][1] != before[p][1]]
    assert changed == []
    untouched = [p for p in after if after[p][0] == before[p][0]]
    assert len(untouched) == len(after) - 1  # only manifest.json is rewritten, with the same bytes

    # A DEST whose manifest has the layout from before ingest named its job is resumed as well:
    # no shard is redone, and the manifest is rewritten in the current layout.
    manifest_path = dest / "manifest.json"
    current = manifest_path.read_bytes()
    assert json.loads(current)["job"] == "ingest"
    manifest_path.write_text(json.dumps({k: v for k, v in json.loads(current).items() if k != "job"}))
    ingest("coco", str(src), str(dest), shard_size=4, progress=False)
    final = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in dest.rglob("*") if p.is_file()}
    assert {p: final[p] for p in final if p != manifest_path} == {p: after[p] for p in after if p != manifest_path}
    assert manifest_path.read_bytes() == current


def test_splits_ingested_one_run_each_equal_one_run_of_both(ray_cluster, coco_source, tmp_path):
    """`--split train`, then `--split val` into one DEST: the manifest keeps train (it listed only the
    last run's splits, so train vanished for every reader). Another source into that DEST is refused."""
    src, _ = coco_source
    ingest("coco", str(src), str(tmp_path / "both"), shard_size=4, progress=False)
    ingest("coco", str(src), str(tmp_path / "one-each"), splits=("train",), shard_size=4, progress=False)
    manifest = ingest("coco", str(src), str(tmp_path / "one-each"), splits=("val",), shard_size=4, progress=False)
    both = json.loads((tmp_path / "both" / "manifest.json").read_text())
    assert set(manifest["accounting"]) == {"train", "val"}
    assert {k: manifest[k] for k in ("tables", "accounting", "shards")} == {
        k: both[k] for k in ("tables", "accounting", "shards")
    }
    for table in ("images", "persons", "person_crops", "errors"):
        assert read_table(str(tmp_path / "one-each"), table).equals(read_table(str(tmp_path / "both"), table))

    other = tmp_path / "other-src"
    write_coco(other, split="val", images=2, seed=9)
    with pytest.raises(IngestError, match=r"one-each holds an ingest of coco .*src; give another DEST for .*other-src"):
        ingest("coco", str(other), str(tmp_path / "one-each"), progress=False)


def test_coco_s3_archives_to_s3_matches_local(ray_cluster, s3, tmp_path):
    """The published layout (zips), read in place from S3, gives the same rows as local folders."""
    folders, zips = tmp_path / "folders", tmp_path / "zips"
    for root, archives in ((folders, False), (zips, True)):
        write_coco(root, split="train", images=6, seed=7, archives=archives)
        write_coco(root, split="val", images=3, seed=8, archives=archives)
    assert sorted(p.name for p in zips.iterdir()) == ["annotations_trainval2017.zip", "train2017.zip", "val2017.zip"]
    src = s3.make_bucket("coco-archives") + "/coco"
    s3.upload(zips, src)
    s3_dest = s3.make_bucket("coco-out") + "/ingested"
    manifest = ingest("coco", src, s3_dest, s3.options, shard_size=4, progress=False)
    assert all(entry["balanced"] for entry in manifest["accounting"].values())
    local_dest = str(tmp_path / "local-out")
    ingest("coco", str(folders), local_dest, shard_size=4, progress=False)

    for table, key in (("images", "image_id"), ("persons", "annotation_id"), ("person_crops", "annotation_id")):
        remote = (
            read_table(s3_dest, table, options=s3.options)
            .sort_by(key)
            .drop_columns(["source"] if table == "images" else [])
        )
        local = read_table(local_dest, table).sort_by(key).drop_columns(["source"] if table == "images" else [])
        assert remote.num_rows == local.num_rows > 0
        if table == "person_crops":
            assert remote.drop_columns(["crop"]).equals(local.drop_columns(["crop"]))
        else:
            assert remote.equals(local), table
    sources = read_table(s3_dest, "images", options=s3.options)["source"].to_pylist()
    assert all(
        s.startswith(f"{src}/train2017.zip!train2017/") or s.startswith(f"{src}/val2017.zip!val2017/") for s in sources
    )
    assert list_files(join(s3_dest, "_commits"), s3.options, suffixes=(".json",))
    assert s3.secret_key not in read_bytes(join(s3_dest, "manifest.json"), s3.options).decode()


def test_coco_run_killed_midway_then_rerun_gives_the_same_result(ray_cluster, tmp_path, kill_after_first_commit):
    """A real kill (SIGKILL of the whole job) while shards are being written, then a re-run; the
    result equals a clean run's (made in this process: the same job without a kill)."""
    src = tmp_path / "src"
    write_coco(src, split="train", images=24, seed=11)  # 12 shards of 2: the kill lands after the first
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    command = [str(Path(sys.executable).with_name("pose-jobs")), "ingest", "coco", str(src)]
    committed = kill_after_first_commit(command + [str(killed), "--shard-size", "2"], killed, timeout=120)
    assert 0 < committed < 12, "the kill should land mid-way"
    assert not (killed / "manifest.json").exists()
    # A write cut short leaves only a hidden temporary file; every file under a final name is whole.
    for path in killed.rglob("*.parquet"):
        if not path.name.startswith("."):
            pq.read_table(path)

    subprocess.run(command + [str(killed), "--shard-size", "2"], check=True, capture_output=True, timeout=300)
    ingest("coco", str(src), str(clean), shard_size=2, progress=False)
    for table, key in (("images", "image_id"), ("persons", "annotation_id"), ("person_crops", "annotation_id")):
        assert read_table(str(killed), table).sort_by(key).equals(read_table(str(clean), table).sort_by(key)), table
    manifest = json.loads((killed / "manifest.json").read_text())
    assert manifest["accounting"]["train"]["balanced"] and manifest["shards"] == 12
    assert not [p for p in killed.rglob("*") if p.name.startswith(".") and p.is_file()], (
        "the re-run removes the killed run's temporaries"
    )


def test_two_staggered_runs_on_one_dest_both_finish_with_one_clean_result(ray_cluster, tmp_path):
    """A second run on a DEST that a first run is writing into must not take the first run's live
    temporaries for a killed run's (the first would die in os.replace): both finish, and the result
    is one clean run's."""
    src = tmp_path / "src"
    write_coco(src, split="train", images=24, seed=12)
    shared, clean = tmp_path / "shared", tmp_path / "clean"
    command = [
        str(Path(sys.executable).with_name("pose-jobs")),
        "ingest",
        "coco",
        str(src),
        str(shared),
        "--shard-size",
        "2",
    ]
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    first = subprocess.Popen(
        command, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None and not any((shared / "_commits").glob("*.json")):
        time.sleep(0.05)
    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    first_out, first_err = first.communicate(timeout=600)
    assert first.returncode == 0, first_err[-3000:]
    assert second.returncode == 0, second.stderr[-3000:]
    ingest("coco", str(src), str(clean), shard_size=2, progress=False)
    for table, key in (("images", "image_id"), ("persons", "annotation_id"), ("person_crops", "annotation_id")):
        assert read_table(str(shared), table).sort_by(key).equals(read_table(str(clean), table).sort_by(key)), table
    assert (
        json.loads((shared / "manifest.json").read_text())["accounting"]
        == json.loads((clean / "manifest.json").read_text())["accounting"]
    )
    assert not [p for p in shared.rglob("*") if p.name.startswith(".") and p.is_file()]


# ----------------------------------------------------------------------------------------------
# SVHN


def test_svhn_both_formats_from_s3(ray_cluster, s3, tmp_path):
    cropped, full = tmp_path / "cropped", tmp_path / "full"
    write_svhn(cropped, format="cropped", seed=1, train=300, test=100)
    write_svhn(full, format="full", seed=2, train=20, test=10)
    src = s3.make_bucket("svhn-src") + "/svhn"
    s3.upload(cropped, src)
    s3.upload(full, src)
    # A broken .mat beside the good ones: an error row, the job goes on.
    fs, path = filesystem(src, s3.options)
    fs.pipe_file(f"{path}/extra_32x32.mat", (cropped / "train_32x32.mat").read_bytes()[:5000])
    dest = s3.make_bucket("svhn-out") + "/svhn"
    manifest = ingest("svhn", src, dest, s3.options, shard_size=128, progress=False)
    assert manifest["accounting"]["train"]["balanced"] and manifest["accounting"]["test"]["balanced"]

    digits = read_table(dest, "digits", options=s3.options)
    mat = scipy.io.loadmat(cropped / "train_32x32.mat")
    train_cropped = digits.filter(pa.compute.equal(digits["source"], f"{src}/train_32x32.mat")).sort_by("index")
    assert train_cropped.num_rows == 300
    labels = mat["y"].reshape(-1) % 10
    assert train_cropped["label"].to_pylist() == labels.tolist()
    for i in (0, 127, 128, 299):  # across shard boundaries
        pixels = np.frombuffer(train_cropped["pixels"][i].as_py(), np.uint8).reshape(32, 32, 3)
        np.testing.assert_array_equal(pixels, mat["X"][:, :, :, i])

    numbers = read_table(dest, "numbers", options=s3.options)
    assert numbers.num_rows == 30
    total_boxes = sum(len(b) for b in numbers["boxes"].to_pylist())
    from_full = digits.filter(pa.compute.invert(pa.compute.ends_with(digits["source"], ".mat")))
    assert from_full.num_rows == total_boxes
    assert all(len(r["digits"]) == len(r["boxes"]) for r in numbers.to_pylist())

    errors = read_table(dest, "errors", options=s3.options).to_pylist()
    broken = [r for r in errors if r["kind"] == "file"]
    assert len(broken) == 1 and "extra_32x32.mat" in broken[0]["reason"] + broken[0]["source"]


# ----------------------------------------------------------------------------------------------
# CLI


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    executable = str(Path(sys.executable).with_name("pose-jobs"))
    return subprocess.run([executable, *args], capture_output=True, text=True, timeout=120, env=env)


def test_user_mistakes_are_one_line(tmp_path, s3):
    """The console script itself once (exit 2, one line, no traceback); the other mistakes through
    the same typer app in this process (each `pose-jobs` start costs ~10 s of imports on 2 cores)."""
    from typer.testing import CliRunner

    from jobs.cli import app

    result = run_cli("ingest", "coco", str(tmp_path / "nowhere"), str(tmp_path / "out"))
    assert (
        result.returncode == 2
        and result.stderr.count("\n") == 1
        and "nowhere" in result.stderr
        and "Traceback" not in result.stderr
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(app, ["ingest", "coco", str(empty), str(tmp_path / "out")])
    assert result.exit_code == 2 and "no COCO keypoint annotations" in result.stderr and result.stderr.count("\n") == 1
    env = {**s3.env(), "AWS_PROFILE": None}
    result = CliRunner().invoke(app, ["ingest", "svhn", "s3://no-such-bucket/svhn", str(tmp_path / "out")], env=env)
    assert result.exit_code == 2 and "no-such-bucket" in result.stderr and "does not exist" in result.stderr
    assert s3.secret_key not in result.stderr and result.stderr.count("\n") == 1
    env["AWS_SECRET_ACCESS_KEY"] = "wrong-secret"
    bucket = s3.make_bucket("guarded")
    result = CliRunner().invoke(app, ["ingest", "svhn", f"{bucket}/svhn", str(tmp_path / "out")], env=env)
    assert (
        result.exit_code == 2
        and "denied" in result.stderr
        and "wrong-secret" not in result.stderr
        and result.stderr.count("\n") == 1
    )


def test_show_pictures_from_source_and_from_parquet(ray_cluster, coco_source, tmp_path):
    """`pose-jobs show`: the same image drawn from the source files and from the ingested tables."""
    from PIL import Image

    from jobs.show import NothingToShow, show_coco, show_svhn

    src, _ = coco_source
    dest = str(tmp_path / "out")
    ingest("coco", str(src), dest, shard_size=4, progress=False)
    from_source = show_coco(str(src), tmp_path / "a", split="val", images=2)
    from_parquet = show_coco(dest, tmp_path / "b", split="val", images=2)
    assert [p.name for p in from_source] == [p.name for p in from_parquet] and len(from_source) == 2
    for a, b in zip(from_source, from_parquet):
        first, second = np.asarray(Image.open(a)), np.asarray(Image.open(b))
        assert first.shape == second.shape and first.std() > 10
        assert (
            np.abs(first.astype(int) - second.astype(int)).mean() < 2
        )  # same drawing; crops differ by a JPEG round trip

    with pytest.raises(NothingToShow, match=r"no image with id \[424242\]"):  # a user mistake: one line
        show_coco(dest, tmp_path / "b", split="val", image_ids=[424242])

    svhn_src = tmp_path / "svhn"
    write_svhn(svhn_src, format="full", seed=3, train=8, test=4)
    written = show_svhn(str(svhn_src), tmp_path / "c", digits=10, numbers=3)
    assert {p.name for p in written} == {"svhn-numbers-train.png", "svhn-numbers-test.png"}


def test_repeated_coco_ids_are_one_line_and_write_nothing(coco_source, tmp_path):
    """Two `images` entries with one id would give two `images` rows, an annotation twice and a crop
    from the wrong image: the file is refused in one line before anything is written."""
    from typer.testing import CliRunner

    from jobs.cli import app

    root, _ = coco_source
    source = tmp_path / "src"
    shutil.copytree(root, source)
    annotation_file = source / "annotations" / "person_keypoints_val2017.json"
    document = json.loads(annotation_file.read_text())
    first, second = sorted(document["images"], key=lambda i: i["id"])[:2]
    second["id"] = first["id"]
    annotation_file.write_text(json.dumps(document))
    result = CliRunner().invoke(app, ["ingest", "coco", str(source), str(tmp_path / "out")])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "person_keypoints_val2017.json: 'images' repeats id" in result.stderr and str(first["id"]) in result.stderr
    assert not (tmp_path / "out").exists()


def test_svhn_files_without_digits_are_errors_and_the_run_fails(ray_cluster, tmp_path):
    """A `.mat` with no digits is an error row naming the file; a source that yields no digit at all
    exits 2 saying so (it exited 0 with "all accounted for")."""
    from typer.testing import CliRunner

    from jobs.cli import app
    from pose.formats.svhn import write_cropped_mat

    source = tmp_path / "src"
    source.mkdir()
    write_cropped_mat(source / "train_32x32.mat", np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0, np.uint8))
    result = CliRunner().invoke(app, ["ingest", "svhn", str(source), str(tmp_path / "out")])
    last = result.stderr.strip().splitlines()[-1]  # after the progress line
    assert result.exit_code == 2 and last.startswith("pose-jobs: error: ") and "Traceback" not in result.stderr, (
        result.stderr
    )
    assert f"{source}: yielded no digits or numbers; 1 error row(s) in {tmp_path / 'out'}/errors" in last
    errors = read_table(str(tmp_path / "out"), "errors").to_pylist()
    assert len(errors) == 1 and "train_32x32.mat: holds no digits" in errors[0]["reason"]


def test_a_manifest_that_does_not_balance_fails_the_run():
    from jobs.ingest import check_outcome
    from jobs.shards import UnbalancedError

    accounting = {"val": {"inputs": {"images": 2}, "accounted": {"images": 3}, "balanced": False}}
    manifest = {"dataset": "coco", "tables": {"images": {"rows": 3}}, "accounting": accounting}
    with pytest.raises(
        UnbalancedError, match=r"out/manifest.json does not balance for val \(inputs \{'images': 2\}"
    ) as raised:
        check_outcome(manifest, "src", "out")
    assert raised.value.exit_code == 1
    manifest["accounting"]["val"].update(accounted={"images": 2}, balanced=True)
    check_outcome(manifest, "src", "out")
