"""pose.topdown: crop conventions, the crops, rescoring with OKS-NMS, and the predictor."""

from __future__ import annotations

import numpy as np
import torch

from pose.geometry import apply_affine, crop_affine, invert_affine
from pose.keypoint_task import KeypointRecipe, TrainedPoseModel, predict
from pose.metrics import oks
from pose.models.keypoints import build_keypoint_model
from pose.topdown import CropConvention, NormalisedPoseModel, TopDownPredictor, cut_crops, rescore_and_suppress


def test_mmpose_convention_puts_the_box_centre_at_half_the_input():
    """MMPose's get_warp_matrix: the box centre lands on (w/2, h/2) and the padded, aspect-fixed
    box width spans w; keypoints come back as kp / input_size * scale + centre - scale / 2."""
    crop = CropConvention((192, 256), 1.25, "mmpose")
    center, scale = crop.center_scale(np.array([10.0, 20.0, 60.0, 100.0]))
    np.testing.assert_allclose(center, [40.0, 70.0])
    np.testing.assert_allclose(scale, [93.75, 125.0])  # h 100 * 1.25, w fixed to 192:256 of it
    warp, back = crop.matrices(center, scale)
    np.testing.assert_allclose(apply_affine(center, warp), [96.0, 128.0])
    np.testing.assert_allclose(apply_affine(center + [scale[0] / 2, 0], warp), [192.0, 128.0])
    points = np.array([[0.0, 0.0], [17.5, 200.25]])
    np.testing.assert_allclose(apply_affine(points, back), points / [192, 256] * scale + center - scale / 2)
    np.testing.assert_allclose(apply_affine(apply_affine(points, back), warp), points, atol=1e-9)


def test_udp_convention_centres_at_half_of_size_minus_one_and_maps_back_like_mmpose():
    """get_udp_warp_matrix: scale (w - 1) / box width, the box centre at ((w - 1)/2, (h - 1)/2);
    the back map stays MMPose's (UDP's decoder already scaled by (w - 1) / (W - 1))."""
    crop = CropConvention((192, 256), 1.25, "udp")
    center, scale = np.array([50.0, 80.0]), np.array([96.0, 128.0])
    warp, back = crop.matrices(center, scale)
    np.testing.assert_allclose(apply_affine(center, warp), [95.5, 127.5], atol=1e-4)
    np.testing.assert_allclose(warp[0, 0], 191 / 96, rtol=1e-6)
    np.testing.assert_allclose(back, CropConvention((192, 256), 1.25, "mmpose").matrices(center, scale)[1])


def test_pose_jobs_convention_is_the_training_warp():
    crop = CropConvention((96, 128), 1.25, "pose-jobs")
    center, scale = crop.center_scale(np.array([5.0, 6.0, 40.0, 80.0]))
    warp, back = crop.matrices(center, scale)
    np.testing.assert_allclose(warp, crop_affine(center, scale, (96, 128)))
    np.testing.assert_allclose(back, invert_affine(warp))


def test_cut_crops_returns_inputs_back_maps_and_padded_areas():
    image = np.zeros((120, 160, 3), np.uint8)
    image[40:80, 60:100] = 200  # a bright square in the middle of the first box
    crop = CropConvention((48, 64), 1.25, "mmpose")
    boxes = np.array([[60.0, 40.0, 40.0, 40.0], [0.0, 0.0, 30.0, 60.0]])
    crops, backs, areas = cut_crops(image, boxes, crop)
    assert crops.shape == (2, 64, 48, 3) and crops.dtype == np.uint8 and backs.shape == (2, 2, 3)
    np.testing.assert_allclose(areas, [50.0 * 50.0 * 64 / 48, 56.25 * 75.0])  # 30 wide grown to 45 = 0.75 x 60
    assert crops[0, 32, 24].min() == 200 and crops[0, 0, 0].max() == 0  # centre bright, corner outside the square
    empty = cut_crops(image, np.zeros((0, 4)), crop)
    assert empty[0].shape == (0, 64, 48, 3) and empty[1].shape == (0, 2, 3) and empty[2].shape == (0,)


def test_rescoring_and_oks_nms_on_padded_areas():
    """Score = box score x mean of the joints above 0.2; of two near-identical poses only the
    better survives, and the OKS between them is computed with the padded areas."""
    rng = np.random.default_rng(0)
    pose = np.concatenate([rng.uniform(0, 100, (17, 2)), np.full((17, 1), 0.9)], axis=1)
    near = pose.copy()
    near[:, :2] += 1.0
    far = pose.copy()
    far[:, :2] += 60.0
    far[:5, 2] = 0.1  # five joints below the threshold do not count
    keypoints = np.stack([near, pose, far])
    kept, scores = rescore_and_suppress(keypoints, np.array([0.5, 0.8, 0.7]), np.array([5000.0, 5000.0, 5000.0]))
    np.testing.assert_allclose(scores, [0.45, 0.72, 0.63])
    assert list(kept) == [1, 2]
    # With a tiny area the same 1-pixel shift is far in OKS terms: nothing is suppressed.
    assert oks(near, pose, 2.0) < 0.9
    kept, _ = rescore_and_suppress(keypoints, np.array([0.5, 0.8, 0.7]), np.array([2.0, 2.0, 2.0]))
    assert list(kept) == [1, 2, 0]


class _FixedPeaks(torch.nn.Module):
    """A 'network' whose heatmaps have one peak per joint where a bright pixel is."""

    def forward(self, x):
        pooled = torch.nn.functional.avg_pool2d(x.mean(1, keepdim=True), 4)
        return pooled.repeat(1, 17, 1, 1)


class _ArgmaxDecoder:
    def decode(self, output, flipped):
        heatmaps = output if flipped is None else (output + flipped.flip(-1)) / 2
        n, k, h, w = heatmaps.shape
        flat = heatmaps.reshape(n, k, -1)
        index = flat.argmax(-1).numpy()
        points = np.stack([index % w, index // w], -1) * 4.0 + 1.5
        return points.astype(np.float64), flat.max(-1).values.numpy().astype(np.float32)


def test_predictor_maps_keypoints_back_to_the_image():
    """A bright spot in the image comes back at its own image position through any convention."""
    image = np.zeros((200, 300, 3), np.uint8)
    image[118:122, 148:152] = 255  # spot centred at (149.5, 119.5)
    box = np.array([[100.0, 50.0, 100.0, 140.0]])
    for centring in ("mmpose", "pose-jobs", "udp"):
        model = NormalisedPoseModel(
            name="peaks",
            crop=CropConvention((96, 128), 1.25, centring),
            network=_FixedPeaks(),
            decoder=_ArgmaxDecoder(),
        )
        found = TopDownPredictor(model, flip_test=False)(image, box, np.array([0.9]))
        assert found["keypoints"].shape == (1, 17, 3) and list(found["kept"]) == [0]
        np.testing.assert_allclose(found["keypoints"][0, :, :2], np.tile([149.5, 119.5], (17, 1)), atol=3.0)


def test_trained_model_through_the_predictor_equals_predict():
    """A model trained here gives through TopDownPredictor what keypoint_task.predict gives."""
    torch.manual_seed(0)
    recipe = KeypointRecipe(input_size=(64, 96), deconv_channels=16)
    network = build_keypoint_model(recipe.model_config()).eval()
    model = TrainedPoseModel(network, recipe)
    crops = np.random.default_rng(1).integers(0, 255, (3, 96, 64, 3), dtype=np.uint8)
    backs = np.tile(np.array([[2.0, 0.0, 10.0], [0.0, 2.0, 20.0]]), (3, 1, 1))
    out = TopDownPredictor(model, flip_test=True).keypoints(crops, backs)
    points, scores, _ = predict(network, crops, flip_test=True, codec=recipe.codec())
    np.testing.assert_allclose(out[..., :2], points * 2.0 + [10.0, 20.0], atol=1e-3)
    np.testing.assert_allclose(out[..., 2], scores, atol=1e-6)
