"""The command line as a user meets it, through typer's CliRunner in this process: every
registered command answers --help, an option name means the same thing in every command, the
commands marked @submittable are the ones a dashboard --address submits, and a user mistake is
one line with exit code 2."""

from __future__ import annotations

import enum
import typing

import pytest
import typer
import typer.main
from typer.testing import CliRunner

import jobs.submit
from jobs.cli import app

# Option names whose help legitimately differs between commands, and why. Every other option
# that several commands take must read the same everywhere (declare it once in jobs/cli.py).
MEANS_PER_COMMAND = {
    "--address": "job commands join or submit; eval-* only submit; the jobs group only talks to a dashboard",
    "--data": "ingested SVHN for the digit commands, ingested COCO for the others",
    "--model": "each eval-* command reads the run folder of its own train-* command",
    "--out": "a run folder for train-*, a local folder for demo",
    "--split": "SVHN's splits for eval-svhn, COCO's elsewhere; ingest coco takes several",
    "--seed": "the bytes synth writes, the weights and data order train-* uses",
    "--images": "how many synth coco writes, how many show coco draws",
    "--keypoints": "annotate takes any keypoint model, demo a published file",
    "--detector": "eval-keypoints and annotate take a detector, demo a published file",
    "--precision": "training and annotation choose bf16 differently on GPUs",
    "--shard-size": "ingest counts items, annotate images",
    "--epochs": "train-svhn's is a minimum (see --min-steps); the others' replace the recipe's",
    "--batch-size": "train-svhn has its own default; the others default to the recipe's",
    "--lr": "train-svhn's is given at a batch of 256; the others' replace the recipe's",
}


def command_paths(typer_app: typer.Typer, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group registered on `typer_app`, as the words that invoke it."""
    paths = [prefix] if prefix else []
    for info in typer_app.registered_commands:
        paths.append((*prefix, info.name or info.callback.__name__.replace("_", "-")))
    for group in typer_app.registered_groups:
        paths.extend(command_paths(group.typer_instance, (*prefix, group.name)))
    return paths


COMMANDS = command_paths(app)


def leaf_commands() -> dict[str, object]:
    """Each command (not group) of the built click app, by its words: 'ingest coco' -> command."""
    found = {}

    def walk(command, words):
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                walk(sub, (*words, name))
        else:
            found[" ".join(words)] = command

    walk(typer.main.get_command(app), ())
    return found


def option_kind(param) -> str:
    """The type of an option's value: a choice, int, str, ..., one value or several alike."""
    annotation = param.type_descriptor.annotation
    if typing.get_origin(annotation) is list:
        (annotation,) = typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return "choice"
    return "flag" if param.is_flag else getattr(annotation, "__name__", str(annotation))


def options_by_name() -> dict[str, list[tuple[str, object]]]:
    found: dict[str, list[tuple[str, object]]] = {}
    for words, command in leaf_commands().items():
        for param in command.params:
            if param.param_type_name == "option":
                found.setdefault(max(param.opts, key=len), []).append((words, param))
    return found


def test_the_registered_commands_are_the_built_ones():
    """The walk over registered commands and groups misses none that typer builds."""
    built = set(leaf_commands())
    listed = {" ".join(words) for words in COMMANDS}
    assert built <= listed and {"ingest coco", "jobs logs", "eval-keypoints", "demo"} <= built


@pytest.mark.parametrize("words", [(), *COMMANDS], ids=lambda words: " ".join(words) or "pose-jobs")
def test_every_command_answers_help(words):
    result = CliRunner().invoke(app, [*words, "--help"], prog_name="pose-jobs")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: pose-jobs {' '.join(words)}".rstrip()), result.output
    assert "Traceback" not in result.output


def test_an_option_name_has_one_type_and_one_help():
    for name, uses in options_by_name().items():
        kinds = {option_kind(param) for _, param in uses}
        assert len(kinds) == 1, f"{name} is {kinds} in {[words for words, _ in uses]}"
        helps = {param.help for _, param in uses}
        assert all(helps), f"{name} has no help in {[words for words, p in uses if not p.help]}"
        if name not in MEANS_PER_COMMAND:
            assert len(helps) == 1, f"{name} reads differently in {[words for words, _ in uses]}: {helps}"


def test_path_options_take_s3_where_the_command_writes_them():
    """An option that names something to read or write is a string (local or s3://), never a
    local-only Path, except demo's --out (the demo writes locally)."""
    for name in ("--data", "--model", "--results", "--pictures", "--boxes", "--detector", "--keypoints", "--out"):
        for words, param in options_by_name()[name]:
            assert option_kind(param) == "str", f"{words} {name}"
    pictures = [param.help for _, param in options_by_name()["--pictures"]]
    assert all("s3://" in text for text in pictures)


def test_submittable_commands_are_the_job_commands():
    """--no-wait comes with @submittable; the jobs group has --address (the dashboard to ask) but
    never submits; commands that use no Ray at all (synth, show) take no --address."""
    commands = leaf_commands()
    submittable = {words for words, c in commands.items() if any("--no-wait" in p.opts for p in c.params)}
    assert submittable == {
        "ingest coco",
        "ingest svhn",
        "train-svhn",
        "eval-svhn",
        "train-keypoints",
        "eval-keypoints",
        "train-detector",
        "eval-detector",
        "annotate",
        "demo",
    }
    for words, command in commands.items():
        has_address = any("--address" in p.opts for p in command.params)
        assert has_address == (words in submittable or words.startswith("jobs ")), words


def test_eval_submits_to_a_dashboard_and_runs_here_otherwise(monkeypatch, tmp_path):
    """eval-svhn takes --address only to be submitted; inside a job RAY_ADDRESS holds the GCS
    address, and the command then runs here (a missing --model is then its one-line error)."""
    submitted = {}
    monkeypatch.setattr(jobs.submit, "submit", lambda address, argv, wait: submitted.update(argv=argv) or 0)
    args = ["eval-svhn", "--data", "s3://b/svhn", "--model", "s3://b/runs/svhn", "--split", "train"]
    result = CliRunner().invoke(app, [*args, "--address", "http://head:8265"])
    assert result.exit_code == 0, result.output
    assert submitted["argv"] == ["pose-jobs", *args]

    submitted.clear()
    local = ["eval-svhn", "--data", str(tmp_path / "svhn"), "--model", str(tmp_path / "no-run")]
    result = CliRunner().invoke(app, local, env={"RAY_ADDRESS": "10.0.0.1:6379"})
    assert not submitted and result.exit_code == 2, result.output
    assert result.stderr.startswith("pose-jobs: error: ") and result.stderr.count("\n") == 1, result.stderr


def test_show_with_nothing_to_draw_is_one_line(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(app, ["show", "coco", str(empty), str(tmp_path / "pictures"), "--split", "val"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert "no annotations for split 'val'" in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize(
    "text, words",
    [("not json", "not a JSON file"), ('{"image_id": 1}', "expected a COCO box results list"), (None, "not both")],
    ids=["not-json", "not-a-list", "with-detector"],
)
def test_eval_keypoints_box_mistakes_are_one_line(tmp_path, text, words):
    boxes = tmp_path / "boxes.json"
    boxes.write_text(text or "[]")
    args = ["eval-keypoints", "--data", str(tmp_path / "coco"), "--model", str(tmp_path / "run"), "--boxes", str(boxes)]
    if text is None:
        args += ["--detector", str(tmp_path / "detector.pth")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and words in result.stderr and "Traceback" not in result.output, result.output
