"""Ingest: COCO 2017 keypoints and SVHN, from a local folder or S3, into sharded Parquet.

The driver reads the small things (annotation files, .mat headers, archive directories) and cuts
the work into deterministic shards; Ray Data runs one task per shard across the cluster. Each
shard writes its own Parquet files under fixed names, then a commit marker:

  DEST/<table>/<split>/<unit>.parquet     one file per table and shard
  DEST/_commits/<unit>.json               written last: the shard is done
  DEST/manifest.json                      written at the end from the markers

A re-run skips shards whose marker matches (same inputs, same settings), so it is idempotent and
resumes after a crash; files are written whole (rename locally, single PUT on S3), so a killed
run never leaves a half file under a final name, and `manifest.json` lists only committed shards.
That protocol, shared with annotate, is `jobs.shards`; reading the tables back is `jobs.datasets`.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict, dataclass, field

import numpy as np

from jobs import shards
from jobs.datasets import load_coco_annotations
from jobs.runtime import Progress, StallWatch, init_ray
from jobs.shards import UnbalancedError
from jobs.storage import (
    StorageError,
    StorageOptions,
    absolute,
    check_readable,
    check_writable,
    exists,
    join,
    open_input,
    read_bytes,
    remove_stale_temporaries,
)
from pose import schema
from pose.crops import CropSettings, person_crop_row, square_digit_crop
from pose.errors import UserError
from pose.formats import coco, svhn
from pose.images import ImageDecodeError, decode_image

COCO_SHARD_IMAGES = 128
SVHN_CROPPED_SHARD_DIGITS = 16384
SVHN_FULL_SHARD_NUMBERS = 512


# Which output table holds each kind of input item, and which error kind records its loss.
INPUT_TABLES = {"images": "images", "persons": "annotations", "numbers": "numbers"}
ERROR_KINDS = {"image": "images", "annotation": "annotations", "digit": "digits", "number": "numbers", "file": "files"}


class IngestError(UserError):
    """A user mistake found before any work starts (no dataset at SRC, ...): one line, no traceback."""


@dataclass
class Shard:
    """One unit of work: everything a worker needs, nothing it has to look up elsewhere."""

    unit: str  # unique name within DEST, e.g. "train-00003" or "test-cropped-00001"
    split: str
    kind: str  # "coco", "svhn-cropped", "svhn-full" or "errors" (findings of the driver)
    payload: dict
    fingerprint: str = ""


@dataclass
class Plan:
    """What the driver found at SRC: the shards, and how many input items each split holds."""

    dataset: str  # "coco" or "svhn"
    source: str
    shards: list[Shard] = field(default_factory=list)
    inputs: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> item kind -> count


# --------------------------------------------------------------------------------------------
# Planning (driver)


def plan_coco(
    src: str, options: StorageOptions, splits: tuple[str, ...] = coco.SPLITS, shard_images: int = COCO_SHARD_IMAGES
) -> Plan:
    """Read each split's annotation file and the image archive's directory; cut shards."""
    plan = Plan("coco", src)
    for split in splits:
        document, annotation_source = load_coco_annotations(src, split, options)
        if document is None:
            continue
        folder, archive = join(src, coco.image_folder(split)), join(src, coco.image_archive(split))
        members = None
        if not exists(folder, options):
            if not exists(archive, options):
                raise IngestError(
                    f"{src}: split '{split}' has annotations but neither {coco.image_folder(split)}/ "
                    f"nor {coco.image_archive(split)}"
                )
            with open_input(archive, options) as handle:
                members = coco.index_zip(handle, archive)

        grouped = coco.annotations_by_image(document["annotations"])
        listed = {int(image["id"]) for image in document["images"]}
        dangling = [a for image_id, group in sorted(grouped.items()) if image_id not in listed for a in group]
        items = []
        for image in sorted(document["images"], key=lambda i: int(i["id"])):
            item = {"image": image, "annotations": grouped.get(int(image["id"]), [])}
            if members is None:
                item["source"] = join(folder, image["file_name"])
            else:
                member_name = f"{coco.image_folder(split)}/{image['file_name']}"
                member = members.get(member_name)
                item["source"] = f"{archive}!{member_name}"
                item["archive"] = archive
                item["member"] = None if member is None else asdict(member)
            items.append(item)

        plan.inputs[split] = {"images": len(document["images"]), "annotations": len(document["annotations"])}
        chunks = [items[i : i + shard_images] for i in range(0, len(items), shard_images)] or [[]]
        for number, chunk in enumerate(chunks):
            payload = {
                "images": chunk,
                "annotation_file": annotation_source,
                "dangling": dangling if number == 0 else [],
            }
            plan.shards.append(Shard(f"{split}-{number:05d}", split, "coco", payload))
    if not plan.shards:
        raise IngestError(
            f"{src}: no COCO keypoint annotations found (expected annotations/person_keypoints_{{train,val}}2017.json "
            f"or {coco.ANNOTATION_ARCHIVE})"
        )
    return plan


def plan_svhn(
    src: str,
    options: StorageOptions,
    splits: tuple[str, ...] = svhn.SPLITS,
    cropped_shard_digits: int = SVHN_CROPPED_SHARD_DIGITS,
    full_shard_numbers: int = SVHN_FULL_SHARD_NUMBERS,
) -> Plan:
    """Find format 2 (`{split}_32x32.mat`) and format 1 (`{split}/digitStruct.mat`) files; cut shards.

    Only the labels and headers are read here; pixels are read by the shards.
    """
    plan = Plan("svhn", src)
    for split in splits:
        counts = {"files": 0, "digits": 0, "numbers": 0}
        mat = join(src, f"{split}_32x32.mat")
        if exists(mat, options):
            counts["files"] += 1
            try:
                with open_input(mat, options) as handle:
                    total = svhn.cropped_digit_count(handle)
                if total == 0:
                    raise svhn.SvhnFormatError(f"{mat}: holds no digits (X and y are empty)")
                counts["digits"] += total
                for number, start in enumerate(range(0, total, cropped_shard_digits)):
                    payload = {"source": mat, "start": start, "stop": min(start + cropped_shard_digits, total)}
                    plan.shards.append(Shard(f"{split}-cropped-{number:05d}", split, "svhn-cropped", payload))
            except svhn.SvhnFormatError as error:
                row = schema.error_row(split, "file", mat, mat, "read", str(error))
                plan.shards.append(Shard(f"{split}-cropped-file", split, "errors", {"errors": [row]}))

        struct_path = join(src, split, "digitStruct.mat")
        if exists(struct_path, options):
            counts["files"] += 1
            try:
                with open_input(struct_path, options) as handle:
                    numbers = svhn.read_digit_struct(handle)
                if not numbers:
                    raise svhn.SvhnFormatError(f"{struct_path}: holds no numbers (digitStruct is empty)")
                counts["numbers"] += len(numbers)
                entries = [
                    {
                        "index": index,
                        "name": n.name,
                        "source": join(src, split, n.name),
                        "boxes": [asdict(b) for b in n.boxes],
                    }
                    for index, n in enumerate(numbers)
                ]
                for number, start in enumerate(range(0, len(entries), full_shard_numbers)):
                    payload = {"numbers": entries[start : start + full_shard_numbers]}
                    plan.shards.append(Shard(f"{split}-full-{number:05d}", split, "svhn-full", payload))
            except svhn.SvhnFormatError as error:
                row = schema.error_row(split, "file", struct_path, struct_path, "read", str(error))
                plan.shards.append(Shard(f"{split}-full-file", split, "errors", {"errors": [row]}))
        if counts["files"]:
            plan.inputs[split] = counts
    if not plan.shards:
        raise IngestError(
            f"{src}: no SVHN files found "
            "(expected {train,test,extra}_32x32.mat or {train,test,extra}/digitStruct.mat)"
        )
    return plan


# --------------------------------------------------------------------------------------------
# Shard work (Ray workers): plain functions of a shard, returning rows per table


def coco_shard_tables(shard: Shard, options: StorageOptions, crop: CropSettings) -> dict[str, list[dict]]:
    """Read, decode and check one shard of COCO images; rows for images, persons, person_crops, errors."""
    split, payload = shard.split, shard.payload
    tables: dict[str, list[dict]] = {"images": [], "persons": [], "person_crops": [], "errors": []}
    errors = tables["errors"]
    for annotation in payload["dangling"]:
        reason = f"refers to image {annotation.get('image_id')}, which the annotation file does not list"
        errors.append(
            schema.error_row(
                split,
                "annotation",
                f"annotation {annotation.get('id')}",
                payload["annotation_file"],
                "annotations",
                reason,
            )
        )

    archives: dict[str, object] = {}
    try:
        for item in payload["images"]:
            _coco_image_rows(item, split, options, crop, archives, tables)
    finally:
        for handle in archives.values():
            handle.close()
    return tables


def _coco_image_rows(
    item: dict, split: str, options: StorageOptions, crop: CropSettings, archives: dict, tables: dict
) -> None:
    image, annotations, source = item["image"], item["annotations"], item["source"]
    image_id = int(image["id"])

    def lose_image(stage: str, reason: str) -> None:
        tables["errors"].append(schema.error_row(split, "image", f"image {image_id}", source, stage, reason))
        for annotation in annotations:
            tables["errors"].append(
                schema.error_row(
                    split,
                    "annotation",
                    f"annotation {annotation.get('id')}",
                    source,
                    stage,
                    f"its image {image_id} was lost: {reason}",
                )
            )

    try:
        if "archive" in item:
            if item["member"] is None:
                raise FileNotFoundError("not in the archive")
            if item["archive"] not in archives:
                archives[item["archive"]] = open_input(item["archive"], options)
            data = coco.read_zip_member(archives[item["archive"]], coco.ZipMember(**item["member"]))
        else:
            data = read_bytes(source, options)
    except (OSError, StorageError, coco.CocoFormatError) as error:
        return lose_image("read", f"cannot read the image file ({error})" if str(error) else "image file missing")
    try:
        # COCO's annotations are in the stored pixel frame: no EXIF rotation here.
        pixels = decode_image(data, exif_transpose=False)
    except ImageDecodeError as error:
        return lose_image("decode", str(error))
    height, width = pixels.shape[:2]
    if (width, height) != (int(image.get("width", -1)), int(image.get("height", -1))):
        return lose_image(
            "validate",
            f"image is {width}x{height} but the annotation file says {image.get('width')}x{image.get('height')}",
        )

    tables["images"].append(
        {
            "image_id": image_id,
            "split": split,
            "file_name": image.get("file_name"),
            "width": width,
            "height": height,
            "source": source,
            "license": image.get("license"),
            "coco_url": image.get("coco_url"),
            "flickr_url": image.get("flickr_url"),
            "date_captured": image.get("date_captured"),
        }
    )
    for annotation in annotations:
        problem = coco.person_problem(annotation, width, height)
        if problem is None and annotation.get("category_id", 1) != 1:
            problem = f"category_id {annotation.get('category_id')} is not person (1)"
        if problem is not None:
            tables["errors"].append(
                schema.error_row(split, "annotation", f"annotation {annotation.get('id')}", source, "validate", problem)
            )
            continue
        keypoints = np.asarray(annotation.get("keypoints", [0] * schema.KEYPOINT_VALUES), dtype=np.float32)
        bbox = np.asarray(annotation["bbox"], dtype=np.float32)
        iscrowd = bool(annotation.get("iscrowd", 0))
        num_keypoints = int(annotation.get("num_keypoints", int((keypoints[2::3] > 0).sum())))
        tables["persons"].append(
            {
                "annotation_id": int(annotation["id"]),
                "image_id": image_id,
                "split": split,
                "category_id": int(annotation.get("category_id", 1)),
                "bbox": bbox.tolist(),
                "keypoints": keypoints.tolist(),
                "num_keypoints": num_keypoints,
                "area": float(annotation.get("area", bbox[2] * bbox[3])),
                "iscrowd": iscrowd,
                "segmentation": json.dumps(annotation.get("segmentation", [])),
            }
        )
        if iscrowd or num_keypoints == 0 or bbox[2] < 1 or bbox[3] < 1:
            continue
        tables["person_crops"].append(person_crop_row(pixels, annotation, image_id, split, crop))


def svhn_cropped_tables(shard: Shard, options: StorageOptions) -> dict[str, list[dict]]:
    """Digits [start, stop) of one format-2 `.mat` file, streamed."""
    split, source, start, stop = shard.split, shard.payload["source"], shard.payload["start"], shard.payload["stop"]
    tables: dict[str, list[dict]] = {"digits": [], "errors": []}
    with open_input(source, options) as handle:
        labels = svhn.read_cropped_labels(handle)
        handle.seek(0)
        try:
            for first, pixels in svhn.iter_cropped_digits(handle, start, stop):
                for offset, digit_pixels in enumerate(pixels):
                    index = first + offset
                    try:
                        label = svhn.digit_from_label(labels[index])
                    except svhn.SvhnFormatError as error:
                        tables["errors"].append(
                            schema.error_row(split, "digit", f"digit {index}", source, "validate", str(error))
                        )
                        continue
                    tables["digits"].append(
                        {
                            "split": split,
                            "source": source,
                            "index": index,
                            "position": 0,
                            "label": label,
                            "pixels": digit_pixels.tobytes(),
                        }
                    )
        except svhn.SvhnFormatError as error:
            # The file broke part-way (truncated upload, ...): account for every digit not yet read.
            done = {row["index"] for row in tables["digits"]} | {
                int(row["item"].split()[1]) for row in tables["errors"]
            }
            for index in range(start, stop):
                if index not in done:
                    tables["errors"].append(
                        schema.error_row(split, "digit", f"digit {index}", source, "read", str(error))
                    )
    return tables


def svhn_full_tables(shard: Shard, options: StorageOptions) -> dict[str, list[dict]]:
    """Format-1 numbers: the PNG and its boxes as a `numbers` row, each digit box as a `digits` row."""
    split = shard.split
    tables: dict[str, list[dict]] = {"numbers": [], "digits": [], "errors": []}
    for entry in shard.payload["numbers"]:
        source, index = entry["source"], entry["index"]
        try:
            data = read_bytes(source, options)
            pixels = decode_image(data, exif_transpose=False)
        except (OSError, StorageError) as error:
            tables["errors"].append(
                schema.error_row(
                    split, "number", f"number {index}", source, "read", f"cannot read the image file ({error})"
                )
            )
            continue
        except ImageDecodeError as error:
            tables["errors"].append(schema.error_row(split, "number", f"number {index}", source, "decode", str(error)))
            continue
        height, width = pixels.shape[:2]
        boxes, digits_text = [], ""
        for position, box in enumerate(entry["boxes"]):
            try:
                label = svhn.digit_from_label(box["label"])
                if box["width"] <= 0 or box["height"] <= 0:
                    raise svhn.SvhnFormatError(f"digit box {box} has no area")
            except svhn.SvhnFormatError as error:
                tables["errors"].append(
                    schema.error_row(
                        split, "digit_box", f"number {index} digit {position}", source, "validate", str(error)
                    )
                )
                continue
            boxes.append(
                {"left": box["left"], "top": box["top"], "width": box["width"], "height": box["height"], "label": label}
            )
            digits_text += str(label)
            ltwh = (box["left"], box["top"], box["width"], box["height"])
            tables["digits"].append(
                {
                    "split": split,
                    "source": source,
                    "index": index,
                    "position": position,
                    "label": label,
                    "pixels": square_digit_crop(pixels, ltwh).tobytes(),
                }
            )
        tables["numbers"].append(
            {
                "split": split,
                "name": entry["name"],
                "source": source,
                "image": data,
                "width": width,
                "height": height,
                "digits": digits_text,
                "boxes": boxes,
            }
        )
    return tables


def process_shard(shard: Shard, dest: str, options: StorageOptions, crop: CropSettings) -> dict:
    """Do one shard's work, write its tables, then its commit marker; return the marker."""
    if shard.kind == "coco":
        tables = coco_shard_tables(shard, options, crop)
    elif shard.kind == "svhn-cropped":
        tables = svhn_cropped_tables(shard, options)
    elif shard.kind == "svhn-full":
        tables = svhn_full_tables(shard, options)
    else:
        tables = {"errors": shard.payload["errors"]}
    # Every input item of the shard lands in exactly one output row or one error row: count both
    # sides by the kind of input item, for the manifest to check against the planned inputs.
    accounted: dict[str, int] = {}
    input_tables = dict(INPUT_TABLES, digits="digits") if shard.kind == "svhn-cropped" else INPUT_TABLES
    for table, kind in input_tables.items():
        if table in tables:
            accounted[kind] = accounted.get(kind, 0) + len(tables[table])
    for row in tables.get("errors", []):
        kind = ERROR_KINDS.get(row["kind"])
        if kind:
            accounted[kind] = accounted.get(kind, 0) + 1
    paths = {name: (f"{name}/{shard.split}/{shard.unit}.parquet", rows) for name, rows in tables.items()}
    return shards.commit_shard(
        dest, options, shard.unit, shard.fingerprint, paths, split=shard.split, accounted=accounted
    )


# --------------------------------------------------------------------------------------------
# Running (driver)


def run_ingest(
    plan: Plan,
    dest: str,
    options: StorageOptions,
    crop: CropSettings = CropSettings(),
    *,
    address: str | None = None,
    verbose: bool = False,
    progress: bool = True,
) -> dict:
    """Process the plan's shards that are not yet committed in DEST, then write `manifest.json`."""
    check_writable(dest, options)
    remove_stale_temporaries(dest)  # a killed run's half-written files (never under a final name)
    settings = (
        {"schema_version": schema.SCHEMA_VERSION, "crop": asdict(crop)}
        if plan.dataset == "coco"
        else {"schema_version": schema.SCHEMA_VERSION}
    )
    for shard in plan.shards:
        shard.fingerprint = shards.fingerprint(
            {"unit": shard.unit, "kind": shard.kind, "payload": shard.payload, "settings": settings}
        )
    committed = shards.read_commit_markers(dest, options)
    pending = shards.pending(plan.shards, committed)
    earlier = _earlier_splits(plan, dest, settings, options)

    if pending:
        init_ray(address, verbose=verbose)
        import ray.data

        # One block per shard so that shards spread over every CPU of the cluster.
        dataset = ray.data.from_items([{"shard": pickle.dumps(s)} for s in pending], override_num_blocks=len(pending))
        dataset = dataset.map(
            _process_row,
            fn_kwargs={"dest": dest, "options": options, "crop": crop},
            num_cpus=1,
        )
        meter = Progress(f"ingest {plan.dataset}", len(pending), _item_unit(plan.dataset)) if progress else None
        with StallWatch(f"ingest {plan.dataset}", lambda: len(committed)):
            for row in dataset.iter_rows():
                marker = json.loads(row["marker"])
                committed[marker["unit"]] = marker
                if meter:
                    meter.advance(1, marker["tables"].get(_item_unit(plan.dataset), {}).get("rows", 0))

    markers = {s.unit: committed[s.unit] for s in plan.shards}
    # Splits an earlier run of the same source ingested into DEST (`--split train`, then `--split val`)
    # stay in the manifest with the shards and accounting that run left.
    kept = {unit: marker for unit, marker in committed.items() if marker.get("split") in earlier}
    return shards.write_manifest(
        dest,
        options,
        job="ingest",
        source=plan.source,
        settings=settings,
        markers={**kept, **markers},
        dataset=plan.dataset,
        accounting=dict(sorted({**earlier, **_accounting(plan, markers)}.items())),
    )


def _earlier_splits(plan: Plan, dest: str, settings: dict, options: StorageOptions) -> dict[str, dict]:
    """split -> accounting of the splits that an earlier ingest of the same source left in DEST and
    this run does not ingest again. A DEST holding another source's (or another job's) output is
    refused: its manifest would mix the two, or lose one."""
    path = join(dest, shards.MANIFEST)
    if not exists(path, options):
        return {}
    previous = json.loads(read_bytes(path, options))
    job, source = previous.get("job", "ingest"), previous.get("source", "")
    dataset = previous.get("dataset", plan.dataset)
    if job != "ingest" or dataset != plan.dataset or source.rstrip("/") != shards.redact(plan.source).rstrip("/"):
        what = f"pose-jobs {job}'s output" if job != "ingest" else f"an ingest of {dataset} {source}"
        raise IngestError(f"{dest} holds {what}; give another DEST for {shards.redact(plan.source)}")
    earlier = {split: entry for split, entry in previous.get("accounting", {}).items() if split not in plan.inputs}
    if earlier and previous.get("settings") != json.loads(json.dumps(settings)):
        raise IngestError(
            f"{dest}: its {', '.join(sorted(earlier))} split(s) were ingested with other settings (another "
            "pose-jobs version?); ingest every split again (no --split)"
        )
    return earlier


def _process_row(row: dict, dest: str, options: StorageOptions, crop: CropSettings) -> dict:
    shard = pickle.loads(row["shard"])
    marker = process_shard(shard, dest, options, crop)
    return {"unit": shard.unit, "marker": json.dumps(marker)}


def _item_unit(dataset: str) -> str:
    return "images" if dataset == "coco" else "digits"


def _accounting(plan: Plan, markers: dict[str, dict]) -> dict[str, dict]:
    """Per split: the planned input counts, those the committed shards account for, and whether they agree."""
    accounted: dict[str, dict[str, int]] = {}
    for marker in markers.values():
        for kind, count in marker["accounted"].items():
            split_counts = accounted.setdefault(marker["split"], {})
            split_counts[kind] = split_counts.get(kind, 0) + count
    accounting = {}
    for split, inputs in sorted(plan.inputs.items()):
        found = accounted.get(split, {})
        # A broken file's items cannot be counted, only the file: it is checked as a file.
        counted = {kind: n for kind, n in inputs.items() if kind != "files"}
        accounting[split] = {
            "inputs": inputs,
            "accounted": found,
            "balanced": all(found.get(kind, 0) == n for kind, n in counted.items()),
        }
    return accounting


def ingest(
    dataset: str,
    src: str,
    dest: str,
    options: StorageOptions = StorageOptions(),
    *,
    splits: tuple[str, ...] | None = None,
    shard_size: int | None = None,
    crop: CropSettings = CropSettings(),
    address: str | None = None,
    verbose: bool = False,
    progress: bool = True,
) -> dict:
    """Ingest `dataset` ("coco" or "svhn") from SRC into DEST; returns the manifest.

    `shard_size` is images per shard for COCO, digits (format 2) and numbers (format 1) for SVHN.
    """
    src, dest = absolute(src), absolute(dest)  # workers do not share the driver's working directory
    check_readable(src, options)
    if dataset == "coco":
        plan = plan_coco(src, options, splits or coco.SPLITS, shard_images=shard_size or COCO_SHARD_IMAGES)
    elif dataset == "svhn":
        plan = plan_svhn(
            src,
            options,
            splits or svhn.SPLITS,
            cropped_shard_digits=shard_size or SVHN_CROPPED_SHARD_DIGITS,
            full_shard_numbers=shard_size or SVHN_FULL_SHARD_NUMBERS,
        )
    else:
        raise IngestError(f"unknown dataset '{dataset}': expected coco or svhn")
    manifest = run_ingest(plan, dest, options, crop, address=address, verbose=verbose, progress=progress)
    check_outcome(manifest, src, dest)
    return manifest


def check_outcome(manifest: dict, src: str, dest: str) -> None:
    """Refuse to call a run a success when its manifest does not balance (inputs lost or counted
    twice) or when SRC yielded no items at all (every file in `errors`)."""
    unbalanced = [
        f"{split} (inputs {entry['inputs']}, in the output {entry['accounted']})"
        for split, entry in manifest["accounting"].items()
        if not entry["balanced"]
    ]
    if unbalanced:
        raise UnbalancedError(f"{dest}/manifest.json does not balance for {'; '.join(unbalanced)}")
    items = ("images",) if manifest["dataset"] == "coco" else ("digits", "numbers")
    if not any(manifest["tables"].get(name, {}).get("rows", 0) for name in items):
        errors = manifest["tables"].get("errors", {}).get("rows", 0)
        raise IngestError(f"{src}: yielded no {' or '.join(items)}; {errors} error row(s) in {dest}/errors say why")
