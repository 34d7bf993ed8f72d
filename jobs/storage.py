"""Where bytes live: a local path or an `s3://bucket/prefix` URL, behind one small API.

Every job reads and writes through these functions, so the same code runs on a local folder, on
the S3 test server and on AWS S3, chosen purely by configuration. Credentials never travel with
the code: each process (the driver and every Ray worker) resolves them itself through botocore's
standard chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, instance roles, ...).
Only the non-secret settings travel, in `StorageOptions`.

A mistake the user can fix (missing bucket, wrong credentials, unreachable endpoint, missing
folder, full disk, read-only file system) surfaces as a `StorageError` whose message is one line
naming the URL and the fix; all translation from botocore / s3fs / OSError exceptions happens in
`_user_errors`. Storage that keeps failing on its side (5xx past the retry window) is a
`StorageUnavailable`, also one line.

Transient S3 failures (connection refused or reset, timeouts, 5xx, SlowDown) are retried with
exponential backoff for up to `StorageOptions.retry_seconds` per request, in one place: every S3
request of every process (reads, writes, listings, deletes, and pyarrow's reads through
`pyarrow_filesystem`) goes through `_PatientS3FileSystem._call_s3`. The setting travels to Ray
workers inside `StorageOptions`, so a short outage or a server restart does not end a job.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import random
import re
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import botocore.exceptions
import botocore.parsers
import fsspec
import fsspec.asyn
import pyarrow as pa
import pyarrow.fs
import pyarrow.parquet as pq
import s3fs
from fsspec.implementations.local import LocalFileSystem

from pose.errors import UserError

S3_PREFIX = "s3://"
# Range-read size for open_input on S3: big enough for throughput, small enough that a Parquet
# footer or a JPEG header does not pull s3fs's default 50 MiB.
DEFAULT_BLOCK_SIZE = 8 * 2**20
# Name of the probe object check_writable puts (and deletes) under an S3 prefix.
WRITE_PROBE_NAME = ".pose-jobs-write-check"
# How long one S3 request keeps retrying transient failures: long enough to ride out a server
# restart or a short outage, short enough that a dead endpoint ends the job within minutes.
DEFAULT_RETRY_SECONDS = 120.0
# Backoff between retries: doubling from the first, never longer than the last (plus jitter).
RETRY_FIRST_WAIT_S = 0.5
RETRY_LONGEST_WAIT_S = 10.0


class StorageError(UserError):
    """A storage problem the user can fix. The message is one line: the URL, what is wrong, the fix."""


class StorageUnavailable(StorageError):
    """Storage kept failing on its side (5xx, SlowDown) for the whole retry window: one line, but
    not the user's mistake; a re-run resumes."""

    exit_code = 1


@dataclass(frozen=True)
class StorageOptions:
    """Non-secret S3 settings. Picklable and shipped to Ray workers; ignored for local paths."""

    endpoint_url: str | None = None  # None: AWS_ENDPOINT_URL if set, else AWS S3 itself
    anon: bool = False  # unsigned requests, for public buckets (COCO's, for one)
    region: str | None = None  # None: AWS_REGION, else botocore's AWS_DEFAULT_REGION / profile
    retry_seconds: float = DEFAULT_RETRY_SECONDS  # per request: how long transient S3 failures are retried

    def resolved_endpoint_url(self) -> str | None:
        return self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None

    def resolved_region(self) -> str | None:
        return self.region or os.environ.get("AWS_REGION") or None


def is_s3(url: str) -> bool:
    return url.startswith(S3_PREFIX)


def absolute(url: str) -> str:
    """An s3:// URL as is; a local path made absolute, because Ray workers do not share the
    driver's working directory (Ray Train workers run in their own)."""
    return url if is_s3(url) else os.path.abspath(url)


def join(url: str, *parts: str) -> str:
    """Append path parts: `join("s3://b/x", "y", "z.parquet") == "s3://b/x/y/z.parquet"`.

    S3 URLs always join with "/" (slashes around parts are dropped); local paths use os.path.join.
    """
    if not is_s3(url):
        return os.path.join(url, *parts)
    pieces = [url.rstrip("/")] + [part.strip("/") for part in parts]
    return "/".join(piece for piece in pieces if piece)


# One s3fs instance per (options, process, AWS_* environment). Per process because an s3fs
# client owns an event loop and sockets that must not cross a fork into a Ray worker; per AWS_*
# environment so that a changed profile or rotated key takes effect instead of being hidden by a
# cached client.
_s3_filesystems: dict[tuple, s3fs.S3FileSystem] = {}


class _PatientS3FileSystem(s3fs.S3FileSystem):
    """s3fs whose every S3 request retries transient failures for up to `retry_seconds`.

    s3fs and botocore already retry a few times within about two seconds; that rides out a
    dropped connection or one SlowDown, not a server restart. `_call_s3` is the one method every
    s3fs request goes through (listings page by page, reads by range, PUTs, multipart parts,
    deletes), so waiting here covers all of them. A retried request is a whole S3 call, so it
    is safe: GET/HEAD/LIST read, PUT replaces the whole object, DELETE of a deleted key succeeds.
    `retry_seconds` is a constructor argument, so it survives pickling into Ray workers.
    """

    def __init__(self, *args, retry_seconds: float = DEFAULT_RETRY_SECONDS, **kwargs):
        super().__init__(*args, **kwargs)
        self.retry_seconds = retry_seconds

    async def _call_s3(self, method, *akwarglist, **kwargs):
        deadline = time.monotonic() + self.retry_seconds
        wait = RETRY_FIRST_WAIT_S
        while True:
            try:
                return await super()._call_s3(method, *akwarglist, **kwargs)
            except Exception as exc:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not is_transient(exc):
                    raise
                await asyncio.sleep(min(wait * random.uniform(0.5, 1.0), remaining))
                wait = min(2 * wait, RETRY_LONGEST_WAIT_S)

    # s3fs binds its public `call_s3` to its own `_call_s3` at class creation: rebind it to the patient one.
    call_s3 = fsspec.asyn.sync_wrapper(_call_s3)


# S3 error codes that mean "not now": worth retrying whatever the HTTP status says.
_RETRYABLE_CODES = {
    "SlowDown",
    "ServiceUnavailable",
    "InternalError",
    "RequestTimeout",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "503",
    "500",
    "502",
    "504",
}


def is_transient(exc: BaseException | None) -> bool:
    """Whether an S3 failure may go away by itself: no connection (refused, reset, closed, timed
    out) or the service answering 5xx / SlowDown. Follows the exception's causes, because s3fs
    re-raises botocore's errors as OSError with the original as cause."""
    seen = 0
    while exc is not None and seen < 16:
        if isinstance(exc, botocore.exceptions.ClientError):
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            return status >= 500 or status == 429 or exc.response.get("Error", {}).get("Code") in _RETRYABLE_CODES
        if isinstance(
            exc, (FileNotFoundError, PermissionError, FileExistsError, botocore.exceptions.NoCredentialsError)
        ):
            return False
        if isinstance(
            exc,
            (
                botocore.exceptions.ConnectionError,  # refused, endpoint unreachable, connect timeout
                botocore.exceptions.HTTPClientError,  # closed mid-response, read timeout
                botocore.parsers.ResponseParserError,  # a cut-off response body
                ConnectionError,  # the builtin: refused, reset, aborted, broken pipe
                TimeoutError,
                socket.timeout,
                asyncio.TimeoutError,
                fsspec.exceptions.FSTimeoutError,
            ),
        ) or _is_aiohttp_error(exc):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _is_aiohttp_error(exc: BaseException) -> bool:
    try:
        import aiohttp
    except ImportError:  # pragma: no cover - aiobotocore depends on it
        return False
    return isinstance(exc, aiohttp.ClientError)


def _s3_filesystem(options: StorageOptions) -> s3fs.S3FileSystem:
    aws_environment = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))
    key = (options, os.getpid(), aws_environment)
    if key not in _s3_filesystems:
        region = options.resolved_region()
        _s3_filesystems[key] = _PatientS3FileSystem(
            retry_seconds=options.retry_seconds,
            anon=options.anon,
            endpoint_url=options.resolved_endpoint_url(),
            client_kwargs={"region_name": region} if region else {},
            # Ray workers write under prefixes this process may have listed already: never
            # answer a listing from a stale cache.
            use_listings_cache=False,
            skip_instance_cache=True,  # cached here instead, with the environment in the key
        )
    return _s3_filesystems[key]


def filesystem(url: str, options: StorageOptions = StorageOptions()) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem holding `url` and the path to pass to it.

    S3: (S3FileSystem, "bucket/key"); local: (LocalFileSystem, absolute path).
    """
    if is_s3(url):
        return _s3_filesystem(options), url[len(S3_PREFIX) :].rstrip("/")
    return LocalFileSystem(), os.path.abspath(url)


def pyarrow_filesystem(url: str, options: StorageOptions = StorageOptions()) -> tuple[pyarrow.fs.FileSystem, str]:
    """A pyarrow filesystem and path for pyarrow.dataset and Ray Data readers and writers.

    S3 goes through the same s3fs instance as everything else here (wrapped in FSSpecHandler)
    rather than pyarrow's own S3FileSystem: one credential chain (botocore's, profiles and SSO
    included), bucket regions found automatically, the same endpoint/anon handling and the same
    error messages. It pickles without secrets (s3fs pickles its constructor arguments and each
    worker resolves credentials itself). The price is Python-level I/O, slower than Arrow's C++
    client on very large scans.
    """
    if is_s3(url):
        fs, path = filesystem(url, options)
        return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs)), path
    return pyarrow.fs.LocalFileSystem(), os.path.abspath(url)


def open_input(url: str, options: StorageOptions = StorageOptions(), block_size: int = DEFAULT_BLOCK_SIZE) -> BinaryIO:
    """Open `url` for binary reading. Seekable; on S3 it reads by HTTP range, `block_size` bytes at a time.

    Errors while opening become StorageErrors; errors in later reads come through as they are.
    """
    fs, path = filesystem(url, options)
    with _user_errors(url, options):
        if is_s3(url):
            return fs.open(path, "rb", block_size=block_size)
        return open(path, "rb")


def read_bytes(url: str, options: StorageOptions = StorageOptions()) -> bytes:
    """The whole content of `url`."""
    fs, path = filesystem(url, options)
    with _user_errors(url, options):
        return fs.cat_file(path)


def write_bytes_atomic(url: str, data: bytes, options: StorageOptions = StorageOptions()) -> None:
    """Write `data` to `url` so that readers see either nothing or the whole file.

    Local: a temporary file in the same folder (folders are created), then os.replace.
    S3: a single PUT; an object only becomes visible once complete. (s3fs switches to a multipart
    upload above 100 MiB, which also appears only on completion.)
    """
    fs, path = filesystem(url, options)
    with _user_errors(url, options):
        if is_s3(url):
            fs.pipe_file(path, data)
        else:
            with _local_temporary_file(path) as temporary_path:
                with open(temporary_path, "wb") as f:
                    f.write(data)


def write_parquet_atomic(
    table: pa.Table, url: str, options: StorageOptions = StorageOptions(), **parquet_kwargs
) -> None:
    """Write `table` as one Parquet file at `url`, atomically as in write_bytes_atomic (zstd by default)."""
    parquet_kwargs.setdefault("compression", "zstd")
    if is_s3(url):
        # Serialised in memory and sent in one PUT: a streamed multipart upload would be
        # committed by s3fs even if writing failed half-way.
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, **parquet_kwargs)
        write_bytes_atomic(url, sink.getvalue().to_pybytes(), options)
        return
    with _user_errors(url, options), _local_temporary_file(os.path.abspath(url)) as temporary_path:
        pq.write_table(table, temporary_path, **parquet_kwargs)


@contextlib.contextmanager
def open_output_atomic(url: str, options: StorageOptions = StorageOptions()) -> Iterator[BinaryIO]:
    """A binary file to stream a large output into, visible at `url` only once whole.

    Local: a temporary file next to `url`, renamed on success. S3: a local temporary file,
    uploaded on success (s3fs's multipart upload of a big file appears only when complete). On an
    exception nothing is written at `url`.
    """
    import tempfile

    fs, path = filesystem(url, options)
    if is_s3(url):
        with tempfile.TemporaryDirectory(prefix="pose-jobs-upload-") as folder:
            spool = os.path.join(folder, "upload")
            with open(spool, "wb") as handle:
                yield handle
            with _user_errors(url, options):
                fs.put_file(spool, path)
        return
    with _user_errors(url, options), _local_temporary_file(path) as temporary_path:
        with open(temporary_path, "wb") as handle:
            yield handle


def exists(url: str, options: StorageOptions = StorageOptions()) -> bool:
    """Whether `url` is an existing file or folder (on S3: an object, a prefix of objects or a bucket)."""
    fs, path = filesystem(url, options)
    with _user_errors(url, options):
        return fs.exists(path)


def list_files(
    url: str,
    options: StorageOptions = StorageOptions(),
    suffixes: tuple[str, ...] | None = None,
    recursive: bool = True,
) -> list[str]:
    """Files under the folder or prefix `url`, as full URLs (s3://...) or absolute local paths, sorted.

    `suffixes` (e.g. (".jpg", ".png")) match case-insensitively. A missing local folder is an
    error; an S3 prefix with no objects under it simply has no files.
    """
    fs, path = filesystem(url, options)
    with _user_errors(url, options):
        if not is_s3(url) and not os.path.exists(path):
            raise FileNotFoundError(path)
        paths = fs.find(path, maxdepth=None if recursive else 1)
    if suffixes is not None:
        lowered = tuple(suffix.lower() for suffix in suffixes)
        paths = [p for p in paths if p.lower().endswith(lowered)]
    prefix = S3_PREFIX if is_s3(url) else ""
    return sorted(prefix + p for p in paths)


def check_readable(url: str, options: StorageOptions = StorageOptions()) -> None:
    """Raise StorageError unless `url` (a file or folder; on S3 an object, prefix or bucket) can be read."""
    fs, path = filesystem(url, options)
    with _user_errors(url, options):
        if is_s3(url):
            bucket, _, key = path.partition("/")
            # A GET listing, unlike a HEAD request, says why it failed (NoSuchBucket, AccessDenied).
            listing = fs.call_s3("list_objects_v2", Bucket=bucket, Prefix=key, MaxKeys=1)
            if key and listing.get("KeyCount", 0) == 0:
                raise FileNotFoundError(url)
        else:
            if not os.path.exists(path):
                raise FileNotFoundError(path)
            if not os.access(path, os.R_OK):
                raise PermissionError(path)


def check_writable(url: str, options: StorageOptions = StorageOptions()) -> None:
    """Raise StorageError unless files can be written under the output folder or prefix `url`.

    S3 has no "may I write" query, so this puts and deletes a small probe object under the
    prefix. Locally nothing is created: the nearest existing folder must be writable.
    """
    fs, path = filesystem(url, options)
    with _user_errors(url, options):
        if is_s3(url):
            probe = join(path, WRITE_PROBE_NAME)
            fs.pipe_file(probe, b"")
            # Writing is what was asked; an identity that may write but not delete still passes
            # (and leaves the empty probe behind).
            with contextlib.suppress(PermissionError):
                fs.rm_file(probe)
            return
        existing = path
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            raise NotADirectoryError(existing)
        # os.access says "no" on a read-only mount too; tell the two apart for the message.
        if os.statvfs(existing).f_flag & os.ST_RDONLY:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), existing)
        if not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(existing)


# A local temporary file is `.{name}.{uuid}-{pid}@{host}.tmp`: the writer's process and machine, so
# that a run removes the temporaries of writers that died (a killed run's) and never those of a run
# still writing into the same folder. Temporaries of another machine (a shared file system) cannot be
# checked and are removed once older than STALE_TEMPORARY_S.
STALE_TEMPORARY_S = 6 * 3600
_TEMPORARY_NAME = re.compile(r"^\..+\.(?P<uuid>[0-9a-f]{32})(?:-(?P<pid>\d+)@(?P<host>[A-Za-z0-9_-]+))?\.tmp$")


def _this_host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_temporaries(url: str, now: float | None = None) -> int:
    """Delete the temporary files that dead writers (a killed run's) left under the local folder
    `url` (S3 writes leave none); returns how many. Temporaries of live writers, such as another
    run writing into the same folder now, are left alone."""
    if is_s3(url) or not os.path.isdir(url):
        return 0
    now = time.time() if now is None else now
    host, removed = _this_host(), 0
    for folder, _, names in os.walk(url):
        for name in names:
            match = _TEMPORARY_NAME.match(name)
            if match is None:
                continue
            path, stale = os.path.join(folder, name), False
            if match["pid"] is not None and match["host"] == host:
                stale = not _process_alive(int(match["pid"]))
            else:  # another machine's, or written before temporaries named their writer
                with contextlib.suppress(FileNotFoundError):
                    stale = now - os.path.getmtime(path) > STALE_TEMPORARY_S
            if stale:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
                    removed += 1
    return removed


@contextlib.contextmanager
def _local_temporary_file(path: str) -> Iterator[str]:
    """Yield a temporary path next to `path`; on success it replaces `path`, on failure it is removed."""
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    # A fresh name rather than tempfile.mkstemp, whose 0600 mode would stick to the final file.
    temporary_path = os.path.join(folder, f".{name}.{uuid.uuid4().hex}-{os.getpid()}@{_this_host()}.tmp")
    try:
        yield temporary_path
        os.replace(temporary_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary_path)
        raise


def _s3_error_code(exc: BaseException | None) -> str | None:
    """The S3 error code ("NoSuchBucket", "AccessDenied", ...) behind an s3fs or botocore exception."""
    while exc is not None:
        if isinstance(exc, botocore.exceptions.ClientError):
            return exc.response.get("Error", {}).get("Code")
        exc = exc.__cause__ or exc.__context__
    return None


_ACCESS_DENIED_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"}
_CREDENTIALS_FIX = "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or use --anon for a public bucket"


def _problem_and_fix(exc: Exception, url: str, options: StorageOptions) -> str | None:
    """What went wrong and how to fix it, for exceptions a user can fix; None for anything else (a bug)."""
    if not is_s3(url):
        if isinstance(exc, FileNotFoundError):
            return "no such file or directory"
        if isinstance(exc, PermissionError):
            return "permission denied"
        if isinstance(exc, NotADirectoryError):
            return "a part of this path is a file, not a directory"
        if isinstance(exc, IsADirectoryError):
            return "is a directory, not a file"
        return _disk_problem(exc)

    code = _s3_error_code(exc)
    if code == "NoSuchBucket":
        bucket = url[len(S3_PREFIX) :].split("/", 1)[0]
        return f"bucket '{bucket}' does not exist (check the name, or create it)"
    if code in _ACCESS_DENIED_CODES or isinstance(exc, PermissionError):
        if options.anon:
            return "access denied to anonymous requests (not a public bucket: drop --anon and set AWS credentials)"
        return f"access denied with the configured credentials ({_CREDENTIALS_FIX})"
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return f"no AWS credentials found ({_CREDENTIALS_FIX})"
    if isinstance(exc, botocore.exceptions.ProfileNotFound):
        return f"AWS profile '{exc.kwargs.get('profile')}' not found (check AWS_PROFILE and ~/.aws/config)"
    if is_transient(exc):
        endpoint = options.resolved_endpoint_url() or "the AWS S3 endpoint"
        if code is None:  # no answer at all
            return (
                f"cannot reach endpoint {endpoint} after retrying for {options.retry_seconds:g} s "
                "(check --endpoint-url / AWS_ENDPOINT_URL, or wait longer with --storage-retry-seconds; "
                "a re-run resumes)"
            )
        return (
            f"{endpoint} kept answering {code} for {options.retry_seconds:g} s "
            "(wait longer with --storage-retry-seconds; a re-run resumes)"
        )
    if isinstance(exc, FileNotFoundError):
        return "no such object or prefix"
    return _disk_problem(exc)


def _disk_problem(exc: Exception) -> str | None:
    """The local-disk errors a user can fix (a full disk, a read-only mount), else None.

    S3 writes spool through local temporary files too, so these apply to s3:// URLs as well."""
    if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on device (free some space, or write elsewhere; a re-run resumes)"
    if getattr(exc, "errno", None) == errno.EROFS:
        return "read-only file system (choose a writable destination)"
    return None


@contextlib.contextmanager
def _user_errors(url: str, options: StorageOptions) -> Iterator[None]:
    """Re-raise the storage exceptions a user can fix as a one-line StorageError naming `url`.

    The message is built from the error code and type only, never from the exception's text, so
    no credential or signature can leak into it.
    """
    try:
        yield
    except (OSError, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        problem_and_fix = _problem_and_fix(exc, url, options)
        if problem_and_fix is None:
            raise
        unavailable = is_s3(url) and is_transient(exc) and _s3_error_code(exc) is not None
        raise (StorageUnavailable if unavailable else StorageError)(f"{url}: {problem_and_fix}") from exc
