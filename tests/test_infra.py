"""infra/: every file parses, every `pose-jobs ...` command it runs exists in the CLI with those
options, versions match pyproject.toml, and no credentials are written down."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import tomllib
import typer.main
import yaml

from jobs.cli import app

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
YAML_FILES = sorted(INFRA.rglob("*.yaml"))
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def pin(package: str) -> str:
    """The exact version pyproject.toml pins `package` to."""
    for requirement in PYPROJECT["project"]["dependencies"]:
        match = re.fullmatch(rf"{re.escape(package)}(\[[^\]]*\])?==([\w.]+)", requirement)
        if match:
            return match.group(2)
    raise AssertionError(f"pyproject.toml does not pin {package}")


def dockerfile_args() -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)$", (INFRA / "Dockerfile").read_text(), flags=re.MULTILINE))


def documents() -> list[tuple[Path, dict]]:
    return [(path, document) for path in YAML_FILES for document in yaml.safe_load_all(path.read_text()) if document]


def pose_jobs_commands() -> list[tuple[Path, list[str]]]:
    """Every `pose-jobs ...` command line in infra/ (RayJob entrypoints, launcher commands)."""
    found = []

    def walk(path, node):
        if isinstance(node, dict):
            for value in node.values():
                walk(path, value)
        elif isinstance(node, list):
            for value in node:
                walk(path, value)
        elif isinstance(node, str) and node.strip().startswith("pose-jobs "):
            found.append((path, shlex.split(node)))

    for path, document in documents():
        walk(path, document)
    return found


def test_every_file_parses():
    assert YAML_FILES and (INFRA / "Dockerfile").is_file()
    assert {d["kind"] for _, d in documents() if "kind" in d} >= {"RayCluster", "RayJob", "ServiceAccount"}
    instructions = {"FROM", "ARG", "ENV", "RUN", "COPY", "WORKDIR", "USER"}
    text = (INFRA / "Dockerfile").read_text().replace("\\\n", " ")
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            assert line.split()[0] in instructions, line


def test_aws_launcher_config_is_valid_for_ray():
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = yaml.safe_load((INFRA / "aws" / "cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    assert config["available_node_types"][config["head_node_type"]]["resources"] == {"CPU": 0}
    workers = [t for name, t in config["available_node_types"].items() if name != config["head_node_type"]]
    assert any(
        t["node_config"]["InstanceType"].startswith(("g", "p")) and t["max_workers"] > t["min_workers"] for t in workers
    )
    assert all("IamInstanceProfile" in t["node_config"] for t in config["available_node_types"].values())
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        assert any("RAY_AUTH_MODE=token ray start" in c for c in commands)


def test_kuberay_cluster_and_jobs():
    by_kind: dict[str, list[dict]] = {}
    for _, document in documents():
        by_kind.setdefault(document.get("kind"), []).append(document)
    [cluster] = by_kind["RayCluster"]
    assert cluster["spec"]["enableInTreeAutoscaling"] is True
    gpu_groups = [
        g
        for g in cluster["spec"]["workerGroupSpecs"]
        if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]
    ]
    assert gpu_groups and gpu_groups[0]["maxReplicas"] >= 4
    for container in [cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]] + [
        g["template"]["spec"]["containers"][0] for g in cluster["spec"]["workerGroupSpecs"]
    ]:
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token" and "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]
    entrypoints = {
        shlex.split(job["spec"]["entrypoint"])[1]: shlex.split(job["spec"]["entrypoint"]) for job in by_kind["RayJob"]
    }
    train = entrypoints["train-keypoints"]
    assert train[train.index("--workers") + 1] == "4"
    annotate = entrypoints["annotate"]
    assert (
        all(arg.startswith("s3://") for arg in annotate[2:4]) and "--detector" in annotate and "--keypoints" in annotate
    )
    for job in by_kind["RayJob"]:
        assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}


@pytest.mark.parametrize(
    "path, argv", pose_jobs_commands(), ids=lambda value: value.name if isinstance(value, Path) else " ".join(value[:2])
)
def test_commands_exist_with_their_options(path, argv):
    command = typer.main.get_command(app)
    words = argv[1:]
    while hasattr(command, "commands") and words and words[0] in command.commands:
        command = command.commands[words.pop(0)]
    assert not hasattr(command, "commands"), (
        f"{path.relative_to(ROOT)}: `pose-jobs {' '.join(argv[1:3])}` is not a command of the CLI"
    )
    options = {}
    for param in command.params:
        for opt in [*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])]:
            options[opt] = param
    arguments = [p for p in command.params if p.param_type_name == "argument"]
    positional = []
    while words:
        word = words.pop(0)
        if word.startswith("--"):
            name = word.split("=", 1)[0]
            assert name in options, f"{path.relative_to(ROOT)}: pose-jobs {command.name} has no option {name}"
            if not options[name].is_flag and "=" not in word:
                words.pop(0)
        else:
            positional.append(word)
    assert len(positional) == len(arguments), (
        f"{path.relative_to(ROOT)}: pose-jobs {command.name} takes {len(arguments)} arguments, given {positional}"
    )
    required = {p.name for p in command.params if p.required and p.param_type_name == "option"}
    given = {options[w.split("=", 1)[0]].name for w in argv if w.split("=", 1)[0] in options}
    assert required <= given, f"{path.relative_to(ROOT)}: pose-jobs {command.name} needs {sorted(required - given)}"


def test_versions_match_pyproject():
    args = dockerfile_args()
    assert args["RAY_VERSION"] == pin("ray")
    assert args["TORCH_VERSION"] == pin("torch")
    assert args["TORCHVISION_VERSION"] == pin("torchvision")
    minimum = re.fullmatch(r">=(\d+)\.(\d+)", PYPROJECT["project"]["requires-python"])
    assert tuple(int(v) for v in args["PYTHON_VERSION"].split(".")) >= (int(minimum.group(1)), int(minimum.group(2)))
    assert args["CUDA_IMAGE"].startswith("nvidia/cuda:")

    version = PYPROJECT["project"]["version"]
    images = re.findall(r"^\s*image: (\S+)", "\n".join(path.read_text() for path in YAML_FILES), flags=re.MULTILINE)
    assert images and all(image.endswith(f"/pose-jobs:{version}") for image in images), images
    [cluster] = [d for _, d in documents() if d.get("kind") == "RayCluster"]
    assert cluster["spec"]["rayVersion"] == pin("ray")


def test_no_credentials_in_files():
    for path in [*YAML_FILES, INFRA / "Dockerfile"]:
        text = path.read_text()
        assert not re.search(r"AKIA[0-9A-Z]{16}", text), path
        assert not re.search(r"(?i)aws_secret_access_key|aws_access_key_id|aws_session_token", text), path
        assert not re.search(r"(?i)RAY_AUTH_TOKEN\s*[:=]\s*['\"]?\w{16,}", text), path
