"""A real multi-node Ray cluster for the tests: `ray start --head` plus `ray start --address` worker
nodes, all on 127.0.0.1 on this machine.

Every port a node listens on is a free one picked at start (GCS, dashboard, node manager, object
manager, agents, metrics, Ray Client; workers take random ports), never Ray's defaults, so the
cluster never collides with another Ray on the same machine. Each node is one `ray start --block`
in its own session (process group): stopping or killing a node is a signal to that group, by
process id, and touches nothing else. Token authentication is on, with the cluster's own token
in a file (`RAY_AUTH_TOKEN_PATH`), never ~/.ray/auth_token.

Usage:

    with RayTestCluster(root, env=s3.env()) as cluster:
        cluster.start_head(num_cpus=2)
        worker = cluster.add_node(num_cpus=2, resources={"side": 1})
        cluster.dashboard_url      # "http://127.0.0.1:PORT", for the Jobs API
        cluster.client_env()       # the variables a client needs (the token), for subprocesses
        cluster.kill_node(worker)  # SIGKILL to the node's process group: a node lost
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
from s3server import free_ports

START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0


@dataclass
class RayNode:
    name: str
    process: subprocess.Popen
    log_path: Path
    node_id: str = ""
    resources: dict = field(default_factory=dict)


class RayTestCluster:
    """A head node and worker nodes started with `ray start`, stopped by their process groups."""

    def __init__(self, root: Path, env: dict[str, str] | None = None):
        self.root = Path(root)
        # Unix socket paths must stay under ~100 characters: a short temp dir of our own.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="pj-ray-", dir="/tmp"))
        self.token = secrets.token_hex(32)
        self.token_path = self.root / "auth_token"
        self.extra_env = dict(env or {})
        self.nodes: list[RayNode] = []
        self.gcs_address = ""
        self.dashboard_url = ""

    def client_env(self) -> dict[str, str]:
        """Variables for a client of this cluster: token authentication and the token file."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path), "RAY_USAGE_STATS_ENABLED": "0"}

    def node_env(self) -> dict[str, str]:
        """The environment of every node process: this Python's bin/ first on PATH (so that
        `pose-jobs` and `ray` resolve to this venv), this checkout importable, the token, and the
        extra variables (the S3 server's credentials)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
        env.update(self.client_env())
        env.update(self.extra_env)
        return env

    def start_head(self, num_cpus: int, resources: dict | None = None) -> RayNode:
        self.root.mkdir(parents=True, exist_ok=True)
        self.token_path.write_text(self.token)
        gcs, dashboard, client = free_ports(3)
        self.gcs_address = f"127.0.0.1:{gcs}"
        self.dashboard_url = f"http://127.0.0.1:{dashboard}"
        head_flags = [
            "--head",
            f"--port={gcs}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            f"--ray-client-server-port={client}",
            f"--temp-dir={self.temp_dir}",
            "--disable-usage-stats",
        ]
        node = self._start("head", head_flags, num_cpus, resources)
        atexit.register(self.stop)
        return node

    def add_node(self, num_cpus: int, resources: dict | None = None, name: str | None = None) -> RayNode:
        return self._start(name or f"worker{len(self.nodes)}", [f"--address={self.gcs_address}"], num_cpus, resources)

    def _start(self, name: str, flags: list[str], num_cpus: int, resources: dict | None) -> RayNode:
        """Start a node; up to twice more if `ray start` gave up waiting for its raylet to register.

        Ray waits a fixed 30 s for that (`ray._private.node`); on a loaded 2-core machine a
        worker node's raylet can take longer, and that says nothing about the code under test."""
        attempts = 3
        for attempt in range(1, attempts + 1):
            try:
                return self._start_once(name, flags, num_cpus, resources)
            except RuntimeError as error:
                node = self.nodes[-1] if self.nodes and self.nodes[-1].name == name else None
                if attempt == attempts or node is None or "timed out during startup" not in str(error):
                    raise
                self._signal_group(node, signal.SIGKILL)
                node.process.wait()
                self.nodes.remove(node)

    def _start_once(self, name: str, flags: list[str], num_cpus: int, resources: dict | None) -> RayNode:
        node_manager, object_manager, agent_http, agent_grpc, runtime_env_agent, metrics = free_ports(6)
        command = [
            str(Path(sys.executable).with_name("ray")),
            "start",
            "--block",
            *flags,
            "--node-ip-address=127.0.0.1",
            f"--num-cpus={num_cpus}",
            "--num-gpus=0",
            f"--resources={json.dumps({**(resources or {}), f'pj_{name}': 1})}",
            "--object-store-memory=100000000",
            f"--node-manager-port={node_manager}",
            f"--object-manager-port={object_manager}",
            f"--dashboard-agent-listen-port={agent_http}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={runtime_env_agent}",
            f"--metrics-export-port={metrics}",
            "--min-worker-port=0",
            "--max-worker-port=0",
        ]
        log_path = self.root / f"{name}.log"
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(
                command,
                env=self.node_env(),
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped or killed as one
            )
        node = RayNode(name, process, log_path, resources={**(resources or {}), f"pj_{name}": 1})
        self.nodes.append(node)
        node.node_id = self._wait_for_node(node)
        return node

    def get(self, path: str, **params):
        """GET a dashboard endpoint with the cluster's token; the decoded JSON."""
        response = requests.get(
            f"{self.dashboard_url}{path}", params=params, headers={"Authorization": f"Bearer {self.token}"}, timeout=10
        )
        response.raise_for_status()
        return response.json()

    def alive_nodes(self) -> list[dict]:
        """The cluster's alive nodes as the state API lists them (node_id, resources_total, ...)."""
        nodes = self.get("/api/v0/nodes", detail="1", limit="100")["data"]["result"]["result"]
        return [n for n in nodes if n["state"] == "ALIVE"]

    def _wait_for_node(self, node: RayNode) -> str:
        deadline = time.monotonic() + START_TIMEOUT_S
        marker = f"pj_{node.name}"
        while True:
            if node.process.poll() is not None:
                raise RuntimeError(
                    f"ray start for {node.name} exited with {node.process.returncode}; see {node.log_path}:\n"
                    f"{node.log_path.read_text()[-3000:]}"
                )
            try:
                for entry in self.alive_nodes():
                    if marker in entry.get("resources_total", {}):
                        return entry["node_id"]
            except (requests.RequestException, KeyError, ValueError):
                pass  # dashboard not up yet
            if time.monotonic() > deadline:
                raise RuntimeError(f"Ray node {node.name} not up after {START_TIMEOUT_S:.0f}s; see {node.log_path}")
            time.sleep(1.0)

    def kill_node(self, node: RayNode) -> None:
        """Lose a node the hard way: SIGKILL to every process of its group (raylet, workers, agents)."""
        self._signal_group(node, signal.SIGKILL)
        node.process.wait()
        self.nodes.remove(node)

    def stop(self) -> None:
        """Stop every node, worker nodes first: SIGTERM to its process group, SIGKILL if it lingers."""
        for node in reversed(self.nodes):
            self._signal_group(node, signal.SIGTERM)
            try:
                node.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
            self._signal_group(node, signal.SIGKILL)  # whatever of the group is left
            node.process.wait()
        self.nodes = []
        shutil.rmtree(self.temp_dir, ignore_errors=True)  # sessions, logs, sockets

    @staticmethod
    def _signal_group(node: RayNode, sig: int) -> None:
        try:
            os.killpg(node.process.pid, sig)  # the group id is the pid of `ray start` (new session)
        except ProcessLookupError:
            pass

    def __enter__(self) -> RayTestCluster:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()
