"""Training on Ray Train: one runner for every model.

A *task* (`pose.digit_task.DigitTask`, `pose.keypoint_task.KeypointTask`,
`pose.detector_task.DetectorTask`) knows its model, its optimiser, how to turn a batch of Parquet
rows into tensors and how to evaluate; this module knows Ray: workers and their resources, data
sharding, checkpoints in object storage, resuming, and the files a run leaves in `--out`:

  OUT/metrics.jsonl     one line per epoch (loss, lr, validation figures, samples/s, the batch plan,
                        Ray node of each rank)
  OUT/curves.png        the training curves
  OUT/model.pt          the final weights: a plain state_dict, `torch.load(..., weights_only=True)`
  OUT/model.json        what model it is (task, recipe, epochs and optimiser steps, batch plan, final figures)
  OUT/run.json          the task and recipe, written at the start: a later run into OUT must be of the same
                        recipe (only its length may differ), or it is refused
  OUT/checkpoint_*      Ray Train's checkpoints, one per epoch (model, optimiser, scheduler, epoch)

The training step itself is `pose.engine`'s (`train_one_epoch`, `evaluate`); the task's
`batch_size` is the global batch, shared by the workers (`pose.engine.batch_plan`), so that 1 or 8
workers run the same optimiser steps and learning-rate schedule.

Re-running the same command with the same OUT resumes from the last checkpoint (Ray Train V2
restores a run from its `RunConfig(name, storage_path)`); a finished run is not trained again.
"""

from __future__ import annotations

import functools
import io
import json
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from jobs.datasets import table_files
from jobs.runtime import StallWatch, alive_node_cpus, cpu_share, fits, init_ray, keeps_free
from jobs.storage import (
    StorageOptions,
    absolute,
    exists,
    is_s3,
    join,
    pyarrow_filesystem,
    read_bytes,
    write_bytes_atomic,
)
from pose.engine import BatchPlan, batch_plan
from pose.errors import UserError
from pose.feed import BatchFeed

CHECKPOINT_FILE = "checkpoint.pt"


class TrainError(UserError):
    """A user mistake found before training starts (no data, impossible resources): one line."""


@dataclass(frozen=True)
class TrainSettings:
    data: str  # an ingested DEST (has manifest.json)
    out: str  # local folder or s3:// prefix
    workers: int = 1
    seed: int = 0
    use_gpu: bool | None = None  # None: GPUs when the cluster has them
    cpus_per_worker: float | None = None  # None: share what the cluster has, keeping one CPU for the data feed
    max_failures: int = 2  # whole-group restarts from the last checkpoint after a worker dies
    feed_workers: int | None = None  # processes preparing batches per worker; None: `feed_workers()`
    precision: str = "auto"  # auto | bf16 | fp32 (`pose.precision.training_precision`)
    options: StorageOptions = field(default_factory=StorageOptions)


# ------------------------------------------------------------------------------------------------
# Driver


def worker_resources(workers: int, use_gpu: bool | None, cpus_per_worker: float | None) -> tuple[bool, dict]:
    """Resources for each worker that the cluster can actually grant.

    Ray waits forever for resources that do not exist, so an impossible request is refused here
    with the numbers. CPU workers share the cluster's CPUs but one (or half of them), which stay
    free for the Ray Data tasks that feed them: a fraction of a CPU each when there are more workers
    than CPUs, so that `--workers 4` runs on a 2-core machine, and several CPUs (and as many torch
    threads) each on bigger nodes. The share is one every worker can get on some node.
    """
    import ray

    if workers < 1:
        raise TrainError("--workers must be at least 1")
    cluster = ray.cluster_resources()
    total_cpus, total_gpus = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
    if use_gpu is None:
        use_gpu = total_gpus >= 1
    if use_gpu:
        if total_gpus < workers:
            raise TrainError(
                f"--workers {workers} with GPUs needs {workers} GPUs, but the cluster has {total_gpus:g}; "
                "use fewer workers or --no-gpu"
            )
        return True, {"GPU": 1, "CPU": cpus_per_worker or gpu_worker_cpus(ray.nodes(), total_cpus, workers)}
    node_cpus = alive_node_cpus()
    share = cpu_share(workers, node_cpus)  # the default: leaves a node a whole CPU for the data where it can
    if cpus_per_worker is None:
        cpus_per_worker = share
    nodes = f"({', '.join(f'{n:g}' for n in node_cpus)} CPUs)"
    if not fits(cpus_per_worker, workers, node_cpus):  # fitting on the nodes implies fitting in the total
        most = cpu_share(workers, node_cpus, spare=0.0)
        raise TrainError(
            f"--workers {workers} x {cpus_per_worker:g} CPUs do not fit the cluster's nodes {nodes}: "
            f"Ray would wait forever; use --cpus-per-worker {most:.2g} or fewer workers"
        )
    if not keeps_free(cpus_per_worker, workers, node_cpus, keep=1.0) and keeps_free(
        share, workers, node_cpus, keep=1.0
    ):
        raise TrainError(
            f"--workers {workers} x {cpus_per_worker:g} CPUs can leave no node of the cluster {nodes} a whole CPU "
            f"for reading the data: Ray would wait forever; use --cpus-per-worker {share:.3g} or fewer workers"
        )
    return False, {"CPU": cpus_per_worker}


def gpu_worker_cpus(nodes: list[dict], total_cpus: float, workers: int) -> float:
    """CPUs for each GPU worker: its node's CPUs per GPU, one CPU per node left for Ray Data's
    reading tasks, on the GPU node with the fewest (16 CPUs and 1 GPU: 15; 96 CPUs and 8 GPUs:
    11.875). They run the worker's feed processes (`feed_workers`). A GPU node of 1 CPU gives
    what is left of the cluster's CPUs, shared, at most one each."""
    shares = [
        (node["Resources"].get("CPU", 0.0) - 1.0) / node["Resources"]["GPU"]
        for node in nodes
        if node.get("Alive") and node["Resources"].get("GPU", 0.0) >= 1
    ]
    share = min(shares) if shares else 0.0
    return share if share >= 1.0 else min(1.0, max(total_cpus - 1, 0.0) / workers)


def feed_workers(use_gpu: bool, resources: dict, task=None) -> int:
    """Processes that prepare batches (decode, augment, targets) ahead of the training step.

    GPU workers of a task whose batches cost CPU time to prepare (`task.feed_ahead`: images to
    decode and augment): one per CPU reserved but the one the training loop runs on, so the feed
    keeps ahead of the GPU (a GPU trains many times the crops one process prepares).
    CPU workers: none; the batch is prepared inline, between steps, because every reserved CPU
    already runs torch (a feed process beside it only takes turns with it). SVHN's batches are
    pixels already: inline everywhere."""
    if not use_gpu or (task is not None and not getattr(task, "feed_ahead", False)):
        return 0
    return max(1, int(resources.get("CPU", 1.0)) - 1)


RUN_FILE = "run.json"  # the task's config, written when a run starts: what OUT is a run of
_LENGTH_KEYS = ("epochs", "min_steps")  # a run may be asked for more epochs and go on


def check_same_run(task, out: str, options: StorageOptions) -> None:
    """Refuse to resume, or to call finished, a run in OUT of another task or recipe: its checkpoints
    or model would be taken for this one's. Compared: the task, the model, and the recipe's settings
    that both runs state, but its length (more epochs resume a run)."""
    wanted = json.loads(json.dumps(task.config()))
    for name in (RUN_FILE, "model.json"):
        path = join(out, name)
        if not exists(path, options):
            continue
        found = json.loads(read_bytes(path, options))
        differences = _config_differences(found, wanted)
        if differences:
            raise TrainError(
                f"{out} holds a run of another recipe ({'; '.join(differences[:4])}); "
                "give another --out for this one, or remove that run"
            )
        return


def _config_differences(found: dict, wanted: dict) -> list[str]:
    """'key: there, here' for each setting of `wanted` that `found` states otherwise."""
    differences = []
    for key in ("task", "model"):
        if key in found and key in wanted and found[key] != wanted[key]:
            differences.append(f"{key}: {_short(found[key])} there, {_short(wanted[key])} here")
    there, here = found.get("recipe", {}), wanted.get("recipe", {})
    for key in sorted(set(there) & set(here) - set(_LENGTH_KEYS)):
        if there[key] != here[key]:
            differences.append(f"recipe {key}: {_short(there[key])} there, {_short(here[key])} here")
    return differences


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def finished_run(out: str, epochs: int, options: StorageOptions) -> dict | None:
    """The model.json of a run that already finished what `epochs` asked for, else None."""
    path = join(out, "model.json")
    if not exists(path, options):
        return None
    info = json.loads(read_bytes(path, options))
    return info if info.get("requested_epochs", info.get("epochs")) == epochs else None


def run_training(
    task, settings: TrainSettings, epochs: int, *, address: str | None = None, verbose: bool = False, prepare_rows=None
) -> dict:
    """Train `task` for `epochs` epochs on Ray Train; returns the final model.json content.

    A task with `epochs_for(steps_per_epoch)` states its own length once the batch plan is known
    (the digit recipe stretches the epochs of a small set to a minimum number of optimiser steps);
    model.json then records both the epochs trained and the `epochs` asked for.

    `prepare_rows`: a function Ray Data dataset -> dataset applied to the training and validation
    rows of `task.table` before they reach the workers (one output row per input row), for a task
    whose rows need more than the table holds, e.g. the detector's image bytes and boxes
    (`jobs.detector_data.detector_rows`).
    """
    settings = replace(settings, data=absolute(settings.data), out=absolute(settings.out))
    check_same_run(task, settings.out, settings.options)
    done = finished_run(settings.out, epochs, settings.options)
    if done is not None:
        print(
            f"{task.name}: {settings.out} already holds a model trained for {epochs} epochs; nothing to do",
            file=sys.stderr,
        )
        return done

    write_bytes_atomic(
        join(settings.out, RUN_FILE), json.dumps(task.config(), indent=2, sort_keys=True).encode(), settings.options
    )
    init_ray(address, verbose=verbose)
    import ray
    import ray.data
    import ray.train
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    train_files = table_files(settings.data, task.table, task.train_splits, settings.options)
    val_files = (
        table_files(settings.data, task.table, (task.val_split,), settings.options) if task.val_split else train_files
    )
    if not train_files:
        raise TrainError(f"{settings.data}: no '{task.table}' rows for splits {', '.join(task.train_splits)}")
    use_gpu, resources = worker_resources(settings.workers, settings.use_gpu, settings.cpus_per_worker)

    filesystem, _ = pyarrow_filesystem(settings.data, settings.options)
    strip = (lambda url: url[len("s3://") :]) if is_s3(settings.data) else (lambda url: url)
    train = ray.data.read_parquet([strip(f) for f in train_files], filesystem=filesystem, shuffle="files")
    val = ray.data.read_parquet([strip(f) for f in val_files], filesystem=filesystem)
    holdout = getattr(task, "holdout_every", 0)
    if holdout:
        # No separate validation split (SVHN): hold out every n-th row of train, by its index.
        train = train.map_batches(
            _rows_by_index, batch_format="pyarrow", fn_kwargs={"every": holdout, "held_out": False}
        )
        val = val.map_batches(_rows_by_index, batch_format="pyarrow", fn_kwargs={"every": holdout, "held_out": True})
    cached = _cache_if_small([train, val], train_files + val_files, filesystem, strip)
    if cached is not None:
        train, val = cached
    train_rows = train.count()
    try:
        plan = batch_plan(task.batch_size, settings.workers, train_rows)
    except ValueError as error:
        raise TrainError(f"{settings.data}: {error}") from None
    if prepare_rows is not None:
        train, val = prepare_rows(train), prepare_rows(val)
    requested_epochs = epochs
    if hasattr(task, "epochs_for"):
        epochs = task.epochs_for(plan.steps_per_epoch)

    storage_path, name = _run_location(settings.out)
    run_config = RunConfig(
        name=name,
        storage_path=storage_path,
        storage_filesystem=pyarrow_filesystem(settings.out, settings.options)[0] if is_s3(settings.out) else None,
        failure_config=FailureConfig(max_failures=settings.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=2),
    )
    loop_config = {
        "task": task,
        "epochs": epochs,
        "requested_epochs": requested_epochs,
        "seed": settings.seed,
        "out": settings.out,
        "options": settings.options,
        "plan": plan,
        "use_gpu": use_gpu,
        "torch_threads": max(1, int(resources.get("CPU", 1.0))),
        "feed_workers": feed_workers(use_gpu, resources, task)
        if settings.feed_workers is None
        else settings.feed_workers,
        "precision": settings.precision,
    }
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=settings.workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=run_config,
        datasets={"train": train, "val": val},
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )
    stretched = (
        f" ({requested_epochs} asked, stretched to the recipe minimum steps)" if epochs != requested_epochs else ""
    )
    print(
        f"{task.name}: {train_rows} training rows{' (held in the object store)' if cached is not None else ''}, "
        f"{plan.describe()}, on {'GPU' if use_gpu else 'CPU'} "
        f"({resources}), {epochs} epochs = {epochs * plan.steps_per_epoch} optimiser steps"
        f"{stretched} -> {settings.out}",
        file=sys.stderr,
    )
    with (
        _EpochPrinter(task.name, settings.out, epochs, settings.options) as printer,
        StallWatch(task.name, lambda: len(printer.printed)),
    ):
        try:
            trainer.fit()
        except ray.train.TrainingFailedError as error:
            raise training_failure(task.name, error, settings.max_failures) from None
    return json.loads(read_bytes(join(settings.out, "model.json"), settings.options))


def training_failure(name: str, error: Exception, restarts: int) -> Exception:
    """What `trainer.fit()`'s failure is to the user: a loss that went non-finite on a worker (the
    recipe or the weights, not a bug: `pose.engine.train_one_epoch` says where) is one line, a
    TrainError; anything else a RuntimeError that carries Ray's report of each worker."""
    failures = getattr(error, "worker_failures", {}) or {}
    for failure in failures.values():
        # Ray Train wraps the worker's own exception with its traceback text (UserExceptionWithTraceback,
        # `_base_exc`); a RayTaskError holds it as `cause`.
        while not isinstance(failure, FloatingPointError):
            inner = getattr(failure, "_base_exc", None) or getattr(failure, "cause", None)
            if not isinstance(inner, BaseException) or inner is failure:
                break
            failure = inner
        if isinstance(failure, FloatingPointError):
            first = str(failure).splitlines()[0]
            return TrainError(f"{first}; it failed again after {restarts} restart(s) from the last checkpoint")
    return RuntimeError(f"{name}: training failed: {error}")


def _cache_if_small(datasets: list, files: list[str], filesystem, strip) -> list | None:
    """`datasets` materialized in Ray's object store when their Parquet files fit in a fraction of it
    (`POSE_JOBS_CACHE_FRACTION`, default 0.1; 0 never), else None: each epoch then streams them from
    storage again.

    Every epoch runs a streamed dataset's plan again (read, hold-out filter) before its first batch,
    a fixed cost that can outweigh a small set's few optimiser steps; a held set costs only the
    split. A tenth leaves room for rows that decode larger than their compressed files and for
    everything else the store holds; a larger set streams.
    """
    import ray

    fraction = float(os.environ.get("POSE_JOBS_CACHE_FRACTION", "0.1"))
    if fraction <= 0:
        return None
    unique = sorted(set(files))
    total = sum(info.size or 0 for info in filesystem.get_file_info([strip(f) for f in unique]))
    if total > fraction * ray.cluster_resources().get("object_store_memory", 0.0):
        return None
    return [dataset.materialize() for dataset in datasets]


def _rows_by_index(batch, every: int, held_out: bool):
    """The rows whose `index` is (held_out) or is not a multiple of `every`."""
    import pyarrow.compute as pc

    index = batch["index"]
    remainder = pc.subtract(index, pc.multiply(pc.divide(index, every), every))  # integer division
    multiple = pc.equal(remainder, 0)
    return batch.filter(multiple if held_out else pc.invert(multiple))


def _run_location(out: str) -> tuple[str, str]:
    """(storage_path, name) for Ray Train such that the run lives exactly at `out`."""
    if is_s3(out):
        bucket_path = out[len("s3://") :].rstrip("/")
        parent, _, name = bucket_path.rpartition("/")
        if not parent:
            raise TrainError(f"{out}: --out needs a prefix inside the bucket, e.g. s3://bucket/runs/svhn")
        return parent, name
    path = Path(out).resolve()
    return str(path.parent), path.name


class _EpochPrinter:
    """Prints each new line of OUT/metrics.jsonl while training runs (workers write it), so the
    user sees one readable line per epoch without Ray's own logs."""

    def __init__(self, label: str, out: str, epochs: int, options: StorageOptions):
        self.label, self.out, self.epochs, self.options = label, out, epochs, options
        self.stop = threading.Event()
        self.printed: set[int] = set()

    def __enter__(self):
        # Epochs already in the file come from an earlier, interrupted run: say so once.
        history = self._lines()
        if history:
            print(
                f"{self.label}: resuming after epoch {json.loads(history[-1])['epoch']} (from the last checkpoint)",
                file=sys.stderr,
            )
        self.printed = {json.loads(line)["epoch"] for line in history}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self._print_new()

    def _run(self):
        while not self.stop.wait(2.0):
            self._print_new()

    def _lines(self) -> list[str]:
        path = join(self.out, "metrics.jsonl")
        try:
            return read_bytes(path, self.options).decode().splitlines() if exists(path, self.options) else []
        except Exception:  # a poll that races a write: try again next time
            return []

    def _print_new(self):
        for line in self._lines():
            metrics = json.loads(line)
            if metrics["epoch"] not in self.printed:
                print(format_epoch(self.label, metrics, self.epochs), file=sys.stderr, flush=True)
                self.printed.add(metrics["epoch"])


def format_epoch(label: str, metrics: dict, epochs: int) -> str:
    """One readable progress line: epoch, loss, validation figures, samples/s, ETA."""
    figures = "  ".join(f"{k[4:]} {v:.4f}" for k, v in metrics.items() if k.startswith("val_") and isinstance(v, float))
    remaining = (epochs - metrics["epoch"]) * metrics.get("epoch_seconds", 0.0)
    return (
        f"{label} epoch {metrics['epoch']}/{epochs}  loss {metrics['loss']:.4f}  {figures}  "
        f"{metrics['samples_per_s']:.0f} samples/s  lr {metrics['lr']:.2e}  ETA {remaining / 60:.1f} min"
    )


# ------------------------------------------------------------------------------------------------
# Workers


def _train_loop(config: dict) -> None:
    """Runs on every Ray Train worker: restore, then epochs of training (`pose.engine.train_one_epoch`
    on this worker's shard, gradients averaged by DDP), evaluation (rank 0) and a checkpoint report.
    Every worker runs exactly `plan.steps_per_epoch` steps (DDP's all-reduce needs as many from each)
    and reports once per epoch: `report` is a barrier."""
    import ray.train
    import ray.train.torch
    import torch
    import torch.distributed as dist

    from pose.engine import evaluate, train_one_epoch
    from pose.precision import training_precision

    task, epochs, seed, out, options = (
        config["task"],
        config["epochs"],
        config["seed"],
        config["out"],
        config["options"],
    )
    plan: BatchPlan = config["plan"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    # As many torch threads as CPUs reserved: more threads than cores, with the data feed busy on
    # the same cores, makes OpenMP spin and runs several times slower.
    torch.set_num_threads(config["torch_threads"])
    device = ray.train.torch.get_device()
    torch.manual_seed(seed)
    # The Ray node of every rank, recorded with each epoch: where a run trained, across restarts.
    nodes = [ray.get_runtime_context().get_node_id()]
    if world > 1:
        nodes = [None] * world
        dist.all_gather_object(nodes, ray.get_runtime_context().get_node_id())

    model = task.build_model()
    optimizer, scheduler = task.build_optimizer(model, plan.steps_per_epoch)
    ema = getattr(task, "ema", None)  # RTMPose: the averaged weights, validated, checkpointed and saved
    start_epoch, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(Path(folder) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        start_epoch, history = state["epoch"], state["history"]
    precision = training_precision(device, config["precision"], task)
    model = precision.prepare(model)
    if device.type == "cuda":
        # cuDNN picks the fastest kernels per input shape: worth it where every batch has one shape.
        torch.backends.cudnn.benchmark = getattr(task, "fixed_input_size", False)
    model = ray.train.torch.prepare_model(model)
    plain_model = model.module if hasattr(model, "module") else model
    if ema is not None:
        ema.module.to(device)

    train_shard = ray.train.get_dataset_shard("train")
    val_data = ray.train.get_dataset_shard("val")
    # Decoding and augmentation (the CPU half of a batch) run ahead of the step: on processes on
    # GPU workers, inline on CPU workers (see `feed_workers`).
    with BatchFeed(task.preparer(), config["feed_workers"], processes=True) as feed:
        for epoch in range(start_epoch, epochs):
            started = time.perf_counter()
            batches = train_shard.iter_batches(
                batch_size=plan.worker_batch,
                batch_format="numpy",
                drop_last=True,
                local_shuffle_buffer_size=plan.worker_batch * 8,
                local_shuffle_seed=seed * 7919 + epoch * 31 + rank,
            )
            generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 1009 + rank)
            result = train_one_epoch(
                model,
                task,
                feed(batches, epoch),
                optimizer,
                scheduler,
                device=device,
                precision=precision,
                max_steps=plan.steps_per_epoch,
                generator=generator,
            )
            if result.steps != plan.steps_per_epoch:  # an unequal split of the rows: a bug, not a user mistake
                raise RuntimeError(
                    f"{task.name}: rank {rank}'s shard gave {result.steps} batches of {plan.worker_batch}, "
                    f"not the {plan.steps_per_epoch} steps every worker must run"
                )
            totals = torch.stack([result.loss_sum, torch.tensor(float(result.samples), device=device)])
            if world > 1:
                dist.all_reduce(totals)
            train_seconds = time.perf_counter() - started

            metrics = {
                "epoch": epoch + 1,
                "loss": float(totals[0]) / (world * result.steps),  # mean over the steps of every worker
                "lr": float(scheduler.get_last_lr()[0]),
                "samples_per_s": float(totals[1]) / max(train_seconds, 1e-9),
                "global_batch": plan.global_batch,
                "worker_batch": plan.worker_batch,
                "steps": result.steps,
                "precision": precision.describe(),
                "nodes": nodes,
            }
            if rank == 0:
                val_batches = val_data.iter_batches(batch_size=task.eval_batch_size, batch_format="numpy")
                figures = evaluate(plain_model, task, val_batches, device=device, precision=precision)
                metrics.update({f"val_{k}": v for k, v in figures.items() if isinstance(v, (int, float))})
            metrics["epoch_seconds"] = time.perf_counter() - started
            history.append(metrics)

            if rank == 0:
                with tempfile.TemporaryDirectory() as folder:
                    state = {
                        "model": plain_model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        **({"ema": ema.state_dict()} if ema is not None else {}),
                        "epoch": epoch + 1,
                        "history": history,
                        "config": task.config(),
                    }
                    torch.save(state, Path(folder) / CHECKPOINT_FILE)
                    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
                _write_run_files(task, history, out, options)
            else:
                ray.train.report(metrics)

    if rank == 0:
        # The weights a run leaves are the ones it validated: the EMA's where the recipe keeps one.
        saved = task.averaged(plain_model) if hasattr(task, "averaged") else plain_model
        _write_model(task, saved, history, epochs, config["requested_epochs"], plan, out, options)


def _write_run_files(task, history: list[dict], out: str, options: StorageOptions) -> None:
    """metrics.jsonl and curves.png, rewritten whole from the checkpointed history, so that a resumed
    run never shows an epoch twice."""
    from pose.draw import training_curves

    lines = "".join(json.dumps(m, sort_keys=True) + "\n" for m in history)
    write_bytes_atomic(join(out, "metrics.jsonl"), lines.encode(), options)
    keys = ["loss"] + [k for k in history[-1] if k.startswith("val_") and isinstance(history[-1][k], float)][:3]
    buffer = io.BytesIO()
    training_curves(history, keys, title=f"{task.name} training").save(buffer, format="PNG")
    write_bytes_atomic(join(out, "curves.png"), buffer.getvalue(), options)


def _write_model(
    task,
    model,
    history: list[dict],
    epochs: int,
    requested_epochs: int,
    plan: BatchPlan,
    out: str,
    options: StorageOptions,
) -> None:
    """The run folder (`jobs.models.save_run`): the weights, and the task's config, the epochs
    trained (and asked for), the optimiser steps, the batch plan and the last epoch's figures."""
    from jobs.models import save_run

    info = {
        **task.config(),
        "epochs": epochs,
        "requested_epochs": requested_epochs,
        "total_steps": epochs * plan.steps_per_epoch,
        "global_batch": plan.global_batch,
        "workers": plan.workers,
        "worker_batch": plan.worker_batch,
        "steps_per_epoch": plan.steps_per_epoch,
        "final": history[-1] if history else {},
    }
    save_run(out, info, model.state_dict(), options)


# ------------------------------------------------------------------------------------------------
# One entry point per model: builds its task from a recipe and trains it with run_training. The
# train-* commands and `pose-jobs demo` call these, so both run the same code. Each returns the
# run's model.json content.


class WeightsFileError(UserError):
    """A weights file that does not fit the recipe's network (the message names the file)."""


def train_digit_model(recipe, settings: TrainSettings, *, address: str | None = None, verbose: bool = False) -> dict:
    """Train the SVHN digit classifier of `recipe` (`pose.digit_task.DigitRecipe`) on `settings.data`."""
    from pose.digit_task import DigitTask

    return run_training(DigitTask(recipe), settings, recipe.epochs, address=address, verbose=verbose)


def train_keypoint_model(
    recipe,
    settings: TrainSettings,
    *,
    backbone_weights: str | None = None,
    init_weights: str | None = None,
    address: str | None = None,
    verbose: bool = False,
) -> dict:
    """Train the top-down keypoint model of `recipe` (`pose.keypoint_task.KeypointRecipe`), scored
    on the val split. `backbone_weights`: ImageNet weights for the backbone; `init_weights`: a
    published keypoint file of the same network to start from (local or s3://; read here once).

    The reference recipes (framework other than "pose-jobs") warp the original images, as their
    references do, so their rows travel with the image bytes."""
    from jobs.detector_data import image_sources, rows_with_images
    from jobs.evaluate import keypoint_ground_truth
    from pose.keypoint_task import KeypointTask

    options = settings.options
    weights = read_bytes(backbone_weights, options) if backbone_weights else None
    initial = (init_weights, read_bytes(init_weights, options)) if init_weights else None
    task = KeypointTask(
        recipe,
        ground_truth=keypoint_ground_truth(settings.data, "val", options),
        seed=settings.seed,
        backbone_weights=weights,
        init_weights=initial,
    )
    if weights is not None or initial is not None:
        _check_weights(task, init_weights or backbone_weights)
    prepare = None
    if recipe.framework != "pose-jobs":
        sources = image_sources(settings.data, ("train", "val"), options)
        prepare = functools.partial(rows_with_images, sources=sources, options=options)
    return run_training(task, settings, recipe.epochs, address=address, verbose=verbose, prepare_rows=prepare)


def train_person_detector(
    recipe,
    settings: TrainSettings,
    *,
    init_weights: str | None = None,
    address: str | None = None,
    verbose: bool = False,
) -> dict:
    """Train the person detector of `recipe` (`pose.detector_task.DetectorRecipe`, e.g. from
    `pose.recipes.detector_recipe`); `init_weights`: torchvision's COCO weights for its
    architecture (local or s3://) to fine-tune from."""
    from jobs.detector_data import detector_rows, person_boxes_by_image
    from jobs.evaluate import keypoint_ground_truth
    from pose.detector_task import DetectorTask

    options = settings.options
    weights = read_bytes(init_weights, options) if init_weights else None
    task = DetectorTask(
        recipe,
        ground_truth=keypoint_ground_truth(settings.data, "val", options),
        seed=settings.seed,
        init_weights=weights,
    )
    if weights is not None:
        _check_weights(task, init_weights)
    boxes = person_boxes_by_image(settings.data, (*task.train_splits, task.val_split), options)
    prepare = functools.partial(detector_rows, boxes=boxes, options=options)
    return run_training(task, settings, recipe.epochs, address=address, verbose=verbose, prepare_rows=prepare)


def _check_weights(task, path: str) -> None:
    """Build the model once here: a wrong file is one clear line now, not a worker's traceback later."""
    try:
        task.build_model()
    except ValueError as error:
        message = str(error)
        raise WeightsFileError(message if path in message else f"{path}: {message}") from None
