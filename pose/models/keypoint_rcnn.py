"""torchvision's Keypoint R-CNN (ResNet-50-FPN), built offline and run from its published weight files.

torchvision publishes two COCO person-keypoint checkpoints at https://download.pytorch.org/models/:
`keypointrcnn_resnet50_fpn_coco-fc266e95.pth` (COCO_V1: box AP 54.6, keypoint AP 65.0 on val2017) and
`keypointrcnn_resnet50_fpn_coco-9f466800.pth` (COCO_LEGACY: 50.6 / 61.1). Both are plain state_dicts of the same 313
tensors (59,137,258 parameters plus frozen statistics): a ResNet-50 with FrozenBatchNorm2d (no `num_batches_tracked`),
an FPN, the RPN, a 2-class box head (background, person) and the keypoint head (8 convolutions, a transposed
convolution, 17 heatmaps). This module builds the model exactly as `keypointrcnn_resnet50_fpn(weights=...)` does,
without downloading: same modules and keys, the same frozen first backbone stages, and the FrozenBatchNorm eps
torchvision gives each file (below).

One detector and keypoint model in one: unlike the top-down models of `pose.topdown`, it finds the
people itself and predicts the keypoints of each box it keeps from RoI features (56 x 56 heatmaps
per box, upsampled to the box's size in pixels and read at their maximum).

Coordinates, as everywhere in pose-jobs: boxes are COCO `[x, y, w, h]` with the origin at the
top-left corner of the top-left pixel; keypoints `(x, y)` are in image pixels with integer = pixel
centre, COCO's keypoint convention. torchvision's keypoints need no offset to be in that convention:
its training reads COCO's keypoints as they are (integer = pixel centre, no +0.5 as Detectron2
adds), puts a keypoint in heatmap cell floor((x - x1) * 56 / w), and decodes a cell d back to
x1 + (d + 0.5) * w / 56, the centre of the cell's span (`heatmaps_to_keypoints`' "c = d + 0.5" is
that cell centre, the inverse of the floor, not a change of origin); its COCO evaluation writes
those numbers unchanged, and that is where its 65.0 AP was measured. Subtracting 0.5 (as
Detectron2 does for its +0.5 at loading) would shift every keypoint off what the model learned.

Joint confidences are torchvision's `keypoints_scores`: the heatmap *logit* at the maximum (after
bicubic upsampling), unbounded and often negative, not a probability. The person's score is the box
score; torchvision's COCO evaluation ranks persons by it, without rescoring by the joints.

Reference: He, Gkioxari, Dollár, Girshick, "Mask R-CNN", ICCV 2017 (the keypoint head);
torchvision `models/detection/keypoint_rcnn.py` and `roi_heads.py`.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torchvision.models.detection import KeypointRCNN
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d, box_convert

from pose.joints import NUM_JOINTS
from pose.models.detector import run_by_size
from pose.models.weights import check_fits, read_state_dict, weights_name

# FrozenBatchNorm2d eps per published file, as torchvision 0.29's builder sets it: after loading
# COCO_V1 it calls `overwrite_eps(model, 0.0)` (its FrozenBatchNorm2d had no eps before
# pytorch/vision#2933, and these weights keep the old behaviour); COCO_LEGACY keeps the default 1e-5.
VARIANT_EPS: dict[str, float] = {"coco_v1": 0.0, "legacy": 1e-5}

# The hash in the published file names (what torch.hub checks) -> variant.
FILE_HASHES: dict[str, str] = {"fc266e95": "coco_v1", "9f466800": "legacy"}

# torchvision's training image sizes (short side); eval mode resizes to the last one.
TRAINING_MIN_SIZES = (640, 672, 704, 736, 768, 800)

PERSON_LABEL = 1  # label 0 is background; 1 is person, COCO's person category id too

# A key only Keypoint R-CNN's state_dict has (Faster and Mask R-CNN have no keypoint predictor).
_KEYPOINT_PREDICTOR = "roi_heads.keypoint_predictor."


def is_keypoint_rcnn_state(state: dict) -> bool:
    """Whether a state_dict is laid out as torchvision's Keypoint R-CNN: it has the keypoint
    predictor (`roi_heads.keypoint_predictor.kps_score_lowres.*`) and a torchvision detector's
    backbone (`backbone.body.*`)."""
    keys = [key for key in state if isinstance(key, str)]
    return any(key.startswith(_KEYPOINT_PREDICTOR) for key in keys) and any(
        key.startswith("backbone.body.") for key in keys
    )


def build_keypoint_rcnn(
    variant: str = "coco_v1",
    *,
    min_size: int | tuple[int, ...] = TRAINING_MIN_SIZES,
    max_size: int = 1333,
    score_threshold: float = 0.05,
    detections_per_image: int = 100,
    proposals_per_image: int = 1000,
) -> KeypointRCNN:
    """An untrained Keypoint R-CNN in the published layout of `variant` ("coco_v1" or "legacy"), in
    eval mode, with `model.variant` set.

    As `keypointrcnn_resnet50_fpn(weights=KeypointRCNN_ResNet50_FPN_Weights.<variant>)` builds it:
    ResNet-50 with FrozenBatchNorm2d (eps per `VARIANT_EPS`), conv1 and layer1 frozen (3 trainable
    stages, its default with weights), FPN on layers 1-4 plus max-pool level, 2 classes, 17 keypoints.
    The defaults are torchvision's: in eval mode the short side is resized to min_size (of a tuple,
    the last: torchvision's training sizes (640, ..., 800) give 800), the long side to at most 1333,
    ImageNet mean/std, boxes scoring ≥ 0.05, at most 100 per image, 1000 RPN proposals. Smaller
    `min_size` / `max_size` / counts run faster but are no longer the published model's behaviour.
    """
    if variant not in VARIANT_EPS:
        raise ValueError(f"unknown Keypoint R-CNN variant {variant!r}; choose one of {', '.join(VARIANT_EPS)}")
    backbone = resnet_fpn_backbone(
        backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d, trainable_layers=3
    )
    model = KeypointRCNN(
        backbone,
        num_classes=2,
        num_keypoints=NUM_JOINTS,
        min_size=min_size,
        max_size=max_size,
        box_score_thresh=score_threshold,
        box_detections_per_img=detections_per_image,
        rpn_post_nms_top_n_test=proposals_per_image,
    )
    for module in model.modules():
        if isinstance(module, FrozenBatchNorm2d):
            module.eps = VARIANT_EPS[variant]
    model.variant = variant
    return model.eval()


def variant_of_file(path_or_fileobj) -> str | None:
    """The variant a published file name says by its hash (`...-fc266e95.pth` -> "coco_v1",
    `...-9f466800.pth` -> "legacy"), or None when the name has neither."""
    name = os.path.basename(weights_name(path_or_fileobj))
    found = {variant for file_hash, variant in FILE_HASHES.items() if file_hash in name}
    return found.pop() if len(found) == 1 else None


def load_keypoint_rcnn(path_or_fileobj, variant: str | None = None, **options) -> KeypointRCNN:
    """A Keypoint R-CNN in eval mode with the weights of a file: one of torchvision's published
    files, or a state_dict saved from a model of the same layout.

    `variant` ("coco_v1" or "legacy") sets the FrozenBatchNorm eps, which the file does not hold;
    without it, the hash in the file's name decides, and a name without one is a ValueError.
    `options` are `build_keypoint_rcnn`'s keywords (min_size, max_size, ...). A missing or
    unreadable file, or one that does not fit (another detector's weights), raises ValueError naming
    the file and the first mismatches. BatchNorm `num_batches_tracked` counters (a state_dict of
    the model built with ordinary BatchNorm2d) are ignored.
    """
    name = weights_name(path_or_fileobj)
    if variant is None:
        variant = variant_of_file(path_or_fileobj)
        if variant is None:
            raise ValueError(
                f"Keypoint R-CNN weights {name}: the name has no published hash ({', '.join(FILE_HASHES)}); "
                f"pass variant= one of {', '.join(VARIANT_EPS)}"
            )
    if variant not in VARIANT_EPS:
        raise ValueError(
            f"Keypoint R-CNN weights {name}: unknown variant {variant!r}; choose one of {', '.join(VARIANT_EPS)}"
        )
    where = f"Keypoint R-CNN weights {name} ({variant})"
    example = "torchvision's keypointrcnn_resnet50_fpn_coco-fc266e95.pth"
    state = read_state_dict(path_or_fileobj, where, "a Keypoint R-CNN state_dict", example)
    state = {key: value for key, value in state.items() if not key.endswith("num_batches_tracked")}
    model = build_keypoint_rcnn(variant, **options)
    check_fits(state, model.state_dict(), where)
    model.load_state_dict(state)
    return model


def detect_with_keypoints(model: KeypointRCNN, images: list, device=None) -> list[dict[str, np.ndarray]]:
    """Run a Keypoint R-CNN (eval mode, no gradients) on a batch of images.

    images: (H, W, 3) uint8 RGB arrays, or (3, H, W) tensors (float in [0, 1], or uint8); sizes may
    differ. The model normalises and resizes them itself. Images of one size go through the model
    together (torchvision pads a batch to its largest image, which would change a smaller image's
    results). `device`: where the images go, by default the model's.
    Returns per image, best first, scores ≥ the model's threshold:
    {"boxes": (M, 4) float32 COCO `[x, y, w, h]`, "scores": (M,) float32, "labels": (M,) int64 (1 =
    person), "keypoints": (M, 17, 3) float32: x, y in image pixels (integer = pixel centre) and the
    joint's confidence, torchvision's `keypoints_scores` (a heatmap logit, not in [0, 1])}.
    """
    results = []
    for output in run_by_size(model, images, device):
        # torchvision's third keypoint column is a constant visibility 1; the confidence replaces it.
        keypoints = torch.cat(
            [output["keypoints"][..., :2].float(), output["keypoints_scores"][..., None].float()], dim=-1
        )
        results.append(
            {
                "boxes": box_convert(output["boxes"].float(), "xyxy", "xywh").cpu().numpy().astype(np.float32),
                "scores": output["scores"].float().cpu().numpy().astype(np.float32),
                "labels": output["labels"].cpu().numpy().astype(np.int64),
                "keypoints": keypoints.cpu().numpy().astype(np.float32).reshape(-1, NUM_JOINTS, 3),
            }
        )
    return results
