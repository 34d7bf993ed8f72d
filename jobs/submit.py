"""Running a `pose-jobs` command on a Ray cluster as a Ray Job, and managing those jobs.

Given a dashboard address (`--address http://HEAD:8265` or `RAY_ADDRESS`), a command marked
`@submittable` in jobs/cli.py is not run here: the same command line, without `--address`, is
submitted through the Ray Jobs API and runs on the cluster, where its driver joins the cluster
through the `RAY_ADDRESS` that Ray sets for every job (the GCS address, never a dashboard URL:
the job cannot submit itself again).
Its logs stream back here and `pose-jobs` exits with the job's exit code.

What travels with a job: the command line and `RAY_USAGE_STATS_ENABLED=0`. Nothing else from
this machine: S3 credentials on the cluster come from the cluster's own environment (instance
profile, service account, its AWS_* variables), never from the submitter.

Token authentication (Ray 2.60): the client sends the cluster's token, found the standard Ray way
(`RAY_AUTH_TOKEN`, else the file at `RAY_AUTH_TOKEN_PATH`, else `~/.ray/auth_token`). A missing
or wrong token is one line and exit code 2.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import shlex
import sys
import time
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path

from pose.errors import UserError

JOB_ENV = {"RAY_USAGE_STATS_ENABLED": "0"}  # Ray itself sets PYTHONUNBUFFERED and RAY_ADDRESS for the driver
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class SubmitError(UserError):
    """A user mistake talking to a cluster (no such job, no or wrong token, nothing listening): one line."""


def is_dashboard_address(address: str | None) -> bool:
    """True for a Ray dashboard (Jobs API) address, http(s)://host:port; GCS addresses are joined directly."""
    return bool(address) and address.startswith(("http://", "https://"))


# ------------------------------------------------------------------------------------------------
# The client


def job_client(address: str | None):
    """A `JobSubmissionClient` for the cluster at `address`, token included when one is at hand."""
    if not address:
        raise SubmitError("which cluster? give --address http://HEAD:8265 (the Ray dashboard) or set RAY_ADDRESS")
    _use_token_if_present()
    logging.getLogger("ray.dashboard").setLevel(logging.WARNING)  # not Ray's INFO line on every log stream's end
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except AuthenticationError as error:
        raise SubmitError(_token_message(address, error)) from None
    except ConnectionError:
        raise SubmitError(
            f"no Ray dashboard answers at {address}: is the cluster up, and is this its dashboard port "
            "(8265 by default)?"
        ) from None


def _use_token_if_present() -> None:
    """Send the token when one is configured. Ray's clients only send it with RAY_AUTH_MODE=token;
    like `ray.init()` on a local cluster, a token that is present switches token mode on."""
    if os.environ.get("RAY_AUTH_MODE"):
        return
    if (
        os.environ.get("RAY_AUTH_TOKEN")
        or os.environ.get("RAY_AUTH_TOKEN_PATH")
        or (Path.home() / ".ray" / "auth_token").is_file()
    ):
        os.environ["RAY_AUTH_MODE"] = "token"


def _token_message(address: str, error: Exception) -> str:
    where = (
        "set RAY_AUTH_TOKEN, point RAY_AUTH_TOKEN_PATH at a file holding it, or write it to ~/.ray/auth_token "
        "(`ray get-auth-token` on the head node prints it)"
    )
    if "Authentication failed" in str(error):  # HTTP 403: a token was sent and refused
        return (
            f"the Ray cluster at {address} refused the authentication token: give the cluster's token "
            "(RAY_AUTH_TOKEN, a file at RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token; `ray get-auth-token` on the head "
            "node prints it)"
        )
    return f"the Ray cluster at {address} requires an authentication token and none was sent: {where}"


def _calling(address: str, function, *args):
    """Call a Jobs API method, turning authentication and unknown-job failures into SubmitError."""
    from ray.exceptions import AuthenticationError

    try:
        return function(*args)
    except AuthenticationError as error:
        raise SubmitError(_token_message(address, error)) from None
    except RuntimeError as error:
        if "does not exist" in str(error):
            raise SubmitError(
                f"no job {args[0] if args else ''} on the cluster at {address} (pose-jobs jobs list shows them)"
            ) from None
        raise


# ------------------------------------------------------------------------------------------------
# Submitting


def command_line(context, values: dict, drop: tuple[str, ...] = ("address",)) -> tuple[list[str], list[str]]:
    """The command being run, rebuilt from its parsed parameters: (argv, warnings).

    `context` is the command's typer.Context, `values` its parameters as the command receives them.
    Options are repeated only when given on the command line or by their environment variable,
    `drop`ped ones never. A local path means nothing on a cluster: a value that looks like one is
    made absolute, with a warning, since every node must then see that same path.
    """
    names = []
    ctx = context
    while ctx is not None:
        names.append(ctx.info_name)
        ctx = ctx.parent
    argv = ["pose-jobs", *reversed(names[:-1])]
    arguments, options, warnings = [], [], []
    for param in context.command.params:
        value = values.get(param.name)
        if param.name in drop or value is None:
            continue
        is_argument = param.param_type_name == "argument"
        source = context.get_parameter_source(param.name)
        if not is_argument and getattr(source, "name", "") not in ("COMMANDLINE", "ENVIRONMENT"):
            continue
        name = param.name.upper() if is_argument else _long_name(param.opts)
        texts = [_as_text(name, v, warnings) for v in (value if isinstance(value, (list, tuple)) else [value])]
        if is_argument:
            arguments.extend(texts)
        elif param.is_flag:
            flags = param.opts if value else param.secondary_opts
            if flags:
                options.append(_long_name(flags))
        else:
            for text in texts:
                options.extend([name, text])
    return argv + arguments + options, warnings


def _long_name(opts: list[str]) -> str:
    return max(opts, key=len)


def _as_text(name: str, value, warnings: list[str]) -> str:
    """A parameter value as command-line text; a local path made absolute, with a warning."""
    if isinstance(value, Enum):
        return str(value.value)
    if not isinstance(value, (str, Path)):
        return str(value)
    text = str(value)
    looks_like_path = isinstance(value, Path) or os.sep in text or os.path.exists(text)
    if "://" in text or not looks_like_path:
        return text
    absolute = os.path.abspath(text)
    warnings.append(
        f"{name} {text} is a path on this machine: submitted as {absolute}, which every node of the cluster must see "
        "(a shared file system); use s3:// for cluster jobs"
    )
    return absolute


def submit(address: str, argv: list[str], *, wait: bool = True) -> int:
    """Submit `argv` as a Ray Job; with `wait`, stream its logs and return its exit code."""
    client = job_client(address)
    entrypoint = shlex.join(argv)
    # The command's own words (`ingest coco`, `annotate`): not its arguments, whose paths and URLs
    # (`s3://...`) are no part of a job id, which Ray also uses in a log file name.
    subcommand = len(argv) > 2 and re.fullmatch(r"[a-z][a-z0-9-]*", argv[2]) is not None
    name = "-".join(argv[1:3] if subcommand else argv[1:2])
    submission_id = f"pose-jobs-{name}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
    job_id = _calling(
        address,
        lambda: client.submit_job(
            entrypoint=entrypoint,
            submission_id=submission_id,
            runtime_env={"env_vars": dict(JOB_ENV)},
            metadata={"submitted_by": "pose-jobs"},
        ),
    )
    print(f"pose-jobs: submitted {job_id} to {address}: {entrypoint}", file=sys.stderr, flush=True)
    if not wait:
        print(job_id)
        return 0
    try:
        follow_logs(client, job_id)
        info = wait_for_end(client, job_id)
    except KeyboardInterrupt:
        print(
            f"\npose-jobs: stopped following {job_id}; it keeps running "
            f"(pose-jobs jobs stop {job_id} --address {address})",
            file=sys.stderr,
        )
        return 130
    return report_end(info)


def follow_logs(client, job_id: str) -> None:
    """Print the job's logs as they come, until the job ends."""

    async def tail():
        async for chunk in client.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    try:
        asyncio.run(tail())
    except RuntimeError as error:  # the log stream dropped: the job may still end normally
        print(f"pose-jobs: log stream of {job_id} ended early ({error}); waiting for the job", file=sys.stderr)


def wait_for_end(client, job_id: str, poll_s: float = 1.0):
    while True:
        info = client.get_job_info(job_id)
        if str(info.status) in TERMINAL or getattr(info.status, "value", None) in TERMINAL:
            return info
        time.sleep(poll_s)


def exit_code(info) -> int:
    """The job's exit code as `pose-jobs` exits with it: its driver's, or 1 when it has none."""
    status = getattr(info.status, "value", str(info.status))
    if status == "SUCCEEDED":
        return 0
    return info.driver_exit_code if info.driver_exit_code not in (None, 0) else 1


def report_end(info) -> int:
    status = getattr(info.status, "value", str(info.status))
    code = exit_code(info)
    if code:
        print(
            f"pose-jobs: job {info.submission_id} {status} (exit code {code})"
            f"{': ' + info.message if info.message else ''}",
            file=sys.stderr,
        )
    return code


# ------------------------------------------------------------------------------------------------
# Managing jobs


def list_jobs(address: str) -> list:
    """The cluster's jobs, oldest first."""
    client = job_client(address)
    return sorted(_calling(address, client.list_jobs), key=lambda job: job.start_time or 0)


def job_info(address: str, job_id: str):
    client = job_client(address)
    return _calling(address, client.get_job_info, job_id)


def job_logs(address: str, job_id: str, follow: bool = False) -> int:
    """Print a job's logs; with `follow`, until it ends, and return its exit code."""
    client = job_client(address)
    if not follow:
        sys.stdout.write(_calling(address, client.get_job_logs, job_id))
        return 0
    _calling(address, client.get_job_info, job_id)  # an unknown id is one line, not a websocket error
    follow_logs(client, job_id)
    return report_end(wait_for_end(client, job_id))


def stop_job(address: str, job_id: str) -> bool:
    """Ask the cluster to stop a job; False if it had already ended."""
    client = job_client(address)
    return _calling(address, client.stop_job, job_id)


def format_time(milliseconds: int | None) -> str:
    if not milliseconds:
        return "-"
    return datetime.fromtimestamp(milliseconds / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
