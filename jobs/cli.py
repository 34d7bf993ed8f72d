"""`pose-jobs`: one command line for every job. Runs on a local Ray unless given a cluster address.

Each command parses its options, calls one library function and prints the result. Options that
several commands take are declared once below. A job command marked `@submittable` also takes
`--address` and `--no-wait`: given a Ray dashboard address it is submitted to that cluster as a Ray
Job (jobs/submit.py) instead of running here. A `pose.errors.UserError`, also one raised inside a
Ray task, is printed as one line with its exit code (`@user_errors`); anything else is a bug and
shows its traceback.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import os
import sys
import time
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

import jobs.runtime  # noqa: F401  (sets RAY_USAGE_STATS_ENABLED before anything imports Ray)
from pose.errors import UserError

if TYPE_CHECKING:
    from jobs.storage import StorageOptions
    from jobs.train import TrainSettings
    from pose.checkpoints import Overrides

# Ray Data wraps an exception raised in a task in its own UserCodeException, and the original
# (a StorageError, say) does not survive the trip to the driver; raised as it is, it arrives as
# Ray's RayTaskError holding it as `.cause`, which `user_errors` unwraps. Read when Ray Data is
# first imported; `_raise_task_errors_as_they_are` covers a Ray Data imported before this module.
os.environ.setdefault("RAY_DATA_RAISE_ORIGINAL_MAP_EXCEPTION", "1")

app = typer.Typer(
    rich_markup_mode=None,  # plain help: rich panels truncate option names at 80 columns
    help="Distributed batch jobs for human pose estimation on Ray: ingest, train, annotate, evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
synth_app = typer.Typer(
    help="Write synthetic datasets in the exact real formats (COCO 2017 keypoints, SVHN).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
ingest_app = typer.Typer(
    help="Ingest COCO or SVHN from a folder or s3:// into sharded Parquet (Ray Data).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
show_app = typer.Typer(
    help="Draw pictures of a dataset (source files or ingested Parquet) to PNG.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
jobs_app = typer.Typer(
    help="The Ray Jobs of a cluster: list, status, logs, stop (--address http://HEAD:8265 or RAY_ADDRESS).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(synth_app, name="synth")
app.add_typer(ingest_app, name="ingest")
app.add_typer(show_app, name="show")
app.add_typer(jobs_app, name="jobs")


# ---------------------------------------------------------------------------------------------
# Choices


class Split(str, Enum):  # COCO's splits
    train = "train"
    val = "val"


class SvhnSplit(str, Enum):
    train = "train"
    test = "test"
    extra = "extra"


class SvhnFormat(str, Enum):
    cropped = "cropped"
    full = "full"


class KeypointRecipeName(str, Enum):  # pose.recipes.RECIPES
    cpu = "cpu"  # pose.keypoint_task.KeypointRecipe(): from scratch on a few CPU cores
    simple_baselines = "simple-baselines"  # the Simple Baselines release's COCO configs
    mmpose_td_hm = "mmpose-td-hm"  # MMPose 1.x td-hm configs (ResNet, HRNet; msra, dark, udp)
    hrnet_w32 = "hrnet-w32"  # the HRNet release's COCO configs
    hrnet_w48 = "hrnet-w48"
    rtmpose_m = "rtmpose-m"  # MMPose 1.x rtmpose-m_8xb256-420e_coco-256x192.py


class Precision(str, Enum):  # pose.precision.PRECISIONS
    auto = "auto"
    bf16 = "bf16"
    fp32 = "fp32"


# ---------------------------------------------------------------------------------------------
# Options that several commands take, declared once. A name means one thing everywhere; where a
# command needs another meaning (`--data` of SVHN or COCO), the alias is named after it.

EndpointOption = Annotated[
    str | None,
    typer.Option("--endpoint-url", help="S3 endpoint (default: AWS_ENDPOINT_URL or AWS).", show_default=False),
]
AnonOption = Annotated[bool, typer.Option("--anon", help="Unsigned S3 requests, for public buckets such as COCO's.")]
StorageRetryOption = Annotated[
    float | None,
    typer.Option(
        "--storage-retry-seconds",
        min=0,
        help="How long each S3 request retries connection errors, timeouts, 5xx and SlowDown, backing off "
        "exponentially, before the job gives up (default: 120); a re-run resumes.",
        show_default=False,
    ),
]
AddressOption = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="Ray cluster: its dashboard, http://HEAD:8265, runs this command there as a Ray Job; a GCS address, "
        "HOST:6379, is joined from here (default: a local Ray started quietly).",
        envvar="RAY_ADDRESS",
        show_default=False,
    ),
]
# For a command that itself uses no Ray (evaluation runs in one process): only a dashboard does
# something. Inside a submitted job RAY_ADDRESS holds the GCS address, which must then be ignored.
SubmitAddressOption = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="A Ray cluster's dashboard, http://HEAD:8265: run this command there as a Ray Job (the command "
        "itself uses no Ray: any other address is ignored; default: run here).",
        envvar="RAY_ADDRESS",
        show_default=False,
    ),
]
NoWaitOption = Annotated[
    bool,
    typer.Option(
        "--no-wait", help="With a dashboard --address: print the job id and return (pose-jobs jobs ... follows it)."
    ),
]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="Show Ray's own logs and progress bars.")]
IngestShardOption = Annotated[
    int | None,
    typer.Option(
        "--shard-size",
        min=1,
        help="Items per shard (default: 128 COCO images, 16384 SVHN digits, 512 SVHN numbers).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object with the figures.")]
PicturesOption = Annotated[
    str | None,
    typer.Option(
        "--pictures",
        help="Folder or s3:// prefix for the PNGs (default: the run folder; for a weights file, here).",
        show_default=False,
    ),
]
SvhnDataOption = Annotated[str, typer.Option("--data", help="Ingested SVHN (the DEST of `pose-jobs ingest svhn`).")]
CocoDataOption = Annotated[str, typer.Option("--data", help="Ingested COCO (the DEST of `pose-jobs ingest coco`).")]
RunOutOption = Annotated[
    str, typer.Option("--out", help="Run folder or s3:// prefix: checkpoints, metrics, curves, model.")
]
CocoSplitOption = Annotated[Split, typer.Option("--split", help="Which COCO split.")]
SvhnSplitOption = Annotated[SvhnSplit, typer.Option("--split", help="Which SVHN split.")]
SynthSeedOption = Annotated[int, typer.Option("--seed", help="Random seed: the same seed writes the same bytes.")]
TrainSeedOption = Annotated[int, typer.Option("--seed", help="Seed for weights, data order and augmentation.")]

# Training
WorkersOption = Annotated[
    int, typer.Option("--workers", min=1, help="Ray Train workers (DDP). On CPU they share the cores.")
]
GpuOption = Annotated[
    bool | None,
    typer.Option("--gpu/--no-gpu", help="Use GPUs (default: when the cluster has them).", show_default=False),
]
CpusOption = Annotated[
    float | None,
    typer.Option(
        "--cpus-per-worker",
        min=0.01,
        help="CPUs Ray reserves per worker (default: share the cluster's, one kept for data; with GPUs, the "
        "node's CPUs per GPU but one, for the feed processes).",
        show_default=False,
    ),
]
FeedOption = Annotated[
    int | None,
    typer.Option(
        "--feed-workers",
        min=0,
        help="Processes per worker that prepare batches ahead of the step (default: on GPUs, the worker's CPUs "
        "but one, for keypoints and the detector; 0 on CPUs).",
        show_default=False,
    ),
]
TrainPrecisionOption = Annotated[
    Precision,
    typer.Option(
        "--precision",
        help="auto: bf16 autocast and channels-last on GPUs and on CPUs with native bf16 (AVX512-BF16, AMX) for "
        "the models that gain from it, fp32 elsewhere; bf16 or fp32 to force one.",
    ),
]
EpochsOption = Annotated[
    int | None, typer.Option("--epochs", min=1, help="Epochs (default: the recipe's).", show_default=False)
]
LrOption = Annotated[
    float | None,
    typer.Option("--lr", help="Peak learning rate (default: the recipe's).", show_default=False),
]
BatchSizeOption = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        min=1,
        help="Global batch, split over the workers (default: the recipe's; train-keypoints scales the recipe's "
        "learning rate linearly with it).",
        show_default=False,
    ),
]

# Models
KeypointsOption = Annotated[
    str,
    typer.Option(
        "--keypoints",
        help="A train-keypoints run folder, or a published checkpoint file: MMPose SimpleBaseline / HRNet / "
        "RTMPose (COCO 17 joints), a Simple Baselines or HRNet release, or torchvision's Keypoint R-CNN (then no "
        "--detector) (local or s3://).",
        show_default=False,
    ),
]
KeypointArchOption = Annotated[
    str | None,
    typer.Option(
        "--keypoint-arch",
        help="What a published keypoint file holds: resnet50|101|152, hrnet-w32|w48, rtmpose-t|s|m|l, "
        "keypointrcnn-coco-v1|legacy (default: read from the file and its name).",
        show_default=False,
    ),
]
InputSizeOption = Annotated[
    str | None,
    typer.Option(
        "--input-size",
        help="The keypoint model's input size. Training: the recipe's (cpu: WxH, multiples of the backbone's "
        "stride, e.g. 96x128; the reference recipes: 256x192 or 384x288 as their configs name them); a published "
        "file: WxH as 192x256 (default: from the file name's 256x192 / 384x288, else 192x256).",
        show_default=False,
    ),
]
CodecOption = Annotated[
    str | None,
    typer.Option(
        "--codec",
        help="The heatmap codec: msra | dark | udp. Training: mmpose-td-hm's (default msra); a published file: "
        "from its name (RTMPose: simcc).",
        show_default=False,
    ),
]
DetectorOption = Annotated[
    str | None,
    typer.Option(
        "--detector",
        help="Person boxes from this detector: a train-detector run folder, or a torchvision Faster R-CNN .pth "
        "(local or s3://).",
        show_default=False,
    ),
]
DetectorArchOption = Annotated[
    str | None,
    typer.Option(
        "--detector-arch",
        help="fasterrcnn_mobilenet_v3_large_fpn | fasterrcnn_resnet50_fpn | fasterrcnn_resnet50_fpn_v2: the one "
        "to train (default: fasterrcnn_mobilenet_v3_large_fpn), or what a .pth file holds (default: "
        "fasterrcnn_resnet50_fpn; a run folder knows its own).",
        show_default=False,
    ),
]
BoxesOption = Annotated[
    str | None,
    typer.Option(
        "--boxes",
        help="Person boxes from a COCO box results JSON (local or s3://) instead of a detector, e.g. COCO's "
        "published detections, an eval-detector --results file or results/boxes.json of an earlier annotate run.",
        show_default=False,
    ),
]
ResultsOption = Annotated[
    str | None,
    typer.Option("--results", help="Write the COCO results JSON here (local or s3://).", show_default=False),
]
InitWeightsOption = Annotated[
    str | None,
    typer.Option(
        "--init-weights",
        help="Start the whole network from a published file of the recipe's network (local or s3://): "
        "train-keypoints: MMPose td-hm, pose_resnet_*.pth.tar, pose_hrnet_*.pth; train-detector: torchvision's "
        "COCO weights for --detector-arch (default: from scratch).",
        show_default=False,
    ),
]


# ---------------------------------------------------------------------------------------------
# User errors and cluster submission


def user_errors(command):
    """Turn a `UserError` (a mistake the user can fix, or storage that stays unavailable) into one
    line on stderr and its exit code, also when raised inside a Ray task."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        _raise_task_errors_as_they_are()
        if not kwargs.get("verbose"):
            _quiet_ray_data_reports_of((UserError,))
        try:
            return command(*args, **kwargs)
        except Exception as raised:
            error = _one_line_error(raised, (UserError,))
            if error is None:
                raise
            # Our messages are one line; Ray Data appends its retry advice to a task's exception.
            typer.echo(f"pose-jobs: error: {str(error).splitlines()[0]}", err=True)
            raise typer.Exit(getattr(error, "exit_code", 2)) from None

    return wrapper


def _one_line_error(error: BaseException, kinds: tuple[type, ...]) -> BaseException | None:
    """The exception of one of `kinds` that `error` is or wraps, else None (a bug: its traceback shows).

    Ray re-raises a task's exception as a RayTaskError (an instance of the task's exception
    class too, whose text is the worker's whole traceback) holding the original as `.cause`;
    other wrappers chain it with `raise ... from`. Implicit context is not followed: an
    exception raised while handling another is a new problem, not that one."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        cause = getattr(error, "cause", None)
        if isinstance(cause, BaseException) and cause is not error:
            error = cause
            continue
        if isinstance(error, kinds):
            return error
        error = error.__cause__
    return None


# The Ray Data loggers that report a failed task's exception (traceback included) before it is
# raised in the driver.
RAY_DATA_FAILURE_LOGGERS = ("ray.data.exceptions", "ray.data._internal.execution.streaming_executor_state")


class _DropReportsOf(logging.Filter):
    """Drops a log record made while handling (or carrying) an exception that `user_errors` prints
    as one line: Ray Data logs a failed task's exception with its traceback, and then raises it.

    Also drops `ray.data.exceptions`' report of any other task exception: raised as it is (see
    RAY_DATA_RAISE_ORIGINAL_MAP_EXCEPTION), Ray Data takes it for a Ray-internal error and asks
    for a Ray issue, while it is ours; its traceback still shows when the driver raises it."""

    def __init__(self, kinds: tuple[type, ...]):
        super().__init__()
        self.kinds = kinds

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
        if error is None:
            return True
        ray_exceptions = sys.modules.get("ray.exceptions")
        if (
            record.name == "ray.data.exceptions"
            and ray_exceptions is not None
            and isinstance(error, ray_exceptions.RayTaskError)
        ):
            return False
        return _one_line_error(error, self.kinds) is None


def _quiet_ray_data_reports_of(kinds: tuple[type, ...]) -> None:
    for name in RAY_DATA_FAILURE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropReportsOf) for f in logger.filters):
            logger.addFilter(_DropReportsOf(kinds))


def _raise_task_errors_as_they_are() -> None:
    """Make Ray Data raise a task's own exception (see RAY_DATA_RAISE_ORIGINAL_MAP_EXCEPTION above),
    for a Ray Data that was imported before this module set the variable."""
    if "ray.data" in sys.modules:
        sys.modules["ray.data"].DataContext.get_current().raise_original_map_exception = True


def submittable(command):
    """Mark a job command that can run on a cluster. It gains --no-wait and, unless it takes an
    `address` itself (to join a cluster's GCS from here), --address. Given a dashboard address, the
    command line (without --address and --no-wait) is submitted as a Ray Job and the command exits
    with the job's status (jobs/submit.py); otherwise the command runs here."""
    signature = inspect.signature(command, eval_str=True)
    joins = "address" in signature.parameters

    @functools.wraps(command)
    def wrapper(*args, address: str | None = None, no_wait: bool = False, typer_context: typer.Context, **kwargs):
        from jobs.submit import command_line, is_dashboard_address, submit

        if not is_dashboard_address(address):
            return command(*args, **({"address": address} if joins else {}), **kwargs)
        values = {**kwargs, "address": address, "no_wait": no_wait}
        argv, warnings = command_line(typer_context, values, drop=("address", "no_wait"))
        for warning in warnings:
            typer.echo(f"pose-jobs: warning: {warning}", err=True)
        raise typer.Exit(submit(address, argv, wait=not no_wait))

    # typer reads a command's parameters from its signature: add the cluster options and the context.
    keyword = inspect.Parameter.KEYWORD_ONLY
    extra = [
        inspect.Parameter("no_wait", keyword, default=False, annotation=NoWaitOption),
        inspect.Parameter("typer_context", keyword, annotation=typer.Context),
    ]
    if not joins:
        extra.insert(0, inspect.Parameter("address", keyword, default=None, annotation=SubmitAddressOption))
    wrapper.__signature__ = signature.replace(parameters=[*signature.parameters.values(), *extra])
    return wrapper


def option_group(target: str, parameters: list[tuple[str, object, object]], build):
    """A decorator that gives a command the options `parameters` ((name, annotation, default) each,
    listed after the command's own, before --address and --verbose) and passes it, as the keyword
    `target`, what `build(given, **their values)` makes of them (`given`: the command's other
    parameters). A group of options that several commands take is declared once this way, with the
    object it stands for."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    added = [inspect.Parameter(name, keyword, default=default, annotation=kind) for name, kind, default in parameters]

    def decorate(command):
        # The targets' annotations name classes this module does not import (they would pull in torch
        # or s3fs at start-up): left as text, and each target is dropped by its own group.
        annotations = {
            name: _evaluated(value, command.__globals__)
            for name, value in command.__annotations__.items()
            if name != target
        }
        signature = inspect.signature(command)
        kept = [
            p.replace(annotation=annotations.get(p.name, p.annotation))
            for p in signature.parameters.values()
            if p.name != target
        ]

        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            values = {p.name: kwargs.pop(p.name) for p in added}
            return command(*args, **kwargs, **{target: build(kwargs, **values)})

        # The group's options go before the cluster ones (--address, --verbose) that end each list.
        at = next((i for i, p in enumerate(kept) if p.name in ("address", "verbose")), len(kept))
        parameters = [p.replace(kind=keyword) for p in (*kept[:at], *added, *kept[at:])]  # typer passes keywords
        wrapper.__signature__ = signature.replace(parameters=parameters)
        wrapper.__annotations__ = {**annotations, **{p.name: p.annotation for p in added}}
        return wrapper

    return decorate


def _evaluated(annotation, namespace: dict):
    if not isinstance(annotation, str):
        return annotation
    try:
        return eval(annotation, namespace)
    except NameError:  # a target of another option group (see option_group)
        return annotation


def _storage(given, endpoint_url=None, anon=False, storage_retry_seconds=None):
    from jobs.storage import DEFAULT_RETRY_SECONDS, StorageOptions

    retry = DEFAULT_RETRY_SECONDS if storage_retry_seconds is None else storage_retry_seconds
    return StorageOptions(endpoint_url=endpoint_url, anon=anon, retry_seconds=retry)


STORAGE = [("endpoint_url", EndpointOption, None), ("anon", AnonOption, False)]
RETRY = [("storage_retry_seconds", StorageRetryOption, None)]
# --endpoint-url and --anon -> `options: StorageOptions` (reading only: the default retry window)
reads_storage = option_group("options", STORAGE, _storage)
# ... and --storage-retry-seconds, for the jobs that write
writes_storage = option_group("options", STORAGE + RETRY, _storage)


def trains(feed: bool = True):
    """A training command's options -> `settings: jobs.train.TrainSettings` (with its --data and --out):
    --workers, --seed, --gpu, --cpus-per-worker, --feed-workers (where the task decodes images),
    --precision and the storage options."""
    compute = [
        ("workers", WorkersOption, 1),
        ("seed", TrainSeedOption, 0),
        ("gpu", GpuOption, None),
        ("cpus_per_worker", CpusOption, None),
        *([("feed_workers", FeedOption, None)] if feed else []),
        ("precision", TrainPrecisionOption, Precision.auto),
    ]

    def build(given, workers, seed, gpu, cpus_per_worker, precision, feed_workers=None, **storage):
        from jobs.train import TrainSettings

        return TrainSettings(
            data=given["data"],
            out=given["out"],
            workers=workers,
            seed=seed,
            use_gpu=gpu,
            cpus_per_worker=cpus_per_worker,
            feed_workers=feed_workers,
            precision=precision.value,
            options=_storage(given, **storage),
        )

    return option_group("settings", compute + STORAGE + RETRY, build)


def _keypoint_overrides(given, keypoint_arch=None, input_size=None, codec=None):
    """The `pose.checkpoints.Overrides` of --keypoint-arch, --input-size and --codec."""
    from pose.checkpoints import Overrides

    size = None
    if input_size:
        try:
            size = tuple(int(v) for v in input_size.lower().split("x"))
        except ValueError:
            size = ()
        if len(size) != 2:
            raise typer.BadParameter(f"{input_size!r}: expected WxH, e.g. 192x256", param_hint="--input-size")
    return Overrides(keypoint_arch, size, codec)


# --keypoint-arch, --input-size, --codec -> `overrides: pose.checkpoints.Overrides`, for a keypoint model
# read from a file that does not say them
keypoint_file_overrides = option_group(
    "overrides",
    [("keypoint_arch", KeypointArchOption, None), ("input_size", InputSizeOption, None), ("codec", CodecOption, None)],
    _keypoint_overrides,
)


def figure_text(value: float | None) -> str:
    """A figure of a run with 4 decimals, or "?" when the run did not report it."""
    return "?" if value is None else f"{value:.4f}"


# ---------------------------------------------------------------------------------------------
# synth


@synth_app.command("coco")
def synth_coco(
    dest: Annotated[Path, typer.Argument(help="Folder to write the COCO 2017 layout into.")],
    split: CocoSplitOption = Split.train,
    images: Annotated[int, typer.Option(min=1, help="Number of images.")] = 100,
    seed: SynthSeedOption = 0,
    archives: Annotated[
        bool,
        typer.Option(
            "--archives", help="Write val2017.zip / annotations_trainval2017.zip as the public bucket has them."
        ),
    ] = False,
) -> None:
    """Synthetic people with 17 COCO keypoints, written as person_keypoints_*.json + JPEGs."""
    from pose.synth.people import write_coco

    summary = write_coco(dest, split=split.value, images=images, seed=seed, archives=archives)
    typer.echo(json.dumps(summary, default=str))


@synth_app.command("svhn")
def synth_svhn(
    dest: Annotated[Path, typer.Argument(help="Folder to write SVHN files into.")],
    format: Annotated[
        SvhnFormat,
        typer.Option(
            "--format", help="cropped: {split}_32x32.mat (format 2); full: PNGs + digitStruct.mat (format 1)."
        ),
    ] = SvhnFormat.cropped,
    seed: SynthSeedOption = 0,
    train: Annotated[int, typer.Option(min=0, help="Training examples (digits or numbers).")] = 2000,
    test: Annotated[int, typer.Option(min=0, help="Test examples.")] = 500,
    extra: Annotated[int, typer.Option(min=0, help="Extra examples (0: no extra split).")] = 0,
) -> None:
    """Synthetic street-number digits in SVHN format 2 (cropped) or format 1 (full numbers)."""
    from pose.synth.digits import write_svhn

    summary = write_svhn(dest, format=format.value, seed=seed, train=train, test=test, extra=extra)
    typer.echo(json.dumps(summary, default=str))


# ---------------------------------------------------------------------------------------------
# ingest


def _print_manifest(source: str, dest: str, manifest: dict) -> None:
    typer.echo(f"ingested {source} -> {dest}")
    for split, entry in manifest["accounting"].items():
        inputs = ", ".join(f"{n} {k}" for k, n in entry["inputs"].items())
        state = "all accounted for" if entry["balanced"] else "NOT BALANCED"
        typer.echo(f"  {split}: {inputs} -> {state}")
    for name, table in sorted(manifest["tables"].items()):
        typer.echo(f"  {name:<13} {table['rows']:>8} rows in {len(table['files'])} files")


@ingest_app.command("coco")
@user_errors
@submittable
@writes_storage
def ingest_coco(
    src: Annotated[
        str,
        typer.Argument(
            help="COCO root: folder or s3://bucket/prefix with annotations/ and {train,val}2017/ (or the zips)."
        ),
    ],
    dest: Annotated[str, typer.Argument(help="Output folder or s3://bucket/prefix.")],
    split: Annotated[
        list[Split] | None, typer.Option("--split", help="Only these splits (repeatable). Default: all found.")
    ] = None,
    shard_size: IngestShardOption = None,
    address: AddressOption = None,
    verbose: VerboseOption = False,
    *,
    options: StorageOptions,
) -> None:
    """COCO keypoints -> images, persons, person_crops and errors tables + manifest.json."""
    from jobs.ingest import ingest

    splits = tuple(s.value for s in split) if split else None
    manifest = ingest(
        "coco", src, dest, options, splits=splits, shard_size=shard_size, address=address, verbose=verbose
    )
    _print_manifest(src, dest, manifest)


@ingest_app.command("svhn")
@user_errors
@submittable
@writes_storage
def ingest_svhn(
    src: Annotated[
        str,
        typer.Argument(
            help="SVHN folder or s3:// prefix with {train,test,extra}_32x32.mat and/or "
            "{train,test,extra}/digitStruct.mat."
        ),
    ],
    dest: Annotated[str, typer.Argument(help="Output folder or s3://bucket/prefix.")],
    shard_size: IngestShardOption = None,
    address: AddressOption = None,
    verbose: VerboseOption = False,
    *,
    options: StorageOptions,
) -> None:
    """SVHN (format 2 and/or format 1) -> digits, numbers and errors tables + manifest.json."""
    from jobs.ingest import ingest

    manifest = ingest("svhn", src, dest, options, shard_size=shard_size, address=address, verbose=verbose)
    _print_manifest(src, dest, manifest)


# ---------------------------------------------------------------------------------------------
# train / eval


@app.command("train-svhn")
@user_errors
@submittable
@trains(feed=False)
def train_svhn(
    data: SvhnDataOption,
    out: RunOutOption,
    epochs: Annotated[
        int, typer.Option(min=1, help="At least this many epochs (a small set gets more: --min-steps).")
    ] = 8,
    min_steps: Annotated[
        int,
        typer.Option(
            min=0,
            help="At least this many optimiser steps: the epochs of a small set are stretched to reach them "
            "(0: exactly --epochs).",
        ),
    ] = 2000,
    batch_size: Annotated[int, typer.Option(min=1, help="Global batch, split over the workers.")] = 128,
    lr: Annotated[
        float,
        typer.Option(
            help="Peak learning rate at a global batch of 256 (one-cycle cosine); scaled linearly with --batch-size."
        ),
    ] = 0.2,
    arch: Annotated[str, typer.Option(help="wrn (a wide ResNet) or small-cnn (a plain two-conv CNN).")] = "wrn",
    depth: Annotated[int, typer.Option(help="Wide ResNet depth (6n+4).")] = 10,
    width: Annotated[int, typer.Option(help="Wide ResNet widening factor.")] = 2,
    address: AddressOption = None,
    verbose: VerboseOption = False,
    *,
    settings: TrainSettings,
) -> None:
    """Train the SVHN digit classifier (wide ResNet) with Ray Train; resumes when re-run.

    A run lasts at least --epochs epochs and at least --min-steps optimiser steps, so a small
    training set gets more epochs than a large one. With the defaults and --workers 2 on 2 CPU cores,
    the 2,000 digits of `pose-jobs synth svhn` train in about 8 minutes (2,002 steps);
    SVHN's 73,257 train 8 epochs (4,344 steps), about 15 minutes at the same rate.
    """
    from jobs.train import train_digit_model
    from pose.digit_task import DigitRecipe
    from pose.models.digits import DigitModelConfig

    recipe = DigitRecipe(
        model=DigitModelConfig(arch=arch, depth=depth, width=width),
        epochs=epochs,
        min_steps=min_steps,
        batch_size=batch_size,
        lr=lr,
    )
    info = train_digit_model(recipe, settings, address=address, verbose=verbose)
    accuracy = figure_text(info["final"].get("val_accuracy"))
    steps = info.get("total_steps", "?")
    typer.echo(
        f"trained {info['task']} for {info['epochs']} epochs ({steps} optimiser steps): "
        f"validation accuracy {accuracy} -> {out}"
    )


@app.command("eval-svhn")
@user_errors
@submittable
@reads_storage
def eval_svhn(
    data: SvhnDataOption,
    model: Annotated[str, typer.Option("--model", help="A run folder from train-svhn.")],
    split: SvhnSplitOption = SvhnSplit.test,
    pictures: PicturesOption = None,
    as_json: JsonOption = False,
    *,
    options: StorageOptions,
) -> None:
    """Accuracy, per-class accuracy, confusion matrix and a grid of predictions on a split."""
    from jobs.evaluate import evaluate_svhn

    figures = evaluate_svhn(data, model, split.value, options, pictures)
    if as_json:
        typer.echo(json.dumps(figures))
        return
    typer.echo(f"SVHN {split.value}: accuracy {figures['accuracy']:.4f} on {figures['samples']} digits")
    typer.echo("  digit   " + "  ".join(f"{d:>5}" for d in range(10)))
    typer.echo("  acc     " + "  ".join(f"{a:5.3f}" for a in figures["per_class"]))
    for path in figures.get("pictures", []):
        typer.echo(f"  picture: {path}")


@app.command("train-keypoints")
@user_errors
@submittable
@trains()
def train_keypoints(
    data: Annotated[
        str | None,
        typer.Option(
            "--data", help="Ingested COCO (the DEST of `pose-jobs ingest coco`); required to train.", show_default=False
        ),
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(
            "--out",
            help="Run folder or s3:// prefix: checkpoints, metrics, curves, model; required to train.",
            show_default=False,
        ),
    ] = None,
    recipe_name: Annotated[
        KeypointRecipeName,
        typer.Option(
            "--recipe",
            help="cpu: from scratch on a few CPU cores (ResNet-18 cut after layer2, 128x96). The reference "
            "recipes, each equal to its source (docs/recipes.md; give ImageNet weights with --backbone-weights): "
            "simple-baselines (ResNet-50/101/152), mmpose-td-hm (ResNet, HRNet; --codec msra|dark|udp), "
            "hrnet-w32, hrnet-w48; rtmpose-m (MMPose's RTMPose-m config; --backbone-weights: an MMPose CSPNeXt-m "
            "file).",
        ),
    ] = KeypointRecipeName.cpu,
    show_recipe: Annotated[
        bool, typer.Option("--show-recipe", help="Print every resolved setting of the recipe as JSON and exit.")
    ] = False,
    epochs: EpochsOption = None,
    batch_size: BatchSizeOption = None,
    lr: LrOption = None,
    backbone: Annotated[
        str | None,
        typer.Option(
            help="cpu: resnet18 | resnet34 | resnet50; simple-baselines: resnet50 | resnet101 | resnet152; "
            "mmpose-td-hm: those or hrnet-w32 | hrnet-w48 (default: the recipe's).",
            show_default=False,
        ),
    ] = None,
    input_size: InputSizeOption = None,
    codec: CodecOption = None,
    backbone_weights: Annotated[
        str | None,
        typer.Option(
            "--backbone-weights",
            help="ImageNet weights for the backbone: a torchvision resnet state_dict file or s3:// URL.",
            show_default=False,
        ),
    ] = None,
    init_weights: InitWeightsOption = None,
    address: AddressOption = None,
    verbose: VerboseOption = False,
    *,
    settings: TrainSettings,
) -> None:
    """Train the top-down heatmap keypoint model with Ray Train, on a named recipe."""
    from jobs.train import train_keypoint_model
    from pose.recipes import describe, keypoint_recipe

    recipe = keypoint_recipe(
        recipe_name.value,
        backbone=backbone,
        input_size=input_size,
        codec=codec,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
    )
    if show_recipe:
        typer.echo(json.dumps(describe(recipe, settings.workers), indent=2))
        return
    for value, name in ((data, "--data"), (out, "--out")):
        if not value:
            raise typer.BadParameter("required to train (only --show-recipe runs without it)", param_hint=name)
    if recipe.framework == "pose-jobs" and recipe.backbone == "resnet50":
        typer.echo(
            "pose-jobs: warning: --recipe cpu with a ResNet-50 is the CPU recipe (cut after layer2, one "
            "deconvolution, pose-jobs' targets); for Simple Baselines use --recipe simple-baselines",
            err=True,
        )
    info = train_keypoint_model(
        recipe,
        settings,
        backbone_weights=backbone_weights,
        init_weights=init_weights,
        address=address,
        verbose=verbose,
    )
    final = info["final"]
    # The reference recipes are scored as their published families are, by AP only: no PCK to print.
    figures = "  ".join(
        f"{name} {figure_text(final.get(key))}"
        for name, key in (("PCK", "val_pck"), ("AP", "val_ap"))
        if final.get(key) is not None
    )
    typer.echo(f"trained keypoints for {info['epochs']} epochs: {figures or 'no validation figures'} -> {out}")


@app.command("eval-keypoints")
@user_errors
@submittable
@reads_storage
@keypoint_file_overrides
def eval_keypoints(
    data: CocoDataOption,
    model: Annotated[
        str,
        typer.Option(
            "--model", help="A train-keypoints run folder, or a published checkpoint file (see annotate --keypoints)."
        ),
    ],
    split: CocoSplitOption = Split.val,
    results: ResultsOption = None,
    pictures: PicturesOption = None,
    detector: DetectorOption = None,
    detector_arch: DetectorArchOption = None,
    boxes: BoxesOption = None,
    as_json: JsonOption = False,
    *,
    options: StorageOptions,
    overrides: Overrides,
) -> None:
    """COCO keypoint AP/AR (pycocotools, flip test) on a split, top-down from the ground-truth boxes
    (default) or from a detector's boxes (--detector, --boxes); with a train-keypoints run and
    ground-truth boxes also PCK on the stored person crops."""
    from jobs.evaluate import evaluate_keypoints, given_person_boxes

    if detector and boxes:
        raise typer.BadParameter("give --detector or --boxes, not both", param_hint="--boxes")
    given, box_figures = given_person_boxes(
        data, split.value, options, boxes=boxes, detector=detector, detector_arch=detector_arch
    )
    figures = evaluate_keypoints(data, model, split.value, options, pictures, results, boxes=given, overrides=overrides)
    figures.update(box_figures)
    if as_json:
        typer.echo(json.dumps(figures))
        return
    source = "ground-truth boxes" if given is None else f"boxes of {detector or boxes}"
    typer.echo(f"keypoints on {split.value} ({figures['instances']} persons, {source}, flip test):")
    for key in ("pck", "ap", "ap50", "ap75", "ap_m", "ap_l", "ar", *box_figures):
        if key in figures:
            typer.echo(f"  {key:<9} {figures[key]:.4f}")
    for path in figures.get("pictures", []):
        typer.echo(f"  picture: {path}")


@app.command("train-detector")
@user_errors
@submittable
@trains()
def train_detector(
    data: CocoDataOption,
    out: RunOutOption,
    epochs: EpochsOption = None,
    batch_size: BatchSizeOption = None,
    lr: LrOption = None,
    min_size: Annotated[
        int | None,
        typer.Option(
            "--min-size",
            min=32,
            help="Short side the detector resizes images to (default: the recipe's).",
            show_default=False,
        ),
    ] = None,
    detector_arch: DetectorArchOption = None,
    init_weights: InitWeightsOption = None,
    address: AddressOption = None,
    verbose: VerboseOption = False,
    *,
    settings: TrainSettings,
) -> None:
    """Train the person detector (Faster R-CNN, 2 classes) with Ray Train; resumes when re-run."""
    from jobs.train import train_person_detector
    from pose.recipes import detector_recipe

    recipe = detector_recipe(
        detector_arch, fine_tune=bool(init_weights), epochs=epochs, batch_size=batch_size, lr=lr, min_size=min_size
    )
    info = train_person_detector(recipe, settings, init_weights=init_weights, address=address, verbose=verbose)
    final = info["final"]
    ap, ap50 = figure_text(final.get("val_ap")), figure_text(final.get("val_ap50"))
    typer.echo(f"trained detector for {info['epochs']} epochs: box AP {ap}  AP50 {ap50} -> {out}")


@app.command("eval-detector")
@user_errors
@submittable
@reads_storage
def eval_detector(
    data: CocoDataOption,
    model: Annotated[
        str,
        typer.Option(
            "--model", help="A run folder from train-detector, or a detector weights file (.pth, local or s3://)."
        ),
    ],
    split: CocoSplitOption = Split.val,
    detector_arch: DetectorArchOption = None,
    results: ResultsOption = None,
    pictures: PicturesOption = None,
    as_json: JsonOption = False,
    *,
    options: StorageOptions,
) -> None:
    """COCO person box AP/AR (pycocotools, crowds ignored) of a detector on a split, and a picture."""
    from jobs.evaluate import evaluate_detector

    figures = evaluate_detector(data, model, split.value, options, pictures, results, arch=detector_arch)
    if as_json:
        typer.echo(json.dumps(figures))
        return
    typer.echo(f"person boxes on {split.value} ({figures['images']} images, {figures['detections']} detections):")
    names = {
        "ap": "AP @[.50:.95]",
        "ap50": "AP @.50",
        "ap75": "AP @.75",
        "ap_s": "AP small",
        "ap_m": "AP medium",
        "ap_l": "AP large",
        "ar": "AR @100",
    }
    for key, name in names.items():
        typer.echo(f"  {name:<14} {figures[key]:.4f}")
    for path in figures.get("pictures", []):
        typer.echo(f"  picture: {path}")


# ---------------------------------------------------------------------------------------------
# annotate


@app.command("annotate")
@user_errors
@submittable
@writes_storage
@keypoint_file_overrides
def annotate(
    src: Annotated[
        str,
        typer.Argument(
            help="Images: a folder or s3://bucket/prefix (jpg, jpeg, png, webp, bmp, tif, tiff, gif; any case; "
            "sub-folders too), or an ingested COCO DEST."
        ),
    ],
    dest: Annotated[str, typer.Argument(help="Output folder or s3://bucket/prefix.")],
    keypoints: KeypointsOption,
    detector: DetectorOption = None,
    boxes: BoxesOption = None,
    box_threshold: Annotated[
        float, typer.Option(help="With --boxes: boxes scoring less get no keypoints (0: all, as the COCO protocol).")
    ] = 0.0,
    detector_arch: DetectorArchOption = None,
    person_threshold: Annotated[float, typer.Option(help="Person boxes scoring less get no keypoints.")] = 0.3,
    max_persons: Annotated[
        int, typer.Option(min=1, help="Most persons per image given keypoints (best boxes first).")
    ] = 20,
    flip_test: Annotated[
        bool,
        typer.Option(
            "--flip-test/--no-flip-test", help="Average the keypoint heatmaps with those of the mirrored person."
        ),
    ] = True,
    visualize: Annotated[
        int, typer.Option("--visualize", min=0, help="Draw this many annotated images to DEST/pictures/*.png.")
    ] = 0,
    shard_size: Annotated[
        int, typer.Option("--shard-size", min=1, help="Images per shard (the unit written and resumed).")
    ] = 64,
    detector_batch: Annotated[
        int | None,
        typer.Option(min=1, help="Images per detector call (default: 2 on CPU, 8 on GPU).", show_default=False),
    ] = None,
    keypoint_batch: Annotated[
        int | None,
        typer.Option(
            min=1, help="Persons per keypoint-model call (default: 32 on CPU, 128 on GPU).", show_default=False
        ),
    ] = None,
    detector_actors: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Detector actors (default: one per GPU; on CPU one per core, each running both models).",
            show_default=False,
        ),
    ] = None,
    keypoint_actors: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Keypoint-model actors (default: one per GPU; on CPU none: the detector actors run it; set it to "
            "give it a pool of its own).",
            show_default=False,
        ),
    ] = None,
    gpu: GpuOption = None,
    precision: Annotated[
        Precision,
        typer.Option(
            "--precision",
            help="The models' arithmetic. auto: bf16 autocast and channels-last on CPUs with native bf16 "
            "(AVX512-BF16, AMX), fp32 on other CPUs and on GPUs.",
        ),
    ] = Precision.auto,
    address: AddressOption = None,
    verbose: VerboseOption = False,
    *,
    options: StorageOptions,
    overrides: Overrides,
) -> None:
    """Detect every object and every person's 17 keypoints in a bucket of images -> Parquet, COCO results,
    pictures."""
    from jobs.annotate import AnnotateSettings
    from jobs.annotate import annotate as run

    settings = AnnotateSettings(
        detector=detector,
        keypoints=keypoints,
        detector_arch=detector_arch,
        keypoint_arch=overrides.arch,
        input_size=overrides.input_size,
        codec=overrides.codec,
        boxes=boxes,
        box_threshold=box_threshold,
        person_threshold=person_threshold,
        max_persons=max_persons,
        flip_test=flip_test,
        shard_images=shard_size,
        detector_batch=detector_batch,
        keypoint_batch=keypoint_batch,
        detector_actors=detector_actors,
        keypoint_actors=keypoint_actors,
        use_gpu=gpu,
        precision=precision.value,
    )
    manifest = run(src, dest, settings, options, visualize=visualize, address=address, verbose=verbose)
    images = manifest["images"]
    state = "all accounted for" if images["balanced"] else "NOT BALANCED"
    typer.echo(f"annotated {src} -> {dest}")
    typer.echo(f"  {images['listed']} images: {images['annotated']} annotated, {images['errors']} in errors -> {state}")
    for name, entry in manifest["results"].items():
        typer.echo(f"  {name}: {entry['entries']} entries")
    for path in manifest["pictures"]:
        typer.echo(f"  picture: {path}")


# ---------------------------------------------------------------------------------------------
# demo


@app.command()
@user_errors
@submittable
def demo(
    out: Annotated[str, typer.Option("--out", help="Local folder where everything goes.")] = "demo-out",
    quick: Annotated[bool, typer.Option("--quick", help="Small data: a run of a few minutes.")] = False,
    detector: Annotated[
        str | None,
        typer.Option(
            "--detector",
            help="Annotate with this published detector file instead of the one trained here (local or s3://).",
            show_default=False,
        ),
    ] = None,
    keypoints: Annotated[
        str | None,
        typer.Option(
            "--keypoints",
            help="Evaluate and annotate with this published keypoint file (see annotate --keypoints).",
            show_default=False,
        ),
    ] = None,
    address: AddressOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Synthesise -> ingest -> train the three models briefly -> evaluate -> annotate, on a local Ray and
    local storage, then a summary of the figures and where everything is."""
    from jobs.demo import DemoSizes, run_demo
    from jobs.storage import is_s3

    if is_s3(out):
        raise typer.BadParameter("the demo writes to a local folder", param_hint="--out")
    started = time.perf_counter()
    summary = run_demo(
        Path(out),
        DemoSizes.quick() if quick else DemoSizes(),
        detector=detector,
        keypoints=keypoints,
        address=address,
        verbose=verbose,
    )
    summary.append(("total", f"{time.perf_counter() - started:.0f} s"))
    width = max(len(name) for name, _ in summary)
    typer.echo("\npose-jobs demo: summary")
    for name, value in summary:
        typer.echo(f"  {name:<{width}}  {value}")


# ---------------------------------------------------------------------------------------------
# show


@show_app.command("coco")
@user_errors
@reads_storage
def show_coco(
    src: Annotated[str, typer.Argument(help="COCO root (annotations + images, folders or zips) or an ingested DEST.")],
    out: Annotated[Path, typer.Argument(help="Folder for the PNGs.")],
    split: CocoSplitOption = Split.train,
    images: Annotated[int, typer.Option(min=1, help="How many images (the first ones with people).")] = 4,
    image_id: Annotated[list[int] | None, typer.Option(help="Draw these image ids instead (repeatable).")] = None,
    *,
    options: StorageOptions,
) -> None:
    """Images with person boxes, skeletons and named joints, beside each person's crop."""
    from jobs.show import show_coco as run

    for path in run(src, out, options, split=split.value, images=images, image_ids=image_id):
        typer.echo(str(path))


@show_app.command("svhn")
@user_errors
@reads_storage
def show_svhn(
    src: Annotated[str, typer.Argument(help="SVHN folder (.mat / digitStruct.mat) or an ingested DEST.")],
    out: Annotated[Path, typer.Argument(help="Folder for the PNGs.")],
    digits: Annotated[int, typer.Option(min=1, help="Digits per grid.")] = 100,
    numbers: Annotated[int, typer.Option(min=0, help="Full-number images per split (format 1).")] = 6,
    *,
    options: StorageOptions,
) -> None:
    """A grid of labelled digits per split, and full-number images with their digit boxes."""
    from jobs.show import show_svhn as run

    for path in run(src, out, options, digits=digits, numbers=numbers):
        typer.echo(str(path))


# ---------------------------------------------------------------------------------------------
# jobs: the Ray Jobs of a cluster (submitted with a dashboard --address)

# Not `submittable`: these commands talk to the Jobs API, they are never submitted themselves.
ClusterOption = Annotated[
    str | None,
    typer.Option(
        "--address", help="The cluster's dashboard, http://HEAD:8265.", envvar="RAY_ADDRESS", show_default=False
    ),
]
JobIdArgument = Annotated[str, typer.Argument(help="The job's id (as `pose-jobs jobs list` shows it).")]


@jobs_app.command("list")
@user_errors
def jobs_list(cluster: ClusterOption = None) -> None:
    """The cluster's jobs, oldest first: id, status, start time, command."""
    from jobs.submit import format_time, list_jobs

    for job in list_jobs(cluster):
        job_id = job.submission_id or job.job_id
        typer.echo(f"{job_id:<48} {job.status.value:<9} {format_time(job.start_time)}  {job.entrypoint}")


@jobs_app.command("status")
@user_errors
def jobs_status(job_id: JobIdArgument, cluster: ClusterOption = None) -> None:
    """One job: status, times, command, and Ray's message; exits 0 when it succeeded or runs, else its exit code."""
    from jobs.submit import TERMINAL, exit_code, format_time, job_info

    info = job_info(cluster, job_id)
    typer.echo(f"{job_id}: {info.status.value}")
    typer.echo(f"  command  {info.entrypoint}")
    typer.echo(f"  started  {format_time(info.start_time)}   ended {format_time(info.end_time)}")
    if info.message:
        typer.echo(f"  message  {info.message}")
    if info.status.value in TERMINAL:
        raise typer.Exit(exit_code(info))


@jobs_app.command("logs")
@user_errors
def jobs_logs(
    job_id: JobIdArgument,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the job ends; exit with its code.")
    ] = False,
    cluster: ClusterOption = None,
) -> None:
    """A job's logs (its driver's stdout and stderr)."""
    from jobs.submit import job_logs

    raise typer.Exit(job_logs(cluster, job_id, follow))


@jobs_app.command("stop")
@user_errors
def jobs_stop(job_id: JobIdArgument, cluster: ClusterOption = None) -> None:
    """Stop a running job (its driver gets SIGTERM, then SIGKILL)."""
    from jobs.submit import stop_job

    stopped = stop_job(cluster, job_id)
    typer.echo(f"{job_id}: {'stopping' if stopped else 'had already ended'}")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
