"""Golden training augmentation of the frameworks: their own sampling and crop code, run in scratch.

Saves three kinds of files under tests/data/goldens/ (format: tools/README.md):

- `augment_boxes.npz`: three persons on one 320x240 image, their COCO boxes and keypoints, and the
  centre/scale each framework's dataset gives them for training (the releases' COCODataset
  `_load_coco_keypoint_annotation_kernal` with its clean-bbox rule and `_box2cs`; MMPose's
  `BaseCocoStyleDataset.parse_data_info` and `GetBBoxCenterScale`).
- `augment_stats_<family>.npz` (family: simple_baselines, hrnet, mmpose): each person's training
  augmentation drawn DRAWS times by the framework's own code (the releases'
  `JointsDataset.__getitem__` with is_train, MMPose's RandomFlip, RandomHalfBody,
  RandomBBoxTransform and TopdownAffine), stored as empirical CDFs of centre, scale and rotation
  at 99 quantile points, and the rates of flip, half body, upper half and rotation.
- `augment_crops_<family>.npz` (family: release, mmpose, udp): a dozen draws of the same code on
  a synthetic image, with the parameters it drew (centre, scale, rotation, flip) and what it cut:
  the input pixels and the keypoints in input pixels.

The releases' random streams (`random`, `np.random`) and MMPose's (`np.random`, scipy's truncnorm)
are seeded; pose-jobs' samplers use another generator, so tests compare distributions, and
compare the crops exactly for the drawn parameters.

Scratch environment as for tools/make_pose_goldens.py (MMPose sources, /tmp/mmdeps with OpenCV,
the two releases cloned under /tmp/orig), plus scipy for truncnorm, and NumPy 1.26: the frameworks
were written for NumPy 1.x, whose value-based casting decides where their arithmetic is float32
(NumPy 2 computes the releases' scale and MMPose's UDP matrix in other precisions):

    .venv/bin/python -m pip install --no-deps --target /tmp/mmdeps scipy && rm -rf /tmp/mmdeps/numpy*
    .venv/bin/python -m pip install --no-deps --target /tmp/np1 'numpy==1.26.4'
    PYTHONPATH=/tmp/np1:/tmp/mmdeps:/tmp/origdeps:/tmp/mmref/src .venv/bin/python tools/make_augment_goldens.py

About 2 minutes on 2 CPU cores.
"""

from __future__ import annotations

import copy
import random
import sys
import types
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tools"), str(REPO / "tests")]

# make_pose_goldens imports tests/published.py (NumPy 2 pickling helpers) for its weights; nothing
# here needs them, and that module does not load under NumPy 1.26.
sys.modules.setdefault("published", types.ModuleType("published"))
from make_pose_goldens import MMPOSE_SRC, RELEASES, install_import_stubs, release_lib  # noqa: E402

OUT = REPO / "tests" / "data" / "goldens"
HSV_GRID_S = np.r_[np.arange(0, 256, 5), 255]
HSV_GRID_V = np.array([0, 1, 2, 37, 100, 128, 199, 254, 255])
MMDET_SRC = Path(__import__("os").environ.get("MMDET_SRC", "/tmp/mmref/mmdet"))
WIDTH, HEIGHT = 320, 240
DRAWS = int(__import__("os").environ.get("AUGMENT_DRAWS", 20_000))
CROP_SIZE = (72, 96)  # (w, h) of the exactness crops: small files, the same code as at 192x256
STATS_SIZE = (192, 256)  # the configs' input, whose aspect ratio the samplers use
QUANTILES = np.linspace(0.01, 0.99, 99)


def persons() -> tuple[np.ndarray, np.ndarray]:
    """Three persons: boxes (3, 4) COCO [x, y, w, h] and keypoints (3, 17, 3) (x, y, v).

    0: all 17 joints labelled (half body possible, either half); 1: only the 11 upper-body joints
    (half body always the upper half); 2: 8 joints, its box past the right border (no half body,
    the clean-bbox clipping)."""
    layout = np.array(
        [
            (0, 10),
            (6, 5),
            (-6, 5),
            (12, 8),
            (-12, 8),
            (25, 40),
            (-25, 40),
            (35, 70),
            (-35, 70),
            (40, 95),
            (-40, 95),
            (15, 100),
            (-15, 100),
            (18, 150),
            (-18, 150),
            (20, 185),
            (-20, 185),
        ],
        float,
    )
    boxes = np.array([[100.0, 30.0, 90.0, 190.0], [20.0, 60.0, 70.5, 110.0], [262.0, 70.0, 80.0, 150.0]])
    keypoints = np.zeros((3, 17, 3))
    keypoints[0, :, :2] = layout + (145, 30)
    keypoints[0, :, 2] = 2
    keypoints[0, 3, 2] = 1
    keypoints[1, :11, :2] = layout[:11] * 0.6 + (55.5, 62)
    keypoints[1, :11, 2] = 2
    kept = [0, 5, 6, 9, 11, 12, 13, 15]
    keypoints[2, kept, :2] = layout[kept] * 0.7 + (300, 72)
    keypoints[2, kept, 2] = 2
    return boxes, keypoints


def synthetic_image() -> np.ndarray:
    """(240, 320, 3) uint8: smooth stripes and rings, so that bilinear sampling shows in every pixel."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    r = np.hypot(x - 150, y - 110)
    return np.stack(
        [127 + 120 * np.sin(x / 7.0 + y / 23.0), 127 + 120 * np.cos(r / 5.0), (x * 0.6 + y * 0.3) % 256], axis=-1
    ).astype(np.uint8)


def annotation(box: np.ndarray, keypoints: np.ndarray, index: int) -> dict:
    return {
        "bbox": [float(v) for v in box],
        "keypoints": [float(v) for v in keypoints.reshape(-1)],
        "area": float(box[2] * box[3]),
        "num_keypoints": int((keypoints[:, 2] > 0).sum()),
        "image_id": 1,
        "id": index + 1,
        "category_id": 1,
        "iscrowd": 0,
    }


# ---- the releases ---------------------------------------------------------------------------------


class _ReleaseRun:
    """The release's COCODataset records and JointsDataset.__getitem__ on a stub dataset object:
    the image comes from memory, everything else is the release's code."""

    def __init__(self, root: Path, experiment: str, image: np.ndarray, input_size: tuple[int, int]):
        np.float = float  # the 2018 code's np.float (removed in NumPy 1.24) is Python's float
        import dataset.JointsDataset as joints_module
        from dataset.coco import COCODataset
        from dataset.JointsDataset import JointsDataset

        if (root / "lib" / "config" / "default.py").exists():  # HRNet: yacs
            from config import cfg as default_cfg
            from config import update_config

            cfg = default_cfg.clone()
            update_config(
                cfg, types.SimpleNamespace(cfg=str(root / experiment), opts=[], modelDir="", logDir="", dataDir="")
            )
        else:  # Simple Baselines: easydict
            from core.config import config as cfg
            from core.config import update_config

            update_config(str(root / experiment))
        self.dataset_cfg = cfg.DATASET
        self.joints_module, self.image = joints_module, image
        stub = object.__new__(COCODataset)
        JointsDataset.__init__(stub, cfg, "", "train2017", True, None)
        stub.num_joints, stub.flip_pairs = 17, [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [11, 12], [13, 14], [15, 16]]
        stub.upper_body_ids, stub.lower_body_ids = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10), (11, 12, 13, 14, 15, 16)
        stub.joints_weight = np.ones((17, 1), np.float32)
        stub.image_size = np.array(input_size)
        stub.heatmap_size = np.array(input_size) // 4
        stub.image_width, stub.image_height = input_size
        stub.aspect_ratio = input_size[0] * 1.0 / input_size[1]
        stub.color_rgb = False  # the image is handed over as it is; the warp is per channel
        stub.data_format = "jpg"
        self.stub = stub
        # Record the flips and the half-body boxes the code takes.
        self.flipped, self.half = False, None
        original_flip, original_half = joints_module.fliplr_joints, getattr(COCODataset, "half_body_transform", None)

        def recording_flip(*args, **kwargs):
            self.flipped = True
            return original_flip(*args, **kwargs)

        def recording_half(ds, joints, joints_vis):
            center, scale = original_half(ds, joints, joints_vis)
            self.half = None if center is None else center.copy()  # __getitem__ mirrors c in place afterwards
            return center, scale

        joints_module.fliplr_joints = recording_flip
        if hasattr(COCODataset, "half_body_transform"):
            stub.half_body_transform = types.MethodType(recording_half, stub)
        joints_module.cv2 = types.SimpleNamespace(
            **{k: getattr(joints_module.cv2, k) for k in dir(joints_module.cv2) if k.isupper()},
            imread=lambda *a, **k: self.image.copy(),
            warpAffine=joints_module.cv2.warpAffine,
            cvtColor=joints_module.cv2.cvtColor,
        )

    def records(self, boxes: np.ndarray, keypoints: np.ndarray) -> list[dict]:
        """The release's training records of the persons (`_load_coco_keypoint_annotation_kernal`)."""
        anns = [annotation(b, k, i) for i, (b, k) in enumerate(zip(boxes, keypoints))]
        stub = self.stub
        stub.coco = types.SimpleNamespace(
            loadImgs=lambda i: [{"width": WIDTH, "height": HEIGHT}],
            getAnnIds=lambda imgIds, iscrowd: list(range(len(anns))),
            loadAnns=lambda ids: [copy.deepcopy(anns[i]) for i in ids],
        )
        stub._coco_ind_to_class_ind = {1: 1}
        stub.image_path_from_index = lambda index: "memory.jpg"
        return stub._load_coco_keypoint_annotation_kernal(1)

    def draw(self, record: dict) -> dict:
        self.flipped, self.half = False, None
        self.stub.db = [record]
        image, _, _, meta = self.stub[0]
        upper = self.half is not None and np.allclose(
            self.half, record["joints_3d"][:11][record["joints_3d_vis"][:11, 0] > 0, :2].astype(np.float32).mean(0)
        )
        return {
            "center": np.asarray(meta["center"], np.float64),
            "scale": np.asarray(meta["scale"], np.float32) * np.float32(200),
            "rotation": float(meta["rotation"]),
            "flip": self.flipped,
            "half": self.half is not None,
            "upper": bool(upper),
            "image": image,
            "keypoints": meta["joints"][:, :2].astype(np.float32),
            "visible": meta["joints_vis"][:, 0].astype(np.float32),
        }


# ---- MMPose ---------------------------------------------------------------------------------------


class _MMPoseRun:
    """MMPose's parse_data_info, GetBBoxCenterScale, RandomFlip, RandomHalfBody,
    RandomBBoxTransform and TopdownAffine, one instance at a time."""

    def __init__(self, image: np.ndarray, input_size: tuple[int, int], use_udp: bool):
        from mmpose.datasets.datasets.base.base_coco_style_dataset import BaseCocoStyleDataset
        from mmpose.datasets.datasets.utils import parse_pose_metainfo
        from mmpose.datasets.transforms import (
            GetBBoxCenterScale,
            RandomBBoxTransform,
            RandomFlip,
            RandomHalfBody,
            TopdownAffine,
        )

        self.metainfo = parse_pose_metainfo(
            {"from_file": str(MMPOSE_SRC / "mmpose/.mim/configs/_base_/datasets/coco.py")}
        )
        self.parse = BaseCocoStyleDataset.parse_data_info
        self.center_scale = GetBBoxCenterScale()
        self.flip, self.half, self.bbox = RandomFlip(direction="horizontal"), RandomHalfBody(), RandomBBoxTransform()
        self.affine = TopdownAffine(input_size=input_size, use_udp=use_udp)
        self.image = image

    def info(self, box: np.ndarray, keypoints: np.ndarray) -> dict:
        raw = {
            "raw_ann_info": annotation(box, keypoints, 0),
            "raw_img_info": {"width": WIDTH, "height": HEIGHT, "img_path": ""},
        }
        info = self.parse(None, raw)
        info.update(
            flip_indices=self.metainfo["flip_indices"],
            upper_body_ids=self.metainfo["upper_body_ids"],
            lower_body_ids=self.metainfo["lower_body_ids"],
        )
        return self.center_scale(info)

    def draw(self, info: dict, image: np.ndarray) -> dict:
        results = copy.deepcopy(info)
        results.update(img=image, img_shape=(HEIGHT, WIDTH))
        results = self.flip(results)
        before = results["bbox_center"].copy()
        results = self.half(results)
        half = not np.array_equal(before, results["bbox_center"])
        visible = results["keypoints_visible"][0] > 0
        upper_ids = [i for i in self.metainfo["upper_body_ids"] if visible[i]]
        upper = half and np.array_equal(results["bbox_center"][0], results["keypoints"][0][upper_ids].mean(axis=0))
        results = self.affine(self.bbox(results))
        return {
            "center": results["input_center"].astype(np.float64),
            "scale": results["input_scale"].astype(np.float64),
            "rotation": float(results["bbox_rotation"][0]),
            "flip": bool(results["flip"]),
            "half": half,
            "upper": bool(upper),
            "image": results["img"],
            "keypoints": results["transformed_keypoints"][0, :, :2].astype(np.float32),
            "visible": results["keypoints_visible"][0].astype(np.float32),
        }


# ---- the files ------------------------------------------------------------------------------------


def statistics(draws: list[dict]) -> dict[str, np.ndarray]:
    """(points (5, 99), cdf (5, 99)) of centre x, y, scale w, h and rotation, and the rates."""
    values = np.array([[*d["center"], *d["scale"], d["rotation"]] for d in draws])
    points = np.quantile(values, QUANTILES, axis=0).T
    cdf = np.array([(values[:, i][None, :] <= points[i][:, None]).mean(axis=1) for i in range(values.shape[1])])
    half = np.array([d["half"] for d in draws])
    upper = np.array([d["upper"] for d in draws])
    return {
        "points": points,
        "cdf": cdf,
        "flip_rate": np.mean([d["flip"] for d in draws]),
        "half_rate": half.mean(),
        "upper_share": upper[half].mean() if half.any() else np.float64(np.nan),
        "rotation_rate": np.mean([d["rotation"] != 0 for d in draws]),
        "draws": np.int64(len(draws)),
    }


def mmdet_yolox_hsv():
    """mmdet 3.3.0's `YOLOXHSVRandomAug` class, its source executed on its own: importing its module would pull in
    mmdet's detection stack, which this transform does not use (it needs numpy, cv2 and mmcv's BaseTransform)."""
    import ast

    import cv2
    from mmcv.transforms import BaseTransform
    from mmcv.transforms.utils import cache_randomness

    source = (MMDET_SRC / "mmdet/datasets/transforms/transforms.py").read_text()
    [node] = [n for n in ast.parse(source).body if isinstance(n, ast.ClassDef) and n.name == "YOLOXHSVRandomAug"]
    node.decorator_list = []  # TRANSFORMS.register_module()
    namespace = {"np": np, "cv2": cv2, "BaseTransform": BaseTransform, "cache_randomness": cache_randomness}
    exec(
        compile(ast.Module(body=[node], type_ignores=[]), "mmdet/datasets/transforms/transforms.py", "exec"), namespace
    )  # noqa: S102
    return namespace["YOLOXHSVRandomAug"]


def rtmpose_pixels() -> dict[str, np.ndarray]:
    """augment_rtmpose.npz: the pixel steps of RTMPose's train pipelines by their own code on small crops, and
    their sampling. Images are given to mmdet as BGR (MMPose's LoadImage) and stored as RGB."""
    import albumentations
    import cv2

    rng = np.random.default_rng(5)
    # random crops, plus a smooth one (gradients, greys, saturated colours: the HSV conversion's special cases)
    images = rng.integers(0, 256, (4, 24, 20, 3), np.uint8)
    yy, xx = np.mgrid[0:24, 0:20]
    images[3] = np.stack([xx * 13, yy * 11, (xx + yy) * 6], -1).clip(0, 255).astype(np.uint8)
    images[3, :4] = images[3, :4, :, :1]  # greys: saturation 0
    images[3, 4:6] = [[255, 0, 0]] * 20
    out: dict[str, np.ndarray] = {"images": images}

    hsv = mmdet_yolox_hsv()()
    np.random.seed(0)
    gains, shifted = [], []
    for _ in range(6):
        for image in images:
            state = np.random.get_state()
            gains.append(
                hsv._get_hsv_gains.__wrapped__(hsv)
                if hasattr(hsv._get_hsv_gains, "__wrapped__")
                else hsv._get_hsv_gains()
            )
            np.random.set_state(state)
            result = hsv.transform({"img": np.ascontiguousarray(image[..., ::-1])})
            shifted.append(result["img"][..., ::-1])
    out["hsv_gains"], out["hsv_images"] = np.array(gains, np.int64), np.stack(shifted)
    out["hsv_round_trip"] = np.stack(
        [cv2.cvtColor(cv2.cvtColor(i, cv2.COLOR_RGB2HSV), cv2.COLOR_HSV2RGB) for i in images]
    )
    out["hsv_of_images"] = np.stack([cv2.cvtColor(i, cv2.COLOR_RGB2HSV) for i in images])
    # every hue, saturations in steps of 5, a few values (the grid itself is rebuilt by the test: HSV_GRID)
    grid = (
        np.stack(np.meshgrid(np.arange(180), HSV_GRID_S, HSV_GRID_V, indexing="ij"), -1)
        .reshape(-1, 1, 3)
        .astype(np.uint8)
    )
    out["rgb_of_hsv_grid"] = cv2.cvtColor(grid, cv2.COLOR_HSV2RGB)[:, 0]
    for k in (3, 5, 7):
        out[f"blur_{k}"] = np.stack([albumentations.Blur(blur_limit=(k, k), p=1.0)(image=i)["image"] for i in images])
        out[f"median_{k}"] = np.stack(
            [albumentations.MedianBlur(blur_limit=(k, k), p=1.0)(image=i)["image"] for i in images]
        )

    # sampling, DRAWS each: the gains, the albumentations steps of stage 1 (CoarseDropout p=1) on a 192x256 crop
    np.random.seed(1)
    draws = np.array(
        [
            hsv._get_hsv_gains.__wrapped__(hsv) if hasattr(hsv._get_hsv_gains, "__wrapped__") else hsv._get_hsv_gains()
            for _ in range(DRAWS)
        ]
    )
    out["gains_draws"] = draws.astype(np.int8)
    random.seed(2)
    crop = np.zeros((256, 192, 3), np.uint8)
    blur, median = albumentations.Blur(p=0.1), albumentations.MedianBlur(p=0.1)
    dropout = albumentations.CoarseDropout(
        max_holes=1, max_height=0.4, max_width=0.4, min_holes=1, min_height=0.2, min_width=0.2, p=1.0
    )
    out["blur_kernels"] = np.array([blur.get_params()["ksize"] for _ in range(DRAWS)], np.uint8)
    out["median_kernels"] = np.array([median.get_params()["ksize"] for _ in range(DRAWS)], np.uint8)
    holes = np.array(
        [dropout.get_params_dependent_on_targets({"image": crop})["holes"][0] for _ in range(DRAWS)]
    )  # x1, y1, x2, y2
    out["holes"] = np.concatenate([holes[:, :2], holes[:, 2:] - holes[:, :2]], 1).astype(np.uint8)  # x, y, w, h
    out["config"] = np.array(
        "albumentations 1.3.1 (Blur, MedianBlur, CoarseDropout), mmdet 3.3.0 YOLOXHSVRandomAug, OpenCV "
        + cv2.__version__
    )
    return out


def main() -> None:
    if "--rtmpose-pixels" in sys.argv:
        np.savez_compressed(OUT / "augment_rtmpose.npz", **rtmpose_pixels())
        print(OUT / "augment_rtmpose.npz", (OUT / "augment_rtmpose.npz").stat().st_size, "bytes")
        return
    install_import_stubs()
    image = synthetic_image()
    boxes, keypoints = persons()
    OUT.mkdir(parents=True, exist_ok=True)
    files: dict[str, dict] = {"augment_boxes": {"image": image, "boxes": boxes, "keypoints": keypoints}}
    tiny = np.zeros((2, 2, 3), np.uint8)  # the statistics need no pixels: a tiny image makes the draws cheap

    releases = {
        "simple_baselines": ("sb", "experiments/coco/resnet50/256x192_d256x3_adam_lr1e-3.yaml"),
        "hrnet": ("hr", "experiments/coco/hrnet/w32_256x192_adam_lr1e-3.yaml"),
    }
    for family, (folder, experiment) in releases.items():
        with release_lib(RELEASES / folder):
            run = _ReleaseRun(RELEASES / folder, experiment, image, STATS_SIZE)
            records = run.records(boxes, keypoints)
            files["augment_boxes"][f"{family}_centers"] = np.array([r["center"] for r in records], np.float64)
            files["augment_boxes"][f"{family}_scales"] = np.array([r["scale"] for r in records], np.float64)
            config = run.dataset_cfg
            stats: dict[str, np.ndarray] = {
                "config": np.array(
                    [
                        config.SCALE_FACTOR,
                        config.ROT_FACTOR,
                        float(config.FLIP),
                        float(getattr(config, "PROB_HALF_BODY", 0.0)),
                        float(getattr(config, "NUM_JOINTS_HALF_BODY", 0)),
                    ]
                )
            }
            random.seed(0)
            np.random.seed(0)
            run.image = tiny.repeat(HEIGHT // 2, 0).repeat(WIDTH // 2, 1)  # the width counts for the flip
            for p, record in enumerate(records):
                for key, value in statistics([run.draw(record) for _ in range(DRAWS)]).items():
                    stats[f"person{p}_{key}"] = value
            files[f"augment_stats_{family}"] = stats
            if family == "hrnet":  # the crops: the releases share this code; HRNet's adds the half body
                run = _ReleaseRun(RELEASES / folder, experiment, image, CROP_SIZE)
                files["augment_crops_release"] = crops([run.draw(r) for r in records for _ in range(4)])
            print(family, "done", flush=True)

    mm = _MMPoseRun(image, STATS_SIZE, use_udp=False)
    infos = [mm.info(b, k) for b, k in zip(boxes, keypoints)]
    files["augment_boxes"]["mmpose_centers"] = np.array([i["bbox_center"][0] for i in infos], np.float64)
    files["augment_boxes"]["mmpose_scales"] = np.array([i["bbox_scale"][0] for i in infos], np.float64)
    np.random.seed(0)
    stats = {}
    tiny_image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)[:2, :2]
    for p, info in enumerate(infos):
        for key, value in statistics([mm.draw(info, tiny_image) for _ in range(DRAWS)]).items():
            stats[f"person{p}_{key}"] = value
    files["augment_stats_mmpose"] = stats
    for family, udp in (("mmpose", False), ("udp", True)):
        mm = _MMPoseRun(image, CROP_SIZE, use_udp=udp)
        np.random.seed(1)
        files[f"augment_crops_{family}"] = crops([mm.draw(i, image) for i in infos for _ in range(4)])
    print("mmpose done", flush=True)

    for name, arrays in files.items():
        np.savez_compressed(OUT / f"{name}.npz", **arrays)
        print(OUT / f"{name}.npz", (OUT / f"{name}.npz").stat().st_size, "bytes")


def crops(draws: list[dict]) -> dict[str, np.ndarray]:
    """The exactness file: drawn parameters and the pixels and keypoints cut from
    `augment_boxes.npz`'s image, draw by draw; the person of each draw is its index // 4."""
    return {
        "person": np.repeat(np.arange(len(draws) // 4), 4),
        "input_size": np.array(CROP_SIZE),
        "centers": np.array([d["center"] for d in draws]),
        "scales": np.array([d["scale"] for d in draws], np.float64),
        "rotations": np.array([d["rotation"] for d in draws]),
        "flips": np.array([d["flip"] for d in draws]),
        "halves": np.array([d["half"] for d in draws]),
        "crops": np.array([d["image"] for d in draws], np.uint8),
        "keypoints": np.array([d["keypoints"] for d in draws], np.float32),
        "visible": np.array([d["visible"] for d in draws], np.float32),
    }


if __name__ == "__main__":
    main()
