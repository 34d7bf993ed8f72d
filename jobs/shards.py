"""The shard commit protocol of ingest and annotate: how a job's output under DEST is written so
that a re-run is idempotent and a killed run resumes.

A job cuts its input into shards in a fixed order. Each shard has a fingerprint of everything that
decides its output (its inputs, the settings and models); a shard writes its Parquet files under
fixed names, then its commit marker, and the driver writes the manifest last:

  DEST/<table>/.../<unit>.parquet   the shard's tables (the job chooses the paths)
  DEST/_commits/<unit>.json         the commit marker: {"unit", "fingerprint", "tables": {name:
                                    {"path", "rows"}}, and the job's own counts}
  DEST/manifest.json                {"schema_version", "job", "source", "created", "settings",
                                    "tables": {name: {"rows", "files"}}, "shards"}, and the job's
                                    own sections (ingest: "dataset", "accounting"; annotate:
                                    "images", "results", "pictures")

A re-run skips the shards whose marker holds the same fingerprint (`pending`). Files are written
whole (a rename locally, one PUT on S3), so a killed run never leaves a half file under a final name,
and the manifest lists only committed shards. `created` is kept from an earlier manifest, so that
re-running over a finished DEST rewrites the same bytes.

Manifests written before ingest named its job lack "job"; readers need only "tables", so such a
DEST is still read and resumed, and its next run writes the full layout.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import pyarrow as pa

from jobs.storage import (
    StorageError,
    StorageOptions,
    exists,
    join,
    list_files,
    read_bytes,
    write_bytes_atomic,
    write_parquet_atomic,
)
from pose import schema
from pose.errors import UserError

MANIFEST = "manifest.json"
COMMITS = "_commits"


class UnbalancedError(UserError):
    """A job's output does not account for every input: a bug, not the user's to fix."""

    exit_code = 1


def fingerprint(content: dict) -> str:
    """What decides a shard's output, as a short stable hash (JSON with sorted keys; values that JSON
    cannot hold count by their `str`)."""
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:32]


def read_commit_markers(dest: str, options: StorageOptions) -> dict[str, dict]:
    """unit -> commit marker of every shard committed under DEST."""
    folder = join(dest, COMMITS)
    if not exists(folder, options):
        return {}
    markers = {}
    for path in list_files(folder, options, suffixes=(".json",)):
        marker = json.loads(read_bytes(path, options))
        markers[marker["unit"]] = marker
    return markers


def pending(shards: list, committed: dict[str, dict]) -> list:
    """The shards (each with `unit` and `fingerprint`) without a commit marker of the same fingerprint."""
    return [s for s in shards if committed.get(s.unit, {}).get("fingerprint") != s.fingerprint]


def commit_shard(
    dest: str, options: StorageOptions, unit: str, fingerprint: str, tables: dict[str, tuple[str, list[dict]]], **counts
) -> dict:
    """Write a shard's tables (name -> (path under DEST, rows in pose.schema's layout)), then its
    commit marker with the job's `counts`; return the marker."""
    marker = {"unit": unit, "fingerprint": fingerprint, "tables": {}, **counts}
    for name, (path, rows) in tables.items():
        write_parquet_atomic(pa.Table.from_pylist(rows, schema=schema.TABLES[name]), join(dest, path), options)
        marker["tables"][name] = {"path": path, "rows": len(rows)}
    write_bytes_atomic(join(dest, COMMITS, f"{unit}.json"), json.dumps(marker, sort_keys=True).encode(), options)
    return marker


def manifest_created(dest: str, options: StorageOptions) -> str:
    """When DEST's output was first made: kept from an earlier manifest, so re-runs leave it as is."""
    created = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    previous = join(dest, MANIFEST)
    if exists(previous, options):
        try:
            created = json.loads(read_bytes(previous, options)).get("created", created)
        except (ValueError, StorageError):
            pass
    return created


def redact(url: str) -> str:
    """Drop any user:secret@ part of a URL before it is written anywhere."""
    if "://" in url and "@" in url.split("://", 1)[1].split("/", 1)[0]:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://{rest.split('@', 1)[1]}"
    return url


def write_manifest(
    dest: str, options: StorageOptions, *, job: str, source: str, settings: dict, markers: dict[str, dict], **sections
) -> dict:
    """Write DEST/manifest.json from the committed shards' markers (every table's rows and files,
    in unit order) and the job's own `sections`; return it."""
    tables: dict[str, dict] = {}
    for unit in sorted(markers):
        for name, table in markers[unit]["tables"].items():
            entry = tables.setdefault(name, {"rows": 0, "files": []})
            entry["rows"] += table["rows"]
            entry["files"].append(table["path"])
    manifest = {
        "schema_version": schema.SCHEMA_VERSION,
        "job": job,
        "source": redact(source),
        "created": manifest_created(dest, options),
        "settings": settings,
        "tables": tables,
        "shards": len(markers),
        **sections,
    }
    write_bytes_atomic(join(dest, MANIFEST), (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode(), options)
    return manifest
