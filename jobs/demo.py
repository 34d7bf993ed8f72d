"""`pose-jobs demo`: the main job on the embedded default (local Ray, local storage, synthetic data).

synthesise -> ingest -> pictures, with a summary of what was made and where.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import typer


@dataclass(frozen=True)
class DemoSizes:
    coco_train: int = 200
    coco_val: int = 50
    svhn_train: int = 4000
    svhn_test: int = 1000
    svhn_numbers: int = 100

    @classmethod
    def quick(cls) -> "DemoSizes":
        return cls(coco_train=40, coco_val=12, svhn_train=600, svhn_test=200, svhn_numbers=20)


def run_demo(out: Path, sizes: DemoSizes = DemoSizes(), *, address: str | None = None, verbose: bool = False) -> list[tuple[str, str]]:
    """Run every stage into `out`; returns (figure, value) rows for the summary."""
    from jobs.ingest import ingest
    from jobs.show import show_coco, show_svhn
    from pose.synth.digits import write_svhn
    from pose.synth.people import write_coco

    out.mkdir(parents=True, exist_ok=True)
    summary: list[tuple[str, str]] = []

    def stage(name: str):
        typer.echo(f"== {name}", err=True)
        return time.perf_counter()

    started = stage("synthesise COCO people and SVHN digits")
    coco_src, svhn_src = out / "coco-src", out / "svhn-src"
    if not (coco_src / "annotations" / "person_keypoints_val2017.json").exists():
        write_coco(coco_src, split="train", images=sizes.coco_train, seed=0)
        write_coco(coco_src, split="val", images=sizes.coco_val, seed=1)
    if not (svhn_src / "test" / "digitStruct.mat").exists():
        write_svhn(svhn_src, format="cropped", seed=0, train=sizes.svhn_train, test=sizes.svhn_test)
        write_svhn(svhn_src, format="full", seed=1, train=sizes.svhn_numbers, test=sizes.svhn_numbers // 4)
    summary.append(("synthesise", f"{time.perf_counter() - started:.1f} s"))

    started = stage("ingest COCO and SVHN into Parquet (Ray Data)")
    coco_manifest = ingest("coco", str(coco_src), str(out / "coco"), address=address, verbose=verbose)
    svhn_manifest = ingest("svhn", str(svhn_src), str(out / "svhn"), address=address, verbose=verbose)
    summary.append(("ingest", f"{time.perf_counter() - started:.1f} s"))
    for name, manifest in (("coco", coco_manifest), ("svhn", svhn_manifest)):
        rows = ", ".join(f"{table} {entry['rows']}" for table, entry in sorted(manifest["tables"].items()))
        balanced = all(entry["balanced"] for entry in manifest["accounting"].values())
        summary.append((f"{name} tables", f"{rows} ({'every input accounted for' if balanced else 'NOT BALANCED'})"))

    stage("pictures")
    pictures = out / "pictures"
    written = show_coco(str(out / "coco"), pictures, split="val", images=3)
    written += show_svhn(str(out / "svhn"), pictures, digits=100, numbers=6)
    summary.append(("pictures", f"{len(written)} PNGs in {pictures}"))
    return summary
