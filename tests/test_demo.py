"""`pose-jobs demo` end to end on the smallest sizes that exercise every stage: the wiring between
the stages (paths, run folders, pictures), which no other test runs as a whole."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from jobs.demo import DemoSizes, run_demo


@pytest.mark.timeout(900)
def test_demo_runs_every_stage_and_sums_it_up(ray_cluster, tmp_path):
    tiny = replace(
        DemoSizes.quick(), coco_train=20, coco_val=4, svhn_train=400, svhn_test=100, svhn_numbers=8, svhn_epochs=1
    )
    summary = dict(run_demo(tmp_path / "demo", tiny))

    assert "every input accounted for" in summary["coco tables"] and "images 24" in summary["coco tables"]
    assert "every input accounted for" in summary["svhn tables"] and "numbers 10" in summary["svhn tables"]
    assert re.fullmatch(r"test accuracy [01]\.\d{4} on 10\d digits after 1 epochs \(\d+ s\)", summary["svhn"])
    assert summary["keypoints"].startswith("val PCK ") and "after 1 epochs" in summary["keypoints"]
    assert summary["detector"].startswith("val person box AP ")
    assert "4 images annotated, 0 errors of 4 listed" in summary["annotate"]

    out = tmp_path / "demo"
    for name in ("svhn", "keypoints", "detector"):
        run = out / "runs" / name
        assert (run / "model.pt").is_file() and (run / "metrics.jsonl").is_file() and (run / "curves.png").is_file()
    pictures = sorted(p.name for p in (out / "pictures").glob("*.png"))
    assert any(name.startswith("svhn-") for name in pictures) and any(name.startswith("coco-") for name in pictures)
    assert len(pictures) >= 6, pictures
    assert len(list((out / "annotated" / "pictures").glob("*.png"))) == 4
    assert (out / "annotated" / "results" / "keypoints.json").is_file()
    assert f"{len(pictures)} PNGs in" in summary["pictures"]


def test_quick_sizes_are_smaller_than_the_defaults():
    quick, full = DemoSizes.quick(), DemoSizes()
    assert all(getattr(quick, k) <= getattr(full, k) for k in vars(full))
    assert quick != full
