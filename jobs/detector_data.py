"""Rows with their original images' pixels. Detector rows: each ingested `images` row with its encoded
pixels (`image`) and its person annotations' boxes (`boxes`, flat COCO `[x, y, w, h, ...]`, and
`iscrowd`), the rows that `pose.detector_task` trains and evaluates on. Reference keypoint rows: each
`person_crops` row with its original image's bytes (`rows_with_images`).

The pixels stay where ingest found them (`images.source`: a path, an s3:// URL or
"archive.zip!member"), so they are read here, in Ray Data tasks before the rows reach the training
workers (`detector_rows`), or in this process for evaluation (`add_pixels_and_boxes`).
"""

from __future__ import annotations

import pyarrow as pa

from jobs.datasets import read_image_source, read_table
from jobs.storage import StorageOptions

# What the detector needs of an `images` row.
IMAGE_COLUMNS = ["image_id", "split", "source", "width", "height"]


def person_boxes_by_image(
    data: str, splits: tuple[str, ...], options: StorageOptions
) -> dict[int, tuple[list[float], list[bool]]]:
    """image_id -> (flat COCO boxes, crowd flags) of every person annotation in `splits`, crowds
    included (the detector's targets drop them; COCO's evaluation ignores detections on them)."""
    persons = read_table(data, "persons", splits, options, columns=["image_id", "bbox", "iscrowd"], required=False)
    boxes: dict[int, tuple[list[float], list[bool]]] = {}
    if persons is None:
        return boxes
    for image_id, bbox, iscrowd in zip(
        persons["image_id"].to_pylist(), persons["bbox"].to_pylist(), persons["iscrowd"].to_pylist()
    ):
        flat, flags = boxes.setdefault(int(image_id), ([], []))
        flat.extend(float(v) for v in bbox)
        flags.append(bool(iscrowd))
    return boxes


def add_pixels_and_boxes(
    batch: pa.Table, boxes: dict[int, tuple[list[float], list[bool]]], options: StorageOptions
) -> pa.Table:
    """`images` rows -> the same rows (IMAGE_COLUMNS) plus `image` (the encoded bytes read from
    `source`), `boxes` and `iscrowd` (empty for an image without persons)."""
    batch = batch.select(IMAGE_COLUMNS)
    image_ids = batch["image_id"].to_pylist()
    found = [boxes.get(int(i), ([], [])) for i in image_ids]
    return (
        batch.append_column(
            "image",
            pa.array([read_image_source(source, options) for source in batch["source"].to_pylist()], pa.binary()),
        )
        .append_column("boxes", pa.array([flat for flat, _ in found], pa.list_(pa.float32())))
        .append_column("iscrowd", pa.array([flags for _, flags in found], pa.list_(pa.bool_())))
    )


def detector_rows(
    dataset, boxes: dict[int, tuple[list[float], list[bool]]], options: StorageOptions, batch_size: int = 16
):
    """A Ray Data dataset of `images` rows -> detector rows, read by Ray Data tasks."""
    return dataset.map_batches(
        add_pixels_and_boxes,
        batch_format="pyarrow",
        batch_size=batch_size,
        fn_kwargs={"boxes": boxes, "options": options},
    )


def image_sources(data: str, splits: tuple[str, ...], options: StorageOptions) -> dict[int, str]:
    """image_id -> where its pixels are (`images.source`) for the images of `splits`."""
    images = read_table(data, "images", splits, options, columns=["image_id", "source"])
    return dict(zip((int(i) for i in images["image_id"].to_pylist()), images["source"].to_pylist()))


def add_image_bytes(batch: pa.Table, sources: dict[int, str], options: StorageOptions) -> pa.Table:
    """Rows with an `image_id` (e.g. `person_crops`) -> the same rows plus `image`, the encoded bytes of their
    original image, read from its source: what the reference keypoint recipes warp, as their references do."""
    pixels = [read_image_source(sources[int(i)], options) for i in batch["image_id"].to_pylist()]
    return batch.append_column("image", pa.array(pixels, pa.binary()))


def rows_with_images(dataset, sources: dict[int, str], options: StorageOptions, batch_size: int = 32):
    """A Ray Data dataset of rows with `image_id` -> the same rows with `image` (`add_image_bytes`), read by
    Ray Data tasks."""
    return dataset.map_batches(
        add_image_bytes,
        batch_format="pyarrow",
        batch_size=batch_size,
        fn_kwargs={"sources": sources, "options": options},
    )
