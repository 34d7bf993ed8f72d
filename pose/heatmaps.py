"""The heatmap target of top-down pose models: encode keypoints to Gaussians, decode them back.

Coordinates follow `pose.geometry`: `(x, y)` pixels, integer = pixel centre. A heatmap pixel
covers `stride` input pixels, so the centre of heatmap pixel `j` is the centre of that block of
input pixels:

    x_heatmap = (x_input + 0.5) / stride - 0.5        x_input = (x_heatmap + 0.5) * stride - 0.5

(stride 4: input x = 1.5 is heatmap x = 0). `encode` and `decode` both use this mapping, and with
it mirroring the input image (x -> W - 1 - x) mirrors the heatmap exactly (x -> w - 1 - x).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from pose.joints import flip_index


@dataclass(frozen=True)
class HeatmapCodec:
    """One Gaussian heatmap per joint, as in Simple Baselines and mmpose's MSRA heatmap codec.

    `refinement` picks the sub-pixel step of `decode`: "dark" (default) is DARK's Taylor
    expansion of the log of the smoothed heatmap; "quarter" is Simple Baselines' quarter-pixel
    shift of the argmax towards its higher neighbour.
    """

    input_size: tuple[int, int] = (192, 256)  # (w, h) of the model input
    heatmap_size: tuple[int, int] = (48, 64)  # (w, h), stride 4
    sigma: float = 2.0  # in heatmap pixels
    refinement: Literal["dark", "quarter"] = "dark"

    @property
    def stride(self) -> np.ndarray:
        """Input pixels per heatmap pixel, (x, y)."""
        return np.asarray(self.input_size, np.float64) / np.asarray(self.heatmap_size, np.float64)

    def encode(self, keypoints: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints (..., K, 2) in input pixels and visibility (..., K) (bool or 0/1 weights)
        -> heatmaps (..., K, h, w) float32 and weights (..., K) float32.

        Each map is a Gaussian of peak 1 centred at the real-valued keypoint (no rounding, so the
        target is unbiased), cut to zero beyond 3 sigma along x or y. A joint that is not visible
        or whose centre falls outside the heatmap gets an all-zero map and weight 0.
        """
        keypoints = np.asarray(keypoints, np.float64)
        visible = np.asarray(visible, np.float32)
        w, h = self.heatmap_size
        centre = (keypoints + 0.5) / self.stride - 0.5
        cx, cy = centre[..., 0], centre[..., 1]
        inside = (visible > 0) & (cx >= -0.5) & (cx <= w - 0.5) & (cy >= -0.5) & (cy <= h - 0.5)
        gauss_x = self._gaussian_1d(np.arange(w) - cx[..., None])
        gauss_y = self._gaussian_1d(np.arange(h) - cy[..., None])
        heatmaps = np.where(inside[..., None, None], gauss_y[..., :, None] * gauss_x[..., None, :], 0.0)
        return heatmaps.astype(np.float32), np.where(inside, visible, 0.0).astype(np.float32)

    def _gaussian_1d(self, offsets: np.ndarray) -> np.ndarray:
        # A separable product of two cut 1-D Gaussians: the usual square window of radius 3 sigma.
        values = np.exp(-(offsets**2) / (2 * self.sigma**2))
        return np.where(np.abs(offsets) <= 3 * self.sigma, values, 0.0)

    def decode(self, heatmaps: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Heatmaps (N, K, h, w) -> keypoints (N, K, 2) float64 in input pixels and scores (N, K)
        float32 (each map's maximum).

        The argmax is refined to sub-pixel precision (see `refinement`); joints whose argmax lies
        on the heatmap's border row or column keep the integer argmax.
        """
        if isinstance(heatmaps, torch.Tensor):
            heatmaps = heatmaps.detach().float().cpu().numpy()
        heatmaps = np.asarray(heatmaps, np.float32)
        n, k, h, w = heatmaps.shape
        flat = heatmaps.reshape(n, k, h * w)
        index = flat.argmax(-1)
        scores = np.take_along_axis(flat, index[..., None], -1)[..., 0]
        x, y = index % w, index // w
        if self.refinement == "dark":
            offset = _dark_offset(heatmaps, x, y, self.sigma)
        else:
            offset = _quarter_offset(heatmaps, x, y)
        keypoints = np.stack([x, y], -1) + offset
        return (keypoints + 0.5) * self.stride - 0.5, scores


def _neighbourhood(maps: np.ndarray, x: np.ndarray, y: np.ndarray, sigma: float = 0.0):
    """The maps (N, K, h, w) around (x, y) (N, K): (N, K, 3, 3) float64, [..., 1 + dy, 1 + dx] read
    at (x + dx, y + dy), smoothed first by a Gaussian of `sigma` when it is > 0
    (`_smoothed_neighbourhood`); and the mask (N, K) of positions whose 3x3 neighbourhood lies
    inside the map (elsewhere the values are around the nearest such position)."""
    h, w = maps.shape[-2:]
    xc, yc = np.clip(x, 1, w - 2), np.clip(y, 1, h - 2)
    return _smoothed_neighbourhood(maps, xc, yc, sigma), (xc == x) & (yc == y)


def _quarter_offset(heatmaps: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Simple Baselines: move 0.25 px towards the higher neighbour along x and along y. (N, K, 2)."""
    values, interior = _neighbourhood(heatmaps, x, y)
    step = 0.25 * np.sign(np.stack([values[..., 1, 2] - values[..., 1, 0], values[..., 2, 1] - values[..., 0, 1]], -1))
    return np.where(interior[..., None], step, 0.0)


def _dark_offset(heatmaps: np.ndarray, x: np.ndarray, y: np.ndarray, sigma: float) -> np.ndarray:
    """DARK (Zhang et al., CVPR 2020): one Newton step on the log of the heatmap, smoothed first
    with a Gaussian of the target's sigma. The log of a Gaussian is a quadratic, so on a clean
    target this step lands on the true centre; the smoothing makes a network's noisy maps closer
    to a Gaussian. Returns (N, K, 2)."""
    # Zero padding, as DARK and mmpose do: a mirrored border adds mass near the edge and pulls
    # joints there by up to 1.5 heatmap px; zeros leave < 0.4 px (< 0.01 px from 4 px inwards).
    # Only the 3x3 neighbourhood of each argmax is needed, so only it is smoothed: the same values as
    # smoothing the whole map, at a cost that does not grow with the map (smoothing whole maps on the
    # CPU held back annotate's keypoint model on a GPU).
    smooth, interior = _neighbourhood(heatmaps, x, y, sigma)
    logs = np.log(np.maximum(smooth, 1e-10))

    def at(dx: int, dy: int) -> np.ndarray:
        return logs[..., 1 + dy, 1 + dx]

    centre = at(0, 0)
    gx, gy = (at(1, 0) - at(-1, 0)) / 2, (at(0, 1) - at(0, -1)) / 2
    dxx, dyy = at(1, 0) - 2 * centre + at(-1, 0), at(0, 1) - 2 * centre + at(0, -1)
    dxy = (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1)) / 4
    det = dxx * dyy - dxy**2
    is_peak = interior & (det > 1e-12) & (dxx < 0)  # the Hessian is negative definite
    det = np.where(is_peak, det, 1.0)
    offset = -np.stack([dyy * gx - dxy * gy, dxx * gy - dxy * gx], -1) / det[..., None]
    # The step is only trusted within the argmax's own neighbourhood.
    return np.where(is_peak[..., None], np.clip(offset, -1.0, 1.0), 0.0)


def _smoothed_neighbourhood(heatmaps: np.ndarray, xc: np.ndarray, yc: np.ndarray, sigma: float) -> np.ndarray:
    """The maps (N, K, h, w) smoothed by a Gaussian of `sigma` (zeros outside the map, kernel cut at
    3 sigma, as scipy.ndimage.gaussian_filter(mode="constant", truncate=3)), read only at the 3x3
    neighbourhood of (xc, yc) (N, K): (N, K, 3, 3) float64, [..., 1 + dy, 1 + dx]. `sigma` 0: the
    maps' own values."""
    radius = int(3.0 * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2) if sigma > 0 else np.ones(1)
    taps /= taps.sum()
    n, k, h, w = heatmaps.shape
    span = np.arange(-1 - radius, 2 + radius)  # rows/columns yc - 1 - radius .. yc + 1 + radius
    rows, cols = yc[..., None] + span, xc[..., None] + span  # (N, K, S)
    inside = ((rows >= 0) & (rows < h))[..., :, None] & ((cols >= 0) & (cols < w))[..., None, :]
    rows, cols = np.clip(rows, 0, h - 1)[..., :, None], np.clip(cols, 0, w - 1)[..., None, :]
    patches = heatmaps[np.arange(n)[:, None, None, None], np.arange(k)[None, :, None, None], rows, cols]
    patches = np.where(inside, patches.astype(np.float64), 0.0)  # zeros outside the map
    windows = np.lib.stride_tricks.sliding_window_view
    along_x = windows(patches, 2 * radius + 1, axis=-1) @ taps  # (N, K, S, 3)
    return windows(along_x, 2 * radius + 1, axis=-2) @ taps  # (N, K, 3 rows, 3 columns)


def flip_heatmaps(heatmaps: torch.Tensor, shift: bool = False) -> torch.Tensor:
    """Heatmaps (N, K, h, w) predicted on a horizontally mirrored input -> heatmaps of the
    original input: mirror each map and swap left/right joints (`pose.joints.flip_index`).

    With this module's pixel-centre mapping the mirror is exact, so `shift` defaults to False.
    `shift=True` also moves the maps one pixel right (column 0 is kept), as Simple Baselines'
    flip test does: their targets use `x_heatmap = x_input / stride`, under which the mirrored map
    lands `1 - 1/stride` pixels left of the true place. Use it only for models trained that way.
    """
    index = torch.as_tensor(flip_index(), device=heatmaps.device)
    flipped = heatmaps.flip(-1).index_select(1, index)
    if shift:
        flipped = torch.cat([flipped[..., :1], flipped[..., :-1]], dim=-1)
    return flipped


def flip_test(output: torch.Tensor, output_on_flipped_input: torch.Tensor, shift: bool = False) -> torch.Tensor:
    """The flip-test heatmaps (N, K, h, w): the mean of the model's output on the input and its
    output on the mirrored input mapped back with `flip_heatmaps`."""
    return (output + flip_heatmaps(output_on_flipped_input, shift=shift)) / 2


def to_image_coordinates(keypoints_input: np.ndarray, image_from_input: np.ndarray) -> np.ndarray:
    """Keypoints (N, K, 2) in model-input pixels -> image pixels (N, K, 2) float64, through each
    sample's (2, 3) matrix `image_from_input` (N, 2, 3), e.g. `invert_affine(crop_affine(...))`."""
    keypoints = np.asarray(keypoints_input, np.float64)
    matrices = np.asarray(image_from_input, np.float64)
    return np.einsum("nij,nkj->nki", matrices[:, :, :2], keypoints) + matrices[:, None, :, 2]
