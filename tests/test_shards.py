"""The shard commit protocol (`jobs.shards`) without a cluster: markers, what is pending, the manifest."""

from __future__ import annotations

import json
from dataclasses import dataclass

from jobs import shards
from jobs.datasets import read_table
from jobs.storage import StorageOptions
from pose import schema


@dataclass
class Unit:
    unit: str
    fingerprint: str


def error(item: str) -> dict:
    return schema.error_row("val", "image", item, "src/a.jpg", "decode", "not an image")


def test_commit_then_pending_then_manifest(tmp_path):
    dest, options = str(tmp_path / "out"), StorageOptions()
    first = shards.fingerprint({"unit": "a", "items": [1, 2], "settings": {"size": 3}})
    assert first == shards.fingerprint({"settings": {"size": 3}, "items": [1, 2], "unit": "a"})  # key order
    assert first != shards.fingerprint({"unit": "a", "items": [1, 2], "settings": {"size": 4}})

    marker = shards.commit_shard(dest, options, "a", first, {"errors": ("errors/a.parquet", [error("image 1")])}, n=1)
    assert marker == {
        "unit": "a",
        "fingerprint": first,
        "tables": {"errors": {"path": "errors/a.parquet", "rows": 1}},
        "n": 1,
    }
    committed = shards.read_commit_markers(dest, options)
    assert committed == {"a": marker}
    # Changed settings, a shard never committed: both pending; the committed one with its fingerprint is not.
    todo = [Unit("a", first), Unit("a", "other settings"), Unit("b", first)]
    assert shards.pending(todo, committed) == todo[1:]

    shards.commit_shard(dest, options, "b", "f", {"errors": ("errors/b.parquet", [error("image 2"), error("image 3")])})
    markers = shards.read_commit_markers(dest, options)
    manifest = shards.write_manifest(
        dest, options, job="test", source="s3://key:secret@bucket/src", settings={}, markers=markers, extra=[1]
    )
    assert manifest["tables"] == {"errors": {"rows": 3, "files": ["errors/a.parquet", "errors/b.parquet"]}}
    assert (manifest["job"], manifest["source"], manifest["shards"], manifest["extra"]) == (
        "test",
        "s3://bucket/src",
        2,
        [1],
    )
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == manifest
    assert read_table(dest, "errors")["item"].to_pylist() == ["image 1", "image 2", "image 3"]

    # A later run keeps `created`, so that the same output gives the same bytes.
    written = (tmp_path / "out" / "manifest.json").read_bytes()
    shards.write_manifest(dest, options, job="test", source="s3://bucket/src", settings={}, markers=markers, extra=[1])
    assert (tmp_path / "out" / "manifest.json").read_bytes() == written
