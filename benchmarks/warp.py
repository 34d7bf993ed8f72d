"""Milliseconds per `pose.geometry.warp_affine_opencv` call, against the step-by-step version it replaced.

The baseline is `reference_warp` from tests/test_warp.py (the test's oracle: the same pixels). Each
case warps a random image into a top-down crop as the training feed does; "mirrored" is the flipped
view of `pose.augment.reference_sample`: the baseline needs the contiguous copy (counted), the fast
warp reads `image[:, ::-1]` in place. Calls alternate between the two versions, and each figure is
the median over --repeats calls of wall time and of the thread's CPU time (the latter is steadier on
a shared machine).

    .venv/bin/python benchmarks/warp.py [--repeats 40]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from _measure import medians, wall_and_cpu_ms

from pose.geometry import crop_affine, warp_affine_opencv

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_warp import reference_warp  # noqa: E402

# (name, image (w, h), crop (w, h), box centre as a fraction of the image, box height in pixels, rotation, mirrored)
CASES = [
    ("640x480 -> 192x256", (640, 480), (192, 256), (0.5, 0.5), 200, 0.0, False),
    ("640x480 -> 192x256 rotated 30", (640, 480), (192, 256), (0.5, 0.5), 200, 30.0, False),
    ("640x480 -> 192x256 mirrored, rotated", (640, 480), (192, 256), (0.5, 0.5), 200, -25.0, True),
    ("640x480 -> 192x256 at the border", (640, 480), (192, 256), (0.95, 0.1), 300, 15.0, False),
    ("640x480 -> 288x384 rotated 30", (640, 480), (288, 384), (0.5, 0.5), 400, 30.0, False),
    ("1280x720 -> 192x256 whole height", (1280, 720), (192, 256), (0.5, 0.5), 720, 0.0, False),
    ("160x120 -> 48x64", (160, 120), (48, 64), (0.5, 0.5), 100, 10.0, False),
]


def baseline(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int], mirrored: bool) -> np.ndarray:
    return reference_warp(np.ascontiguousarray(image[:, ::-1]) if mirrored else image, matrix, size)


def fast(image: np.ndarray, matrix: np.ndarray, size: tuple[int, int], mirrored: bool) -> np.ndarray:
    return warp_affine_opencv(image[:, ::-1] if mirrored else image, matrix, size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'case':40s} {'baseline wall / cpu ms':>24s} {'fast wall / cpu ms':>20s} {'cpu speed-up':>13s}")
    for name, (width, height), size, (fx, fy), box_h, rotation, mirrored in CASES:
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        centre = np.array([fx * width, fy * height])
        matrix = crop_affine(centre, np.array([box_h * size[0] / size[1], box_h]), size, rotation_deg=rotation)
        assert np.array_equal(fast(image, matrix, size, mirrored), baseline(image, matrix, size, mirrored))
        samples: dict = {baseline: [], fast: []}
        for _ in range(args.repeats):
            for warp in (baseline, fast):
                samples[warp].append(wall_and_cpu_ms(warp, image, matrix, size, mirrored))
        ms = {warp: medians(samples[warp]) for warp in (baseline, fast)}
        print(
            f"{name:40s} {ms[baseline][0]:11.2f} / {ms[baseline][1]:6.2f}      {ms[fast][0]:8.2f} / {ms[fast][1]:6.2f}"
            f" {ms[baseline][1] / ms[fast][1]:12.1f}x"
        )


if __name__ == "__main__":
    main()
