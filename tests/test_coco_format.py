import io
import json
import zipfile

import numpy as np
import pytest

from pose.formats import coco
from pose.joints import PERSON_CATEGORY


def test_zip_members_are_read_in_place_stored_and_deflated():
    buffer = io.BytesIO()
    payloads = {"val2017/000000000001.jpg": bytes(range(256)) * 40, "annotations/x.json": b'{"a": 1}' * 100}
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(zipfile.ZipInfo("val2017/"), b"")
        archive.writestr(
            "val2017/000000000001.jpg", payloads["val2017/000000000001.jpg"], compress_type=zipfile.ZIP_STORED
        )
        archive.writestr("annotations/x.json", payloads["annotations/x.json"], compress_type=zipfile.ZIP_DEFLATED)
    members = coco.index_zip(io.BytesIO(buffer.getvalue()), "test.zip")
    assert set(members) == set(payloads)  # directories are not members
    for name, data in payloads.items():
        assert coco.read_zip_member(io.BytesIO(buffer.getvalue()), members[name]) == data
    assert (
        coco.read_archive_member(io.BytesIO(buffer.getvalue()), "test.zip", "annotations/x.json")
        == payloads["annotations/x.json"]
    )


def test_truncated_archive_and_non_archive_are_format_errors():
    with pytest.raises(coco.CocoFormatError, match="bad.zip: not a readable zip"):
        coco.index_zip(io.BytesIO(b"nope"), "bad.zip")
    member = coco.ZipMember("a.jpg", 0, zipfile.ZIP_STORED, 1000, 1000)
    data = b"PK\x03\x04" + b"\0" * 22 + b"\x05\x00\x00\x00a.jpg" + b"x" * 10
    with pytest.raises(coco.CocoFormatError, match="truncated"):
        coco.read_zip_member(io.BytesIO(data), member)


def test_load_keypoints_json_checks_structure():
    good = {"images": [], "annotations": [], "categories": [PERSON_CATEGORY]}
    assert (
        coco.load_keypoints_json(io.BytesIO(json.dumps(good).encode()), "f.json")["categories"][0]["name"] == "person"
    )
    with pytest.raises(coco.CocoFormatError, match="f.json: not valid JSON"):
        coco.load_keypoints_json(io.BytesIO(b"{"), "f.json")
    with pytest.raises(coco.CocoFormatError, match="missing the 'annotations'"):
        coco.load_keypoints_json(io.BytesIO(b'{"images": [], "categories": []}'), "f.json")
    instances = dict(good, categories=[{"id": 1, "name": "person"}])
    with pytest.raises(coco.CocoFormatError, match="person_keypoints"):
        coco.load_keypoints_json(io.BytesIO(json.dumps(instances).encode()), "f.json")


def person(keypoints=None, bbox=(10, 10, 20, 40)):
    points = np.zeros((17, 3))
    points[0] = (15, 12, 2)
    if keypoints is not None:
        points = np.asarray(keypoints)
    return {"bbox": list(bbox), "keypoints": points.reshape(-1).tolist()}


def test_person_problem():
    assert coco.person_problem(person(), 100, 80) is None
    outside = np.zeros((17, 3))
    outside[9] = (150, 10, 2)
    assert "left_wrist at (150.0, 10.0) lies outside the 100x80 image" in coco.person_problem(person(outside), 100, 80)
    hidden_but_outside = np.zeros((17, 3))
    hidden_but_outside[9] = (150, 10, 0)  # unlabelled joints may hold anything
    assert coco.person_problem(person(hidden_but_outside), 100, 80) is None
    assert "not [x, y, w, h]" in coco.person_problem(person(bbox=(1, 2, 3)), 100, 80)
    bad_flag = np.zeros((17, 3))
    bad_flag[0, 2] = 3
    assert "visibility" in coco.person_problem(person(bad_flag), 100, 80)


def test_annotations_grouped_by_image_in_id_order():
    groups = coco.annotations_by_image([{"id": 3, "image_id": 1}, {"id": 1, "image_id": 1}, {"id": 2, "image_id": 5}])
    assert [a["id"] for a in groups[1]] == [1, 3] and [a["id"] for a in groups[5]] == [2]


def test_repeated_image_or_annotation_ids_are_refused_naming_the_file_and_ids():
    category = {**PERSON_CATEGORY}
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 10, "height": 10} for i in (1, 2, 2, 3, 3, 3)]
    document = {"images": images, "annotations": [], "categories": [category]}
    with pytest.raises(
        coco.CocoFormatError, match=r"person_keypoints_x\.json: 'images' repeats id 2, 3 \(COCO ids are unique"
    ):
        coco.load_keypoints_json(io.BytesIO(json.dumps(document).encode()), "person_keypoints_x.json")
    annotations = [{"id": 7, "image_id": 1}, {"id": 8, "image_id": 2}, {"id": 7, "image_id": 2}]
    document = {"images": images[:2], "annotations": annotations, "categories": [category]}
    with pytest.raises(coco.CocoFormatError, match=r"'annotations' repeats id 7 "):
        coco.load_keypoints_json(io.BytesIO(json.dumps(document).encode()), "a.json")
    document["annotations"] = annotations[:2]
    assert (
        coco.load_keypoints_json(io.BytesIO(json.dumps(document).encode()), "a.json")["annotations"] == annotations[:2]
    )
