"""Ingest and annotate against a misbehaving S3: faults injected by tests/s3faults.py (a proxy in
front of the SeaweedFS test server), each kind alone at each rate, then an outage mid-job that
ends within the retry window. Prints one Markdown table row per run: the outcome, rows lost or
duplicated against a clean run through the same proxy, and the wall time against the mean of
two clean runs (one before the faulty runs, one after).

    python benchmarks/faults.py                              # 16 images, rates 0.1 and 0.3, 2 s delays
    python benchmarks/faults.py --jobs ingest --rates 0.3 --images 8

Both jobs run in this process on one local Ray started once; neither its start-up nor the
first run of each job (Ray Data's workers importing the job's modules) is counted.
The annotate job uses tiny untrained models built here, as tests/test_annotate.py does: the
point is its storage traffic, not its predictions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault(
    "RAY_TMPDIR", tempfile.mkdtemp(prefix="pj-ray-", dir="/tmp")
)  # never join another Ray on this machine
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
from s3faults import KINDS, FaultProxy  # noqa: E402
from s3server import REGION, S3TestServer  # noqa: E402

from jobs.storage import StorageError, StorageOptions, filesystem, join, open_input, read_bytes  # noqa: E402

# The key that names one input item in each table compared: none may be missing or repeated.
INGEST_TABLES = {"images": "image_id", "persons": "annotation_id", "person_crops": "annotation_id"}
ANNOTATE_TABLES = {"annotations": "source"}


def read_table(dest: str, table: str, options: StorageOptions) -> pa.Table:
    manifest = json.loads(read_bytes(join(dest, "manifest.json"), options))
    parts = []
    for name in manifest["tables"][table]["files"]:
        with open_input(join(dest, name), options) as handle:
            parts.append(pq.read_table(handle))
    return pa.concat_tables(parts)


def compare(dest: str, clean: str, tables: dict[str, str], options: StorageOptions) -> tuple[int, int, bool]:
    """(rows lost, rows duplicated, every table equal to the clean run's once sorted by its key)."""
    lost = duplicated = 0
    equal = True
    for table, key in tables.items():
        got, expected = read_table(dest, table, options).sort_by(key), read_table(clean, table, options).sort_by(key)
        keys = got[key].to_pylist()
        lost += len(set(expected[key].to_pylist()) - set(keys))
        duplicated += len(keys) - len(set(keys))
        if table == "annotations":  # float outputs of a model: equal to a tolerance, not bit for bit
            equal &= got.select(["source", "image_id"]).equals(expected.select(["source", "image_id"]))
        else:
            equal &= got.equals(expected)
    return lost, duplicated, equal


def tiny_models(root: Path) -> tuple[str, str]:
    import torch

    from pose.keypoint_task import KeypointRecipe
    from pose.models.detector import DetectorConfig, build_detector
    from pose.models.keypoints import build_keypoint_model

    torch.manual_seed(0)
    config = DetectorConfig(min_size=96, max_size=160, proposals_per_image=40, detections_per_image=6)
    detector = build_detector(config)
    with torch.no_grad():
        detector.roi_heads.box_predictor.cls_score.bias[1] = 6.0  # untrained: persons everywhere
    (root / "detector").mkdir(parents=True)
    torch.save(detector.state_dict(), root / "detector" / "model.pt")
    (root / "detector" / "model.json").write_text(json.dumps({"task": "detector", "model": config.to_dict()}))
    recipe = KeypointRecipe(input_size=(64, 96), deconv_channels=16)
    (root / "keypoints").mkdir()
    torch.save(build_keypoint_model(recipe.model_config()).state_dict(), root / "keypoints" / "model.pt")
    info = {"task": "keypoints", "recipe": recipe.to_dict(), "model": recipe.model_config().to_dict()}
    (root / "keypoints" / "model.json").write_text(json.dumps(info))
    return str(root / "detector"), str(root / "keypoints")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=16, help="synthetic COCO images (ingest) and images to annotate")
    parser.add_argument("--shard-size", type=int, default=2, help="images per shard, both jobs")
    parser.add_argument("--rates", default="0.1,0.3", help="fault rates, comma-separated")
    parser.add_argument("--delay", type=float, default=2.0, help="seconds a 'delay' fault holds a request")
    parser.add_argument("--outage", type=float, default=10.0, help="seconds the endpoint stays down mid-job")
    parser.add_argument("--retry-seconds", type=float, default=120.0, help="--storage-retry-seconds of the jobs")
    parser.add_argument("--jobs", default="ingest,annotate")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]

    from jobs.annotate import AnnotateSettings, annotate
    from jobs.ingest import ingest
    from jobs.runtime import init_ray
    from pose.synth.people import write_coco

    work = Path(tempfile.mkdtemp(prefix="pose-jobs-faults-"))
    with S3TestServer(work / "s3") as server:
        os.environ.update(server.env())  # before Ray starts: its workers take this environment
        init_ray(num_cpus=2)
        direct = server.options
        coco = work / "coco"
        write_coco(coco, split="train", images=args.images, seed=args.seed)
        src = server.make_bucket("src") + "/coco"
        fs, root = filesystem(src, direct)
        for path in sorted(coco.rglob("*")):
            if path.is_file():
                fs.pipe_file(f"{root}/{path.relative_to(coco).as_posix()}", path.read_bytes())
        out = server.make_bucket("out")
        models = tiny_models(work / "models")
        images = f"{src}/train2017"

        def run_job(job: str, dest: str, options: StorageOptions) -> None:
            if job == "ingest":
                ingest("coco", src, dest, options, shard_size=args.shard_size, progress=False)
            else:
                annotate(
                    images,
                    dest,
                    AnnotateSettings(*models, shard_images=args.shard_size, detector_batch=1),
                    options,
                    progress=False,
                )

        print(
            f"{args.images} images, shards of {args.shard_size}, 'delay' = {args.delay:g} s, --storage-retry-seconds {args.retry_seconds:g}; "
            "wall time through the proxy against the mean of the two clean runs through it\n"
        )
        print(
            "| job | fault | rate | injected / requests | outcome | rows lost | rows duplicated | wall time | overhead |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for job in args.jobs.split(","):
            tables = INGEST_TABLES if job == "ingest" else ANNOTATE_TABLES
            clean = join(out, f"{job}-clean")

            def clean_run(dest: str) -> tuple[float, int]:
                with FaultProxy(server.endpoint_url) as proxy:
                    started = time.monotonic()
                    run_job(
                        job,
                        dest,
                        StorageOptions(
                            endpoint_url=proxy.endpoint_url, region=REGION, retry_seconds=args.retry_seconds
                        ),
                    )
                    return time.monotonic() - started, proxy.requests

            clean_run(
                join(out, f"{job}-warm-up")
            )  # untimed: Ray Data's workers start and import the job's modules once
            # Timed before and after the faulty runs: their spread is the noise the overheads sit in.
            first_s, requests = clean_run(clean)
            rows = []
            runs = [(kind, rate) for rate in rates for kind in KINDS] + [("outage", None)]
            for number, (kind, rate) in enumerate(runs):
                dest = join(out, f"{job}-{number}")
                proxy = FaultProxy(
                    server.endpoint_url,
                    rate=rate or 0.0,
                    kinds=(kind,) if kind != "outage" else (),
                    seed=args.seed + number,
                    delay_s=args.delay,
                )
                if kind == "outage":
                    proxy.outage_after(
                        lambda method, path: method == "PUT" and "/_commits/" in path, seconds=args.outage
                    )
                with proxy:
                    options = StorageOptions(
                        endpoint_url=proxy.endpoint_url, region=REGION, retry_seconds=args.retry_seconds
                    )
                    started = time.monotonic()
                    try:
                        run_job(job, dest, options)
                        outcome = None
                    except StorageError as error:
                        outcome = f"one line: {str(error).splitlines()[0]}"
                    elapsed = time.monotonic() - started
                if outcome is None:
                    lost, duplicated, equal = compare(dest, clean, tables, direct)
                    outcome = "equal to clean" if equal else "DIFFERS from clean"
                else:
                    lost = duplicated = "-"
                label = f"endpoint down {args.outage:g} s after the first commit" if kind == "outage" else kind
                injected = (
                    f"{proxy.outages} outage"
                    if kind == "outage"
                    else f"{sum(proxy.injected.values())} / {proxy.requests}"
                )
                rows.append((label, "-" if rate is None else f"{rate:g}", injected, outcome, lost, duplicated, elapsed))
            last_s, _ = clean_run(join(out, f"{job}-clean-again"))
            clean_s = (first_s + last_s) / 2
            print(
                f"| {job} | none | 0 | 0 / {requests} | clean, before and after the others | 0 | 0 | {first_s:.1f} s, {last_s:.1f} s | - |"
            )
            for label, rate, injected, outcome, lost, duplicated, elapsed in rows:
                overhead = f"{(elapsed / clean_s - 1) * 100:+.0f} %"
                print(
                    f"| {job} | {label} | {rate} | {injected} | {outcome} | {lost} | {duplicated} | {elapsed:.1f} s | {overhead} |",
                    flush=True,
                )
        import ray

        ray.shutdown()


if __name__ == "__main__":
    main()
