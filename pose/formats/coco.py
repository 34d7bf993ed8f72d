"""COCO 2017 person keypoints: the annotation file, its image folders, and the public archives.

Layout, as published:
  annotations/person_keypoints_{train,val}2017.json   or inside annotations_trainval2017.zip
  {train,val}2017/NNNNNNNNNNNN.jpg                    or inside {train,val}2017.zip

Archives are read in place: `index_zip` reads only the central directory, `read_zip_member` one
member by its offset, so a worker fetches the bytes of its own images from a local file or an
S3 object by range, never the whole archive.
"""

from __future__ import annotations

import json
import struct
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from pose.errors import UserError
from pose.joints import JOINT_NAMES, NUM_JOINTS

SPLITS = ("train", "val")
ANNOTATION_ARCHIVE = "annotations_trainval2017.zip"


def annotation_member(split: str) -> str:
    """Path of a split's keypoint annotations, relative to the dataset root or inside the archive."""
    return f"annotations/person_keypoints_{split}2017.json"


def image_folder(split: str) -> str:
    return f"{split}2017"


def image_archive(split: str) -> str:
    return f"{split}2017.zip"


class CocoFormatError(UserError, ValueError):
    """A COCO file is not what COCO publishes; the message names the file and the problem."""


def load_keypoints_json(fileobj: BinaryIO, name: str) -> dict:
    """Parse a `person_keypoints_*.json` file and check its top-level structure.

    Returns the JSON document (dict with `images`, `annotations`, `categories`, ...).
    """
    try:
        document = json.load(fileobj)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CocoFormatError(f"{name}: not valid JSON ({error})") from None
    if not isinstance(document, dict):
        raise CocoFormatError(f"{name}: expected a JSON object at the top level")
    for key in ("images", "annotations", "categories"):
        if not isinstance(document.get(key), list):
            raise CocoFormatError(f"{name}: missing the '{key}' list of a COCO annotation file")
    for key in ("images", "annotations"):
        repeated = _repeated_ids(document[key])
        if repeated:
            shown = ", ".join(str(i) for i in repeated[:10]) + (
                f" and {len(repeated) - 10} more" if len(repeated) > 10 else ""
            )
            raise CocoFormatError(f"{name}: '{key}' repeats id {shown} (COCO ids are unique; each id must appear once)")
    person = [c for c in document["categories"] if c.get("name") == "person"]
    if not person or len(person[0].get("keypoints", [])) != NUM_JOINTS:
        raise CocoFormatError(
            f"{name}: no 'person' category with {NUM_JOINTS} keypoints (is this a person_keypoints file?)"
        )
    return document


def _repeated_ids(entries: list) -> list:
    """The ids that more than one entry carries, sorted (entries without an id are left to the rows' checks)."""
    seen, repeated = set(), set()
    for entry in entries:
        key = entry.get("id") if isinstance(entry, dict) else None
        if key is None:
            continue
        (repeated if key in seen else seen).add(key)
    return sorted(repeated, key=str)


def person_problem(annotation: dict, width: int, height: int, tolerance: float = 1.0) -> str | None:
    """Why a person annotation cannot be used, or None when it is sound.

    Checks the fields COCO guarantees: a 4-number box, 51 keypoint values with v in {0, 1, 2},
    and labelled keypoints (v > 0) inside the image (within `tolerance` pixels).
    """
    bbox = annotation.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
        return f"bbox {bbox!r} is not [x, y, w, h]"
    if bbox[2] < 0 or bbox[3] < 0:
        return f"bbox {bbox!r} has a negative size"
    keypoints = annotation.get("keypoints", [0] * NUM_JOINTS * 3)
    if not (isinstance(keypoints, list) and len(keypoints) == NUM_JOINTS * 3):
        return (
            f"keypoints has {len(keypoints) if isinstance(keypoints, list) else '?'} values, expected {NUM_JOINTS * 3}"
        )
    points = np.asarray(keypoints, dtype=np.float64).reshape(NUM_JOINTS, 3)
    if not np.all(np.isin(points[:, 2], (0, 1, 2))):
        return f"keypoint visibility flags {points[:, 2].tolist()} are not all 0, 1 or 2"
    labelled = points[:, 2] > 0
    outside = labelled & (
        (points[:, 0] < -tolerance)
        | (points[:, 1] < -tolerance)
        | (points[:, 0] > width - 1 + tolerance)
        | (points[:, 1] > height - 1 + tolerance)
    )
    if outside.any():
        joint = int(np.flatnonzero(outside)[0])
        x, y = points[joint, :2]
        return f"keypoint {JOINT_NAMES[joint]} at ({x:.1f}, {y:.1f}) lies outside the {width}x{height} image"
    return None


@dataclass(frozen=True)
class ZipMember:
    """Where one member's bytes sit inside a zip archive."""

    name: str
    header_offset: int
    compress_type: int
    compress_size: int
    file_size: int


def index_zip(fileobj: BinaryIO, name: str) -> dict[str, ZipMember]:
    """Read a zip archive's central directory: member name -> location. ZIP64 is handled."""
    try:
        with zipfile.ZipFile(fileobj) as archive:
            return {
                info.filename: ZipMember(
                    info.filename, info.header_offset, info.compress_type, info.compress_size, info.file_size
                )
                for info in archive.infolist()
                if not info.is_dir()
            }
    except (zipfile.BadZipFile, OSError, ValueError) as error:
        raise CocoFormatError(f"{name}: not a readable zip archive ({error})") from None


_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, (version .. sizes), name length, extra length


def read_zip_member(fileobj: BinaryIO, member: ZipMember) -> bytes:
    """Read and decompress one member by its offset (stored or deflated, as COCO's archives use)."""
    fileobj.seek(member.header_offset)
    signature, name_length, extra_length = _LOCAL_HEADER.unpack(fileobj.read(_LOCAL_HEADER.size))
    if signature != b"PK\x03\x04":
        raise CocoFormatError(f"{member.name}: bad local header in the archive")
    fileobj.seek(member.header_offset + _LOCAL_HEADER.size + name_length + extra_length)
    data = fileobj.read(member.compress_size)
    if len(data) != member.compress_size:
        raise CocoFormatError(f"{member.name}: archive truncated ({len(data)} of {member.compress_size} bytes)")
    if member.compress_type == zipfile.ZIP_STORED:
        return data
    if member.compress_type == zipfile.ZIP_DEFLATED:
        try:
            return zlib.decompress(data, -15)
        except zlib.error as error:
            raise CocoFormatError(f"{member.name}: corrupt deflate data ({error})") from None
    raise CocoFormatError(f"{member.name}: unsupported zip compression method {member.compress_type}")


def read_archive_member(fileobj: BinaryIO, archive_name: str, member_name: str) -> bytes:
    """Read one named member (e.g. an annotation JSON) from an archive."""
    members = index_zip(fileobj, archive_name)
    if member_name not in members:
        raise CocoFormatError(f"{archive_name}: has no member {member_name}")
    return read_zip_member(fileobj, members[member_name])


def annotations_by_image(annotations: Iterable[dict]) -> dict[int, list[dict]]:
    """Group annotations by `image_id`, each group in annotation-id order."""
    groups: dict[int, list[dict]] = {}
    for annotation in annotations:
        groups.setdefault(int(annotation.get("image_id", -1)), []).append(annotation)
    for group in groups.values():
        group.sort(key=lambda a: a.get("id", 0))
    return groups
