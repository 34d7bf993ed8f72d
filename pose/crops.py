"""Person crops: the region around one person that ingest stores and keypoint training reads.

The region is the person box grown to the model's aspect ratio and padded by 1.25 (the box the
model sees), times `margin` so that scale and rotation augmentation still find real pixels around
the person rather than padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pose.geometry import apply_affine, box_to_center_size, crop_affine, invert_affine, warp_image
from pose.images import encode_jpeg
from pose.joints import NUM_JOINTS

# A stored crop's JPEG quality: high enough that the round trip moves a pixel by about 1 on
# average, small next to the augmentation training applies, at a fraction of PNG's size.
CROP_JPEG_QUALITY = 92


@dataclass(frozen=True)
class CropSettings:
    width: int = 288  # 1.5 x 192: room around a 256x192 model input
    height: int = 384
    padding: float = 1.25  # Simple Baselines' box padding
    margin: float = 1.5  # extra context kept for augmentation

    @property
    def aspect_ratio(self) -> float:
        return self.width / self.height


@dataclass(frozen=True)
class PersonCrop:
    pixels: np.ndarray  # (height, width, 3) uint8
    bbox: np.ndarray  # (4,) person box in crop coordinates, [x, y, w, h]
    keypoints: np.ndarray  # (17, 3): crop coordinates and the original visibility flag
    image_from_crop: np.ndarray  # (2, 3) affine: crop -> image coordinates


def cut_person_crop(
    image: np.ndarray, bbox_xywh: np.ndarray, keypoints: np.ndarray, settings: CropSettings = CropSettings()
) -> PersonCrop:
    """Cut the crop around one person from an (H, W, 3) image.

    `keypoints` is (17, 3) COCO (x, y, v) in image coordinates; unlabelled joints (v == 0) stay
    (0, 0, 0) in the crop as COCO stores them.
    """
    center, size = box_to_center_size(bbox_xywh, settings.aspect_ratio, settings.padding)
    crop_from_image = crop_affine(center, size * settings.margin, (settings.width, settings.height))
    pixels = warp_image(image, crop_from_image, (settings.width, settings.height))

    keypoints = np.asarray(keypoints, dtype=np.float64).reshape(NUM_JOINTS, 3)
    crop_keypoints = np.zeros_like(keypoints)
    labelled = keypoints[:, 2] > 0
    crop_keypoints[labelled, :2] = apply_affine(keypoints[labelled, :2], crop_from_image)
    crop_keypoints[:, 2] = keypoints[:, 2]

    x, y, w, h = (float(v) for v in bbox_xywh)
    corners = apply_affine(np.array([[x, y], [x + w, y + h]]), crop_from_image)
    crop_box = np.array([*corners[0], *(corners[1] - corners[0])])
    return PersonCrop(pixels, crop_box, crop_keypoints, invert_affine(crop_from_image))


def person_crop_row(
    image: np.ndarray,
    annotation: dict,
    image_id: int,
    split: str | None,
    settings: CropSettings = CropSettings(),
) -> dict:
    """The `person_crops` row (pose.schema.PERSON_CROPS) of one COCO person annotation (its `id`,
    `bbox` [x, y, w, h], 51 `keypoints` values and `area`, the box's when missing) on its (H, W, 3)
    image: the crop as JPEG (`CROP_JPEG_QUALITY`), box and keypoints in crop coordinates, and the
    affine back to the image."""
    bbox = np.asarray(annotation["bbox"], dtype=np.float32)
    keypoints = np.asarray(annotation.get("keypoints", [0] * NUM_JOINTS * 3), np.float32).reshape(NUM_JOINTS, 3)
    person = cut_person_crop(image, bbox, keypoints, settings)
    return {
        "annotation_id": int(annotation["id"]),
        "image_id": int(image_id),
        "split": split,
        "crop": encode_jpeg(person.pixels, quality=CROP_JPEG_QUALITY),
        "crop_width": settings.width,
        "crop_height": settings.height,
        "bbox": person.bbox.astype(np.float32).tolist(),
        "keypoints": person.keypoints.astype(np.float32).reshape(-1).tolist(),
        "image_from_crop": person.image_from_crop.reshape(-1).tolist(),
        "area": float(annotation.get("area", bbox[2] * bbox[3])),
    }


def square_digit_crop(image: np.ndarray, box_ltwh: tuple[float, float, float, float], size: int = 32) -> np.ndarray:
    """SVHN's recipe for a cropped digit: extend the digit box (left, top, width, height) to a
    square about its centre, cut it from the full-number image (H, W, 3) and resize to (size, size, 3).
    Neighbouring digits that fall inside the square are kept, cut at its edge, as in SVHN format 2."""
    left, top, width, height = (float(v) for v in box_ltwh)
    # (left, top) is the box's outer corner, as SVHN loaders slice `image[top:top + height,
    # left:left + width]`; its centre in pose.geometry's pixel-centre frame is half a pixel less.
    center = np.array([left + width * 0.5 - 0.5, top + height * 0.5 - 0.5])
    side = max(width, height, 1.0)
    matrix = crop_affine(center, np.array([side, side]), (size, size))
    return warp_image(image, matrix, (size, size))
