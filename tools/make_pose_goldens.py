"""Golden outputs of the frameworks themselves, on random weights in the published layouts.

For each variant (`VARIANTS`) this runs the framework end to end on one small synthetic image
and a few person boxes, with the weights `tests/published.py` makes (written to a scratch file
in the published container and loaded by the framework's own loader), and saves
`tests/data/goldens/<variant>.npz` (format: `tools/README.md`). pose-jobs' own implementations
are tested against these files; nothing here is imported by `pose/` or `jobs/`.

- MMPose 1.3.2 variants: `init_model(config, checkpoint)` then `inference_topdown(model, image,
  boxes, bbox_format='xyxy')`, the full test pipeline (LoadImage, GetBBoxCenterScale,
  TopdownAffine, PackPoseInputs, the data preprocessor's bgr_to_rgb and mean/std, test_step
  with the config's flip test, decoding, mapping to the image). MMPose reads images as BGR and
  its preprocessor converts them, so it is given the BGR image: the network sees our RGB pixels.
  Intermediate values are recorded on the way, never recomputed: the warp matrices and crops by
  wrapping the `cv2.warpAffine` that TopdownAffine calls, the raw outputs by wrapping the
  head's forward (first call: the crops, second: the mirrored crops, before flipping back).
- The original releases (Simple Baselines `pose_resnet`, HRNet `pose_hrnet`): their own `lib/`
  functions in the order their `COCODataset.__getitem__` (test set, detection boxes) and
  `core/function.validate` call them: `_xywh2cs`, `get_affine_transform`, `cv2.warpAffine`
  (INTER_LINEAR), ToTensor + Normalize(ImageNet mean/std) on the image as read (BGR for Simple
  Baselines, RGB for HRNet's COLOR_RGB), the network on the crops and the mirrored crops,
  `flip_back`, SHIFT_HEATMAP, the mean, `get_final_preds` (POST_PROCESS). The test-time
  options are those of their published test commands (`--flip-test`; HRNet's yaml).

Scratch environment (nothing of it goes into the repo or its venv), from the repo root:

    # MMPose 1.3.2, mmengine 0.10.7, mmcv-lite 2.2.0: pure-Python wheels, unpacked
    .venv/bin/python -m pip download --no-deps -d /tmp/mmref/wheels mmpose==1.3.2 mmengine==0.10.7 mmcv-lite==2.2.0
    for w in /tmp/mmref/wheels/*.whl; do unzip -q -o "$w" -d /tmp/mmref/src; done
    # their pure dependencies, and OpenCV (DARK and UDP blur with cv2.GaussianBlur; all warp with cv2.warpAffine)
    .venv/bin/python -m pip install --target /tmp/mmdeps addict yapf termcolor rich json_tricks munkres shapely
    .venv/bin/python -m pip install --no-deps --target /tmp/mmdeps 'opencv-python-headless<5'
    rm -rf /tmp/mmdeps/numpy*          # keep the venv's numpy
    # the original releases' code and their config readers
    git clone https://github.com/microsoft/human-pose-estimation.pytorch /tmp/orig/sb          # 49f3f44
    git clone https://github.com/leoxiaobin/deep-high-resolution-net.pytorch /tmp/orig/hr      # 6f69e46
    .venv/bin/python -m pip install --target /tmp/origdeps easydict yacs pyyaml && rm -rf /tmp/origdeps/numpy*
    # then
    PYTHONPATH=/tmp/mmdeps:/tmp/origdeps:/tmp/mmref/src .venv/bin/python tools/make_pose_goldens.py [variant ...]

Import stubs (modules imported at module level but never called at inference), installed by
`_mmpose_stubs.install_import_stubs` and `release_lib`: the releases' compiled `nms.cpu_nms`/`nms.gpu_nms`,
`xtcocotools` (COCO evaluation), `mmdet.utils` (RTMO's head), `mmcv.ops` (compiled
ops of the full mmcv; mmcv-lite has none), `pkg_resources` (mmengine's package lookup; absent
from recent setuptools). With mmdet absent MMPose builds RTMPose's `mmdet.CSPNeXt` from its own
copy of that class (same module names). SyncBN in the configs becomes BN (one CPU process).
mmengine 0.10.7 loads checkpoints with a bare `torch.load`, which torch >= 2.6 runs with
weights_only=True: `published.numpy_safe_globals()` is allow-listed around `init_model`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
from _mmpose_stubs import install_import_stubs  # also imported from here by the other golden scripts

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import published  # noqa: E402  (tests/published.py: the layouts and the random weights)

MMPOSE_SRC = Path(os.environ.get("MMPOSE_SRC", "/tmp/mmref/src"))
RELEASES = Path(os.environ.get("POSE_RELEASES", "/tmp/orig"))
CONFIGS = MMPOSE_SRC / "mmpose" / ".mim" / "configs" / "body_2d_keypoint"
SEED = 0

# variant -> (framework, config or experiment yaml, manifest, image index, boxes used)
VARIANTS = {
    "mmpose-res50-256x192": (
        "mmpose",
        "topdown_heatmap/coco/td-hm_res50_8xb64-210e_coco-256x192.py",
        "mmpose-res50",
        0,
        2,
    ),
    "mmpose-hrnet-w32-256x192": (
        "mmpose",
        "topdown_heatmap/coco/td-hm_hrnet-w32_8xb64-210e_coco-256x192.py",
        "mmpose-hrnet-w32",
        1,
        2,
    ),
    "mmpose-hrnet-w32-dark-256x192": (
        "mmpose",
        "topdown_heatmap/coco/td-hm_hrnet-w32_dark-8xb64-210e_coco-256x192.py",
        "mmpose-hrnet-w32",
        0,
        2,
    ),
    "mmpose-hrnet-w32-udp-256x192": (
        "mmpose",
        "topdown_heatmap/coco/td-hm_hrnet-w32_udp-8xb64-210e_coco-256x192.py",
        "mmpose-hrnet-w32",
        1,
        2,
    ),
    "mmpose-hrnet-w48-384x288": (
        "mmpose",
        "topdown_heatmap/coco/td-hm_hrnet-w48_8xb32-210e_coco-384x288.py",
        "mmpose-hrnet-w48",
        0,
        1,
    ),
    "mmpose-rtmpose-t-256x192": (
        "mmpose",
        "rtmpose/coco/rtmpose-t_8xb256-420e_coco-256x192.py",
        "mmpose-rtmpose-t",
        1,
        3,
    ),
    "mmpose-rtmpose-m-256x192": (
        "mmpose",
        "rtmpose/coco/rtmpose-m_8xb256-420e_coco-256x192.py",
        "mmpose-rtmpose-m",
        0,
        3,
    ),
    "release-pose_resnet_50-256x192": (
        "simple-baselines",
        "experiments/coco/resnet50/256x192_d256x3_adam_lr1e-3.yaml",
        "release-pose_resnet_50",
        1,
        2,
    ),
    "release-pose_hrnet_w32-256x192": (
        "hrnet",
        "experiments/coco/hrnet/w32_256x192_adam_lr1e-3.yaml",
        "release-pose_hrnet_w32",
        0,
        2,
    ),
}


# ---------------------------------------------------------------------------------------------
# Inputs: two smooth synthetic scenes and their person boxes


def scenes() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Two (image (240, 320, 3) uint8 RGB, boxes (3, 4) COCO xywh float64, scores (3,)) from pose-jobs'
    synthetic people, slightly blurred so that the golden files compress. The third box of each
    reaches past the image border, so the crops include the warp's zero padding."""
    from PIL import Image, ImageFilter

    from pose.synth.people import render_scene

    out = []
    seed = 0
    while len(out) < 2:
        seed += 1
        image, annotations = render_scene(np.random.default_rng(seed), 320, 240, max_people=4, crowd_probability=0.0)
        boxes = [a["bbox"] for a in annotations if not a["iscrowd"] and a["bbox"][2] * a["bbox"][3] > 40 * 40]
        if len(boxes) < 2:
            continue
        boxes = sorted(boxes, key=lambda b: -b[2] * b[3])[:2]
        x, y, w, h = boxes[0]
        boxes.append([320 - 0.6 * w, y + 0.1 * h, w, 0.9 * h])  # half outside the right border
        image = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(1.5)))
        out.append((image, np.asarray(boxes, np.float64), np.array([0.98, 0.91, 0.62])[: len(boxes)]))
    return out


# ---------------------------------------------------------------------------------------------
# MMPose


def _sync_bn_to_bn(node) -> None:
    if isinstance(node, dict):
        if node.get("type") == "SyncBN":
            node["type"] = "BN"
        for value in node.values():
            _sync_bn_to_bn(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            _sync_bn_to_bn(value)


def run_mmpose(config: str, weights: str, image: np.ndarray, boxes: np.ndarray) -> dict:
    """MMPose's own top-down inference on RGB `image` and COCO `boxes` (P, 4), with what it computed on the way."""
    sys.path.insert(0, str(MMPOSE_SRC))
    install_import_stubs()
    import mmpose.datasets.transforms.topdown_transforms as topdown_transforms
    from mmengine.config import Config
    from mmpose.apis import inference_topdown, init_model

    cfg = Config.fromfile(str(CONFIGS / config))
    _sync_bn_to_bn(cfg._cfg_dict)
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "weights.pth")
        published.write_mmpose_checkpoint(path, weights, SEED, config_text=cfg.pretty_text)
        # init_model -> mmengine's load_checkpoint -> torch.load(path) of the published container; under
        # torch >= 2.6 that is weights_only=True, which reads meta's numpy arrays only when allow-listed.
        with torch.serialization.safe_globals(published.numpy_safe_globals()):
            model = init_model(cfg, path, device="cpu")

    warps, crops, outputs = [], [], []
    cv2 = topdown_transforms.cv2
    real_warp = cv2.warpAffine

    def recording_warp(src, matrix, size, *args, **kwargs):
        warped = real_warp(src, matrix, size, *args, **kwargs)
        warps.append(np.array(matrix, np.float64))
        crops.append(warped[..., ::-1].copy())  # the BGR crop MMPose made, as RGB
        return warped

    head_forward = model.head.forward  # head.predict calls self.forward(...) directly: forward hooks never fire

    def recording_forward(*args, **kwargs):
        output = head_forward(*args, **kwargs)
        outputs.append(output)
        return output

    model.head.forward = recording_forward
    xyxy = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
    topdown_transforms.cv2 = types.SimpleNamespace(warpAffine=recording_warp, INTER_LINEAR=cv2.INTER_LINEAR)
    try:
        samples = inference_topdown(model, np.ascontiguousarray(image[..., ::-1]), xyxy, bbox_format="xyxy")
    finally:
        topdown_transforms.cv2 = cv2
        del model.head.forward

    assert len(outputs) == 2, "the configs' test_cfg flip_test runs the head twice"
    golden = {
        "framework": "MMPose 1.3.2 (mmengine 0.10.7, mmcv-lite 2.2.0): init_model + inference_topdown, "
        f"config {config}",
        "centers": np.stack([s.metainfo["input_center"] for s in samples]).astype(np.float64),
        "scales": np.stack([s.metainfo["input_scale"] for s in samples]).astype(np.float64),
        "warps": np.stack(warps),
        "crops": np.stack(crops),
        "keypoints": np.concatenate([s.pred_instances.keypoints for s in samples]).astype(np.float32),
        "keypoint_scores": np.concatenate([s.pred_instances.keypoint_scores for s in samples]).astype(np.float32),
    }
    normal, flipped = outputs
    if isinstance(normal, tuple):  # RTMCC: (simcc_x (P, K, Wx), simcc_y (P, K, Wy))
        golden.update(simcc_x=normal[0], simcc_y=normal[1], simcc_x_flipped=flipped[0], simcc_y_flipped=flipped[1])
    else:
        golden.update(output=normal, output_flipped=flipped)
    return {k: (v.detach().float().numpy() if torch.is_tensor(v) else v) for k, v in golden.items()}


# ---------------------------------------------------------------------------------------------
# The original releases


@contextlib.contextmanager
def release_lib(root: Path):
    """Import the release's `lib/` (top-level `models`, `core`, `utils`, ... clash between the two
    releases), then forget it again."""
    import yaml

    names = {p.stem for p in (root / "lib").iterdir()}
    sys.path.insert(0, str(root / "lib"))
    for name in (
        "cpu_nms",
        "gpu_nms",
    ):  # Cython/CUDA extensions (never built here) that dataset/coco.py imports for its NMS
        stub = types.ModuleType(f"nms.{name}")
        setattr(stub, name, None)
        sys.modules[f"nms.{name}"] = stub
    load = yaml.load
    yaml.load = lambda stream, Loader=yaml.SafeLoader: load(
        stream, Loader=Loader
    )  # 2018 code passes no Loader (PyYAML 6)
    try:
        yield
    finally:
        yaml.load = load
        sys.path.remove(str(root / "lib"))
        for name in list(sys.modules):
            if name.split(".")[0] in names:
                del sys.modules[name]


def run_release(kind: str, experiment: str, weights: str, image: np.ndarray, boxes: np.ndarray) -> dict:
    """The original release's own functions, as its validate() runs them on detection boxes."""
    import cv2
    import torchvision.transforms as T

    root = RELEASES / ("sb" if kind == "simple-baselines" else "hr")
    with release_lib(root):
        if kind == "simple-baselines":
            from core.config import config as cfg
            from core.config import update_config
            from core.inference import get_final_preds
            from dataset.coco import COCODataset
            from models.pose_resnet import get_pose_net
            from utils.transforms import flip_back, get_affine_transform

            update_config(str(root / experiment))
            cfg.TEST.FLIP_TEST = True  # the README's test command: valid.py --flip-test
            color_rgb = False
        else:
            from config import cfg as default_cfg
            from config import update_config
            from core.inference import get_final_preds
            from dataset.coco import COCODataset
            from models.pose_hrnet import get_pose_net
            from utils.transforms import flip_back, get_affine_transform

            cfg = default_cfg.clone()
            update_config(
                cfg, types.SimpleNamespace(cfg=str(root / experiment), opts=[], modelDir="", logDir="", dataDir="")
            )
            color_rgb = cfg.DATASET.COLOR_RGB

        model = get_pose_net(cfg, is_train=False)
        with tempfile.TemporaryDirectory() as scratch:
            path = os.path.join(scratch, "weights.pth")
            published.write_release_checkpoint(path, weights, SEED)
            model.load_state_dict(torch.load(path))  # as valid.py / test.py load the published file
        model.eval()

        image_size = np.array(cfg.MODEL.IMAGE_SIZE)  # (w, h)
        dataset = types.SimpleNamespace(aspect_ratio=image_size[0] / image_size[1], pixel_std=200)
        as_read = image if color_rgb else np.ascontiguousarray(image[..., ::-1])  # cv2.imread gives BGR; HRNet converts
        to_input = T.Compose([T.ToTensor(), T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
        centers, scales, warps, crops, inputs = [], [], [], [], []
        for box in boxes:
            c, s = COCODataset._xywh2cs(dataset, *box)
            trans = get_affine_transform(c, s, 0, image_size)
            crop = cv2.warpAffine(as_read, trans, (int(image_size[0]), int(image_size[1])), flags=cv2.INTER_LINEAR)
            centers.append(c), scales.append(s), warps.append(trans), inputs.append(to_input(crop))
            crops.append(crop if color_rgb else crop[..., ::-1])
        flip_pairs = [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10], [11, 12], [13, 14], [15, 16]]  # COCODataset.flip_pairs

        with torch.no_grad():
            batch = torch.stack(inputs)
            output = model(batch)
            raw_flipped = model(torch.from_numpy(np.flip(batch.numpy(), 3).copy()))
            # flip_back swaps joints in place through a view: give it a copy (validate() gives it one from the GPU)
            flipped = torch.from_numpy(flip_back(raw_flipped.numpy().copy(), flip_pairs).copy())
            if cfg.TEST.SHIFT_HEATMAP:
                flipped[:, :, :, 1:] = flipped.clone()[:, :, :, 0:-1]
            averaged = (output + flipped) * 0.5
        c, s = np.stack(centers), np.stack(scales)
        preds, maxvals = get_final_preds(cfg, averaged.clone().numpy(), c, s)

    repo = {
        "simple-baselines": "microsoft/human-pose-estimation.pytorch@49f3f44",
        "hrnet": "leoxiaobin/deep-high-resolution-net.pytorch@6f69e46",
    }
    return {
        "framework": f"{repo[kind]} lib/ functions as validate() calls them, {experiment}, "
        "FLIP_TEST and SHIFT_HEATMAP on, "
        f"network input {'RGB' if color_rgb else 'BGR'}; scales in the release's units (pixels / 200)",
        "centers": c.astype(np.float64),
        "scales": s.astype(np.float64),
        "warps": np.stack(warps).astype(np.float64),
        "crops": np.stack(crops),
        "output": output.numpy(),
        "output_flipped": raw_flipped.numpy(),
        "keypoints": preds.astype(np.float32),
        "keypoint_scores": maxvals[..., 0].astype(np.float32),
    }


# ---------------------------------------------------------------------------------------------


def check_not_degenerate(variant: str, golden: dict) -> None:
    """Random weights are useful only if the output depends on the image: the maps are not
    constant and the arg-max positions differ between the crops."""
    maps = golden["output"] if "output" in golden else golden["simcc_x"]
    flat = maps.reshape(len(maps), maps.shape[1], -1)
    assert np.all(flat.std(axis=-1) > 1e-4), f"{variant}: a constant output map"
    peaks = flat.argmax(-1)
    assert len(maps) == 1 or any((peaks[0] != peaks[i]).mean() > 0.5 for i in range(1, len(maps))), (
        f"{variant}: same peaks"
    )
    print(f"  output mean {maps.mean():+.3f} std {maps.std():.3f}; scores {golden['keypoint_scores'].mean():.3f}")


def make(variant: str, out_dir: Path) -> Path:
    framework, config, weights, image_index, count = VARIANTS[variant]
    image, boxes, box_scores = scenes()[image_index]
    boxes, box_scores = boxes[:count], box_scores[:count]
    torch.manual_seed(0)
    if framework == "mmpose":
        golden = run_mmpose(config, weights, image, boxes)
    else:
        golden = run_release(framework, config, weights, image, boxes)
    golden.update(
        image=image,
        boxes=boxes,
        box_scores=box_scores,
        weights_name=weights,
        seed=np.int64(SEED),
        weights_sha256=published.state_dict_digest(published.random_state_dict(weights, SEED)),
    )
    check_not_degenerate(variant, golden)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{variant}.npz"
    np.savez_compressed(path, **{k: np.asarray(v) for k, v in golden.items()})
    print(f"  {path} {path.stat().st_size / 1e6:.2f} MB")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("variants", nargs="*", default=list(VARIANTS), help=f"default: all of {', '.join(VARIANTS)}")
    parser.add_argument("--out", type=Path, default=published.GOLDENS)
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    for variant in args.variants:
        print(variant, flush=True)
        make(variant, args.out)


if __name__ == "__main__":
    main()
