"""The synthetic COCO person world: posed people in cluttered scenes, written as COCO 2017 keypoints.

No real COCO data can be downloaded where this project is built and tested, so this module makes
a stand-in that is byte-for-byte in the published format (`person_keypoints_{split}2017.json`
plus `{split}2017/NNNNNNNNNNNN.jpg`, or the public bucket's zip archives) and hard enough that
a proper top-down heatmap model visibly beats a toy one.

A person is an articulated 3D stick figure with COCO's 17 joints (body frame: X = the person's
own left, Y = up, Z = the way they face; one unit is about their standing height). Joint angles
are sampled within human ranges of motion from a few pose families (standing, walking, sitting,
crouching, arms raised, waving, free "action" poses). The figure is rotated to a view (yaw about
the vertical, camera elevation, in-plane roll) and projected orthographically; body parts are
painted back to front: a torso (trousers up to the waistband, a shirt above), tapered limbs,
hands, feet, a neck and a shaded head sphere with hair, and, on the side facing the camera, eyes,
eyebrows and a mouth, plus a nose and ears. So a front-facing person's left shoulder is on the
image's right, and a back-facing person shows hair and no face, as on real people.

A scene (`render_scene`) has 0-6 such people from 40 px tall to taller than the image (then cut
by its border), often in overlapping groups, sometimes a dense crowd of tiny people (one
`iscrowd: 1` annotation), objects standing in front of people (boxes, poles, tables, bushes,
signs), a cluttered background (gradient, blotches, stripes, random and skin-coloured shapes) and
camera effects (exposure, colour cast, uneven light, noise, sometimes blur).

Visibility is honest: every primitive is painted twice, into the RGB image and into a label
buffer that records which (person, body part) or occluding object owns each pixel. A joint is
visible (v=2) when the pixel under it belongs to one of the parts that show that joint (the
elbow shows on the upper arm or the forearm, the left eye on the head where the face turns to
the camera, ...); otherwise it is hidden (v=1), by the same person's other parts, another person
or an object. Joints outside the image are unlabelled (v=0, x=y=0), as COCO stores them. A
person's segmentation is the outline of their visible pixels, its `area` that mask's area and
its `bbox` the mask's tight box, so everything an annotation says can be checked against the
picture.

Coordinates: image pixels, x right, y down, origin at the top-left corner; keypoints follow the
pixel-centre convention (pixel (c, r) is centred on (c, r), as PIL draws and as COCO-trained
pose code flips them: x' = w - 1 - x) and are stored as integers, as in COCO's files;
segmentation polygons follow pycocotools' convention (pixel (c, r) covers [c, c+1) x [r, r+1)).
"""

from __future__ import annotations

import colorsys
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

import contourpy
import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter
from pycocotools import mask as mask_utils
from scipy import ndimage

from pose.formats.coco import ANNOTATION_ARCHIVE, SPLITS, annotation_member, image_archive, image_folder
from pose.images import encode_jpeg
from pose.joints import NUM_JOINTS, PERSON_CATEGORY

# ---------------------------------------------------------------------------------------------
# Dataset-level constants

# Image ids by split: train ids count up from 1, val ids from 1e9 + 1, so the two never collide
# (COCO's own ids are below 600,000; its file names have 12 digits, so both ranges fit).
SPLIT_ID_BASE = {"train": 0, "val": 1_000_000_000}
# Mixed into each image's random seed so that train and val images differ for the same seed.
_SPLIT_SEED = {"train": 1, "val": 2}
# An annotation id is image_id * 100 + its index in the image (< 100 annotations per image).
_ANNOTATIONS_PER_IMAGE_ID = 100
JPEG_QUALITY = 90
# Zip members get a fixed time stamp so that the same seed gives the same archive bytes.
_ZIP_DATE_TIME = (2017, 9, 1, 0, 0, 0)

# COCO-like image sizes (width, height) and how often they occur: longest side mostly 640.
IMAGE_SIZES = (
    (640, 480),
    (480, 640),
    (640, 427),
    (427, 640),
    (500, 375),
    (375, 500),
    (640, 360),
    (640, 512),
    (612, 612),
    (640, 425),
)
_IMAGE_SIZE_WEIGHTS = (0.30, 0.10, 0.20, 0.08, 0.07, 0.03, 0.07, 0.05, 0.05, 0.05)

# How many (non-crowd) people an image has: 0 to 6, some images empty.
_PEOPLE_COUNT_WEIGHTS = (0.12, 0.22, 0.18, 0.15, 0.12, 0.11, 0.10)
MIN_PERSON_HEIGHT = 40  # px, standing height of the smallest annotated people
# People whose visible silhouette is smaller than this are left out of the annotations, as COCO
# leaves out people nobody can see; their pixels still hide whatever is behind them.
MIN_VISIBLE_AREA = 60  # px^2
_POLYGON_TOLERANCE = 0.75  # px, Douglas-Peucker tolerance of the segmentation outlines

# ---------------------------------------------------------------------------------------------
# Body parts and their labels

# Part ids (1..18) within a person. Each label-buffer pixel holds (person slot << 6) | part id;
# occluding objects use labels 1..63 (slot 0) and the background is 0.
TORSO, NECK, HEAD, NOSE = 1, 2, 3, 4
EAR = (5, 6)  # (left, right), as every pair below
UPPER_ARM = (7, 8)
FOREARM = (9, 10)
HAND = (11, 12)
THIGH = (13, 14)
SHIN = (15, 16)
FOOT = (17, 18)
_PART_BITS = 6
_MAX_OCCLUDERS = 63

LEFT, RIGHT = 0, 1
_SIDE_SIGN = (1.0, -1.0)  # +X is the person's left

# Skin tones from very light to very dark, hair colours (dark ones listed more than once, as
# they are more common).
SKIN_TONES = (
    (255, 224, 196),
    (241, 204, 170),
    (234, 192, 134),
    (224, 172, 105),
    (198, 134, 66),
    (161, 102, 60),
    (141, 85, 36),
    (105, 66, 40),
    (75, 48, 32),
)
HAIR_COLOURS = (
    (20, 17, 15),
    (20, 17, 15),
    (45, 30, 20),
    (45, 30, 20),
    (80, 55, 35),
    (120, 80, 45),
    (190, 150, 90),
    (150, 60, 30),
    (150, 150, 150),
    (225, 225, 220),
)
TROUSER_COLOURS = ((40, 60, 110), (55, 75, 130), (25, 25, 30), (180, 160, 120), (110, 110, 115), (70, 50, 40))

Colour = tuple[int, int, int]


# ---------------------------------------------------------------------------------------------
# Bodies and poses


@dataclass(frozen=True)
class BodyShape:
    """Proportions of one person, in units of their standing height (about 1).

    Lengths are between joints (the torso from the hip line to the shoulder line); widths are
    the drawn thickness of each part.
    """

    head_radius: float = 0.066
    neck_length: float = 0.05
    torso_length: float = 0.29
    shoulder_half_width: float = 0.105
    hip_half_width: float = 0.075
    torso_depth: float = 0.12
    upper_arm: float = 0.165
    forearm: float = 0.145
    hand: float = 0.06
    thigh: float = 0.245
    shin: float = 0.235
    foot: float = 0.075
    upper_arm_width: float = 0.052
    forearm_width: float = 0.043
    thigh_width: float = 0.085
    shin_width: float = 0.062
    neck_width: float = 0.048


def sample_body_shape(rng: np.random.Generator) -> BodyShape:
    """A random adult or child build: lengths within +-7%, girth from slim to heavy."""

    def jitter(value: float) -> float:
        return value * rng.uniform(0.93, 1.07)

    base = BodyShape()
    girth = rng.uniform(0.8, 1.35)
    child = rng.random() < 0.1
    head = 1.25 if child else 1.0
    limbs = 0.88 if child else 1.0
    return BodyShape(
        head_radius=jitter(base.head_radius) * head,
        neck_length=jitter(base.neck_length) * limbs,
        torso_length=jitter(base.torso_length) * limbs,
        shoulder_half_width=jitter(base.shoulder_half_width) * (0.8 + 0.2 * girth) * limbs,
        hip_half_width=jitter(base.hip_half_width) * (0.75 + 0.25 * girth) * limbs,
        torso_depth=jitter(base.torso_depth) * girth,
        upper_arm=jitter(base.upper_arm) * limbs,
        forearm=jitter(base.forearm) * limbs,
        hand=jitter(base.hand),
        thigh=jitter(base.thigh) * limbs,
        shin=jitter(base.shin) * limbs,
        foot=jitter(base.foot),
        upper_arm_width=base.upper_arm_width * girth,
        forearm_width=base.forearm_width * girth,
        thigh_width=base.thigh_width * girth,
        shin_width=base.shin_width * girth,
        neck_width=base.neck_width * girth,
    )


@dataclass(frozen=True)
class Pose:
    """Joint angles of one person and the view of them, all in degrees.

    Arms and legs are (left, right) pairs. A limb's direction is given by its `elevation` from
    hanging straight down (0) through pointing forward (90) to straight up (180) and its
    `azimuth` about the vertical, from forward (0) through sideways outward (90) to backward
    (180). `elbow_flex` / `knee_flex` bend the joint (0 = straight); `elbow_roll` turns the
    elbow's bending plane about the upper arm (positive: across the body, negative: outward/up).
    The view: `yaw` turns the person about the vertical (0 faces the camera, 180 shows the
    back, 90 shows their right side), `elevation` tips the camera down to look from above, and
    `roll` rotates the whole figure in the image plane.
    """

    arm_elevation: tuple[float, float] = (10.0, 10.0)
    arm_azimuth: tuple[float, float] = (20.0, 20.0)
    elbow_flex: tuple[float, float] = (15.0, 15.0)
    elbow_roll: tuple[float, float] = (20.0, 20.0)
    leg_elevation: tuple[float, float] = (3.0, 3.0)
    leg_azimuth: tuple[float, float] = (30.0, 30.0)
    knee_flex: tuple[float, float] = (5.0, 5.0)
    torso_pitch: float = 0.0  # bending forward
    torso_roll: float = 0.0  # leaning sideways
    torso_twist: float = 0.0  # shoulders turned against the hips
    head_yaw: float = 0.0
    head_pitch: float = 0.0  # looking down
    head_roll: float = 0.0
    yaw: float = 0.0
    elevation: float = 0.0
    roll: float = 0.0


_POSE_FAMILIES = ("standing", "walking", "arms_raised", "waving", "sitting", "crouching", "action")
_POSE_FAMILY_WEIGHTS = (0.22, 0.24, 0.1, 0.07, 0.12, 0.06, 0.19)


def sample_pose(rng: np.random.Generator, family: str | None = None) -> Pose:
    """A random pose from one of the pose families (`family` or a random one) and a random view."""
    family = family or str(rng.choice(_POSE_FAMILIES, p=_POSE_FAMILY_WEIGHTS))
    u = rng.uniform

    def pair(low: float, high: float) -> list[float]:
        return [u(low, high), u(low, high)]

    # Relaxed defaults that each family changes where it differs.
    arm_elevation, arm_azimuth = pair(5, 25), pair(-10, 60)
    elbow_flex, elbow_roll = pair(5, 35), pair(-20, 50)
    leg_elevation, leg_azimuth, knee_flex = pair(0, 8), pair(-20, 90), pair(0, 12)
    torso_pitch, torso_roll, torso_twist = rng.normal(3, 4), rng.normal(0, 3), rng.normal(0, 8)

    if family == "standing" and rng.random() < 0.25:  # hands on hips
        for side in (LEFT, RIGHT):
            arm_elevation[side], arm_azimuth[side] = u(25, 45), u(60, 100)
            elbow_flex[side], elbow_roll[side] = u(80, 120), u(40, 80)
    elif family == "walking":
        stride = u(15, 35)
        front = int(rng.integers(2))
        back = 1 - front
        leg_elevation[front], leg_azimuth[front], knee_flex[front] = stride, u(-10, 10), u(5, 25)
        leg_elevation[back], leg_azimuth[back], knee_flex[back] = stride * u(0.5, 1.0), 180.0, u(15, 60)
        # Arms swing against the legs.
        arm_elevation[front], arm_azimuth[front] = u(10, 35), 180.0
        arm_elevation[back], arm_azimuth[back] = u(10, 40), u(0, 20)
        elbow_flex = pair(10, 70)
    elif family == "arms_raised":
        for side in (LEFT, RIGHT):
            if rng.random() < 0.75:
                arm_elevation[side], arm_azimuth[side] = u(110, 175), u(0, 100)
                elbow_flex[side] = u(0, 45)
    elif family == "waving":
        side = int(rng.integers(2))
        arm_elevation[side], arm_azimuth[side] = u(60, 120), u(30, 100)
        elbow_flex[side], elbow_roll[side] = u(60, 130), u(-100, -60)
    elif family == "sitting":
        leg_elevation, leg_azimuth, knee_flex = pair(65, 100), pair(-15, 25), pair(60, 110)
        torso_pitch = u(-15, 15)
        arm_elevation, arm_azimuth = pair(15, 50), pair(-10, 30)
        elbow_flex, elbow_roll = pair(40, 100), pair(20, 70)
    elif family == "crouching":
        leg_elevation, leg_azimuth, knee_flex = pair(80, 120), pair(0, 40), pair(100, 145)
        torso_pitch = u(20, 45)
        arm_elevation, arm_azimuth, elbow_flex = pair(20, 70), pair(0, 40), pair(20, 90)
    elif family == "action":
        for side in (LEFT, RIGHT):
            arm_azimuth[side] = u(-30, 150)
            # The shoulder cannot take the arm far backward.
            arm_elevation[side] = u(0, 60) if arm_azimuth[side] > 110 else u(0, 175)
            elbow_flex[side], elbow_roll[side] = u(0, 150), u(-90, 90)
        kick = int(rng.integers(2))
        leg_azimuth[kick] = u(-10, 100)
        # Sideways (abduction) is limited to about 50 degrees, forward flexion to about 95.
        leg_elevation[kick] = u(0, 50) if leg_azimuth[kick] > 60 else u(0, 95)
        knee_flex[kick] = u(0, 130)
        stand = 1 - kick
        leg_azimuth[stand] = u(-10, 180)
        leg_elevation[stand] = u(0, 25) if leg_azimuth[stand] > 60 else u(0, 30)
        knee_flex[stand] = u(0, 60)
        torso_pitch, torso_roll, torso_twist = u(-15, 35), u(-15, 15), u(-30, 30)

    # The view: mostly facing the camera, often from behind, sometimes any way round.
    kind = rng.random()
    if kind < 0.45:
        yaw = rng.normal(0, 20)
    elif kind < 0.65:
        yaw = 180 + rng.normal(0, 20)
    else:
        yaw = u(0, 360)
    kind = rng.random()
    if kind < 0.85:
        roll = rng.normal(0, 5)
    elif kind < 0.97:
        roll = u(10, 35) * rng.choice((-1, 1))
    else:  # lying down or upside down in a cartwheel
        roll = u(60, 100) * rng.choice((-1, 1))
    return Pose(
        arm_elevation=tuple(arm_elevation),
        arm_azimuth=tuple(arm_azimuth),
        elbow_flex=tuple(elbow_flex),
        elbow_roll=tuple(elbow_roll),
        leg_elevation=tuple(leg_elevation),
        leg_azimuth=tuple(leg_azimuth),
        knee_flex=tuple(knee_flex),
        torso_pitch=float(torso_pitch),
        torso_roll=float(torso_roll),
        torso_twist=float(torso_twist),
        head_yaw=float(np.clip(rng.normal(0, 25), -70, 70)),
        head_pitch=float(np.clip(rng.normal(0, 10), -30, 30)),
        head_roll=float(rng.normal(0, 8)),
        yaw=float(yaw),
        elevation=float(u(-5, 20)),
        roll=float(roll),
    )


def _rot_x(degrees: float) -> np.ndarray:
    """Rotation about X; positive turns +Y (up) toward +Z (forward)."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rot_y(degrees: float) -> np.ndarray:
    """Rotation about Y (the vertical); positive turns +Z toward +X."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rot_z(degrees: float) -> np.ndarray:
    """Rotation about Z; positive turns +X toward +Y."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def _limb_direction(elevation: float, azimuth: float, side: int) -> np.ndarray:
    """Unit direction (3,) of a limb raised by `elevation` and swung by `azimuth` (see `Pose`)."""
    return _limb_rotation(elevation, azimuth, side) @ np.array([0.0, -1.0, 0.0])


def _limb_rotation(elevation: float, azimuth: float, side: int) -> np.ndarray:
    """Rotation (3, 3) taking a limb hanging straight down (front = +Z) to its posed direction."""
    return _rot_y(_SIDE_SIGN[side] * azimuth) @ _rot_x(-elevation)


@dataclass
class Skeleton3D:
    """A posed body in its own frame (X = the person's left, Y = up, Z = forward), units of height.

    joints: (17, 3) in COCO order. The other points are what the drawing needs beyond the
    joints; `head_rotation` (3, 3) takes head-frame vectors to the body frame.
    """

    joints: np.ndarray
    torso_sections: np.ndarray  # (4, 4, 3): cross-sections (hip line, waistband, waist, shoulders) x corners
    neck_base: np.ndarray
    neck_top: np.ndarray
    head_center: np.ndarray
    head_rotation: np.ndarray
    nose_root: np.ndarray
    hand_ends: np.ndarray  # (2, 3) fingertips, (left, right)
    heels: np.ndarray  # (2, 3)
    toes: np.ndarray  # (2, 3)


# Directions of face features on the unit head sphere, in the head frame (X = left, Y = up,
# Z = forward): eyes and ears as (left, right).
_EYE_DIRECTIONS = np.array([_unit(np.array([0.36, 0.1, 0.93])), _unit(np.array([-0.36, 0.1, 0.93]))])
_EAR_DIRECTIONS = np.array([_unit(np.array([0.96, -0.05, -0.2])), _unit(np.array([-0.96, -0.05, -0.2]))])
_NOSE_TIP = np.array([0.0, -0.25, 1.22])  # sticks out of the sphere
_NOSE_ROOT = np.array([0.0, -0.05, 0.98])  # below the eyes' level, so a profile shows the near eye


def pose_skeleton(body: BodyShape, pose: Pose) -> Skeleton3D:
    """The 3D joints and drawing points of `body` in `pose` (body frame, pelvis at the origin)."""
    x_axis, y_axis, z_axis = np.eye(3)
    torso_rotation = _rot_z(-pose.torso_roll) @ _rot_x(pose.torso_pitch) @ _rot_y(pose.torso_twist)
    head_rotation = torso_rotation @ _rot_y(pose.head_yaw) @ _rot_x(pose.head_pitch) @ _rot_z(pose.head_roll)

    pelvis = np.zeros(3)
    hips = np.array([pelvis + _SIDE_SIGN[side] * body.hip_half_width * x_axis for side in (LEFT, RIGHT)])
    neck_base = pelvis + torso_rotation @ (body.torso_length * y_axis)
    shoulders = np.array(
        [neck_base + torso_rotation @ (_SIDE_SIGN[side] * body.shoulder_half_width * x_axis) for side in (LEFT, RIGHT)]
    )
    neck_top = neck_base + torso_rotation @ (body.neck_length * y_axis)
    head_center = neck_top + head_rotation @ (body.head_radius * np.array([0.0, 0.8, 0.12]))

    elbows, wrists, hand_ends = [], [], []
    for side in (LEFT, RIGHT):
        rotation = _limb_rotation(pose.arm_elevation[side], pose.arm_azimuth[side], side)
        upper = rotation @ -y_axis
        front = rotation @ z_axis  # the arm's anterior side: the way a relaxed elbow bends
        across = _SIDE_SIGN[side] * np.cross(upper, front)  # toward the body's midline when hanging
        roll = np.radians(pose.elbow_roll[side])
        bend = np.cos(roll) * front + np.sin(roll) * across
        flex = np.radians(pose.elbow_flex[side])
        lower = np.cos(flex) * upper + np.sin(flex) * bend
        elbow = shoulders[side] + torso_rotation @ (body.upper_arm * upper)
        wrist = elbow + torso_rotation @ (body.forearm * lower)
        elbows.append(elbow)
        wrists.append(wrist)
        hand_ends.append(wrist + torso_rotation @ (body.hand * lower))

    knees, ankles, heels, toes = [], [], [], []
    for side in (LEFT, RIGHT):
        thigh = _limb_direction(pose.leg_elevation[side], pose.leg_azimuth[side], side)
        # Knees bend backward in the leg's own sagittal plane, whatever the thigh's direction.
        back = _unit(np.cross(x_axis, thigh))
        flex = np.radians(pose.knee_flex[side])
        shin = np.cos(flex) * thigh + np.sin(flex) * back
        knee = hips[side] + body.thigh * thigh
        ankle = knee + body.shin * shin
        # Feet point forward (toes turned out a little), at right angles to the shin.
        forward = _rot_y(_SIDE_SIGN[side] * 12.0) @ z_axis
        along = forward - (forward @ shin) * shin
        foot = _unit(along) if np.linalg.norm(along) > 0.3 else -y_axis
        knees.append(knee)
        ankles.append(ankle)
        heels.append(ankle - 0.025 * foot + 0.03 * shin)
        toes.append(ankle + body.foot * foot + 0.035 * shin)

    # COCO order: nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles.
    radius = body.head_radius
    joints = np.array(
        [
            head_center + head_rotation @ (radius * _NOSE_TIP),
            *(head_center + head_rotation @ (radius * direction) for direction in _EYE_DIRECTIONS),
            *(head_center + head_rotation @ (radius * direction) for direction in _EAR_DIRECTIONS),
            *shoulders,
            *elbows,
            *wrists,
            *hips,
            *knees,
            *ankles,
        ]
    )

    # The torso as four rectangular cross-sections, (height, half width, half depth): just below
    # the hip line (pelvis frame), then the waistband, the waist and a little above the shoulder
    # line (torso frame); the parts between them are painted as their convex hulls.
    half_depth = body.torso_depth / 2
    sections = []
    for level, (height, half_width, depth_factor) in enumerate(
        (
            (-0.035, body.hip_half_width + 0.035, 1.0),
            (0.12 * body.torso_length, body.hip_half_width + 0.03, 1.0),
            (0.5 * body.torso_length, body.hip_half_width + 0.015, 0.95),
            (body.torso_length + 0.02, body.shoulder_half_width + 0.025, 0.9),
        )
    ):
        frame = np.eye(3) if level == 0 else torso_rotation
        corners = [
            [sx * half_width, height, sz * half_depth * depth_factor] for sx in (-1.0, 1.0) for sz in (-1.0, 1.0)
        ]
        sections.append(pelvis + np.array(corners) @ frame.T)
    return Skeleton3D(
        joints=joints,
        torso_sections=np.array(sections),
        neck_base=neck_base,
        neck_top=neck_top,
        head_center=head_center,
        head_rotation=head_rotation,
        nose_root=head_center + head_rotation @ (radius * _NOSE_ROOT),
        hand_ends=np.array(hand_ends),
        heels=np.array(heels),
        toes=np.array(toes),
    )


def view_rotation(pose: Pose) -> np.ndarray:
    """Rotation (3, 3) from the body frame to the camera frame (x right, y up, z toward the camera)."""
    return _rot_z(pose.roll) @ _rot_x(pose.elevation) @ _rot_y(pose.yaw)


# ---------------------------------------------------------------------------------------------
# Figures: a person projected into the image, ready to paint


@dataclass
class Clothing:
    """Colours of one person."""

    skin: Colour
    hair: Colour
    shirt: Colour
    trousers: Colour
    shoes: Colour
    long_sleeves: bool
    long_trousers: bool
    hair_extent: float  # angular radius (degrees) of the hair cap on the head sphere; 0 = bald


def _random_colour(rng: np.random.Generator, saturation=(0.2, 0.95), value=(0.25, 0.95)) -> Colour:
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*saturation), rng.uniform(*value))
    return (int(r * 255), int(g * 255), int(b * 255))


def _jitter_colour(rng: np.random.Generator, colour: Colour, amount: int = 12) -> Colour:
    shifted = np.clip(np.array(colour) + rng.integers(-amount, amount + 1, size=3), 0, 255)
    return (int(shifted[0]), int(shifted[1]), int(shifted[2]))


def sample_clothing(rng: np.random.Generator) -> Clothing:
    """Random skin tone, hair and clothes."""
    shirt = _random_colour(rng)
    if rng.random() < 0.2:  # white, black or grey shirts are common
        grey = int(rng.choice((235, 30, 128)))
        shirt = (grey, grey, grey)
    trousers = (
        TROUSER_COLOURS[rng.integers(len(TROUSER_COLOURS))]
        if rng.random() < 0.7
        else _random_colour(rng, value=(0.15, 0.7))
    )
    shoes = (30, 30, 30) if rng.random() < 0.5 else _random_colour(rng)
    return Clothing(
        skin=_jitter_colour(rng, SKIN_TONES[rng.integers(len(SKIN_TONES))]),
        hair=_jitter_colour(rng, HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))], 8),
        shirt=_jitter_colour(rng, shirt),
        trousers=_jitter_colour(rng, trousers),
        shoes=_jitter_colour(rng, shoes),
        long_sleeves=bool(rng.random() < 0.45),
        long_trousers=bool(rng.random() < 0.75),
        hair_extent=0.0 if rng.random() < 0.05 else float(rng.uniform(88, 106)),
    )


def _shade(colour: Colour, factor: float) -> Colour:
    return tuple(int(min(255, c * factor)) for c in colour)


@dataclass
class HeadLook:
    """What the head sphere shows: `rotation` (3, 3) takes head-frame vectors to camera vectors."""

    radius: float  # px
    rotation: np.ndarray
    skin: Colour
    hair: Colour
    hair_extent: float
    light: np.ndarray  # (3,) unit vector toward the light, camera frame


@dataclass
class Part:
    """One body part to paint: a tapered segment, a polygon, an ellipse or the head sphere.

    Coordinates in image pixels. `depth` (toward the camera, body-height units) orders the
    painting: parts are painted from the smallest depth to the largest.
    """

    part_id: int
    depth: float
    colour: Colour
    kind: str  # "segment" | "polygon" | "ellipse" | "head"
    points: np.ndarray  # segment: (2, 2) ends; polygon: (N, 2); ellipse / head: (1, 2) centre
    widths: tuple[float, float] = (0.0, 0.0)  # segment: widths at both ends; ellipse: radii (x, y)
    head: HeadLook | None = None


@dataclass
class Figure:
    """A person projected into the image.

    keypoints: (17, 2) float, image pixels (x right, y down, pixel centres on integers), COCO
    order. joint_owners: for each joint, the part ids whose pixels show it (empty when the
    person's own body geometry hides the joint, e.g. the eyes of a person seen from behind).
    parts: in painting order (back to front). box: (x0, y0, x1, y1) bounds of the drawing.
    """

    keypoints: np.ndarray
    joint_owners: list[frozenset[int]]
    parts: list[Part]
    box: tuple[float, float, float, float]

    def moved(self, shift: np.ndarray) -> Figure:
        """The same figure moved by `shift` (2,) pixels."""
        parts = [replace(part, points=part.points + shift) for part in self.parts]
        x0, y0, x1, y1 = self.box
        dx, dy = float(shift[0]), float(shift[1])
        return Figure(self.keypoints + shift, self.joint_owners, parts, (x0 + dx, y0 + dy, x1 + dx, y1 + dy))


def _projected_extent(skeleton: Skeleton3D, body: BodyShape, rotation: np.ndarray) -> tuple[float, float, float, float]:
    """Bounds (x0, y0, x1, y1) of the figure at 1 px per unit with the pelvis at the origin."""
    points = np.concatenate(
        [
            skeleton.joints,
            skeleton.torso_sections.reshape(-1, 3),
            skeleton.hand_ends,
            skeleton.heels,
            skeleton.toes,
            skeleton.head_center[None],
        ]
    )
    camera = points @ rotation.T
    x, y = camera[:, 0], -camera[:, 1]
    radius = body.head_radius
    head_x, head_y = camera[-1, 0], -camera[-1, 1]
    pad = body.thigh_width / 2
    return (
        min(x.min() - pad, head_x - radius),
        min(y.min() - pad, head_y - radius),
        max(x.max() + pad, head_x + radius),
        max(y.max() + pad, head_y + radius),
    )


def build_figure(
    body: BodyShape, pose: Pose, clothing: Clothing, scale: float, offset: np.ndarray, light: np.ndarray
) -> Figure:
    """Project a posed body into the image and list its parts in painting order.

    scale: pixels per body-height unit; offset: (2,) image position of the pelvis; light: (3,)
    unit vector toward the light in the camera frame (it shades the head).
    """
    skeleton = pose_skeleton(body, pose)
    rotation = view_rotation(pose)

    def to_image(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        camera = np.atleast_2d(points) @ rotation.T
        return np.stack([camera[:, 0], -camera[:, 1]], axis=1) * scale + offset, camera[:, 2]

    keypoints, joint_depth = to_image(skeleton.joints)
    torso_xy, torso_depth = to_image(skeleton.torso_sections.reshape(-1, 3))
    torso_xy = torso_xy.reshape(4, 4, 2)
    torso_center_depth = float(torso_depth.mean())
    # Trousers up to the waistband, the shirt above.
    parts: list[Part] = [
        Part(TORSO, torso_center_depth, colour, "polygon", _convex_hull(np.concatenate(torso_xy[level : level + 2])))
        for level, colour in enumerate((clothing.trousers, clothing.shirt, clothing.shirt))
    ]

    def width(value: float) -> float:
        return max(1.3, value * scale)  # below ~1 px PIL drops the polygon

    def segment(
        part_id: int, start: np.ndarray, end: np.ndarray, widths: tuple[float, float], colour: Colour, bias: float = 0.0
    ):
        (xy, depth) = to_image(np.stack([start, end]))
        # Limbs behind the torso are in shadow: a cue to depth, as on real people.
        if depth.mean() < torso_center_depth - 0.03:
            colour = _shade(colour, 0.8)
        parts.append(
            Part(part_id, float(depth.mean()) + bias, colour, "segment", xy, (width(widths[0]), width(widths[1])))
        )

    arm_colour = (clothing.shirt, clothing.shirt if clothing.long_sleeves else clothing.skin)
    leg_colour = (clothing.trousers, clothing.trousers if clothing.long_trousers else clothing.skin)
    joints = skeleton.joints
    for side in (LEFT, RIGHT):
        shoulder, elbow, wrist = joints[5 + side], joints[7 + side], joints[9 + side]
        hip, knee, ankle = joints[11 + side], joints[13 + side], joints[15 + side]
        # Small biases settle ties with the torso: arms in front of it, thighs under the shirt.
        segment(
            UPPER_ARM[side], shoulder, elbow, (body.upper_arm_width, body.upper_arm_width * 0.9), arm_colour[0], 0.01
        )
        segment(FOREARM[side], elbow, wrist, (body.forearm_width, body.forearm_width * 0.8), arm_colour[1], 0.012)
        segment(
            HAND[side],
            wrist,
            skeleton.hand_ends[side],
            (body.forearm_width * 0.85, body.forearm_width * 0.7),
            clothing.skin,
            0.014,
        )
        segment(THIGH[side], hip, knee, (body.thigh_width, body.thigh_width * 0.8), leg_colour[0], -0.005)
        segment(SHIN[side], knee, ankle, (body.shin_width, body.shin_width * 0.75), leg_colour[1], 0.0)
        segment(
            FOOT[side],
            skeleton.heels[side],
            skeleton.toes[side],
            (body.shin_width * 0.7, body.shin_width * 0.55),
            clothing.shoes,
            0.001,
        )
    segment(
        NECK,
        skeleton.neck_base,
        skeleton.head_center,
        (body.neck_width, body.neck_width),
        _shade(clothing.skin, 0.9),
        -0.02,
    )

    head_xy, head_depth = to_image(skeleton.head_center)
    head_radius = body.head_radius * scale
    camera_from_head = rotation @ skeleton.head_rotation
    parts.append(
        Part(
            HEAD,
            float(head_depth[0]) + 0.03,
            clothing.skin,
            "head",
            head_xy,
            head=HeadLook(
                max(head_radius, 1.5), camera_from_head, clothing.skin, clothing.hair, clothing.hair_extent, light
            ),
        )
    )
    # Nose and ears are painted just behind the head when they face away (so only what sticks
    # out of the sphere shows) and just in front when they face the camera.
    head_depth_sorted = float(head_depth[0]) + 0.03
    nose_facing = (camera_from_head @ _unit(_NOSE_TIP))[2]
    (nose_xy, _) = to_image(np.stack([skeleton.nose_root, joints[0]]))
    parts.append(
        Part(
            NOSE,
            head_depth_sorted + (0.001 if nose_facing > 0 else -0.001),
            _shade(clothing.skin, 0.85),
            "segment",
            nose_xy,
            (width(0.2 * body.head_radius), width(0.16 * body.head_radius)),
        )
    )
    ear_facing = _EAR_DIRECTIONS @ camera_from_head.T[:, 2]
    for side in (LEFT, RIGHT):
        order = 0.001 if ear_facing[side] > 0 else -0.001
        parts.append(
            Part(
                EAR[side],
                head_depth_sorted + order,
                _shade(clothing.skin, 0.9),
                "ellipse",
                keypoints[3 + side][None],
                (max(0.8, 0.22 * head_radius), max(1.0, 0.32 * head_radius)),
            )
        )
    parts.sort(key=lambda part: part.depth)

    # Which parts show each joint. Face points show on the head only where the head's surface
    # turns toward the camera (eyes) or is at most a little behind its rim (ears: the ears of a
    # frontal face are in view); the nose and ears also show on their own shapes. Shoulders and
    # hips also show on the torso, but only on the side turned toward the camera: the far
    # shoulder of a person in profile is behind the chest.
    eye_facing = _EYE_DIRECTIONS @ camera_from_head.T[:, 2]
    joint_owners: list[frozenset[int]] = [frozenset({NOSE} | ({HEAD} if nose_facing > 0 else set()))]
    joint_owners += [frozenset({HEAD} if eye_facing[side] > 0.05 else set()) for side in (LEFT, RIGHT)]
    joint_owners += [frozenset({EAR[side]} | ({HEAD} if ear_facing[side] > -0.25 else set())) for side in (LEFT, RIGHT)]

    def on_torso_side(joint: int, half_width: float) -> set[int]:
        other = joint + 1 if joint % 2 == 1 else joint - 1  # COCO pairs are (odd, even): left, right
        return {TORSO} if joint_depth[joint] - joint_depth[other] > -1.5 * half_width else set()

    joint_owners += [frozenset({UPPER_ARM[s]} | on_torso_side(5 + s, body.shoulder_half_width)) for s in (LEFT, RIGHT)]
    joint_owners += [frozenset({UPPER_ARM[s], FOREARM[s]}) for s in (LEFT, RIGHT)]  # elbows
    joint_owners += [frozenset({FOREARM[s], HAND[s]}) for s in (LEFT, RIGHT)]  # wrists
    joint_owners += [frozenset({THIGH[s]} | on_torso_side(11 + s, body.hip_half_width)) for s in (LEFT, RIGHT)]
    joint_owners += [frozenset({THIGH[s], SHIN[s]}) for s in (LEFT, RIGHT)]  # knees
    joint_owners += [frozenset({SHIN[s], FOOT[s]}) for s in (LEFT, RIGHT)]  # ankles

    x0, y0, x1, y1 = _projected_extent(skeleton, body, rotation)
    box = (x0 * scale + offset[0], y0 * scale + offset[1], x1 * scale + offset[0], y1 * scale + offset[1])
    return Figure(keypoints=keypoints, joint_owners=joint_owners, parts=parts, box=box)


def _convex_hull(points: np.ndarray) -> np.ndarray:
    """Convex hull (M, 2) of a few 2D points (Andrew's monotone chain), counter-clockwise."""
    ordered = sorted(map(tuple, points))

    def half(sequence):
        hull: list[tuple[float, float]] = []
        for p in sequence:
            while (
                len(hull) >= 2
                and (hull[-1][0] - hull[-2][0]) * (p[1] - hull[-2][1])
                - (hull[-1][1] - hull[-2][1]) * (p[0] - hull[-2][0])
                <= 0
            ):
                hull.pop()
            hull.append(p)
        return hull

    lower, upper = half(ordered), half(reversed(ordered))
    return np.array(lower[:-1] + upper[:-1])


# ---------------------------------------------------------------------------------------------
# Painting: RGB and the label buffer together


class Canvas:
    """The image being painted and its label buffer, painted with the same primitives.

    labels: PIL "I" image; each pixel holds the label of the last thing painted over it (see the
    part ids above). Coordinates are image pixels with pixel centres on integers (PIL's).
    """

    def __init__(self, background: Image.Image):
        self.image = background
        self.labels = Image.new("I", background.size, 0)
        self._rgb = ImageDraw.Draw(self.image)
        self._label = ImageDraw.Draw(self.labels)

    def polygon(self, points: np.ndarray, colour: Colour, label: int) -> None:
        flat = np.asarray(points, dtype=float).ravel().tolist()
        self._rgb.polygon(flat, fill=colour)
        self._label.polygon(flat, fill=label)

    def ellipse(self, center: np.ndarray, radius_x: float, radius_y: float, colour: Colour, label: int) -> None:
        x, y = float(center[0]), float(center[1])
        box = [x - radius_x, y - radius_y, x + radius_x, y + radius_y]
        self._rgb.ellipse(box, fill=colour)
        self._label.ellipse(box, fill=label)

    def segment(
        self,
        start: np.ndarray,
        end: np.ndarray,
        start_width: float,
        end_width: float,
        colour: Colour,
        label: int,
        outline: Colour | None = None,
    ) -> None:
        """A tapered limb with round ends; with `outline`, a 1 px darker rim (so that an arm in front
        of a shirt of the same colour still shows, as folds and shadows show it on real people)."""
        for kind, coordinates in _tapered_shapes(start, end, start_width, end_width):
            getattr(self._rgb, kind)(coordinates, fill=outline or colour)
            getattr(self._label, kind)(coordinates, fill=label)
        if outline is not None:
            for kind, coordinates in _tapered_shapes(start, end, start_width - 2, end_width - 2):
                getattr(self._rgb, kind)(coordinates, fill=colour)

    def paste(
        self, patch: np.ndarray, alpha: np.ndarray, covered: np.ndarray, corner: tuple[int, int], label: int
    ) -> None:
        """Blend an (h, w, 3) uint8 patch with (h, w) alpha in [0, 1]; label its `covered` pixels."""
        self.image.paste(Image.fromarray(patch), corner, Image.fromarray((alpha * 255).astype(np.uint8)))
        self.labels.paste(
            label,
            (corner[0], corner[1], corner[0] + patch.shape[1], corner[1] + patch.shape[0]),
            Image.fromarray(covered.astype(np.uint8) * 255),
        )


def _tapered_shapes(
    start: np.ndarray, end: np.ndarray, start_width: float, end_width: float
) -> list[tuple[str, list[float]]]:
    """PIL shapes of a tapered segment with round ends: ("polygon" | "ellipse", coordinates)."""
    shapes = []
    direction = end - start
    length = float(np.hypot(*direction))
    if length > 1e-6:
        normal = np.array([-direction[1], direction[0]]) / length
        quad = np.array(
            [
                start + normal * start_width / 2,
                end + normal * end_width / 2,
                end - normal * end_width / 2,
                start - normal * start_width / 2,
            ]
        )
        shapes.append(("polygon", quad.ravel().tolist()))
    for (x, y), radius in ((start, start_width / 2), (end, end_width / 2)):
        shapes.append(("ellipse", [x - radius, y - radius, x + radius, y + radius]))
    return shapes


def _head_patch(center: np.ndarray, look: HeadLook) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
    """Render the head sphere pixel by pixel (vectorised): skin, hair, eyes, brows, mouth, shading.

    Returns the (h, w, 3) uint8 colours, (h, w) alpha (soft edge), (h, w) bool coverage and the
    patch's top-left pixel.
    """
    radius = look.radius
    x0, y0 = int(np.floor(center[0] - radius)) - 1, int(np.floor(center[1] - radius)) - 1
    size = int(np.ceil(2 * radius)) + 3
    dx = (np.arange(x0, x0 + size) - center[0]) / radius
    dy = (np.arange(y0, y0 + size) - center[1]) / radius
    dx, dy = np.meshgrid(dx, dy)
    r2 = dx * dx + dy * dy
    covered = r2 <= 1.0
    alpha = np.clip((1.0 - np.sqrt(r2)) * radius + 0.5, 0.0, 1.0)
    # Surface normal seen at each pixel, camera frame (x right, y up, z toward the camera).
    normal_camera = np.stack([dx, -dy, np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))], axis=-1)
    nx, ny, nz = np.moveaxis(normal_camera @ look.rotation, -1, 0)  # the same normal, head frame

    skin = np.array(look.skin, dtype=np.float32)
    colour = np.broadcast_to(skin, normal_camera.shape).copy()
    if look.hair_extent > 0:
        # Hair covers a cap around a point up and back: the top and back of the head, down to
        # the nape, with the hairline above the forehead and temples.
        crown = _unit(np.array([0.0, 0.5, -0.866]))
        hair = (ny * crown[1] + nz * crown[2]) > np.cos(np.radians(look.hair_extent))
        colour[hair] = look.hair
    front = nz > 0
    for side in (LEFT, RIGHT):
        ex, ey, _ = _EYE_DIRECTIONS[side]
        colour[front & (((nx - ex) / 0.14) ** 2 + ((ny - ey) / 0.08) ** 2 < 1)] = (235, 235, 228)
        colour[front & (((nx - ex) / 0.065) ** 2 + ((ny - ey) / 0.07) ** 2 < 1)] = (45, 32, 25)
        colour[front & (((nx - ex) / 0.16) ** 2 + ((ny - ey - 0.2) / 0.035) ** 2 < 1)] = _shade(look.hair, 0.9)
    colour[front & ((nx / 0.2) ** 2 + ((ny + 0.45) / 0.05) ** 2 < 1)] = _shade(look.skin, 0.6)
    lambert = np.clip(normal_camera @ look.light, 0.0, 1.0)
    colour *= (0.55 + 0.5 * lambert)[..., None]
    return np.clip(colour, 0, 255).astype(np.uint8), alpha, covered, (x0, y0)


def paint_figure(canvas: Canvas, figure: Figure, person_slot: int) -> None:
    """Paint a figure's parts back to front, labelled (person_slot << 6) | part id."""
    for part in figure.parts:
        label = (person_slot << _PART_BITS) | part.part_id
        if part.kind == "segment":
            outline = _shade(part.colour, 0.7) if min(part.widths) >= 6 else None
            canvas.segment(part.points[0], part.points[1], part.widths[0], part.widths[1], part.colour, label, outline)
        elif part.kind == "polygon":
            canvas.polygon(part.points, part.colour, label)
        elif part.kind == "ellipse":
            canvas.ellipse(part.points[0], part.widths[0], part.widths[1], part.colour, label)
        else:
            patch, alpha, covered, corner = _head_patch(part.points[0], part.head)
            canvas.paste(patch, alpha, covered, corner, label)


# ---------------------------------------------------------------------------------------------
# Backgrounds, occluding objects and the camera's imperfections


def paint_background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Clutter: a two-tone gradient (wall / floor), blotchy texture, stripes and random shapes.

    Whole-image work goes through PIL's C operations (resize, add, paste): this runs per image.
    """
    top, bottom = np.array(_random_colour(rng, (0.05, 0.6))), np.array(_random_colour(rng, (0.05, 0.6)))
    horizon, sharpness = rng.uniform(0.3, 0.8), rng.uniform(3, 30)
    t = np.clip((np.linspace(0.0, 1.0, height) - horizon) * sharpness + 0.5, 0.0, 1.0)[:, None]
    column = (top * (1 - t) + bottom * t).astype(np.uint8)[:, None, :]  # (height, 1, 3)
    image = Image.fromarray(column).resize((width, height), Image.NEAREST)
    # Low-frequency texture: a small random image blown up; mostly brightness, a little colour.
    cell = int(rng.integers(12, 48))
    grid = (height // cell + 2, width // cell + 2)
    blotches = rng.normal(0.0, rng.uniform(4, 25), size=(*grid, 1)) + rng.normal(0.0, 4, size=(*grid, 3))
    blotches = Image.fromarray(np.clip(blotches + 128, 0, 255).astype(np.uint8)).resize((width, height), Image.BILINEAR)
    image = ImageChops.add(image, blotches, scale=1.0, offset=-128)
    if rng.random() < 0.4:  # a striped region: a fence, a wall of tiles, a rug
        x0, y0 = int(rng.integers(0, width * 3 // 4)), int(rng.integers(0, height * 3 // 4))
        region = (int(rng.integers(width // 8, width)), int(rng.integers(height // 8, height)))
        angle, period = rng.uniform(0, np.pi), rng.uniform(4, 30)
        stripes = Image.new("L", region, 0)
        draw = ImageDraw.Draw(stripes)
        across, along = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
        centre, reach = np.array(region) / 2, float(np.hypot(*region))
        for offset in np.arange(-reach / 2, reach / 2, period):
            middle = centre + offset * across
            draw.line([*(middle - reach * along), *(middle + reach * along)], fill=255, width=max(1, int(period / 2)))
        image.paste(_random_colour(rng), (x0, y0), stripes)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(4, 30))):
        # Some shapes take skin or clothing colours and limb-like shapes: hard negatives.
        colour = SKIN_TONES[rng.integers(len(SKIN_TONES))] if rng.random() < 0.15 else _random_colour(rng)
        x, y = rng.uniform(-0.1, 1.1) * width, rng.uniform(-0.1, 1.1) * height
        size = rng.uniform(0.02, 0.3) * max(width, height)
        kind = rng.integers(4)
        if kind == 0:
            draw.rectangle([x, y, x + size * rng.uniform(0.2, 1.5), y + size * rng.uniform(0.2, 1.5)], fill=colour)
        elif kind == 1:
            draw.ellipse([x, y, x + size, y + size * rng.uniform(0.3, 1.5)], fill=colour)
        elif kind == 2:
            angles = np.sort(rng.uniform(0, 2 * np.pi, size=int(rng.integers(3, 7))))
            draw.polygon(
                np.stack([x + size * np.cos(angles), y + size * np.sin(angles)], 1).ravel().tolist(), fill=colour
            )
        else:
            angle = rng.uniform(0, 2 * np.pi)
            draw.line(
                [x, y, x + size * np.cos(angle), y + size * np.sin(angle)], fill=colour, width=int(rng.integers(2, 16))
            )
    return image


def _rectangle(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """Corners (4, 2) of an axis-aligned rectangle."""
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])


def paint_occluder(
    canvas: Canvas, rng: np.random.Generator, anchor_x: float, base_y: float, size: float, label: int
) -> None:
    """An object in front of people, standing on base_y around anchor_x, about `size` px tall:
    a box or crate, a pole, a table, a bush or a sign on a post."""
    colour = _random_colour(rng, (0.1, 0.8), (0.2, 0.9))
    kind = rng.integers(5)
    if kind == 0:  # a box with its lit top face, sometimes slatted
        w, h = size * rng.uniform(0.4, 1.2), size * rng.uniform(0.3, 0.9)
        x0, y0 = anchor_x - w / 2, base_y - h
        canvas.polygon(_rectangle(x0, y0, x0 + w, base_y), colour, label)
        top_face = np.array([[x0, y0], [x0 + w, y0], [x0 + w * 0.9, y0 - h * 0.15], [x0 + w * 0.1, y0 - h * 0.15]])
        canvas.polygon(top_face, _shade(colour, 1.25), label)
        if rng.random() < 0.5:
            for x in np.arange(x0 + w / 6, x0 + w, w / 6):
                canvas.polygon(_rectangle(x - 1, y0, x + 1, base_y), _shade(colour, 0.7), label)
    elif kind == 1:  # a pole or tree trunk, up out of the picture
        half_width = size * rng.uniform(0.025, 0.075)
        canvas.polygon(_rectangle(anchor_x - half_width, -10, anchor_x + half_width, base_y), colour, label)
    elif kind == 2:  # a table: a top and two legs
        w, h = size * rng.uniform(0.8, 1.6), size * rng.uniform(0.35, 0.6)
        top = base_y - h
        canvas.polygon(_rectangle(anchor_x - w / 2, top - h * 0.12, anchor_x + w / 2, top), colour, label)
        for x in (anchor_x - w * 0.42, anchor_x + w * 0.42):
            canvas.polygon(_rectangle(x - w * 0.03, top, x + w * 0.03, base_y), _shade(colour, 0.75), label)
    elif kind == 3:  # a bush: a cluster of blobs, mostly green
        if rng.random() < 0.3:
            leaves = _random_colour(rng, (0.4, 0.9), (0.2, 0.6))
        else:
            leaves = (int(rng.integers(20, 80)), int(rng.integers(80, 160)), int(rng.integers(20, 70)))
        for _ in range(int(rng.integers(3, 7))):
            radius = size * rng.uniform(0.15, 0.35)
            centre = np.array([anchor_x + rng.uniform(-0.4, 0.4) * size, base_y - radius - rng.uniform(0, 0.3) * size])
            canvas.ellipse(centre, radius, radius * rng.uniform(0.7, 1.0), _jitter_colour(rng, leaves, 20), label)
    else:  # a sign on a post
        w, h = size * rng.uniform(0.3, 0.7), size * rng.uniform(0.2, 0.5)
        top = base_y - size * rng.uniform(0.8, 1.5)
        canvas.polygon(_rectangle(anchor_x - 2, top, anchor_x + 2, base_y), (90, 90, 90), label)
        canvas.polygon(_rectangle(anchor_x - w / 2, top - h, anchor_x + w / 2, top), colour, label)


def camera_effects(rng: np.random.Generator, image: Image.Image) -> np.ndarray:
    """Blur (sometimes), exposure, a colour cast, light falling off across the picture and sensor
    noise; returns (H, W, 3) uint8. PIL's C operations keep this to a few ms per image.
    """
    if rng.random() < 0.25:
        image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 1.8))))
    width, height = image.size
    # Exposure and colour cast: one lookup table per channel.
    gains = rng.uniform(0.6, 1.3) * rng.uniform(0.88, 1.12, size=3)
    image = image.point(np.clip(np.arange(256)[None, :] * gains[:, None], 0, 255).astype(np.uint8).ravel().tolist())
    # Uneven light: darken along a random direction, by up to 45% at the far side.
    angle, falloff = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.45)
    ys, xs = np.mgrid[0:1:9j, 0:1:9j]
    ramp = 1.0 - falloff * ((np.cos(angle) * (xs - 0.5) + np.sin(angle) * (ys - 0.5)) / 1.42 + 0.5)
    ramp = Image.fromarray((ramp * 255).astype(np.uint8)).resize((width, height), Image.BILINEAR)
    image = ImageChops.multiply(image, Image.merge("RGB", (ramp, ramp, ramp)))
    # Sensor noise: uniform, up to +-12 grey levels, from random bytes.
    amplitude = rng.uniform(0.0, 12.0)
    noise = Image.frombytes("RGB", (width, height), rng.bytes(3 * width * height))
    noise = noise.point((np.rint(128 + (np.arange(256) - 127.5) * amplitude / 127.5).astype(np.uint8).tolist()) * 3)
    return np.array(ImageChops.add(image, noise, scale=1.0, offset=-128))


# ---------------------------------------------------------------------------------------------
# Annotations from the label buffer


def keypoint_visibility(figure: Figure, person_slot: int, labels: np.ndarray) -> np.ndarray:
    """COCO keypoints (17, 3) int: (x, y, v) with v=2 visible, 1 hidden, 0 outside (x=y=0).

    labels: (H, W) the label buffer after everything has been painted. A joint is visible when
    one of the four pixels around its sub-pixel position shows a part of this person that shows
    that joint: a joint on the rim of a thin limb or a small head, where rounding can land on the
    background next to it, is not "hidden" by nothing.
    """
    height, width = labels.shape
    rounded = np.rint(figure.keypoints).astype(int)
    corners = np.floor(figure.keypoints).astype(int)[:, None, :] + np.array([[0, 0], [1, 0], [0, 1], [1, 1]])
    around = labels[np.clip(corners[..., 1], 0, height - 1), np.clip(corners[..., 0], 0, width - 1)]  # (17, 4)
    result = np.zeros((NUM_JOINTS, 3), dtype=int)
    for joint, (x, y) in enumerate(rounded):
        # (0, 0) would read as "unlabelled" in COCO's files, so a joint exactly there counts as out.
        if not (0 <= x < width and 0 <= y < height) or (x == 0 and y == 0):
            continue
        owners = figure.joint_owners[joint]
        shown = any(
            label >> _PART_BITS == person_slot and label & ((1 << _PART_BITS) - 1) in owners
            for label in around[joint].tolist()
        )
        result[joint] = (x, y, 2 if shown else 1)
    return result


def mask_polygons(mask: np.ndarray) -> list[list[float]]:
    """Outlines of a binary (H, W) mask as COCO polygons [[x1, y1, x2, y2, ...], ...].

    Only outer boundaries are kept (COCO polygons cannot hold holes: pycocotools unites them),
    simplified to within `_POLYGON_TOLERANCE` px; slivers under 2 px^2 are dropped.
    """
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return []
    y0, x0 = rows[0], cols[0]
    crop = np.pad(mask[y0 : rows[-1] + 1, x0 : cols[-1] + 1], 1).astype(np.float32)
    polygons = []
    for line in contourpy.contour_generator(z=crop, line_type="Separate").lines(0.5):
        ring = _simplify_ring(line, _POLYGON_TOLERANCE)
        signed_area = 0.5 * float(np.sum(ring[:, 0] * np.roll(ring[:, 1], -1) - np.roll(ring[:, 0], -1) * ring[:, 1]))
        # contourpy runs outer boundaries with positive area (in x-right, y-down array terms).
        if len(ring) < 3 or signed_area < 2.0:
            continue
        # Crop array index i is pixel x0 + i - 1 (padding); pixel centres sit at +0.5 in COCO polygons.
        points = ring + np.array([x0 - 0.5, y0 - 0.5])
        polygons.append(np.round(points, 2).ravel().tolist())
    return polygons


def _simplify_ring(ring: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker on a closed ring (N, 2) whose last point repeats the first; returns it open."""
    # Marching squares leaves many points in the middle of straight runs: drop those first (fast).
    before, after = ring[1:-1] - ring[:-2], ring[2:] - ring[1:-1]
    bends = np.abs(before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]) > 1e-9
    ring = ring[np.concatenate([[True], bends, [True]])]
    keep = np.zeros(len(ring), dtype=bool)
    keep[0] = keep[-1] = True
    stack = [(0, len(ring) - 1)]
    while stack:
        first, last = stack.pop()
        if last <= first + 1:
            continue
        start, chord = ring[first], ring[last] - ring[first]
        inner = ring[first + 1 : last] - start
        chord_length = float(np.hypot(*chord))
        if chord_length == 0:
            distance = np.hypot(inner[:, 0], inner[:, 1])
        else:
            distance = np.abs(chord[0] * inner[:, 1] - chord[1] * inner[:, 0]) / chord_length
        farthest = int(np.argmax(distance))
        if distance[farthest] > tolerance:
            middle = first + 1 + farthest
            keep[middle] = True
            stack += [(first, middle), (middle, last)]
    return ring[keep][:-1]


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE of an (H, W) mask: run lengths in column-major order, zeros first."""
    flat = mask.ravel(order="F").astype(np.uint8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    counts = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    if flat.size and flat[0] == 1:
        counts = [0] + counts
    return {"counts": counts, "size": [int(mask.shape[0]), int(mask.shape[1])]}


def person_annotation(figure: Figure, person_slot: int, labels: np.ndarray) -> dict | None:
    """The COCO annotation (no ids) of one painted person, or None when too little of them shows."""
    height, width = labels.shape
    polygons = mask_polygons((labels >> _PART_BITS) == person_slot)
    if not polygons:
        return None
    rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    area = float(mask_utils.area(rle))
    if area < MIN_VISIBLE_AREA:
        return None
    keypoints = keypoint_visibility(figure, person_slot, labels)
    return {
        "segmentation": polygons,
        "num_keypoints": int(np.count_nonzero(keypoints[:, 2])),
        "area": area,
        "iscrowd": 0,
        "keypoints": keypoints.ravel().tolist(),
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],  # the tight box of the polygons' mask
        "category_id": PERSON_CATEGORY["id"],
    }


def crowd_annotation(mask: np.ndarray) -> dict | None:
    """An `iscrowd: 1` annotation for a dense group: RLE mask, no keypoints, as COCO has them."""
    # Close the gaps between the people: COCO's crowd regions are blobs around the group.
    mask = ndimage.binary_closing(mask, structure=np.ones((5, 5), bool), iterations=1) | mask
    if mask.sum() < MIN_VISIBLE_AREA:
        return None
    rle = uncompressed_rle(mask)
    compressed = mask_utils.frPyObjects(rle, *rle["size"])
    return {
        "segmentation": rle,
        "num_keypoints": 0,
        "area": float(mask_utils.area(compressed)),
        "iscrowd": 1,
        "keypoints": [0] * (NUM_JOINTS * 3),
        "bbox": [float(v) for v in mask_utils.toBbox(compressed)],
        "category_id": PERSON_CATEGORY["id"],
    }


# ---------------------------------------------------------------------------------------------
# Scenes


def _person_height(rng: np.random.Generator, image_height: int) -> float:
    """Standing height in px: small, medium or large (then usually cut by the image border)."""
    kind = rng.random()
    if kind < 0.35:
        return float(
            np.exp(rng.uniform(np.log(MIN_PERSON_HEIGHT), np.log(max(MIN_PERSON_HEIGHT + 1, 0.35 * image_height))))
        )
    if kind < 0.85:
        return float(rng.uniform(0.35, 0.85) * image_height)
    return float(rng.uniform(0.85, 1.4) * image_height)


def _place_figure(
    rng: np.random.Generator, width: int, height: int, standing_height: float, centre_x: float, light: np.ndarray
) -> Figure:
    """A random person of `standing_height` px with its box centred near centre_x."""
    figure = build_figure(
        sample_body_shape(rng), sample_pose(rng), sample_clothing(rng), standing_height, np.zeros(2), light
    )
    x0, y0, x1, y1 = figure.box
    figure_height = y1 - y0
    if figure_height < 0.85 * height:
        bottom = rng.uniform(max(figure_height, 0.35 * height), height + 0.1 * figure_height)
    else:  # a big person: head in the picture, the rest cut off by the bottom border
        bottom = rng.uniform(-0.1 * figure_height, 0.1 * height) + figure_height
    return figure.moved(np.array([centre_x - (x0 + x1) / 2, bottom - y1]))


def _crowd_figures(rng: np.random.Generator, width: int, height: int, light: np.ndarray) -> list[Figure]:
    """A dense group: one to three rows of small people (14-40 px) standing shoulder to shoulder,
    back rows first; 10 to 50 people."""
    person_height = rng.uniform(14, min(40, 0.3 * height))
    left = rng.uniform(-0.1, 0.6) * width
    right = min(width * 1.1, left + rng.uniform(0.2, 0.5) * width)
    base = rng.uniform(0.35, 0.75) * height
    spacing = person_height * rng.uniform(0.3, 0.5)  # shoulders are ~0.26 of the height: they overlap
    rows = min(int(rng.integers(1, 4)), max(1, int(50 * spacing / (right - left))))
    figures = []
    for row in reversed(range(rows)):
        row_base = base - row * person_height * 0.25
        for x in np.arange(left + rng.uniform(0, spacing), right, spacing):
            pose = sample_pose(rng, family=str(rng.choice(("standing", "walking", "arms_raised"))))
            scale = person_height * rng.uniform(0.85, 1.15)
            figure = build_figure(sample_body_shape(rng), pose, sample_clothing(rng), scale, np.zeros(2), light)
            figures.append(
                figure.moved(np.array([x + rng.uniform(-2, 2), row_base + rng.uniform(-2, 2) - figure.box[3]]))
            )
    return figures


def render_scene(
    rng: np.random.Generator,
    width: int | None = None,
    height: int | None = None,
    max_people: int = 6,
    crowd_probability: float = 0.08,
) -> tuple[np.ndarray, list[dict]]:
    """Paint one scene and annotate it.

    width, height: image size in px (a random COCO-like size when None). max_people: the most
    people placed (0..max_people, some images empty; those that end up nearly invisible are not
    annotated). crowd_probability: chance of a dense group, annotated as one `iscrowd: 1`.

    Returns the (H, W, 3) uint8 RGB image and its COCO annotation dicts without `id` and
    `image_id`: segmentation, num_keypoints, area, iscrowd, keypoints (51 ints), bbox, category_id.
    Persons come first, in painting order (back to front), then crowds.
    """
    if width is None or height is None:
        width, height = IMAGE_SIZES[rng.choice(len(IMAGE_SIZES), p=_IMAGE_SIZE_WEIGHTS)]
    canvas = Canvas(paint_background(rng, width, height))
    light = _unit(np.array([rng.uniform(-0.6, 0.6), rng.uniform(0.0, 0.8), 1.0]))

    crowd = _crowd_figures(rng, width, height, light) if rng.random() < crowd_probability else []
    weights = np.array(
        [*_PEOPLE_COUNT_WEIGHTS, *[_PEOPLE_COUNT_WEIGHTS[-1]] * max(0, max_people - 6)][: max_people + 1]
    )
    count = int(rng.choice(len(weights), p=weights / weights.sum()))
    figures: list[Figure] = []
    for _ in range(count):
        if figures and rng.random() < 0.4:  # people in groups, overlapping
            neighbour = figures[int(rng.integers(len(figures)))]
            centre_x = (neighbour.box[0] + neighbour.box[2]) / 2 + rng.normal(0, 0.5) * (
                neighbour.box[2] - neighbour.box[0]
            )
        else:
            centre_x = rng.uniform(-0.05, 1.05) * width
        figures.append(_place_figure(rng, width, height, _person_height(rng, height), centre_x, light))

    # Objects mostly stand just in front of (below the feet of) a person they partly hide:
    # (base y, anchor x, size) each.
    occluders = []
    for _ in range(min(_MAX_OCCLUDERS, int(rng.poisson(0.8)))):
        if figures and rng.random() < 0.8:
            x0, y0, x1, y1 = figures[int(rng.integers(len(figures)))].box
            occluders.append(
                (y1 + rng.uniform(1, 0.2 * (y1 - y0) + 2), rng.uniform(x0, x1), rng.uniform(0.25, 0.7) * (y1 - y0))
            )
        else:
            occluders.append((rng.uniform(0.5, 1.1) * height, rng.uniform(0, width), rng.uniform(0.1, 0.4) * height))

    # Paint back to front: the crowd far away, then people and objects by how low they stand.
    # People take label slots 1..N, the crowd N+1; objects take labels 1..63 (slot 0).
    crowd_slot = len(figures) + 1
    for figure in crowd:
        paint_figure(canvas, figure, crowd_slot)
    things = [(figure.box[3], "person", slot) for slot, figure in enumerate(figures, start=1)]
    things += [(base_y, "object", number) for number, (base_y, _, _) in enumerate(occluders, start=1)]
    for _, kind, number in sorted(things):
        if kind == "person":
            paint_figure(canvas, figures[number - 1], number)
        else:
            base_y, anchor_x, size = occluders[number - 1]
            paint_occluder(canvas, rng, anchor_x, base_y, size, label=number)

    labels = np.asarray(canvas.labels)
    annotations = [a for slot, figure in enumerate(figures, start=1) if (a := person_annotation(figure, slot, labels))]
    if crowd and (a := crowd_annotation((labels >> _PART_BITS) == crowd_slot)):
        annotations.append(a)
    return camera_effects(rng, canvas.image), annotations


# ---------------------------------------------------------------------------------------------
# The COCO 2017 layout


def image_id_for(split: str, index: int) -> int:
    """The image id of the split's index-th image (0-based)."""
    return SPLIT_ID_BASE[split] + index + 1


def _image_entry(split: str, image_id: int, width: int, height: int) -> dict:
    file_name = f"{image_id:012d}.jpg"
    # A fixed, made-up capture date per image: the field is in every COCO image entry.
    captured = datetime(2013, 1, 1) + timedelta(seconds=(image_id * 7919) % (365 * 24 * 3600))
    return {
        "license": 1,
        "file_name": file_name,
        "coco_url": f"http://images.cocodataset.org/{image_folder(split)}/{file_name}",
        "height": height,
        "width": width,
        "date_captured": captured.strftime("%Y-%m-%d %H:%M:%S"),
        "flickr_url": "",
        "id": image_id,
    }


def _document(split: str, images: list[dict], annotations: list[dict], seed: int) -> dict:
    return {
        "info": {
            "description": f"Synthetic COCO-format person keypoints ({split}, seed {seed}), pose-jobs",
            "url": "",
            "version": "1.0",
            "year": 2017,
            "contributor": "pose-jobs synthetic world",
            "date_created": "2017/09/01",
        },
        "licenses": [
            {"url": "https://creativecommons.org/publicdomain/zero/1.0/", "id": 1, "name": "CC0 1.0 (synthetic images)"}
        ],
        "images": images,
        "annotations": annotations,
        "categories": [PERSON_CATEGORY],
    }


def _zip_info(name: str, compress_type: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_ZIP_DATE_TIME)
    info.compress_type = compress_type
    info.external_attr = 0o644 << 16
    return info


def _replace_atomically(path: Path, write) -> None:
    """Call write(fileobj) on a temporary file next to `path`, then move it into place."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as fileobj:
            write(fileobj)
        os.chmod(temporary, 0o644)  # mkstemp makes it private; a dataset is for every reader
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _write_annotation_archive(archive: Path, member: str, document_bytes: bytes) -> None:
    """Put `member` into annotations_trainval2017.zip, keeping the other members already there."""
    kept: dict[str, bytes] = {}
    if archive.exists():
        with zipfile.ZipFile(archive) as old:
            kept = {name: old.read(name) for name in old.namelist() if name != member}
    kept[member] = document_bytes

    def write(fileobj):
        with zipfile.ZipFile(fileobj, "w") as new:
            for name in sorted(kept):  # sorted: the same bytes whichever split was written first
                new.writestr(_zip_info(name, zipfile.ZIP_DEFLATED), kept[name])

    _replace_atomically(archive, write)


def write_coco(
    dest: str | Path, split: str = "train", images: int = 100, seed: int = 0, archives: bool = False
) -> dict:
    """Write `images` synthetic images of `split` and their person keypoints in the COCO 2017 layout.

    Folders (archives=False): dest/annotations/person_keypoints_{split}2017.json and
    dest/{split}2017/{image_id:012d}.jpg. Archives (archives=True), as the public bucket has
    them: dest/{split}2017.zip (JPEGs stored) and dest/annotations_trainval2017.zip (JSON
    deflated; members of the other split already there are kept).

    Image i is drawn from its own generator seeded by (seed, split, i): the same arguments give
    the same bytes, and a larger `images` extends a smaller run. Returns a summary: split,
    images, annotations, persons, crowds, keypoints (labelled, v > 0), path (dest), annotation_file
    and image_source (folder or zip).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if images < 0:
        raise ValueError(f"images must be >= 0, got {images}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)

    image_entries, annotations = [], []
    counts = {"persons": 0, "crowds": 0, "keypoints": 0}

    def generate():
        """Yield (file name, JPEG bytes) per image, collecting the JSON entries on the way."""
        for index in range(images):
            rng = np.random.default_rng([seed, _SPLIT_SEED[split], index])
            pixels, scene_annotations = render_scene(rng)
            image_id = image_id_for(split, index)
            entry = _image_entry(split, image_id, pixels.shape[1], pixels.shape[0])
            image_entries.append(entry)
            for number, annotation in enumerate(scene_annotations):
                # COCO's key order: segmentation, num_keypoints, area, iscrowd, keypoints, image_id, bbox,
                # category_id, id.
                annotations.append(
                    {
                        **{k: annotation[k] for k in ("segmentation", "num_keypoints", "area", "iscrowd", "keypoints")},
                        "image_id": image_id,
                        "bbox": annotation["bbox"],
                        "category_id": annotation["category_id"],
                        "id": image_id * _ANNOTATIONS_PER_IMAGE_ID + number,
                    }
                )
                counts["crowds" if annotation["iscrowd"] else "persons"] += 1
                counts["keypoints"] += annotation["num_keypoints"]
            yield entry["file_name"], encode_jpeg(pixels, quality=JPEG_QUALITY)

    if archives:
        image_source = dest / image_archive(split)

        def write_images(fileobj):
            with zipfile.ZipFile(fileobj, "w", allowZip64=True) as archive:
                for file_name, jpeg in generate():
                    archive.writestr(_zip_info(f"{image_folder(split)}/{file_name}", zipfile.ZIP_STORED), jpeg)

        _replace_atomically(image_source, write_images)
        annotation_file = dest / ANNOTATION_ARCHIVE
        document = _document(split, image_entries, annotations, seed)
        _write_annotation_archive(annotation_file, annotation_member(split), json.dumps(document).encode())
    else:
        image_source = dest / image_folder(split)
        image_source.mkdir(parents=True, exist_ok=True)
        for file_name, jpeg in generate():
            (image_source / file_name).write_bytes(jpeg)
        annotation_file = dest / annotation_member(split)
        annotation_file.parent.mkdir(parents=True, exist_ok=True)
        document = _document(split, image_entries, annotations, seed)
        _replace_atomically(annotation_file, lambda fileobj: fileobj.write(json.dumps(document).encode()))

    return {
        "split": split,
        "images": len(image_entries),
        "annotations": len(annotations),
        "persons": counts["persons"],
        "crowds": counts["crowds"],
        "keypoints": counts["keypoints"],
        "path": str(dest),
        "annotation_file": str(annotation_file),
        "image_source": str(image_source),
    }
