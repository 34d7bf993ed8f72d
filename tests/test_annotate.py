"""The annotate job: its stages as plain functions, then end to end on the S3 test server over a
bucket of good and bad images, a real kill and re-run, and its COCO results through pycocotools.

The models are tiny and untrained (conftest's `tiny_models`: run folders, as train-detector and
train-keypoints write them). An untrained detector scores every class about equally, so its
person (and dog) logits are biased up: it then reports persons wherever its proposals fall, which
is all the pipeline needs to be checked.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs.annotate import (
    ONEDNN_CACHE_ENTRIES,
    AnnotateError,
    AnnotateSettings,
    Detector,
    KeypointModel,
    PersonCrops,
    annotate,
    annotation_row,
    box_results,
    draw_pictures,
    image_ids,
    keypoint_results,
    plan_resources,
    read_images,
    write_shard,
)
from jobs.datasets import read_table
from jobs.runtime import keeps_free
from jobs.storage import StorageOptions, filesystem, join, read_bytes
from pose import schema
from pose.keypoint_task import KeypointRecipe
from pose.metrics import coco_box_ap, coco_keypoint_ap
from pose.models.detector import DetectorConfig

DOG = 18  # a COCO category id, to have objects that are not persons
WIDTH, HEIGHT = 64, 96  # every good test image, as displayed: the same size, so batches pad alike


def encode(array_or_image, format: str, **kwargs) -> bytes:
    image = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    buffer = io.BytesIO()
    image.save(buffer, format=format, **kwargs)
    return buffer.getvalue()


def scene(seed: int) -> np.ndarray:
    """A smooth random (HEIGHT, WIDTH, 3) picture (no two alike)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (6, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR))


def png_declaring(width: int, height: int) -> bytes:
    """A PNG header claiming a huge image, with almost no data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def mixed_images() -> tuple[dict[str, bytes], set[str]]:
    """Relative path -> bytes: good images in every format and mode, and bad files. Returns the
    files and the names of those that must end in `errors`."""
    upright = scene(0)
    rotated = Image.fromarray(np.rot90(upright))  # stored turned left, EXIF 6: turn right to display
    exif = Image.Exif()
    exif[0x0112] = 6
    jpeg = encode(scene(3), "JPEG", quality=90)
    grey16 = (np.linspace(0, 65535, WIDTH * HEIGHT).reshape(HEIGHT, WIDTH)).astype(np.uint16)
    rgba = np.dstack([scene(5), np.full((HEIGHT, WIDTH), 90, np.uint8)])
    frames = [Image.fromarray(scene(6)).convert("P"), Image.fromarray(scene(7)).convert("P")]
    files = {
        "upright.png": encode(upright, "PNG"),
        "exif/rotated.png": encode(rotated, "PNG", exif=exif),
        "photos/IMG_0001.JPG": jpeg,
        "photos/cmyk.jpeg": encode(Image.fromarray(scene(4)).convert("CMYK"), "JPEG"),
        "photos/grey16.png": encode(grey16, "PNG"),
        "photos/alpha.PNG": encode(rgba, "PNG"),
        "photos/nested/deeper/anim.gif": encode(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "photos/pic.webp": encode(scene(8), "WEBP", quality=90),
        "photos/scan.TIFF": encode(scene(9), "TIFF"),
        "photos/old.bmp": encode(scene(10), "BMP"),
        "photos/really-a-png.jpg": encode(scene(11), "PNG"),
        "bad/empty.jpg": b"",
        "bad/truncated.jpg": jpeg[: len(jpeg) // 2],
        "bad/notes.png": b"these are my notes, not a picture",
        "bad/huge.png": png_declaring(100_000, 100_000),
        "readme.txt": b"not listed: not an image name",
    }
    bad = {"bad/empty.jpg", "bad/truncated.jpg", "bad/notes.png", "bad/huge.png"}
    return files, bad


def write_folder(files: dict[str, bytes], folder: Path) -> None:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


# ----------------------------------------------------------------------------------------------
# The stages, without Ray


def test_image_ids_are_coco_numbers_else_path_hashes():
    ids = image_ids(["/r/000000000139.jpg", "/r/a/5.png", "/r/b/5.png", "/r/cat.jpg", "/r/7.JPG"], "/r")
    assert ids[0] == 139 and ids[4] == 7
    assert len(set(ids)) == 5 and all(0 < i < 2**49 for i in ids)
    assert image_ids(["/r/cat.jpg"], "/r") == [ids[3]] == image_ids(["/elsewhere/cat.jpg"], "/elsewhere")


def test_resources_fit_the_cluster():
    settings = AnnotateSettings("d", "k")
    cpu = plan_resources(settings, cpus=2, gpus=0)
    assert not cpu.use_gpu and cpu.combined and cpu.detector_actors == 2
    assert cpu.detector_actors * cpu.actor_cpus + cpu.read_tasks * cpu.task_cpus <= 2
    split = plan_resources(AnnotateSettings("d", "k", keypoint_actors=1), cpus=4, gpus=0)
    assert not split.combined and split.detector_actors == 3 and split.keypoint_actors == 1
    assert (split.detector_actors + split.keypoint_actors) * split.actor_cpus + split.read_tasks * split.task_cpus <= 4
    # Equal nodes: every node keeps a reading task's quarter CPU, however the actors are placed.
    for nodes in ([2.0, 2.0], [16.0] * 4, [3.0, 3.0]):
        spread = plan_resources(settings, cpus=sum(nodes), gpus=0, node_cpus=nodes)
        assert keeps_free(spread.actor_cpus, spread.detector_actors, nodes, spread.task_cpus)
    # The cluster's CPUs less half a CPU, shared evenly, left 1/8 CPU on each of four 16-CPU nodes.
    assert not keeps_free(63.5 / 64, 64, [16.0] * 4, 0.25)
    gpu = plan_resources(settings, cpus=8, gpus=2)
    assert (
        gpu.use_gpu and gpu.detector_actors == 2 and (gpu.detector_actors + gpu.keypoint_actors) * gpu.actor_gpus <= 2
    )
    with pytest.raises(AnnotateError, match="no GPUs"):
        plan_resources(AnnotateSettings("d", "k", use_gpu=True), cpus=2, gpus=0)


def test_stages_chained_in_process(tiny_models, tmp_path):
    """read -> detect -> person inputs -> keypoints -> rows, as the actors run them."""
    detector_spec, keypoint_spec = tiny_models
    files, _ = mixed_images()
    write_folder({k: files[k] for k in ("upright.png", "exif/rotated.png", "bad/empty.jpg")}, tmp_path)
    sources = [str(tmp_path / "upright.png"), str(tmp_path / "exif/rotated.png"), str(tmp_path / "bad/empty.jpg")]
    batch = {
        "image_id": np.array([1, 2, 3]),
        "source": np.array(sources, dtype=object),
        "split": np.array(["", "", ""], dtype=object),
    }
    batch = read_images(batch, StorageOptions())
    assert list(batch["error_stage"]) == ["", "", "decode"] and list(batch["width"][:2]) == [WIDTH, WIDTH]
    recipe = KeypointRecipe(input_size=(64, 96), deconv_channels=16)
    batch = Detector(detector_spec, StorageOptions(), PersonCrops(recipe.crop(), 0.3, 4))(batch)
    assert "pixels" not in batch
    batch = KeypointModel(keypoint_spec, StorageOptions(), batch_size=3)(batch)
    first, second = (
        annotation_row({k: v[i] for k, v in batch.items()}, DetectorConfig().category_names()) for i in (0, 1)
    )
    assert first["width"] == WIDTH and first["height"] == HEIGHT and first["persons"]
    assert {d["category"] for d in first["detections"]} <= {"person", "dog"}
    # The EXIF-rotated file is the upright picture: the same detections and keypoints.
    assert first["detections"] == second["detections"]
    np.testing.assert_allclose(
        [p["keypoints"] for p in first["persons"]], [p["keypoints"] for p in second["persons"]], atol=1e-4
    )
    for person in first["persons"]:
        assert len(person["keypoints"]) == 51 and 0 <= person["score"] <= person["box_score"] <= 1
    pa.Table.from_pylist([first, second], schema=schema.ANNOTATIONS)  # the rows fit the schema


def test_actors_cap_the_kernel_cache_unless_the_user_set_it(tiny_models, monkeypatch):
    """Each actor caps oneDNN's kernel cache in its own process when it is built (before its first
    convolution); a value already in the environment is kept."""
    from pose.topdown import CropConvention

    detector_spec, keypoint_spec = tiny_models
    crops = PersonCrops(CropConvention((64, 96), 1.25, "pose-jobs"), 0.3, 4)
    for build in (
        lambda: Detector(detector_spec, StorageOptions(), crops),
        lambda: KeypointModel(keypoint_spec, StorageOptions()),
    ):
        for preset, expected in ((None, ONEDNN_CACHE_ENTRIES), ("64", "64")):
            if preset is None:
                monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
            else:
                monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", preset)
            build()
            assert os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY") == expected


def test_results_of_perfect_annotations_score_ap_one():
    """An oracle: the ground truth written as annotation rows gives AP 1 through the results files."""
    rng = np.random.default_rng(0)
    images, annotations, rows = [], [], []
    for image_id in (11, 12, 13):
        images.append({"id": image_id, "width": 200, "height": 160, "file_name": f"{image_id:012d}.jpg"})
        persons, detections = [], []
        for n in range(2):
            x, y = rng.uniform(10, 90), rng.uniform(10, 60)
            box = [x, y, 60.0, 90.0]
            points = np.stack([rng.uniform(x, x + 60, 17), rng.uniform(y, y + 90, 17), np.full(17, 2.0)], 1)
            annotations.append(
                {
                    "id": image_id * 10 + n,
                    "image_id": image_id,
                    "category_id": 1,
                    "bbox": box,
                    "area": 5400.0,
                    "keypoints": points.reshape(-1).tolist(),
                    "num_keypoints": 17,
                    "iscrowd": 0,
                }
            )
            persons.append(
                {
                    "bbox": box,
                    "box_score": 0.9,
                    "keypoints": np.concatenate([points[:, :2], np.ones((17, 1))], 1).reshape(-1).tolist(),
                    "score": 0.9,
                }
            )
            detections.append({"bbox": box, "category_id": 1, "category": "person", "score": 0.9})
        rows.append(
            {
                "image_id": image_id,
                "source": "x",
                "split": None,
                "width": 200,
                "height": 160,
                "detections": detections,
                "persons": persons,
            }
        )
    truth = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "person"}]}
    table = pa.Table.from_pylist(rows, schema=schema.ANNOTATIONS)
    assert coco_keypoint_ap(truth, list(keypoint_results(table)))["ap"] == pytest.approx(1.0)
    assert coco_box_ap(truth, list(box_results(table)))["ap"] == pytest.approx(1.0)


def test_pictures_are_drawn_in_image_coordinates(tmp_path):
    """A known person and a dog drawn where the row says they are, on the source's pixels."""
    grey = np.full((120, 160, 3), 128, np.uint8)
    (tmp_path / "grey.png").write_bytes(encode(grey, "PNG"))
    keypoints = np.zeros((17, 3))
    keypoints[:, 0], keypoints[:, 1], keypoints[:, 2] = np.linspace(95, 125, 17), np.linspace(30, 100, 17), 0.9
    keypoints[3, 2] = 0.1  # not confident: not drawn
    row = {
        "image_id": 7,
        "source": str(tmp_path / "grey.png"),
        "split": None,
        "width": 160,
        "height": 120,
        "detections": [
            {"bbox": [90, 20, 40, 90], "category_id": 1, "category": "person", "score": 0.9},
            {"bbox": [10, 60, 30, 30], "category_id": DOG, "category": "dog", "score": 0.8},
            {"bbox": [10, 10, 20, 20], "category_id": DOG, "category": "dog", "score": 0.2},
        ],
        "persons": [
            {"bbox": [90, 20, 40, 90], "box_score": 0.9, "keypoints": keypoints.reshape(-1).tolist(), "score": 0.8}
        ],
    }
    marker = write_shard(
        "00000", {"annotations": [row], "errors": []}, str(tmp_path / "out"), StorageOptions(), "fingerprint"
    )
    assert draw_pictures(
        str(tmp_path / "out"), StorageOptions(), {"00000": marker}, DetectorConfig().category_names(), 5
    ) == ["pictures/7.png"]
    picture = np.asarray(Image.open(tmp_path / "out" / "pictures" / "7.png")).astype(int)
    assert picture.shape == grey.shape
    changed = np.abs(picture - 128).sum(-1) > 30
    assert changed[int(keypoints[8, 1]), int(keypoints[8, 0])]  # a joint
    assert changed[110, 90:130].any() or changed[109, 90:130].any()  # the person box's bottom edge
    assert changed[89, 10:40].any()  # the dog's
    assert not changed[25:28, 14:26].any()  # a dog scoring below 0.5 is not drawn
    assert not changed[100:, :60].any() and not changed[30:, 140:].any()  # nothing elsewhere (labels sit on top)


# ----------------------------------------------------------------------------------------------
# End to end


def test_bucket_of_good_and_bad_images_from_s3(ray_cluster, s3, tiny_models, tmp_path):
    files, bad = mixed_images()
    src = s3.make_bucket("annotate-src") + "/images"
    fs, root = filesystem(src, s3.options)
    for name, data in files.items():
        fs.pipe_file(f"{root}/{name}", data)
    dest = s3.make_bucket("annotate-out") + "/run"
    settings = AnnotateSettings(*tiny_models, shard_images=4, detector_batch=1)
    manifest = annotate(src, dest, settings, s3.options, visualize=3, progress=False)

    listed = {name for name in files if not name.endswith(".txt")}
    assert manifest["images"] == {
        "listed": len(listed),
        "annotated": len(listed - bad),
        "errors": len(bad),
        "balanced": True,
    }
    annotations, errors = (
        read_table(dest, "annotations", options=s3.options),
        read_table(dest, "errors", options=s3.options),
    )
    by_source = {row["source"][len(src) + 1 :]: row for row in annotations.to_pylist()}
    failed = {row["source"][len(src) + 1 :]: row for row in errors.to_pylist()}
    assert set(by_source) == listed - bad and set(failed) == bad  # each file once, on one side
    ids = annotations["image_id"].to_pylist() + [int(r["item"].split()[1]) for r in failed.values()]
    assert len(ids) == len(set(ids)) == len(listed)
    assert "empty" in failed["bad/empty.jpg"]["reason"] and "truncated" in failed["bad/truncated.jpg"]["reason"]
    assert (
        "not an image" in failed["bad/notes.png"]["reason"] and "10000000000 pixels" in failed["bad/huge.png"]["reason"]
    )
    assert {r["stage"] for r in failed.values()} == {"decode"}

    # Every good image in its displayed frame, with boxes and joints inside it.
    for name, row in by_source.items():
        assert (row["width"], row["height"]) == (WIDTH, HEIGHT), name
        assert row["detections"] and row["persons"], name
        for detection in row["detections"]:
            x, y, w, h = detection["bbox"]
            assert -0.01 <= x and x + w <= WIDTH + 0.01 and -0.01 <= y and y + h <= HEIGHT + 0.01
    upright, rotated = by_source["upright.png"], by_source["exif/rotated.png"]
    assert len(upright["detections"]) == len(rotated["detections"])
    for a, b in zip(upright["detections"], rotated["detections"]):
        np.testing.assert_allclose(a["bbox"], b["bbox"], atol=1e-3)
        assert a["category_id"] == b["category_id"] and a["score"] == pytest.approx(b["score"], abs=1e-5)
    np.testing.assert_allclose(
        [p["keypoints"] for p in upright["persons"]], [p["keypoints"] for p in rotated["persons"]], atol=1e-3
    )

    # COCO results: one keypoint entry per person, one box entry per detection.
    keypoint_entries = json.loads(read_bytes(join(dest, "results/keypoints.json"), s3.options))
    box_entries = json.loads(read_bytes(join(dest, "results/boxes.json"), s3.options))
    assert len(keypoint_entries) == sum(len(r["persons"]) for r in by_source.values())
    assert len(box_entries) == sum(len(r["detections"]) for r in by_source.values())

    assert len(manifest["pictures"]) == 3
    picture = Image.open(io.BytesIO(read_bytes(join(dest, manifest["pictures"][0]), s3.options)))
    assert picture.size == (WIDTH, HEIGHT)

    # Re-running over a finished DST does no work and changes no row.
    again = annotate(src, dest, settings, s3.options, visualize=3, progress=False)
    assert again["images"] == manifest["images"]
    assert read_table(dest, "annotations", options=s3.options).equals(annotations)


def test_killed_midway_then_rerun_has_one_row_per_image(tiny_models, tmp_path, kill_after_first_commit):
    """Local to local through the command line: a real kill of the job's process group while
    shards are being written, then a re-run."""
    files, bad = mixed_images()
    src = tmp_path / "src"
    write_folder({name: data for name, data in files.items() if name not in bad}, src)
    for copy in range(3):  # enough shards for the kill to land mid-way
        write_folder(
            {f"more/{copy}/{name}": data for name, data in files.items() if name not in bad and name.endswith(".png")},
            src,
        )
    listed = sum(1 for p in src.rglob("*") if p.is_file() and not p.name.endswith(".txt"))
    dest = tmp_path / "out"
    command = [
        str(Path(sys.executable).with_name("pose-jobs")),
        "annotate",
        str(src),
        str(dest),
        "--detector",
        tiny_models[0],
        "--keypoints",
        tiny_models[1],
        "--shard-size",
        "2",
    ]
    committed = kill_after_first_commit(command, dest, timeout=300)
    shards = -(-listed // 2)
    assert 0 < committed < shards, "the kill should land mid-way"
    assert not (dest / "manifest.json").exists()
    for path in dest.rglob("*.parquet"):  # a file under its final name is whole (temporaries are dot-files)
        if not path.name.startswith("."):
            pq.read_table(path)

    result = subprocess.run(command + ["--visualize", "2"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert f"{listed} images: {listed} annotated, 0 in errors -> all accounted for" in result.stdout
    annotations = read_table(str(dest), "annotations")
    assert annotations.num_rows == listed and len(set(annotations["image_id"].to_pylist())) == listed
    assert len(set(annotations["source"].to_pylist())) == listed
    assert len(list((dest / "_commits").glob("*.json"))) == shards
    assert len(list((dest / "pictures").glob("*.png"))) == 2
    assert not [p for p in dest.rglob(".*") if p.is_file()], "the re-run removed the killed run's temporary files"


def test_ingested_coco_to_results_that_pycocotools_evaluates(ray_cluster, tiny_models, tmp_path):
    """SRC an ingested COCO split: the image ids are COCO's, and both results files load and
    evaluate against the ingested ground truth."""
    from jobs.evaluate import keypoint_ground_truth
    from jobs.ingest import ingest
    from pose.synth.people import write_coco

    write_coco(tmp_path / "coco", split="val", images=3, seed=5)
    ingest("coco", str(tmp_path / "coco"), str(tmp_path / "ingested"), progress=False)
    dest = str(tmp_path / "out")
    manifest = annotate(str(tmp_path / "ingested"), dest, AnnotateSettings(*tiny_models), progress=False)
    assert manifest["images"]["balanced"] and manifest["images"]["annotated"] == 3

    truth = keypoint_ground_truth(str(tmp_path / "ingested"), "val", StorageOptions())
    annotations = read_table(dest, "annotations")
    assert sorted(annotations["image_id"].to_pylist()) == sorted(i["id"] for i in truth["images"])
    assert set(annotations["split"].to_pylist()) == {"val"}
    keypoint_entries = json.loads(Path(dest, "results/keypoints.json").read_text())
    box_entries = json.loads(Path(dest, "results/boxes.json").read_text())
    assert keypoint_entries and box_entries
    keypoint_figures = coco_keypoint_ap(truth, keypoint_entries)
    box_figures = coco_box_ap(truth, box_entries, category_ids=[1])
    for figures in (keypoint_figures, box_figures):
        assert all(-1 <= value <= 1 for value in figures.values())

    # The two-pool plan (GPUs, or --keypoint-actors on CPUs) annotates exactly as the one-pool CPU plan.
    split = annotate(
        str(tmp_path / "ingested"),
        str(tmp_path / "split"),
        AnnotateSettings(*tiny_models, keypoint_actors=1),
        progress=False,
    )
    assert split["images"]["balanced"]
    columns = ["image_id", "detections", "persons"]
    assert (
        read_table(str(tmp_path / "split"), "annotations").select(columns).sort_by("image_id").to_pylist()
        == annotations.select(columns).sort_by("image_id").to_pylist()
    )


def test_user_mistakes_are_one_line(tiny_models, tmp_path):
    """The console script itself once; the other mistakes through the same typer app in this
    process (each `pose-jobs` start costs ~10 s of imports on 2 cores)."""
    from typer.testing import CliRunner

    from jobs.cli import app

    executable = str(Path(sys.executable).with_name("pose-jobs"))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no pictures here")
    for src, detector, expected in (
        (empty, tiny_models[0], "no images found"),
        (tmp_path / "nowhere", tiny_models[0], "no such file"),
        (empty, tiny_models[1], "not a 'detector' model"),
    ):
        if "not a" in expected:
            Image.new("RGB", (8, 8)).save(empty / "one.png")
        args = ["annotate", str(src), str(tmp_path / "out"), "--detector", detector, "--keypoints", tiny_models[1]]
        if expected == "no images found":
            run = subprocess.run([executable, *args], capture_output=True, text=True, timeout=120)
            exit_code, stderr = run.returncode, run.stderr
        else:
            result = CliRunner().invoke(app, args)
            exit_code, stderr = result.exit_code, result.stderr
        assert exit_code == 2 and expected in stderr and stderr.count("\n") == 1, stderr


def test_given_boxes_give_the_keypoints_that_eval_keypoints_gives(ray_cluster, tmp_path):
    """`annotate --boxes FILE` and `eval-keypoints --boxes FILE` run one top-down chain: the same
    persons, keypoints and scores (in float32) for a published file, through the actors as through
    the evaluation (models trained here take the same chain: tests/test_topdown.py); other
    categories in the file are ignored, and an image without boxes is annotated with no persons."""
    import published

    from jobs.annotate import boxes_by_image
    from jobs.evaluate import evaluate_topdown, keypoint_ground_truth
    from jobs.ingest import ingest
    from pose.synth.people import write_coco

    write_coco(tmp_path / "coco", split="val", images=3, seed=7)
    ingested = str(tmp_path / "ingested")
    ingest("coco", str(tmp_path / "coco"), ingested, progress=False)
    truth = keypoint_ground_truth(ingested, "val", StorageOptions())
    boxed = sorted({a["image_id"] for a in truth["annotations"] if not a["iscrowd"]})[:2]
    assert boxed and len(truth["images"]) > len(boxed)
    entries = [
        {"image_id": a["image_id"], "category_id": 1, "bbox": [v + 3.0 for v in a["bbox"]], "score": 0.5 + 0.1 * n}
        for n, a in enumerate(truth["annotations"])
        if a["image_id"] in boxed
    ]
    entries.append({"image_id": boxed[0], "category_id": DOG, "bbox": [1.0, 1.0, 20.0, 20.0], "score": 0.99})
    (tmp_path / "boxes.json").write_text(json.dumps(entries))

    spec = str(tmp_path / "rtmpose-tiny_simcc-coco_pt-aic-coco_420e-256x192-e613ba3f_20230127.pth")
    published.write_mmpose_checkpoint(spec, "mmpose-rtmpose-t", 0)
    settings = AnnotateSettings(None, spec, boxes=str(tmp_path / "boxes.json"), precision="fp32")
    manifest = annotate(ingested, str(tmp_path / "out"), settings, progress=False)
    assert manifest["images"]["balanced"] and manifest["images"]["annotated"] == 3
    annotations = read_table(str(tmp_path / "out"), "annotations").to_pylist()
    assert all(d["category"] == "person" for row in annotations for d in row["detections"])
    assert [len(row["persons"]) == 0 for row in sorted(annotations, key=lambda r: r["image_id"])].count(True) >= 1
    annotated = json.loads(Path(tmp_path, "out", "results/keypoints.json").read_text())

    figures = evaluate_topdown(
        ingested, spec, "val", StorageOptions(), boxes=boxes_by_image(entries), results_file=str(tmp_path / "eval.json")
    )
    evaluated = json.loads(Path(tmp_path, "eval.json").read_text())
    assert figures["instances"] == len(entries) - 1 and len(evaluated) == len(annotated) > 0
    key = lambda r: r["image_id"]  # noqa: E731 - within an image both keep the chain's order
    for a, e in zip(sorted(annotated, key=key), sorted(evaluated, key=key)):
        assert a["image_id"] == e["image_id"] and abs(a["score"] - e["score"]) < 1e-4
        np.testing.assert_allclose(a["keypoints"], e["keypoints"], atol=0.01)


def test_keypoint_rcnn_rows_keep_their_own_persons_and_scores():
    """With torchvision's Keypoint R-CNN the detector stage gives the keypoints too: each chosen
    person keeps the model's keypoints and its box score (no rescoring by the joints' logits, no
    OKS-NMS), best first; other classes and low scores get none."""
    from jobs.annotate import KeypointDetector

    stage = object.__new__(KeypointDetector)  # the model itself is tested in test_keypoint_rcnn.py
    stage.crops = PersonCrops(None, 0.3, 4)
    rng = np.random.default_rng(0)
    keypoints = np.concatenate([rng.uniform(0, 60, (3, 17, 2)), rng.normal(0, 5, (3, 17, 1))], axis=-1).astype(
        np.float32
    )
    found = {
        0: {
            "boxes": np.array([[1, 2, 30, 60], [3, 4, 20, 40], [5, 5, 10, 10]], np.float32),
            "scores": np.array([0.9, 0.6, 0.2], np.float32),
            "labels": np.array([1, 1, 1]),
            "keypoints": keypoints,
        }
    }
    batch = {
        "image_id": np.array([5]),
        "source": np.array(["a.png"], dtype=object),
        "split": np.array([""], dtype=object),
        "width": np.array([64]),
        "height": np.array([96]),
        "pixels": np.array([b""], dtype=object),
        "det_boxes": np.array([found[0]["boxes"].tobytes()], dtype=object),
        "det_scores": np.array([found[0]["scores"].tobytes()], dtype=object),
        "det_labels": np.array([found[0]["labels"].astype(np.int64).tobytes()], dtype=object),
    }
    row = {k: v[0] for k, v in stage.persons(batch, found).items()}
    assert "pixels" not in row
    persons = annotation_row(row, ("__background__", "person"))["persons"]
    assert [p["score"] for p in persons] == pytest.approx([0.9, 0.6])  # the third scores under 0.3
    np.testing.assert_allclose(persons[0]["keypoints"], keypoints[0].reshape(-1), rtol=1e-6)
