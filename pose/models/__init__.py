"""Neural networks: the top-down keypoint heatmap models and the SVHN digit classifiers."""

from pose.models.digits import DigitModelConfig, build_digit_model
from pose.models.keypoints import (
    KeypointModelConfig,
    KeypointNet,
    SmallKeypointCNN,
    build_keypoint_model,
    load_backbone_weights,
)

__all__ = [
    "DigitModelConfig",
    "KeypointModelConfig",
    "KeypointNet",
    "SmallKeypointCNN",
    "build_digit_model",
    "build_keypoint_model",
    "load_backbone_weights",
]
