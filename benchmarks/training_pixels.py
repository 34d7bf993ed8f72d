"""How often a reference's augmented training view needs pixels that a stored person crop lacks.

For synthetic COCO people (`pose.synth.people.render_scene`, training annotations: not crowd, at
least one labelled joint), each reference augmentation (Simple Baselines, HRNet, MMPose td-hm) is
drawn with `pose.augment.sample_release` / `sample_mmpose`, and the input region of each view (its
four corners mapped back to the image) is tested against two sources:

- before: the stored person crop, 288x384 around the box grown to 3:4, padded x1.25 and by the
  margin 1.5 (`pose.crops.CropSettings`), which the CPU recipe warps again;
- after: the original image, which the references warp once.

A view "runs off" a source when any corner lies outside its pixels' extent ([-0.5, W - 0.5] x
[-0.5, H - 0.5]); there the warp reads zeros. Running off the image happens in the references too
(persons at the border, rotated and zoomed-out views: any corner counts); "crop only" is the share
of views that run off the stored crop while the image has the pixels: what the crops cut away.

    .venv/bin/python benchmarks/training_pixels.py [--scenes 40] [--views 20] [--seed 0]

About 20-40 s with the defaults on 2 CPU cores (rendering the scenes dominates).
"""

from __future__ import annotations

import argparse
import functools
import time

import numpy as np

from pose.augment import (
    HRNET_AUGMENT,
    SIMPLE_BASELINES_AUGMENT,
    MMPoseAugment,
    mmpose_center_scale,
    release_center_scale,
    sample_mmpose,
    sample_release,
)
from pose.crops import CropSettings
from pose.geometry import apply_affine, box_to_center_size, crop_affine, invert_affine
from pose.synth.people import render_scene
from pose.topdown import CropConvention

INPUT_SIZE = (192, 256)  # (w, h), the 256x192 configs
SCENE_SIZE = (640, 480)


def input_corners(crop: CropConvention, params) -> np.ndarray:
    """The input's four outer corners (4, 2) in image coordinates (original, unflipped)."""
    w, h = crop.input_size
    warp = crop.matrices(params.center, params.scale, params.rotation_deg)[0]
    if params.flip:  # the matrix cuts the mirrored image; mirror its corners back
        warp = warp @ np.array([[-1.0, 0.0, SCENE_SIZE[0] - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    return apply_affine(
        np.array([[-0.5, -0.5], [w - 0.5, -0.5], [-0.5, h - 0.5], [w - 0.5, h - 0.5]]), invert_affine(warp)
    )


def outside(points: np.ndarray, width: float, height: float) -> bool:
    return bool(((points < -0.5) | (points > np.array([width, height]) - 0.5)).any())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scenes", type=int, default=40)
    parser.add_argument("--views", type=int, default=20, help="augmented views per person and reference")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    people = []
    for _ in range(args.scenes):
        _, annotations = render_scene(rng, *SCENE_SIZE)
        people += [
            (np.array(a["bbox"], float), np.array(a["keypoints"], float).reshape(17, 3))
            for a in annotations
            if not a["iscrowd"] and a["num_keypoints"] > 0
        ]
    settings = CropSettings()
    aspect = INPUT_SIZE[0] / INPUT_SIZE[1]
    references = {
        "Simple Baselines": (CropConvention(INPUT_SIZE, centring="release"), SIMPLE_BASELINES_AUGMENT),
        "HRNet": (CropConvention(INPUT_SIZE, centring="release"), HRNET_AUGMENT),
        "MMPose td-hm": (CropConvention(INPUT_SIZE, centring="mmpose"), MMPoseAugment()),
    }
    print(
        f"{len(people)} persons in {args.scenes} scenes of {SCENE_SIZE[0]}x{SCENE_SIZE[1]}, "
        f"{args.views} views each per reference"
    )
    print(
        f"{'reference':<18} {'views':>7} {'off the stored crop (before)':>30} "
        f"{'off the image (after)':>23} {'crop only':>10}"
    )
    for name, (crop, config) in references.items():
        off_crop = off_image = crop_only = views = 0
        for box, keypoints in people:
            center, size = box_to_center_size(box, settings.aspect_ratio, settings.padding)
            crop_from_image = crop_affine(center, size * settings.margin, (settings.width, settings.height))
            if isinstance(config, MMPoseAugment):
                c, s = mmpose_center_scale(box, SCENE_SIZE)
                draw = functools.partial(sample_mmpose, rng, keypoints, c, s, SCENE_SIZE[0], config, aspect)
            else:
                cs = release_center_scale(box, SCENE_SIZE, aspect)
                if cs is None:
                    continue
                draw = functools.partial(sample_release, rng, keypoints, *cs, SCENE_SIZE[0], config, aspect)
            for _ in range(args.views):
                corners = input_corners(crop, draw())
                lacks, off = (
                    outside(apply_affine(corners, crop_from_image), settings.width, settings.height),
                    outside(corners, *SCENE_SIZE),
                )
                off_crop, off_image, crop_only = off_crop + lacks, off_image + off, crop_only + (lacks and not off)
                views += 1
        print(
            f"{name:<18} {views:>7} {100 * off_crop / views:>29.1f}% {100 * off_image / views:>22.1f}% "
            f"{100 * crop_only / views:>9.1f}%"
        )
    print(f"({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
