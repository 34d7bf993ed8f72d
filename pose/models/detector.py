"""Person detection: torchvision's Faster R-CNN detectors, built offline, loaded from weight files.

A detector either keeps COCO's 91 classes (torchvision's weight files) or has 2 (background, person), fine-tuned from a
91-class one (`person_detector_from_coco`). Its person boxes feed the top-down keypoint model.

Coordinates: the rest of the project, COCO files and `detect`'s output use COCO boxes
`[x, y, w, h]` in pixels of the original image (origin at the top-left corner of the top-left
pixel). torchvision's detectors take and give `[x1, y1, x2, y2]` in the same pixels;
`detector_targets` and `detect` convert at the boundary, so xyxy never leaves this module.

Labels: torchvision's 91 classes are indexed by COCO category id (0 is background, ids absent from
COCO 2017 are "N/A"), so a 91-class label *is* a COCO category id; in the 2-class model label 1 is
person, which is COCO id 1 as well.

Nothing is downloaded: torchvision's builders get `weights=None, weights_backbone=None`, and
weights come from files (`load_detector_weights`), e.g. torchvision's
`fasterrcnn_resnet50_fpn_coco-258fb6c6.pth`, `fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth`,
`fasterrcnn_mobilenet_v3_large_fpn-fb6a3cc7.pth` from https://download.pytorch.org/models/.

Reference: Ren, He, Girshick, Sun, "Faster R-CNN", NeurIPS 2015; Lin et al., "Feature Pyramid
Networks for Object Detection", CVPR 2017.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torchvision.models.detection import FasterRCNN, FasterRCNN_ResNet50_FPN_Weights, fasterrcnn_resnet50_fpn_v2
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import mobilenet_backbone, resnet_fpn_backbone
from torchvision.ops import FrozenBatchNorm2d, box_convert

from pose.models.weights import check_fits, read_state_dict, weights_name

# Most accurate first. COCO val2017 box AP of torchvision's weights (all classes, 800 px):
# 46.7, 37.0, 32.8; the mobilenet is several times faster on a CPU.
ARCHITECTURES = ("fasterrcnn_resnet50_fpn_v2", "fasterrcnn_resnet50_fpn", "fasterrcnn_mobilenet_v3_large_fpn")

# torchvision's 91 COCO names, label i -> name ("__background__", "person", ..., "N/A" for the ids
# COCO 2017 does not use). Reading the weight enum's metadata downloads nothing.
COCO_CATEGORY_NAMES: tuple[str, ...] = tuple(FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])
PERSON_CATEGORY_NAMES = ("__background__", "person")
PERSON_LABEL = 1  # in both the 91- and the 2-class models, and COCO's person category id


def backbone_stages(arch: str) -> int:
    """How many backbone stages `trainable_backbone_layers` counts for `arch` (that many: all train)."""
    return 6 if arch == "fasterrcnn_mobilenet_v3_large_fpn" else 5


@dataclass(frozen=True)
class DetectorConfig:
    """A Faster R-CNN detector. Saved next to its weights (`to_dict`), so a file can be rebuilt.

    arch: "fasterrcnn_mobilenet_v3_large_fpn" for CPU work and quick fine-tuning; "fasterrcnn_resnet50_fpn" is
    torchvision's original COCO detector (the default for a bare .pth file); "fasterrcnn_resnet50_fpn_v2" is the most
    accurate, for GPU runs where detection quality bounds keypoint AP.
    """

    arch: str = "fasterrcnn_mobilenet_v3_large_fpn"
    num_classes: int = 91  # 91: COCO's classes (torchvision's weight files); 2: background + person
    min_size: int = 512  # the model resizes each image so its short side is min_size ...
    max_size: int = 853  # ... and its long side at most max_size (torchvision's default: 800, 1333)
    score_threshold: float = 0.05  # boxes below are dropped at inference (pictures draw only the confident ones)
    detections_per_image: int = 100
    # RPN proposals per image that reach the box head at inference (torchvision: 1000; its 320-px
    # mobilenet: 150). On a CPU the box head on 1000 proposals is most of the mobilenet's time.
    proposals_per_image: int = 1000
    # Training only: RPN proposals kept per image before and after NMS (torchvision: 2000) and
    # proposals sampled per image for the box head's loss (torchvision: 512). On a CPU the box
    # head and RoIAlign on those proposals cost several times the mobilenet backbone.
    train_proposals_per_image: int = 2000
    box_samples_per_image: int = 512
    # Backbone stages that train, counted from the top (torchvision's default when it starts from its
    # weights: 3); the others stay frozen.
    trainable_backbone_layers: int = 3
    # The v1 and mobilenet backbones' normalisation. "frozen": FrozenBatchNorm2d, as torchvision
    # builds them to start from its weights (fixed statistics, the weight files' layout). "batch":
    # ordinary, trainable BatchNorm2d, for training from scratch, where frozen statistics are an
    # identity and the net has no normalisation at all. The v2 ResNet always has BatchNorm2d.
    norm: str = "frozen"

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown detector arch {self.arch!r}; choose one of {', '.join(ARCHITECTURES)}")
        if self.num_classes < 2:
            raise ValueError(
                f"a detector needs background and at least one class (num_classes ≥ 2), got {self.num_classes}"
            )
        most = backbone_stages(self.arch)
        if not 0 <= self.trainable_backbone_layers <= most:
            raise ValueError(
                f"{self.arch} has {most} backbone stages; trainable_backbone_layers must be in [0, {most}], "
                f"got {self.trainable_backbone_layers}"
            )
        if self.norm not in ("frozen", "batch"):
            raise ValueError(
                f"detector norm must be 'frozen' (start from weights) or 'batch' (from scratch), got {self.norm!r}"
            )

    def to_dict(self) -> dict:
        """Plain JSON-ready values, saved next to the weights."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> DetectorConfig:
        return cls(**values)

    def category_names(self) -> tuple[str, ...]:
        """Label i -> name: COCO's names for 91 classes, ("__background__", "person") for 2."""
        if self.num_classes == len(COCO_CATEGORY_NAMES):
            return COCO_CATEGORY_NAMES
        if self.num_classes == 2:
            return PERSON_CATEGORY_NAMES
        return ("__background__", *(f"class {i}" for i in range(1, self.num_classes)))


def build_detector(config: DetectorConfig = DetectorConfig()) -> FasterRCNN:
    """An untrained torchvision Faster R-CNN for `config`, in eval mode, with `model.config` set.

    torchvision's builders only freeze BatchNorm (FrozenBatchNorm2d) and the first backbone stages
    when they download weights; every detector here starts from such weights (as a file), so it is
    built as torchvision builds it then: same modules, same state_dict keys as the weight files, and
    for the v1 ResNet the FrozenBatchNorm eps of 0 that torchvision sets for its COCO_V1 weights.
    Without this, fine-tuning on a few images per GPU would re-estimate BatchNorm statistics.
    `config.norm == "batch"` swaps in trainable BatchNorm2d for training from scratch.
    """
    norm_layer = FrozenBatchNorm2d if config.norm == "frozen" else torch.nn.BatchNorm2d
    options = dict(
        min_size=config.min_size,
        max_size=config.max_size,
        box_score_thresh=config.score_threshold,
        box_detections_per_img=config.detections_per_image,
        rpn_post_nms_top_n_test=config.proposals_per_image,
        rpn_pre_nms_top_n_train=config.train_proposals_per_image,
        rpn_post_nms_top_n_train=config.train_proposals_per_image,
        box_batch_size_per_image=config.box_samples_per_image,
    )
    if config.arch == "fasterrcnn_resnet50_fpn":
        # As torchvision's fasterrcnn_resnet50_fpn(weights=COCO_V1).
        backbone = resnet_fpn_backbone(
            backbone_name="resnet50",
            weights=None,
            norm_layer=norm_layer,
            trainable_layers=config.trainable_backbone_layers,
        )
        model = FasterRCNN(backbone, config.num_classes, **options)
        # The COCO_V1 weights come from Detectron, whose frozen BatchNorm had no eps.
        for module in model.modules():
            if isinstance(module, FrozenBatchNorm2d):
                module.eps = 0.0
    elif config.arch == "fasterrcnn_mobilenet_v3_large_fpn":
        # As torchvision's fasterrcnn_mobilenet_v3_large_fpn(weights=COCO_V1): its anchors and RPN threshold.
        backbone = mobilenet_backbone(
            backbone_name="mobilenet_v3_large",
            weights=None,
            fpn=True,
            norm_layer=norm_layer,
            trainable_layers=config.trainable_backbone_layers,
        )
        anchors = AnchorGenerator(((32, 64, 128, 256, 512),) * 3, ((0.5, 1.0, 2.0),) * 3)
        model = FasterRCNN(backbone, config.num_classes, rpn_anchor_generator=anchors, rpn_score_thresh=0.05, **options)
    else:
        # v2 keeps ordinary BatchNorm even with weights; only the freezing of early stages differs.
        model = fasterrcnn_resnet50_fpn_v2(
            weights=None, weights_backbone=None, num_classes=config.num_classes, **options
        )
        trainable = ("layer4", "layer3", "layer2", "layer1", "conv1")[: config.trainable_backbone_layers]
        trainable += ("bn1",) if config.trainable_backbone_layers == 5 else ()
        for name, parameter in model.backbone.body.named_parameters():
            if not name.startswith(trainable):
                parameter.requires_grad_(False)
    model.config = config
    return model.eval()


def load_detector_weights(model: FasterRCNN, path_or_fileobj) -> None:
    """Load a detector state_dict file into `model`: one of torchvision's published COCO weight files
    for the same arch (a plain state_dict) or one saved here by `torch.save(model.state_dict(), f)`.

    A missing or unreadable file, or one whose keys or shapes do not match the model (v1 weights
    into the v2 arch, 91-class weights into a 2-class model), raises ValueError naming the file, the
    arch and the first mismatches. BatchNorm `num_batches_tracked` counters may be absent or extra.
    """
    config = getattr(model, "config", None)
    arch = (
        f"{config.arch}, {config.num_classes} classes" if isinstance(config, DetectorConfig) else type(model).__name__
    )
    where = f"detector weights {weights_name(path_or_fileobj)} ({arch})"
    state = read_state_dict(
        path_or_fileobj, where, "a detector state_dict", "torchvision's fasterrcnn_resnet50_fpn_coco-258fb6c6.pth"
    )
    state = {key: value for key, value in state.items() if not key.endswith("num_batches_tracked")}
    expected = {key: value for key, value in model.state_dict().items() if not key.endswith("num_batches_tracked")}
    check_fits(state, expected, where)
    # strict=False only for the num_batches_tracked counters left out above.
    model.load_state_dict(state, strict=False)


def person_detector_from_coco(coco_model: FasterRCNN, config_person: DetectorConfig) -> FasterRCNN:
    """A 2-class (background, person) detector initialised from a 91-class COCO one: the start of
    person fine-tuning.

    Backbone, RPN and box head are copied; the box predictor keeps the COCO model's background
    (label 0) and person (label 1) rows of the classifier and of the box regression. The person
    logits are then those of the COCO model, but its scores are higher: the softmax now runs over
    2 classes, not 91, until fine-tuning recalibrates it.
    """
    coco_config = getattr(coco_model, "config", None)
    if config_person.num_classes != 2:
        raise ValueError(
            f"a person detector has 2 classes (background, person), got num_classes={config_person.num_classes}"
        )
    if isinstance(coco_config, DetectorConfig) and coco_config.arch != config_person.arch:
        raise ValueError(
            f"the COCO detector is a {coco_config.arch}, the person detector a {config_person.arch}; use the same arch"
        )
    state = coco_model.state_dict()
    kept_rows = {
        "roi_heads.box_predictor.cls_score": slice(0, 2),  # one logit per class
        "roi_heads.box_predictor.bbox_pred": slice(0, 2 * 4),  # (dx, dy, dw, dh) per class
    }
    for prefix, rows in kept_rows.items():
        for kind in ("weight", "bias"):
            state[f"{prefix}.{kind}"] = state[f"{prefix}.{kind}"][rows].clone()
    person_model = build_detector(config_person)
    person_model.load_state_dict(state)
    return person_model


def detector_targets(boxes_xywh: np.ndarray, labels: np.ndarray, iscrowd: np.ndarray) -> dict[str, torch.Tensor]:
    """Training targets of one image for a torchvision detector.

    boxes_xywh (N, 4): COCO `[x, y, w, h]` pixels; labels (N,): class labels (COCO category ids for a
    91-class model, 1 = person for a 2-class one); iscrowd (N,) bool.
    Returns {"boxes": (M, 4) float32 `[x1, y1, x2, y2]`, "labels": (M,) int64}, M ≤ N.

    Crowd boxes are dropped: torchvision's Faster R-CNN has no ignore regions, and a crowd box as a
    positive would teach it to box whole crowds. (Their people then count as background when
    anchors land on them; COCO's evaluation ignores detections there.) Boxes narrower or lower
    than 1 pixel are dropped too: they give NaN box-regression targets. No boxes left is fine:
    torchvision trains on such images as all-background.
    """
    boxes = np.asarray(boxes_xywh, np.float32).reshape(-1, 4)
    keep = ~np.asarray(iscrowd, bool).reshape(-1) & (boxes[:, 2] >= 1) & (boxes[:, 3] >= 1)
    return {
        "boxes": box_convert(torch.from_numpy(boxes[keep]), "xywh", "xyxy"),
        "labels": torch.as_tensor(np.asarray(labels).reshape(-1)[keep], dtype=torch.int64),
    }


def _image_tensor(image, device=None) -> torch.Tensor:
    """(H, W, 3) uint8 RGB array or (3, H, W) tensor -> (3, H, W) float in [0, 1] on `device`
    (default: where it is), torchvision's input. uint8 travels to the device before it becomes
    float: a quarter of the bytes, and the GPU does the conversion."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
        image = torch.from_numpy(np.array(image)).permute(2, 0, 1)  # a copy: decoded images are read-only
    if device is not None:
        image = image.to(device, non_blocking=True)
    if image.dtype == torch.uint8:
        return image.float() / 255
    return image.float()


def run_by_size(model: torch.nn.Module, images: list, device=None) -> list[dict]:
    """A torchvision detection model's raw outputs (eval mode, no gradients) for images of any sizes
    ((H, W, 3) uint8 RGB arrays or (3, H, W) tensors), in their order.

    One model call per image size: torchvision pads a batch to its largest image, which changes the
    features (and the boxes) of the smaller ones, so an image's detections would depend on the
    images it happened to be batched with (and differ between runs of the same bucket)."""
    if not images:
        return []
    device = next(model.parameters()).device if device is None else torch.device(device)
    model.eval()
    tensors = [_image_tensor(image, device) for image in images]
    by_size: dict[tuple[int, int], list[int]] = {}
    for index, tensor in enumerate(tensors):
        by_size.setdefault(tuple(tensor.shape[-2:]), []).append(index)
    outputs: list[dict] = [{}] * len(tensors)
    with torch.no_grad():
        for indices in by_size.values():
            for index, output in zip(indices, model([tensors[i] for i in indices])):
                outputs[index] = output
    return outputs


def detect(model: FasterRCNN, images: list, device=None) -> list[dict[str, np.ndarray]]:
    """Run `model` (in eval mode, without gradients) on a batch of images.

    images: (H, W, 3) uint8 RGB arrays, or (3, H, W) tensors (float in [0, 1], or uint8); sizes may
    differ. The model normalises and resizes them itself; images of one size go through the model
    together, so an image's detections do not depend on the others in the batch. `device`: where
    the images go, by default the model's (move the model there first).
    Returns per image {"boxes": (M, 4) float32 COCO `[x, y, w, h]` in the image's own pixels,
    "scores": (M,) float32, "labels": (M,) int64}, best first, scores ≥ the config's threshold.
    """
    return [
        {
            "boxes": box_convert(output["boxes"].float(), "xyxy", "xywh").cpu().numpy().astype(np.float32),
            "scores": output["scores"].float().cpu().numpy().astype(np.float32),
            "labels": output["labels"].cpu().numpy().astype(np.int64),
        }
        for output in run_by_size(model, images, device)
    ]


def person_boxes(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, threshold: float, limit: int) -> np.ndarray:
    """Indices of the detections that get keypoints: persons scoring ≥ `threshold`, the best
    `limit` of them (detections come best first)."""
    chosen = np.flatnonzero((labels == PERSON_LABEL) & (scores >= threshold) & (boxes[:, 2] >= 1) & (boxes[:, 3] >= 1))
    return chosen[:limit]


def detection_results(image_ids, detections: list[dict], *, category_map: dict[int, int] | None = None) -> list[dict]:
    """COCO results entries {image_id, category_id, bbox [x, y, w, h], score} for `detect`'s output.

    image_ids: one COCO image id per detections entry. A label is its COCO category id as it is
    (91-class torchvision labels are COCO ids; the 2-class model's person label 1 is COCO's person
    id 1) unless `category_map` maps labels to ids; labels missing from a given map are left out.
    """
    if len(image_ids) != len(detections):
        raise ValueError(f"{len(image_ids)} image ids for {len(detections)} detection lists")
    results = []
    for image_id, found in zip(image_ids, detections):
        for box, score, label in zip(found["boxes"], found["scores"], found["labels"]):
            label = int(label)
            if category_map is not None and label not in category_map:
                continue
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": category_map[label] if category_map is not None else label,
                    "bbox": [float(v) for v in box],
                    "score": float(score),
                }
            )
    return results
