"""Reading datasets: the tables a job wrote under DEST (as its `manifest.json` lists them), the
images their rows point at, and a COCO source's annotation file.

Every job that reads data goes through here (annotate, train, evaluate, show, the detector's
rows), so that none reaches into the internals of the job that wrote it.
"""

from __future__ import annotations

import io
import json

import pyarrow as pa

from jobs.shards import MANIFEST
from jobs.storage import StorageOptions, exists, join, open_input, read_bytes
from pose.errors import UserError
from pose.formats import coco


class DatasetError(UserError):
    """No dataset, or no rows of a table, where one is asked for: one line, no traceback."""


def is_ingested(data: str, options: StorageOptions = StorageOptions()) -> bool:
    """Whether DATA is a job's output (it holds a manifest) rather than source files."""
    return exists(join(data, MANIFEST), options)


def read_manifest(data: str, options: StorageOptions = StorageOptions()) -> dict:
    """DATA's `manifest.json` (`jobs.shards`); a DatasetError when there is none."""
    url = join(data, MANIFEST)
    if not exists(url, options):
        raise DatasetError(f"{data}: no manifest.json here (run `pose-jobs ingest` first, and point at its DEST)")
    return json.loads(read_bytes(url, options))


def table_files(
    data: str, table: str, splits: tuple[str, ...] | None = None, options: StorageOptions = StorageOptions()
) -> list[str]:
    """The committed Parquet files of `table` under DATA, as the manifest lists them; with `splits`
    only those of these splits (ingest's files lie under `<table>/<split>/`)."""
    files = read_manifest(data, options)["tables"].get(table, {}).get("files", [])
    return [join(data, name) for name in files if splits is None or name.split("/")[1] in splits]


def read_table(
    data: str,
    table: str,
    splits: tuple[str, ...] | None = None,
    options: StorageOptions = StorageOptions(),
    columns: list[str] | None = None,
    *,
    required: bool = True,
) -> pa.Table | None:
    """A table's committed rows (of some splits, or all), read in this process (evaluation,
    pictures). Without rows: a DatasetError when `required`, else None."""
    import pyarrow.parquet as pq

    parts = []
    for url in table_files(data, table, splits, options):
        with open_input(url, options) as handle:
            parts.append(pq.read_table(handle, columns=columns))
    if not parts:
        if required:
            which = f" for splits {', '.join(splits)}" if splits is not None else ""
            raise DatasetError(f"{data}: no '{table}' rows{which}")
        return None
    return pa.concat_tables(parts)


def read_image_source(source: str, options: StorageOptions = StorageOptions()) -> bytes:
    """Bytes of an image named as the `images` table's `source` records it: a local path, an
    s3:// URL, or "archive.zip!member" (a member read in place, by byte range on S3)."""
    if "!" in source:
        archive, member = source.split("!", 1)
        with open_input(archive, options) as handle:
            return coco.read_archive_member(handle, archive, member)
    return read_bytes(source, options)


def coco_image_source(src: str, split: str, file_name: str, options: StorageOptions = StorageOptions()) -> str:
    """Where a COCO image of a split lies at SRC, as `read_image_source` reads it: in the unpacked
    image folder when there is one, else as a member of the published archive."""
    folder = join(src, coco.image_folder(split))
    if exists(folder, options):
        return join(folder, file_name)
    return f"{join(src, coco.image_archive(split))}!{coco.image_folder(split)}/{file_name}"


def load_coco_annotations(src: str, split: str, options: StorageOptions = StorageOptions()) -> tuple[dict | None, str]:
    """A COCO split's keypoint annotation document and where it was read, from the unpacked file
    (`annotations/person_keypoints_<split>2017.json`) or else the published archive; (None, the
    expected path) when SRC has neither."""
    path = join(src, coco.annotation_member(split))
    if exists(path, options):
        with open_input(path, options) as handle:
            return coco.load_keypoints_json(handle, path), path
    archive = join(src, coco.ANNOTATION_ARCHIVE)
    if exists(archive, options):
        with open_input(archive, options) as handle:
            members = coco.index_zip(handle, archive)
            member = members.get(coco.annotation_member(split))
            if member is not None:
                source = f"{archive}!{member.name}"
                data = coco.read_zip_member(handle, member)
                return coco.load_keypoints_json(io.BytesIO(data), source), source
    return None, path
