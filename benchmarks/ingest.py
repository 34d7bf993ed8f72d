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
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from pose.crops import CropSettings, cut_person_crop
from pose.formats import coco
from pose.images import decode_image, encode_jpeg


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
            crop = cut_person_crop(pixels, np.asarray(annotation["bbox"]), keypoints.reshape(-1, 3), settings)
            crops.append(
                {
                    "annotation_id": annotation["id"],
                    "crop": encode_jpeg(crop.pixels, quality=92),
                    "keypoints": crop.keypoints.reshape(-1).tolist(),
                }
            )
    dest.mkdir(parents=True, exist_ok=True)
    for name, rows in (("images", images), ("persons", persons), ("person_crops", crops)):
        pq.write_table(pa.Table.from_pylist(rows), dest / f"{name}.parquet", compression="zstd")
    return len(images)


SAMPLE_SECONDS = 1.0


def peak_tree_pss(command: list[str], stderr=subprocess.DEVNULL) -> tuple[float, float]:
    """Run `command`; return (wall seconds, peak summed PSS of its process tree in MiB).
    `stderr`: where its error output goes (a file to keep it)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
    peak = 0.0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        root = psutil.Process(process.pid)
        while not done.is_set():
            total = 0
            try:
                for member in [root, *root.children(recursive=True)]:
                    try:
                        total += member.memory_full_info().pss
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        pass
            except psutil.NoSuchProcess:
                break
            peak = max(peak, total / 2**20)
            # Reading a process's PSS walks its page tables: about 0.1 CPU-s for a Ray job's ~20
            # processes. Every 0.25 s that took 40 % of a core from the job being measured.
            time.sleep(SAMPLE_SECONDS)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    process.wait()
    done.set()
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed with exit code {process.returncode}")
    return time.perf_counter() - started, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    from pose.synth.people import write_coco

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pose-bench-ingest-"))
    small, large = workdir / "coco-1x", workdir / f"coco-{args.scale}x"
    print(f"synthesising {args.images} and {args.images * args.scale} images under {workdir} ...", flush=True)
    if not small.exists():
        write_coco(small, split="train", images=args.images, seed=0)
    if not large.exists():
        write_coco(large, split="train", images=args.images * args.scale, seed=0)

    started = time.perf_counter()
    count = plain_ingest(small, workdir / "plain-out")
    plain_rate = count / (time.perf_counter() - started)

    from jobs.ingest import ingest
    from jobs.runtime import init_ray

    init_ray()
    ingest("coco", str(small), str(workdir / "warmup"), progress=False)  # start the workers once
    shutil.rmtree(workdir / "ray-out", ignore_errors=True)
    started = time.perf_counter()
    ingest("coco", str(small), str(workdir / "ray-out"), progress=False)
    ray_rate = count / (time.perf_counter() - started)
    import ray

    ray.shutdown()

    cli = str(Path(sys.executable).with_name("pose-jobs"))
    shutil.rmtree(workdir / "cli-1x", ignore_errors=True)
    shutil.rmtree(workdir / "cli-large", ignore_errors=True)
    wall_small, peak_small = peak_tree_pss([cli, "ingest", "coco", str(small), str(workdir / "cli-1x")])
    wall_large, peak_large = peak_tree_pss([cli, "ingest", "coco", str(large), str(workdir / "cli-large")])

    print(f"cores: {os.cpu_count()}, images: {count} (1x), {count * args.scale} ({args.scale}x)")
    print(f"plain single-process script   {plain_rate:8.1f} images/s")
    print(f"pose-jobs ingest (Ray warm)   {ray_rate:8.1f} images/s   ratio {ray_rate / plain_rate:.2f}")
    print(
        f"pose-jobs ingest command, Ray start included: 1x {count / wall_small:.1f} images/s ({wall_small:.1f} s), "
        f"{args.scale}x {count * args.scale / wall_large:.1f} images/s ({wall_large:.1f} s)"
    )
    print(
        f"peak memory (PSS, whole job)  1x {peak_small:.0f} MiB   {args.scale}x {peak_large:.0f} MiB   ratio {peak_large / peak_small:.2f}"
    )


if __name__ == "__main__":
    main()
