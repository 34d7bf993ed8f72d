"""The Parquet tables that ingest and annotate write and training, evaluation and pictures read.

One home for column names and types. Bump `SCHEMA_VERSION` whenever a column changes meaning or
type; `manifest.json` records the version a dataset was written with. Coordinates follow
`pose.geometry`'s convention ((x, y) pixels, top-left origin, integer = pixel centre). docs/schema.md
describes every table and column for users; keep it in step with this module.
"""

from __future__ import annotations

import pyarrow as pa

from pose.joints import NUM_JOINTS

SCHEMA_VERSION = 1

KEYPOINT_VALUES = NUM_JOINTS * 3  # COCO's flat [x1, y1, v1, x2, y2, v2, ...]

# One row per image that decoded and matched its annotation file.
IMAGES = pa.schema(
    [
        ("image_id", pa.int64()),
        ("split", pa.string()),
        ("file_name", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("source", pa.string()),  # where the pixels were read: a path, an s3:// url, or "archive.zip!member"
        ("license", pa.int32()),
        ("coco_url", pa.string()),
        ("flickr_url", pa.string()),
        ("date_captured", pa.string()),
    ]
)

# One row per person annotation (crowds included), every COCO field kept.
PERSONS = pa.schema(
    [
        ("annotation_id", pa.int64()),
        ("image_id", pa.int64()),
        ("split", pa.string()),
        ("category_id", pa.int32()),
        ("bbox", pa.list_(pa.float32(), 4)),  # COCO [x, y, w, h]
        ("keypoints", pa.list_(pa.float32(), KEYPOINT_VALUES)),  # 17 x (x, y, v), image coordinates
        ("num_keypoints", pa.int16()),
        ("area", pa.float64()),
        ("iscrowd", pa.bool_()),
        ("segmentation", pa.string()),  # the COCO JSON value as is: polygons or RLE
    ]
)

# One row per non-crowd person with at least one labelled keypoint: the image region around the
# person, with room for scale and rotation augmentation, so training never decodes whole images.
PERSON_CROPS = pa.schema(
    [
        ("annotation_id", pa.int64()),
        ("image_id", pa.int64()),
        ("split", pa.string()),
        ("crop", pa.binary()),  # JPEG
        ("crop_width", pa.int32()),
        ("crop_height", pa.int32()),
        ("bbox", pa.list_(pa.float32(), 4)),  # the person box in crop coordinates, [x, y, w, h]
        ("keypoints", pa.list_(pa.float32(), KEYPOINT_VALUES)),  # 17 x (x, y, v), crop coordinates
        ("image_from_crop", pa.list_(pa.float64(), 6)),  # row-major (2, 3) affine: crop -> image
        ("area", pa.float64()),  # the annotation's area in the image, for OKS
    ]
)

# SVHN digits, 32x32 RGB. Format 2 rows come straight from the .mat files; format 1 rows are the
# digit boxes of the full-number images, expanded to squares and resized as SVHN did.
DIGITS = pa.schema(
    [
        ("split", pa.string()),
        ("source", pa.string()),  # the .mat file, or the full-number PNG
        ("index", pa.int64()),  # position in the .mat file, or of the number in digitStruct.mat
        ("position", pa.int8()),  # the digit's place in its house number (format 1); 0 for format 2
        ("label", pa.int8()),  # 0-9 (SVHN's 10 already mapped to 0)
        ("pixels", pa.binary()),  # raw uint8, (32, 32, 3) row-major HWC
    ]
)

# SVHN format 1: one row per full-number image with its digit boxes.
NUMBERS = pa.schema(
    [
        ("split", pa.string()),
        ("name", pa.string()),
        ("source", pa.string()),
        ("image", pa.binary()),  # the PNG bytes as found
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("digits", pa.string()),  # the house number as text, e.g. "1917"
        (
            "boxes",
            pa.list_(
                pa.struct(
                    [
                        ("left", pa.float32()),
                        ("top", pa.float32()),
                        ("width", pa.float32()),
                        ("height", pa.float32()),
                        ("label", pa.int8()),  # 0-9
                    ]
                )
            ),
        ),
    ]
)

# `pose-jobs annotate`: one row per image that was annotated. Boxes are COCO [x, y, w, h] and
# keypoints (x, y, confidence) in the pixels of the image as displayed (EXIF orientation applied).
DETECTION = pa.struct(
    [
        ("bbox", pa.list_(pa.float32(), 4)),
        ("category_id", pa.int32()),  # COCO category id (1 = person)
        ("category", pa.string()),  # its name, e.g. "person", "dog"
        ("score", pa.float32()),
    ]
)
PERSON = pa.struct(
    [
        ("bbox", pa.list_(pa.float32(), 4)),  # the detected person box the keypoints were found in
        ("box_score", pa.float32()),  # the detector's score
        ("keypoints", pa.list_(pa.float32(), KEYPOINT_VALUES)),  # 17 x (x, y, confidence)
        ("score", pa.float32()),  # box_score x mean confidence of the joints above 0.2 (COCO results' score)
    ]
)
ANNOTATIONS = pa.schema(
    [
        ("image_id", pa.int64()),
        ("source", pa.string()),  # the file read: a path, an s3:// URL, or "archive.zip!member"
        ("split", pa.string()),  # the ingested split when SRC is an ingested images table, else null
        ("width", pa.int32()),  # of the image as displayed (after EXIF orientation)
        ("height", pa.int32()),
        ("detections", pa.list_(DETECTION)),  # every object the detector reports, best first
        ("persons", pa.list_(PERSON)),  # person detections with their keypoints, best first
    ]
)

# Every input that did not make it into an output table, and why.
ERRORS = pa.schema(
    [
        ("split", pa.string()),
        ("kind", pa.string()),  # what was lost: "image", "annotation", "digit", "number", "file"
        ("item", pa.string()),  # its identity, e.g. "image 139", "annotation 4242", "digit 17"
        ("source", pa.string()),  # the file it came from
        ("stage", pa.string()),  # "read", "decode", "validate", ...
        ("reason", pa.string()),
    ]
)

TABLES: dict[str, pa.Schema] = {
    "images": IMAGES,
    "persons": PERSONS,
    "person_crops": PERSON_CROPS,
    "digits": DIGITS,
    "numbers": NUMBERS,
    "annotations": ANNOTATIONS,
    "errors": ERRORS,
}


def error_row(split: str, kind: str, item: str, source: str, stage: str, reason: str) -> dict:
    """A row of the `errors` table."""
    return {"split": split, "kind": kind, "item": item, "source": source, "stage": stage, "reason": reason}
