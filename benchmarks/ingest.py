"""Ingest benchmark: `pose-jobs ingest coco` against a plain single-process script doing the same
work, on the same synthetic COCO data, and the job's peak memory at 1x and 10x the data.

    python benchmarks/ingest.py                    # 400 images, 10x = 4000
    python benchmarks/ingest.py --images 100 --scale 4

Throughput is measured on a Ray that is already running (the job, not Ray's start-up); the
whole command's wall time, Ray start included, is printed too. Memory is the peak of the summed
proportional set size (PSS: shared pages split between the processes sharing them) of the
`pose-jobs ingest` process and every process it starts (Ray's GCS, raylet and workers).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from _measure import machine, peak_tree_pss, timed
from _workload import synthetic_coco

from pose.crops import CropSettings, person_crop_row
from pose.formats import coco
from pose.images import decode_image


def plain_ingest(src: Path, dest: Path) -> int:
    """What a user would write without Ray: one process, PIL + pyarrow, the same tables."""
    with open(src / coco.annotation_member("train"), "rb") as handle:
        document = coco.load_keypoints_json(handle, "annotations")
    grouped = coco.annotations_by_image(document["annotations"])
    images, persons, crops = [], [], []
    settings = CropSettings()
    for image in document["images"]:
        pixels = decode_image((src / "train2017" / image["file_name"]).read_bytes(), exif_transpose=False)
        images.append(
            {
                "image_id": image["id"],
                "split": "train",
                "file_name": image["file_name"],
                "width": image["width"],
                "height": image["height"],
            }
        )
        for annotation in grouped.get(image["id"], []):
            keypoints = np.asarray(annotation["keypoints"], np.float32)
            persons.append(
                {
                    "annotation_id": annotation["id"],
                    "image_id": image["id"],
                    "bbox": annotation["bbox"],
                    "keypoints": keypoints.tolist(),
                }
            )
            if annotation["iscrowd"] or annotation["num_keypoints"] == 0:
                continue
            crops.append(person_crop_row(pixels, annotation, image["id"], "train", settings))
    dest.mkdir(parents=True, exist_ok=True)
    for name, rows in (("images", images), ("persons", persons), ("person_crops", crops)):
        pq.write_table(pa.Table.from_pylist(rows), dest / f"{name}.parquet", compression="zstd")
    return len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pose-bench-ingest-"))
    small, large = synthetic_coco(workdir, args.images, args.scale, "train")

    seconds, count = timed(plain_ingest, small, workdir / "plain-out")
    plain_rate = count / seconds

    from jobs.ingest import ingest
    from jobs.runtime import init_ray

    init_ray()
    ingest("coco", str(small), str(workdir / "warmup"), progress=False)  # start the workers once
    shutil.rmtree(workdir / "ray-out", ignore_errors=True)
    ray_rate = count / timed(ingest, "coco", str(small), str(workdir / "ray-out"), progress=False)[0]
    import ray

    ray.shutdown()

    cli = str(Path(sys.executable).with_name("pose-jobs"))
    shutil.rmtree(workdir / "cli-1x", ignore_errors=True)
    shutil.rmtree(workdir / "cli-large", ignore_errors=True)
    wall_small, peak_small = peak_tree_pss([cli, "ingest", "coco", str(small), str(workdir / "cli-1x")])
    wall_large, peak_large = peak_tree_pss([cli, "ingest", "coco", str(large), str(workdir / "cli-large")])

    print(f"{machine()}, images: {count} (1x), {count * args.scale} ({args.scale}x)")
    print(f"plain single-process script   {plain_rate:8.1f} images/s")
    print(f"pose-jobs ingest (Ray warm)   {ray_rate:8.1f} images/s   ratio {ray_rate / plain_rate:.2f}")
    print(
        f"pose-jobs ingest command, Ray start included: "
        f"1x {count / wall_small:.1f} images/s ({wall_small:.1f} s), "
        f"{args.scale}x {count * args.scale / wall_large:.1f} images/s ({wall_large:.1f} s)"
    )
    print(
        f"peak memory (PSS, whole job)  1x {peak_small:.0f} MiB   {args.scale}x {peak_large:.0f} MiB   "
        f"ratio {peak_large / peak_small:.2f}"
    )


if __name__ == "__main__":
    main()
