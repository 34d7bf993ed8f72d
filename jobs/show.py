"""`pose-jobs show`: pictures of a dataset, from its source files or from ingested Parquet.

COCO: each picture is the image with its person boxes, skeletons and joint names (occluded joints
hollow), beside the person crops that keypoint training reads. SVHN: a grid of
labelled digits per split, and full-number images with their digit boxes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jobs.datasets import (
    coco_image_source,
    is_ingested,
    load_coco_annotations,
    read_image_source,
    read_manifest,
    read_table,
)
from jobs.storage import StorageOptions, exists, join, open_input, read_bytes
from pose import draw
from pose.errors import UserError
from pose.formats import coco, svhn
from pose.images import decode_image


class NothingToShow(UserError):
    """The source holds nothing to draw (no such split, image id or digits): one line, no traceback."""


def show_coco(
    src: str,
    out: Path,
    options: StorageOptions = StorageOptions(),
    *,
    split: str = "train",
    images: int = 4,
    image_ids: list[int] | None = None,
) -> list[Path]:
    """Write one PNG per image: persons drawn on the image, then their crops. Returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    if is_ingested(src, options):
        examples = _coco_examples_from_parquet(src, options, split, images, image_ids)
    else:
        examples = _coco_examples_from_source(src, options, split, images, image_ids)
    written = []
    for image_id, pixels, persons, crops in examples:
        boxes = np.array([p["bbox"] for p in persons], dtype=np.float64).reshape(-1, 4)
        keypoints = np.array([p["keypoints"] for p in persons], dtype=np.float64).reshape(-1, 17, 3)
        labels = ["crowd" if p["iscrowd"] else "person" for p in persons]
        scene = draw.draw_persons(pixels, boxes, keypoints, labels=labels, joint_names=True)
        panels = [scene] + [
            draw.crop_panel(crop, points, title=f"crop {annotation_id}") for annotation_id, crop, points in crops
        ]
        titles = [f"image {image_id}: {len(persons)} annotations"] + [""] * len(crops)
        figure = (
            draw.side_by_side(panels[:1], titles=titles[:1]) if not crops else draw.side_by_side(panels, titles=titles)
        )
        path = out / f"coco-{split}-{image_id}.png"
        figure.save(path)
        written.append(path)
    return written


def _pick(ids: list[int], count: int, wanted: list[int] | None) -> list[int]:
    if wanted:
        missing = set(wanted) - set(ids)
        if missing:
            raise NothingToShow(f"no image with id {sorted(missing)} in this split")
        return wanted
    return ids[:count]


def _coco_examples_from_source(src, options, split, count, wanted):
    from pose.crops import cut_person_crop

    document, _ = load_coco_annotations(src, split, options)  # the same discovery as ingest: folder or archive
    if document is None:
        raise NothingToShow(f"{src}: no annotations for split '{split}'")
    grouped = coco.annotations_by_image(document["annotations"])
    by_id = {int(i["id"]): i for i in document["images"]}
    with_people = [i for i in sorted(by_id) if grouped.get(i)]
    for image_id in _pick(with_people, count, wanted):
        source = coco_image_source(src, split, by_id[image_id]["file_name"], options)
        pixels = decode_image(read_image_source(source, options), exif_transpose=False)
        persons = grouped.get(image_id, [])
        crops = []
        for person in persons:
            if person.get("iscrowd") or person.get("num_keypoints", 0) == 0:
                continue
            crop = cut_person_crop(pixels, np.asarray(person["bbox"]), np.asarray(person["keypoints"]).reshape(17, 3))
            crops.append((person["id"], crop.pixels, crop.keypoints))
        yield image_id, pixels, persons, crops


def _coco_examples_from_parquet(src, options, split, count, wanted):
    images = read_table(src, "images", (split,), options, required=False)
    persons = read_table(src, "persons", (split,), options, required=False)
    crops = read_table(src, "person_crops", (split,), options, required=False)
    if images is None or persons is None:
        raise NothingToShow(f"{src}: no ingested images for split '{split}'")
    person_rows: dict[int, list[dict]] = {}
    for row in persons.to_pylist():
        person_rows.setdefault(row["image_id"], []).append(row)
    crop_rows: dict[int, list[dict]] = {}
    for row in crops.to_pylist() if crops is not None else []:
        crop_rows.setdefault(row["image_id"], []).append(row)
    sources = {row["image_id"]: row["source"] for row in images.select(["image_id", "source"]).to_pylist()}
    with_people = sorted(i for i in sources if person_rows.get(i))
    for image_id in _pick(with_people, count, wanted):
        pixels = decode_image(read_image_source(sources[image_id], options), exif_transpose=False)
        panels = [
            (row["annotation_id"], decode_image(row["crop"]), np.asarray(row["keypoints"]).reshape(17, 3))
            for row in crop_rows.get(image_id, [])
        ]
        yield image_id, pixels, person_rows[image_id], panels


def show_svhn(
    src: str, out: Path, options: StorageOptions = StorageOptions(), *, digits: int = 100, numbers: int = 6
) -> list[Path]:
    """Write per split a grid of `digits` labelled digits and a strip of `numbers` full numbers."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for split, pixels, labels, number_examples in _svhn_examples(src, options, digits, numbers):
        if len(pixels):
            path = out / f"svhn-digits-{split}.png"
            draw.digit_grid(pixels, labels).save(path)
            written.append(path)
        if number_examples:
            panels = [draw.number_panel(image, boxes, number_labels) for image, boxes, number_labels in number_examples]
            path = out / f"svhn-numbers-{split}.png"
            draw.side_by_side(panels).save(path)
            written.append(path)
    if not written:
        raise NothingToShow(f"{src}: no SVHN digits found")
    return written


def _svhn_examples(src, options, digit_count, number_count):
    if is_ingested(src, options):
        manifest = read_manifest(src, options)
        for split in sorted(manifest["accounting"]):
            table = read_table(src, "digits", (split,), options, columns=["label", "pixels"], required=False)
            rows = table.slice(0, digit_count).to_pylist() if table is not None else []
            pixels = (
                np.stack([np.frombuffer(r["pixels"], np.uint8).reshape(32, 32, 3) for r in rows])
                if rows
                else np.zeros((0, 32, 32, 3), np.uint8)
            )
            numbers_table = read_table(src, "numbers", (split,), options, required=False)
            number_examples = []
            if numbers_table is not None:
                for row in numbers_table.slice(0, number_count).to_pylist():
                    boxes = [(b["left"], b["top"], b["width"], b["height"]) for b in row["boxes"]]
                    number_examples.append((decode_image(row["image"]), boxes, [b["label"] for b in row["boxes"]]))
            yield split, pixels, [r["label"] for r in rows], number_examples
        return
    for split in svhn.SPLITS:
        pixels, labels, number_examples = np.zeros((0, 32, 32, 3), np.uint8), [], []
        mat = join(src, f"{split}_32x32.mat")
        if exists(mat, options):
            with open_input(mat, options) as handle:
                stored = svhn.read_cropped_labels(handle)
                handle.seek(0)
                _, pixels = next(svhn.iter_cropped_digits(handle, 0, min(digit_count, len(stored)), chunk=digit_count))
            labels = [svhn.digit_from_label(v) for v in stored[: len(pixels)]]
        struct_path = join(src, split, "digitStruct.mat")
        if exists(struct_path, options):
            with open_input(struct_path, options) as handle:
                entries = svhn.read_digit_struct(handle)[:number_count]
            for entry in entries:
                image = decode_image(read_bytes(join(src, split, entry.name), options))
                boxes = [(b.left, b.top, b.width, b.height) for b in entry.boxes]
                number_examples.append((image, boxes, [svhn.digit_from_label(b.label) for b in entry.boxes]))
        if len(pixels) or number_examples:
            yield split, pixels, labels, number_examples
