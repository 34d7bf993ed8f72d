import numpy as np
import pytest

from pose.heatmaps import HeatmapCodec
from pose.joints import NUM_JOINTS, PERSON_CATEGORY
from pose.metrics import PckAccumulator, accuracy, coco_box_ap, coco_keypoint_ap, heatmap_pck, oks, oks_nms


def peaks(points, fill=0.0, h=64, w=48):
    """Heatmaps (N, K, h, w) of value `fill` with a 1 at each (x, y) of points[n][k]; None = empty."""
    heatmaps = np.full((len(points), len(points[0]), h, w), fill, np.float32)
    for n, row in enumerate(points):
        for k, point in enumerate(row):
            if point is not None:
                heatmaps[n, k, point[1], point[0]] = 1.0
    return heatmaps


def test_pck_perfect_is_one():
    keypoints = np.random.default_rng(0).uniform(20, 170, (4, NUM_JOINTS, 2))
    target = HeatmapCodec().encode(keypoints, np.ones((4, NUM_JOINTS)))[0]
    per_joint, mean, count = heatmap_pck(target, target)
    np.testing.assert_array_equal(per_joint, np.ones(NUM_JOINTS))
    assert mean == 1.0 and count == NUM_JOINTS


def test_pck_reproduces_simple_baselines_on_hand_made_heatmaps():
    # 64x48 maps: the original's norm is (h, w) / 10 = (6.4, 4.8), applied to (x, y) as is.
    target = peaks(
        [
            [(10, 10), (1, 20), None, (30, 30)],
            [(10, 10), (20, 1), (2, 2), (30, 30)],
        ]
    )
    output = peaks(
        [
            [(13, 10), (1, 20), (5, 5), (30, 30)],
            [(10, 13), (20, 1), (2, 2), (30, 30)],
        ]
    )
    output[0, 3] -= 1.5  # max -0.5 <= 0: the prediction becomes (0, 0)
    per_joint, mean, count = heatmap_pck(output, target)
    # joint 0: dx = 3 -> 3 / 6.4 = 0.47 hit; dy = 3 -> 3 / 4.8 = 0.63 miss.
    # joint 1: target x <= 1 or y <= 1 -> skipped. joint 2: empty target skipped, (2, 2) hit.
    # joint 3: non-positive prediction -> (0, 0) miss; exact hit.
    np.testing.assert_allclose(per_joint, [0.5, -1.0, 1.0, 0.5])
    assert mean == pytest.approx(2 / 3) and count == 3


def test_pck_threshold_is_strict_and_nothing_scored_gives_zero():
    target, output = peaks([[(10, 10)]]), peaks([[(13, 10)]])
    assert heatmap_pck(output, target, threshold=3 / 6.4)[1] == 0.0  # distance == threshold misses
    per_joint, mean, count = heatmap_pck(output, peaks([[None]]))
    assert per_joint.tolist() == [-1.0] and mean == 0.0 and count == 0


def test_accumulator_over_batches_equals_one_batch():
    rng = np.random.default_rng(1)
    keypoints = rng.uniform(-10, 200, (9, NUM_JOINTS, 2))  # some outside: empty targets
    target = HeatmapCodec().encode(keypoints, rng.random((9, NUM_JOINTS)) > 0.3)[0]
    output = target + rng.normal(0, 0.4, target.shape).astype(np.float32)
    accumulator = PckAccumulator()
    accumulator.update(output[:6], target[:6])
    accumulator.update(output[6:], target[6:])
    per_joint, mean, count = accumulator.result()
    expected = heatmap_pck(output, target)
    np.testing.assert_allclose(per_joint, expected[0])
    assert mean == pytest.approx(expected[1]) and count == expected[2]
    assert 0 < mean < 1


def person(rng, x, y, w, h):
    """COCO keypoints (17, 3) inside the box, a few unlabelled."""
    xs, ys = rng.uniform(x, x + w, NUM_JOINTS), rng.uniform(y, y + h, NUM_JOINTS)
    points = np.column_stack([xs, ys, np.full(NUM_JOINTS, 2.0)])
    points[rng.choice(NUM_JOINTS, 3, replace=False)] = 0
    return points


def test_oks_is_one_when_identical_and_falls_with_distance():
    ground_truth = person(np.random.default_rng(2), 100, 100, 80, 200)
    assert oks(ground_truth, ground_truth, area=16000) == pytest.approx(1.0)
    values = [oks(ground_truth + [d, 0, 0], ground_truth, area=16000) for d in (1, 5, 20)]
    assert 1 > values[0] > values[1] > values[2] > 0
    moved_unlabelled = ground_truth.copy()
    moved_unlabelled[ground_truth[:, 2] == 0, :2] += 50
    assert oks(moved_unlabelled, ground_truth, area=16000) == pytest.approx(1.0)
    # One labelled joint, d² = 2 · area · (2σ)²: exp(-1).
    single = np.zeros((NUM_JOINTS, 3))
    single[0] = [10, 10, 2]
    assert oks(single + [np.sqrt(2 * 100 * 0.052**2), 0, 0], single, area=100) == pytest.approx(np.exp(-1))


def test_oks_nms_drops_a_near_duplicate():
    rng = np.random.default_rng(3)
    first = person(rng, 100, 100, 80, 200)
    first[:, 2] = 0.9
    duplicate = first + np.column_stack([rng.normal(0, 0.5, (NUM_JOINTS, 2)), np.zeros(NUM_JOINTS)])
    other = person(rng, 300, 100, 80, 200)
    other[:, 2] = 0.9
    instances = [
        {"keypoints": duplicate, "score": 0.8, "area": 16000},
        {"keypoints": other, "score": 0.7, "area": 16000},
        {"keypoints": first, "score": 0.9, "area": 16000},
    ]
    assert oks_nms(instances) == [2, 1]
    assert oks_nms(instances, threshold=1.0) == [2, 0, 1]


def tiny_coco():
    """3 images, 4 persons (three large, one medium), as a COCO keypoints dataset dict."""
    rng = np.random.default_rng(4)
    boxes = {1: [(50, 40, 100, 250), (300, 60, 120, 300)], 2: [(200, 100, 60, 80)], 3: [(10, 10, 150, 300)]}
    annotations = []
    for image_id, image_boxes in boxes.items():
        for box in image_boxes:
            keypoints = person(rng, *box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "iscrowd": 0,
                    "bbox": list(box),
                    "area": float(box[2] * box[3]),
                    "keypoints": keypoints.ravel().tolist(),
                    "num_keypoints": int((keypoints[:, 2] > 0).sum()),
                }
            )
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 640, "height": 480} for i in boxes]
    return {"images": images, "annotations": annotations, "categories": [PERSON_CATEGORY]}


def keypoint_results(ground_truth, shift=0.0):
    results = []
    for annotation in ground_truth["annotations"]:
        keypoints = np.array(annotation["keypoints"], np.float64).reshape(-1, 3)
        keypoints[:, 0] += shift
        keypoints[:, 2] = 1.0
        results.append(
            {
                "image_id": annotation["image_id"],
                "category_id": 1,
                "keypoints": keypoints.ravel().tolist(),
                "score": 0.9,
            }
        )
    return results


def test_coco_keypoint_ap_perfect_and_shifted(capsys):
    ground_truth = tiny_coco()
    perfect = keypoint_results(ground_truth)
    stats = coco_keypoint_ap(ground_truth, perfect)
    assert set(stats) == {"ap", "ap50", "ap75", "ap_m", "ap_l", "ar", "ar50", "ar75", "ar_m", "ar_l"}
    assert (
        stats["ap"] == pytest.approx(1.0) and stats["ar"] == pytest.approx(1.0) and stats["ap_m"] == pytest.approx(1.0)
    )
    assert "keypoints" in perfect[0] and "area" not in perfect[0]  # results are not modified
    shifted = coco_keypoint_ap(ground_truth, keypoint_results(ground_truth, shift=8.0))
    assert 0 <= shifted["ap"] < 1.0
    assert coco_keypoint_ap(ground_truth, perfect[:2], image_ids=[1])["ap"] == pytest.approx(1.0)
    assert coco_keypoint_ap(ground_truth, [])["ap"] == 0.0
    assert capsys.readouterr().out == ""  # pycocotools' prints are silenced


def test_coco_box_ap_perfect():
    ground_truth = tiny_coco()
    results = [
        {"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 0.9}
        for a in ground_truth["annotations"]
    ]
    stats = coco_box_ap(ground_truth, results, category_ids=[1])
    assert stats["ap"] == pytest.approx(1.0) and stats["ar"] == pytest.approx(1.0)
    assert stats["ap_s"] == -1.0  # no small objects in the ground truth
    assert coco_box_ap(ground_truth, [])["ap"] == 0.0


def test_classification_accuracy():
    overall, per_class, confusion = accuracy([0, 1, 1, 2], [0, 1, 2, 2], num_classes=4)
    assert overall == 0.75
    np.testing.assert_allclose(per_class, [1.0, 1.0, 0.5, np.nan])
    np.testing.assert_array_equal(confusion[:3, :3], [[1, 0, 0], [0, 1, 0], [0, 1, 1]])
    assert confusion.sum() == 4
