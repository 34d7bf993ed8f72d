"""The synthetic COCO person world: real COCO 2017 format, truthful annotations, determinism."""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from scipy import ndimage

from pose.joints import JOINT_NAMES, NUM_JOINTS, PERSON_CATEGORY
from pose.synth import people
from pose.synth.people import render_scene, write_coco

IMAGES = 40
# pycocotools' decode trips over numpy 2's copy keyword; harmless, and not ours to fix.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)
JOINT = {name: index for index, name in enumerate(JOINT_NAMES)}


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, dict, COCO]:
    """40 train images in the folder layout, their summary and pycocotools' view of them."""
    dest = tmp_path_factory.mktemp("coco")
    summary = write_coco(dest, split="train", images=IMAGES, seed=3)
    return dest, summary, COCO(str(dest / "annotations" / "person_keypoints_train2017.json"))


def _persons(coco: COCO) -> list[dict]:
    return [a for a in coco.dataset["annotations"] if not a["iscrowd"]]


def test_json_has_coco_structure(written):
    dest, summary, coco = written
    document = coco.dataset
    assert list(document) == ["info", "licenses", "images", "annotations", "categories"]
    assert document["categories"] == [PERSON_CATEGORY]
    assert summary["images"] == len(document["images"]) == IMAGES
    assert summary["annotations"] == len(document["annotations"]) == summary["persons"] + summary["crowds"]
    for image in document["images"]:
        assert list(image) == [
            "license",
            "file_name",
            "coco_url",
            "height",
            "width",
            "date_captured",
            "flickr_url",
            "id",
        ]
        assert image["file_name"] == f"{image['id']:012d}.jpg"
    for annotation in document["annotations"]:
        assert list(annotation) == [
            "segmentation",
            "num_keypoints",
            "area",
            "iscrowd",
            "keypoints",
            "image_id",
            "bbox",
            "category_id",
            "id",
        ]
        assert annotation["category_id"] == 1 and annotation["image_id"] in coco.imgs
    image_ids = [image["id"] for image in document["images"]]
    annotation_ids = [annotation["id"] for annotation in document["annotations"]]
    assert len(set(image_ids)) == len(image_ids) and len(set(annotation_ids)) == len(annotation_ids)


def test_every_image_exists_decodes_and_has_its_size(written):
    dest, _, coco = written
    sizes = set()
    for image in coco.dataset["images"]:
        with Image.open(dest / "train2017" / image["file_name"]) as picture:
            assert picture.format == "JPEG" and picture.mode == "RGB"
            assert picture.size == (image["width"], image["height"])
            picture.load()
        assert max(picture.size) <= 640
        sizes.add(picture.size)
    assert len(sizes) >= 3  # various aspect ratios, as in COCO


def test_keypoints_are_coco_flags_inside_the_image(written):
    _, _, coco = written
    for annotation in _persons(coco):
        image = coco.imgs[annotation["image_id"]]
        points = np.array(annotation["keypoints"]).reshape(NUM_JOINTS, 3)
        assert all(isinstance(v, int) for v in annotation["keypoints"])
        x, y, v = points.T
        assert set(v) <= {0, 1, 2}
        assert np.array_equal(v == 0, (x == 0) & (y == 0))
        labelled = v > 0
        assert np.all((x[labelled] >= 0) & (x[labelled] <= image["width"] - 1))
        assert np.all((y[labelled] >= 0) & (y[labelled] <= image["height"] - 1))
        assert annotation["num_keypoints"] == int(labelled.sum())


def test_box_and_area_match_the_segmentation_mask(written):
    _, _, coco = written
    for annotation in coco.dataset["annotations"]:
        mask = coco.annToMask(annotation)
        assert mask.shape == (coco.imgs[annotation["image_id"]]["height"], coco.imgs[annotation["image_id"]]["width"])
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        x, y, w, h = annotation["bbox"]
        assert abs(x - cols[0]) <= 1 and abs(y - rows[0]) <= 1
        assert abs(x + w - (cols[-1] + 1)) <= 1 and abs(y + h - (rows[-1] + 1)) <= 1
        assert annotation["area"] == pytest.approx(mask.sum(), rel=0.03, abs=3)


def test_labelled_joints_sit_on_or_near_the_persons_mask(written):
    """A visible joint lies on its person's visible silhouette (segmentation outlines are
    simplified, so allow a pixel or two)."""
    _, _, coco = written
    for annotation in _persons(coco):
        mask = ndimage.binary_dilation(coco.annToMask(annotation), iterations=2)
        points = np.array(annotation["keypoints"]).reshape(NUM_JOINTS, 3)
        for x, y, v in points:
            if v == 2:
                assert mask[y, x]


def test_dataset_statistics_are_in_sensible_ranges(written):
    _, summary, coco = written
    persons = _persons(coco)
    per_image = [len(coco.getAnnIds(imgIds=[image_id], iscrowd=False)) for image_id in coco.imgs]
    flags = np.array([a["keypoints"][2::3] for a in persons])
    heights = np.array([a["bbox"][3] for a in persons])
    assert 1 <= per_image.count(0) <= IMAGES // 2  # some images without anybody
    assert max(per_image) <= 6 and 1.0 <= np.mean(per_image) <= 4.5
    assert 0.05 <= np.mean(flags == 1) <= 0.45  # occluded joints, v=1
    assert np.mean(flags == 2) >= 0.4  # mostly visible
    assert 0.005 <= np.mean(flags == 0) <= 0.3  # some joints cut off by the border
    assert heights.min() < 80 and heights.max() > 300  # small and large people
    assert summary["keypoints"] == int((flags > 0).sum())


def test_crowds_are_rle_without_keypoints():
    images, annotations = [], []
    for index in range(3):
        image, scene = render_scene(np.random.default_rng([9, index]), crowd_probability=1.0)
        images.append({"id": index, "height": image.shape[0], "width": image.shape[1]})
        assert sum(a["iscrowd"] for a in scene) == 1
        for number, annotation in enumerate(scene):
            annotations.append({**annotation, "image_id": index, "id": index * 100 + number})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": [PERSON_CATEGORY]}
    coco.createIndex()
    for annotation in (a for a in annotations if a["iscrowd"]):
        height, width = coco.imgs[annotation["image_id"]]["height"], coco.imgs[annotation["image_id"]]["width"]
        rle = annotation["segmentation"]
        assert set(rle) == {"counts", "size"} and rle["size"] == [height, width]
        assert all(isinstance(count, int) for count in rle["counts"]) and sum(rle["counts"]) == height * width
        assert annotation["num_keypoints"] == 0 and annotation["keypoints"] == [0] * 51
        mask = coco.annToMask(annotation)
        assert mask.sum() == annotation["area"] > 0


def test_same_seed_gives_the_same_bytes_and_another_seed_does_not(tmp_path):
    def files(dest: Path) -> dict[str, bytes]:
        return {str(p.relative_to(dest)): p.read_bytes() for p in sorted(dest.rglob("*")) if p.is_file()}

    write_coco(tmp_path / "a", split="val", images=4, seed=11)
    write_coco(tmp_path / "b", split="val", images=4, seed=11)
    write_coco(tmp_path / "c", split="val", images=4, seed=12)
    a, b, c = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "c")
    assert len(a) == 5 and a == b
    assert a["annotations/person_keypoints_val2017.json"] != c["annotations/person_keypoints_val2017.json"]
    assert a["val2017/001000000001.jpg"] != c["val2017/001000000001.jpg"]


def test_archives_have_the_public_bucket_layout(tmp_path):
    train = write_coco(tmp_path, split="train", images=3, seed=5, archives=True)
    with zipfile.ZipFile(tmp_path / "annotations_trainval2017.zip") as archive:
        train_json = archive.read("annotations/person_keypoints_train2017.json")
    val = write_coco(tmp_path, split="val", images=2, seed=5, archives=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "annotations_trainval2017.zip",
        "train2017.zip",
        "val2017.zip",
    ]
    assert train["annotation_file"] == val["annotation_file"] == str(tmp_path / "annotations_trainval2017.zip")

    with zipfile.ZipFile(tmp_path / "annotations_trainval2017.zip") as archive:
        infos = {info.filename: info for info in archive.infolist()}
        assert sorted(infos) == [
            "annotations/person_keypoints_train2017.json",
            "annotations/person_keypoints_val2017.json",
        ]
        assert all(info.compress_type == zipfile.ZIP_DEFLATED for info in infos.values())
        assert archive.read("annotations/person_keypoints_train2017.json") == train_json  # kept as it was
        documents = {
            split: json.loads(archive.read(f"annotations/person_keypoints_{split}2017.json"))
            for split in ("train", "val")
        }
    train_ids = {image["id"] for image in documents["train"]["images"]}
    val_ids = {image["id"] for image in documents["val"]["images"]}
    assert len(train_ids) == 3 and len(val_ids) == 2 and not train_ids & val_ids

    for split, ids in (("train", train_ids), ("val", val_ids)):
        with zipfile.ZipFile(tmp_path / f"{split}2017.zip") as archive:
            infos = archive.infolist()
            assert sorted(info.filename for info in infos) == sorted(f"{split}2017/{i:012d}.jpg" for i in ids)
            assert all(info.compress_type == zipfile.ZIP_STORED for info in infos)
            for info in infos:
                with Image.open(io.BytesIO(archive.read(info))) as picture:
                    assert picture.format == "JPEG"


def test_unknown_split_is_refused(tmp_path):
    with pytest.raises(ValueError, match="split"):
        write_coco(tmp_path, split="test", images=1)


# --- Visibility follows the picture: single people in controlled poses --------------------


def _paint_alone(
    pose: people.Pose, occluder: tuple[float, float, float, float] | None = None
) -> tuple[np.ndarray, people.Figure, np.ndarray]:
    """One person, 300 px tall, on a plain background; optionally a box (x0, y0, x1, y1) in front.

    Returns keypoints (17, 3), the figure and the label buffer.
    """
    rng = np.random.default_rng(0)
    body, clothing = people.BodyShape(), people.sample_clothing(rng)
    light = np.array([0.0, 0.0, 1.0])
    figure = people.build_figure(body, pose, clothing, 300.0, np.array([200.0, 170.0]), light)
    canvas = people.Canvas(Image.new("RGB", (400, 400), (128, 128, 128)))
    people.paint_figure(canvas, figure, 1)
    if occluder is not None:
        x0, y0, x1, y1 = occluder
        canvas.polygon(np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]), (10, 200, 10), 1)
    labels = np.asarray(canvas.labels)
    return people.keypoint_visibility(figure, 1, labels), figure, labels


def test_a_person_facing_the_camera_shows_every_joint_with_their_left_on_the_image_right():
    keypoints, _, _ = _paint_alone(people.Pose(yaw=0.0))
    assert np.all(keypoints[:, 2] == 2)
    for left, right in (
        (JOINT["left_shoulder"], JOINT["right_shoulder"]),
        (JOINT["left_hip"], JOINT["right_hip"]),
        (JOINT["left_eye"], JOINT["right_eye"]),
    ):
        assert keypoints[left, 0] > keypoints[right, 0]


def test_a_person_seen_from_behind_hides_the_face_and_mirrors_left_and_right():
    keypoints, _, _ = _paint_alone(people.Pose(yaw=180.0))
    face = [JOINT["nose"], JOINT["left_eye"], JOINT["right_eye"]]
    assert np.all(keypoints[face, 2] == 1)
    assert keypoints[JOINT["left_shoulder"], 0] < keypoints[JOINT["right_shoulder"], 0]
    assert np.all(keypoints[5:, 2] == 2)  # the body's joints are all in view


def test_in_profile_the_far_side_is_hidden():
    keypoints, _, _ = _paint_alone(people.Pose(yaw=90.0))  # facing the image's right: right side in view
    assert keypoints[JOINT["right_eye"], 2] == 2 and keypoints[JOINT["left_eye"], 2] == 1
    assert keypoints[JOINT["right_ear"], 2] == 2 and keypoints[JOINT["left_ear"], 2] == 1
    assert keypoints[JOINT["nose"], 2] == 2
    assert keypoints[JOINT["nose"], 0] > keypoints[JOINT["right_ear"], 0]
    assert keypoints[JOINT["left_shoulder"], 2] == 1


def test_an_object_in_front_hides_the_joints_it_covers():
    clear, figure, _ = _paint_alone(people.Pose())
    knee_y = clear[JOINT["left_knee"], 1]
    covered, _, labels = _paint_alone(people.Pose(), occluder=(0, knee_y - 20, 400, 400))
    lower = [JOINT[name] for name in ("left_knee", "right_knee", "left_ankle", "right_ankle")]
    assert np.all(covered[lower, 2] == 1)
    assert np.all(covered[:11, 2] == 2)
    # And the annotation's mask is the visible part only.
    annotation = people.person_annotation(figure, 1, labels)
    assert annotation["bbox"][1] + annotation["bbox"][3] <= knee_y - 20 + 1


def test_an_arm_behind_the_back_is_hidden_by_the_torso():
    pose = people.Pose(
        yaw=180.0,
        arm_elevation=(30.0, 10.0),
        arm_azimuth=(0.0, 20.0),
        elbow_flex=(110.0, 15.0),
        elbow_roll=(40.0, 20.0),
    )
    back_view, _, _ = _paint_alone(pose)
    # Seen from behind, a left hand folded across the belly is behind the torso.
    assert back_view[JOINT["left_wrist"], 2] == 1
    front_view, _, _ = _paint_alone(replace(pose, yaw=0.0))
    assert front_view[JOINT["left_wrist"], 2] == 2


def test_segmentation_covers_the_painted_person():
    _, figure, labels = _paint_alone(people.Pose(yaw=30.0, arm_elevation=(90.0, 140.0)))
    annotation = people.person_annotation(figure, 1, labels)
    drawn = (labels >> 6) == 1
    outlined = mask_utils.decode(
        mask_utils.merge(mask_utils.frPyObjects(annotation["segmentation"], *labels.shape))
    ).astype(bool)
    assert (drawn & outlined).sum() / (drawn | outlined).sum() > 0.95
