"""The 17 COCO person keypoints: names, skeleton, left/right flip pairs and OKS sigmas.

Order and values are COCO's (`person_keypoints_*.json` categories and `cocoeval.py`).
"""

from __future__ import annotations

import numpy as np

JOINT_NAMES: tuple[str, ...] = (
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
)
NUM_JOINTS = len(JOINT_NAMES)

# Limbs as pairs of 1-based joint numbers, exactly as COCO's category "skeleton" field has them.
COCO_SKELETON: tuple[tuple[int, int], ...] = (
    (16, 14),
    (14, 12),
    (17, 15),
    (15, 13),
    (12, 13),
    (6, 12),
    (7, 13),
    (6, 7),
    (6, 8),
    (7, 9),
    (8, 10),
    (9, 11),
    (2, 3),
    (1, 2),
    (1, 3),
    (2, 4),
    (3, 5),
    (4, 6),
    (5, 7),
)
# The same limbs as 0-based index pairs, for drawing and geometry.
SKELETON: tuple[tuple[int, int], ...] = tuple((a - 1, b - 1) for a, b in COCO_SKELETON)

# Left/right pairs swapped by a horizontal flip (0-based).
FLIP_PAIRS: tuple[tuple[int, int], ...] = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))


def flip_index() -> np.ndarray:
    """Permutation `p` such that `keypoints[p]` is the joint order after a horizontal flip."""
    index = np.arange(NUM_JOINTS)
    for left, right in FLIP_PAIRS:
        index[left], index[right] = right, left
    return index


# Per-joint OKS sigmas from pycocotools' COCOeval (keypoint falloff, in units of object scale).
OKS_SIGMAS = (
    np.array([0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87, 0.89, 0.89])
    / 10.0
)

UPPER_BODY = tuple(range(0, 11))  # nose..right_wrist: used by the half-body augmentation
LOWER_BODY = tuple(range(11, 17))

# The person category as COCO's keypoint annotation files declare it.
PERSON_CATEGORY = {
    "supercategory": "person",
    "id": 1,
    "name": "person",
    "keypoints": list(JOINT_NAMES),
    "skeleton": [list(pair) for pair in COCO_SKELETON],
}
