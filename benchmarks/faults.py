"""Ingest and annotate against a misbehaving S3: faults injected by tests/s3faults.py (a proxy in
front of the SeaweedFS test server), each kind alone at each rate, then an outage mid-job that
ends within the retry window. Prints one Markdown table row per run: the outcome, rows lost or
duplicated against a clean run through the same proxy, and the wall time against the mean of
two clean runs (one before the faulty runs, one after).

    python benchmarks/faults.py                              # 16 images, rates 0.1 and 0.3, 2 s delays
    python benchmarks/faults.py --jobs ingest --rates 0.3 --images 8

Both jobs run in this process on one local Ray started once; neither its start-up nor the
first run of each job (Ray Data's workers importing the job's modules) is counted.
The annotate job uses tiny untrained models (`_workload.untrained_models`), like the tests'
`tiny_models`: the point is its storage traffic, not its predictions.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# A Ray temp directory of its own: never join another Ray on this machine.
os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="pj-ray-", dir="/tmp"))
# The S3 test server and its fault proxy are the tests' (tests/s3server.py, tests/s3faults.py): one
# implementation of each, which this benchmark drives with larger delays and more runs.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _workload import untrained_models  # noqa: E402
from s3faults import KINDS, FaultProxy  # noqa: E402
from s3server import REGION, S3TestServer  # noqa: E402

from jobs.datasets import read_table  # noqa: E402
from jobs.storage import StorageError, StorageOptions, join  # noqa: E402

# The key that names one input item in each table compared: none may be missing or repeated.
INGEST_TABLES = {"images": "image_id", "persons": "annotation_id", "person_crops": "annotation_id"}
ANNOTATE_TABLES = {"annotations": "source"}


def compare(dest: str, clean: str, tables: dict[str, str], options: StorageOptions) -> tuple[int, int, bool]:
    """(rows lost, rows duplicated, every table equal to the clean run's once sorted by its key)."""
    lost = duplicated = 0
    equal = True
    for table, key in tables.items():
        got = read_table(dest, table, options=options).sort_by(key)
        expected = read_table(clean, table, options=options).sort_by(key)
        keys = got[key].to_pylist()
        lost += len(set(expected[key].to_pylist()) - set(keys))
        duplicated += len(keys) - len(set(keys))
        if table == "annotations":  # float outputs of a model: equal to a tolerance, not bit for bit
            equal &= got.select(["source", "image_id"]).equals(expected.select(["source", "image_id"]))
        else:
            equal &= got.equals(expected)
    return lost, duplicated, equal


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
    from pose.keypoint_task import KeypointRecipe
    from pose.models.detector import DetectorConfig
    from pose.synth.people import write_coco

    work = Path(tempfile.mkdtemp(prefix="pose-jobs-faults-"))
    with S3TestServer(work / "s3") as server:
        os.environ.update(server.env())  # before Ray starts: its workers take this environment
        init_ray(num_cpus=2)
        direct = server.options
        coco = work / "coco"
        write_coco(coco, split="train", images=args.images, seed=args.seed)
        src = server.make_bucket("src") + "/coco"
        server.upload(coco, src)
        out = server.make_bucket("out")
        # Tiny and untrained, persons everywhere: the point is the job's storage traffic.
        tiny = DetectorConfig(min_size=96, max_size=160, proposals_per_image=40, detections_per_image=6)
        models = untrained_models(work / "models", tiny, KeypointRecipe(input_size=(64, 96), deconv_channels=16), 6.0)
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
            f"{args.images} images, shards of {args.shard_size}, 'delay' = {args.delay:g} s, "
            f"--storage-retry-seconds {args.retry_seconds:g}; "
            "wall time through the proxy against the mean of the two clean runs through it\n"
        )
        columns = "job, fault, rate, injected / requests, outcome, rows lost, rows duplicated, wall time, overhead"
        print("| " + " | ".join(columns.split(", ")) + " |")
        print("|---|---|---|---|---|---|---|---|---|")
        for job in args.jobs.split(","):
            tables = INGEST_TABLES if job == "ingest" else ANNOTATE_TABLES
            clean = join(out, f"{job}-clean")

            def clean_run(job: str, dest: str) -> tuple[float, int]:
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

            # Untimed: Ray Data's workers start and import the job's modules once.
            clean_run(job, join(out, f"{job}-warm-up"))
            # Timed before and after the faulty runs: their spread is the noise the overheads sit in.
            first_s, requests = clean_run(job, clean)
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
            last_s, _ = clean_run(job, join(out, f"{job}-clean-again"))
            clean_s = (first_s + last_s) / 2
            print(
                f"| {job} | none | 0 | 0 / {requests} | clean, before and after the others | 0 | 0 "
                f"| {first_s:.1f} s, {last_s:.1f} s | - |"
            )
            for label, rate, injected, outcome, lost, duplicated, elapsed in rows:
                overhead = f"{(elapsed / clean_s - 1) * 100:+.0f} %"
                print(
                    f"| {job} | {label} | {rate} | {injected} | {outcome} | {lost} | {duplicated} "
                    f"| {elapsed:.1f} s | {overhead} |",
                    flush=True,
                )
        import ray

        ray.shutdown()


if __name__ == "__main__":
    main()
