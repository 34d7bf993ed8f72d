"""The heatmap codecs of the published checkpoints' frameworks, computed as they compute them: the keypoint
decoders, flip test included, and the training-target encoders.

Encoders (the `encode` half, for training; `encoder_for(codec, ...)` picks a heatmap one; RTMPose's SimCC labels:
`SimCCLabelEncoder`): `MSRAHeatmapEncoder`
(MMPose 1.x `MSRAHeatmap.encode` = the Simple Baselines / HRNet releases' `JointsDataset.generate_target`;
`unbiased=True`: DARK) and `UDPHeatmapEncoder` (MMPose 1.x `UDPHeatmap`, Gaussian). `encode(keypoints (N, K, 2)
in model-input pixels, visible (N, K))` -> heatmaps (N, K, h, w) float32, weights (N, K) float32, equal bit for bit
to MMPose 1.3.2's and the releases' targets (tests/data/goldens/targets_*.npz, tools/make_training_goldens.py):
the same float32 arguments go through numpy's float32 exp, as in the references (checked with numpy 1.26 and 2.4
on an AVX2 CPU). The whole batch is encoded in array operations, not MMPose's per-sample loops.

Each decoder is the `decode` half of a `pose.topdown.PoseModel`: `decode(output, flipped_output)` takes the
network's output on the crops (float32 torch tensor (N, K, h, w), or (simcc_x (N, K, Wx), simcc_y (N, K, Wy)) for
SimCC; on any device) and its output on the horizontally mirrored crops (or None: no flip test), and returns
keypoints (N, K, 2) float64 in model-input pixels and scores (N, K) float32.

- `MSRAHeatmapDecoder`: MMPose 1.x `MSRAHeatmap` (SimpleBaseline ResNets, HRNet; `unbiased=True` is DARK).
- `UDPHeatmapDecoder`: MMPose 1.x `UDPHeatmap` with Gaussian heatmaps (HRNet UDP).
- `SimCCDecoder`: MMPose 1.x `SimCCLabel` as `RTMCCHead` uses it (RTMPose).
- `SimpleBaselinesDecoder`: the original Simple Baselines and HRNet releases (`get_final_preds`).

"Model-input pixels" are each framework's own, the coordinates it maps back to the image with
kp / input_size * scale + centre - scale / 2 (`pose.topdown`'s "mmpose" and "udp" centrings):
MMPose MSRA/DARK and the releases: heatmap x * input_size / heatmap_size; UDP: heatmap x * input_size /
(heatmap_size - 1); SimCC: bin / split ratio. None of them is pose-jobs' pixel-centre convention (`pose.heatmaps`).

Exactness: MMPose decodes in float32 numpy (and OpenCV for DARK's and UDP's blur), so these decoders do the same
float32 operations in the same order, and reproduce OpenCV's float32 Gaussian blur (fused multiply-adds in its
order, see `opencv_gaussian_blur`): on random, flat, negative and border-peaked maps the keypoints equal MMPose's and
the releases' bit for bit (checked against MMPose 1.3.2 with opencv-python-headless 4.10 and 4.14 on an AVX2/FMA CPU).
Their quirks are kept on purpose, each where it happens (border rules, the -1 of non-positive maxima, UDP's reads
across neighbouring maps); a fix would change published accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pose.heatmaps import flip_test
from pose.joints import flip_index


def opencv_gaussian_kernel(kernel_size: int) -> np.ndarray:
    """The 1-D kernel (kernel_size,) float32 that OpenCV's GaussianBlur uses for `kernel_size` and sigma 0:
    exp(-x^2 / (2 sigma^2)) for x = -(n-1)/2 .. (n-1)/2, sigma = 0.3 * ((n - 1) / 2 - 1) + 0.8, normalised to sum
    1 in float64, then rounded to float32 (the kernel type OpenCV picks for float32 images).

    OpenCV takes kernels of size 1, 3, 5 and 7 from a fixed table instead: they are not offered here (no
    published model's decoder uses them)."""
    if kernel_size % 2 != 1 or kernel_size < 9:
        raise ValueError(
            f"blur kernel size must be odd and at least 9 (OpenCV tabulates smaller ones), got {kernel_size}"
        )
    sigma = 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8
    x = np.arange(kernel_size) - (kernel_size - 1) / 2
    taps = np.exp(-(x**2) / (2 * sigma**2))
    return (taps / taps.sum()).astype(np.float32)


def opencv_gaussian_blur(heatmaps: np.ndarray, kernel_size: int) -> np.ndarray:
    """MMPose's `gaussian_blur` of heatmaps (..., H, W) float32 -> (..., H, W) float32: each map padded with
    (kernel_size - 1) / 2 zeros on every side, blurred by cv2.GaussianBlur((kernel_size, kernel_size), 0), cut
    back, and rescaled so that its maximum is the original map's maximum.

    The padding is as wide as the kernel's radius, so OpenCV's default border (BORDER_REFLECT_101 of the padded
    map) never reaches a kept pixel: the blur equals a correlation with zeros outside the map. OpenCV filters
    float32 images separably in float32, rows first, with fused multiply-adds: along a row
    s = fma(p[t], k[t], s) for t = 0 .. n-1 from s = 0; down a column, with the symmetric kernel,
    s = r[0] * k[c] then s = fma(r[+j] + r[-j], k[c + j], s) for j = 1 .. radius. Done here in that order
    on x86 CPUs with AVX2 and FMA (what opencv-python's wheels dispatch to there), so the result is OpenCV's to
    the bit.
    """
    heatmaps = np.asarray(heatmaps, np.float32)
    h, w = heatmaps.shape[-2:]
    if heatmaps.size == 0:
        return heatmaps.copy()
    maps = heatmaps.reshape(-1, h, w)
    # In blocks of maps that stay in the CPU's cache, faster than all the maps at once.
    blurred = np.concatenate([_opencv_blur_zero_padded(maps[i : i + 32], kernel_size) for i in range(0, len(maps), 32)])
    blurred = blurred.reshape(heatmaps.shape)
    # MMPose restores each map's peak height; an all-zero map becomes NaN (0 / 0), as it does there.
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = heatmaps.max(axis=(-2, -1)) / blurred.max(axis=(-2, -1))
    return blurred * ratio[..., None, None]


def _opencv_blur_zero_padded(maps: np.ndarray, kernel_size: int) -> np.ndarray:
    """cv2.GaussianBlur of maps (M, H, W) float32 surrounded by zeros, in OpenCV's float32 operations -> (M, H, W).

    A float32 fma(a, b, c) is computed as a * b + c in float64, then rounded to float32: a * b is exact in float64
    for float32 a and b, and the double rounding of the sum differs from fma's single one in fewer than 1 in 2^29
    cases."""
    kernel = opencv_gaussian_kernel(kernel_size).astype(np.float64)
    radius = kernel_size // 2
    m, h, w = maps.shape
    padded = np.zeros((m, h, w + 2 * radius), np.float64)
    padded[..., radius : radius + w] = maps
    fma = np.empty((m, h, w), np.float64)
    # Rows filtered into the middle of a taller buffer: its zero margins are the filtered zero rows of the padding.
    tall = np.zeros((m, h + 2 * radius, w), np.float32)
    rows = tall[:, radius : radius + h]
    for t in range(kernel_size):
        np.multiply(padded[..., t : t + w], kernel[t], out=fma)
        fma += rows
        rows[...] = fma
    blurred = rows * np.float32(kernel[radius])
    pair = np.empty((m, h, w), np.float32)
    for j in range(1, radius + 1):
        np.add(tall[:, radius + j : radius + j + h], tall[:, radius - j : radius - j + h], out=pair)
        np.multiply(pair, kernel[radius + j], out=fma)
        fma += blurred
        blurred[...] = fma
    return blurred


def heatmap_maximum(heatmaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MMPose's `get_heatmap_maximum`: heatmaps (N, K, H, W) float32 -> the arg-max (x, y) (N, K, 2) int64 (first
    in row-major order on ties) and the maximum (N, K) float32. Where the maximum is <= 0 the position is (-1, -1):
    MMPose's marker for "no peak", which every MMPose decoder then carries to its output."""
    n, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, h * w)
    index = flat.argmax(-1)
    scores = np.take_along_axis(flat, index[..., None], -1)[..., 0]
    xy = np.stack([index % w, index // w], -1)
    return np.where((scores <= 0)[..., None], -1, xy), scores


def _at(maps: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """maps (N, K, H, W) read at integer (x, y) (N, K) -> (N, K); positions outside are clipped (callers mask them)."""
    h, w = maps.shape[-2:]
    index = np.clip(y, 0, h - 1) * w + np.clip(x, 0, w - 1)
    return np.take_along_axis(maps.reshape(maps.shape[:2] + (h * w,)), index[..., None], -1)[..., 0]


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


def _check_shape(heatmaps: np.ndarray, heatmap_size: tuple[int, int]) -> None:
    if heatmaps.shape[-2:] != (heatmap_size[1], heatmap_size[0]):
        raise ValueError(
            f"heatmaps of shape {tuple(heatmaps.shape)}, but the decoder expects (h, w) = {heatmap_size[::-1]}"
        )


def _flip_averaged_heatmaps(output: torch.Tensor, flipped_output: torch.Tensor | None, shift: bool) -> np.ndarray:
    """The heatmaps that MMPose's `HeatmapHead.predict` and the releases' `validate` decode, (N, K, H, W) float32.

    With a flip test both compute, on the network's device in float32: the flipped output mirrored along x, its
    joints swapped (COCO's left/right pairs), shifted one pixel right when `shift` (column 0 keeps its value),
    then (output + that) * 0.5. `pose.heatmaps.flip_test` is that computation ((a + b) / 2 is the same float32
    number as (a + b) * 0.5)."""
    if flipped_output is None:
        return _numpy(output)
    return _numpy(flip_test(output.float(), flipped_output.float(), shift=shift))


def _flip_averaged_maxima(
    output: torch.Tensor, flipped_output: torch.Tensor | None, shift: bool, heatmap_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What every heatmap decoder starts from: the flip-averaged heatmaps (N, K, H, W) float32
    (`_flip_averaged_heatmaps`), checked against `heatmap_size` (w, h), with their integer arg-maxima xy
    (N, K, 2) and maxima (N, K) (`heatmap_maximum`)."""
    heatmaps = _flip_averaged_heatmaps(output, flipped_output, shift)
    _check_shape(heatmaps, heatmap_size)
    xy, scores = heatmap_maximum(heatmaps)
    return heatmaps, xy, scores


@dataclass(frozen=True)
class MSRAHeatmapDecoder:
    """MMPose 1.x `MSRAHeatmap.decode` with the heatmap head's flip test: SimpleBaseline ResNet-50/101/152 and
    HRNet-W32/W48 (`td-hm_*_coco-*.py`), and their DARK variants (`td-hm_*_dark-*.py`, `unbiased=True`).

    - Flip test (`HeatmapHead.predict`): see `_flip_averaged_heatmaps`. Every COCO td-hm config of these models,
      DARK included, sets `test_cfg=dict(flip_test=True, flip_mode='heatmap', shift_heatmap=True)`: keep
      `shift_flipped=True` for them.
    - Arg-max and score: `heatmap_maximum` on the averaged maps; the score is the map's maximum, negative or not.
      A non-positive maximum gives the position (-1, -1), which neither refinement moves: (-1, -1) * stride.
    - `unbiased=False`: the quarter step of `refine_keypoints`. x moves 0.25 towards the higher of its two
      neighbours when 1 < x < W - 1 and 0 < y (column 1 and row 0 never move along x); y moves when
      1 < y < H - 1 and 0 < x; equal neighbours do not move.
    - `unbiased=True` (DARK, `refine_keypoints_dark`): the maps blurred by `opencv_gaussian_blur`
      (`blur_kernel_size` 11 in all these configs but td-hm_res152_dark 384x288, which sets 17), floored at 1e-10,
      log, then one Newton step x -= H^-1 g with g the central difference and the Hessian from
      dxx = (m[x+2] - 2 m[x] + m[x-2]) / 4 (a step of 2), dxy = (m[x+1,y+1] - m[x+1,y-1] - m[x-1,y+1] +
      m[x-1,y-1]) / 4, all in float32; only where 1 < x < W - 2 and 1 < y < H - 2 and the float32 determinant is
      not 0. The step is not bounded.
    - To input pixels: x * (input_size / heatmap_size), in float32 as MMPose has it.
    """

    input_size: tuple[int, int] = (192, 256)  # (w, h)
    heatmap_size: tuple[int, int] = (48, 64)  # (w, h)
    unbiased: bool = False
    blur_kernel_size: int = 11
    shift_flipped: bool = True

    def decode(self, output: torch.Tensor, flipped_output: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray]:
        """Heatmaps (N, K, H, W) and those of the mirrored crops (or None) -> keypoints (N, K, 2) float64 in input
        pixels, scores (N, K) float32."""
        heatmaps, xy, scores = _flip_averaged_maxima(output, flipped_output, self.shift_flipped, self.heatmap_size)
        if self.unbiased:
            keypoints = _dark_step(heatmaps, xy, self.blur_kernel_size)
        else:
            keypoints = _mmpose_quarter_step(heatmaps, xy)
        stride = (np.asarray(self.input_size) / np.asarray(self.heatmap_size)).astype(np.float32)
        return (keypoints * stride).astype(np.float64), scores


def _mmpose_quarter_step(heatmaps: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """MMPose's `refine_keypoints` on arg-maxima xy (N, K, 2) -> (N, K, 2) float32 heatmap coordinates."""
    h, w = heatmaps.shape[-2:]
    x, y = xy[..., 0], xy[..., 1]
    # MMPose's own bounds, off by one against Simple Baselines' (1 < x < W - 1 and 1 < y < H - 1 for both axes).
    along_x = (1 < x) & (x < w - 1) & (0 < y) & (y < h)
    along_y = (1 < y) & (y < h - 1) & (0 < x) & (x < w)
    dx = np.where(along_x, _at(heatmaps, x + 1, y) - _at(heatmaps, x - 1, y), np.float32(0))
    dy = np.where(along_y, _at(heatmaps, x, y + 1) - _at(heatmaps, x, y - 1), np.float32(0))
    return xy.astype(np.float32) + np.sign(np.stack([dx, dy], -1)) * np.float32(0.25)


def _dark_step(heatmaps: np.ndarray, xy: np.ndarray, blur_kernel_size: int) -> np.ndarray:
    """MMPose's `refine_keypoints_dark` on arg-maxima xy (N, K, 2) -> (N, K, 2) float32 heatmap coordinates."""
    h, w = heatmaps.shape[-2:]
    logs = np.log(np.maximum(opencv_gaussian_blur(heatmaps, blur_kernel_size), np.float32(1e-10)))
    x, y = xy[..., 0], xy[..., 1]

    def m(dx: int, dy: int) -> np.ndarray:
        return _at(logs, x + dx, y + dy)

    half, quarter = np.float32(0.5), np.float32(0.25)
    # Every expression below keeps MMPose's order of float32 operations.
    gx, gy = half * (m(1, 0) - m(-1, 0)), half * (m(0, 1) - m(0, -1))
    dxx = quarter * (m(2, 0) - 2 * m(0, 0) + m(-2, 0))
    dxy = quarter * (m(1, 1) - m(1, -1) - m(-1, 1) + m(-1, -1))
    dyy = quarter * (m(0, 2) - 2 * m(0, 0) + m(0, -2))
    refined = (1 < x) & (x < w - 2) & (1 < y) & (y < h - 2) & (dxx * dyy - dxy**2 != 0)
    hessian = np.stack([np.stack([dxx, dxy], -1), np.stack([dxy, dyy], -1)], -2)[refined]
    gradient = np.stack([gx, gy], -1)[refined][..., None]
    keypoints = xy.astype(np.float32)
    keypoints[refined] += np.matmul(-_inverse(hessian), gradient)[..., 0]
    return keypoints


def _inverse(matrices: np.ndarray) -> np.ndarray:
    """np.linalg.inv of (M, 2, 2) float32 (what MMPose calls, matrix by matrix); a matrix that LAPACK finds exactly
    singular although its float32 determinant is not 0 (where MMPose would raise) gets a zero inverse: no step."""
    try:
        return np.linalg.inv(matrices)
    except np.linalg.LinAlgError:
        out = np.zeros_like(matrices)
        for i, matrix in enumerate(matrices):
            try:
                out[i] = np.linalg.inv(matrix)
            except np.linalg.LinAlgError:
                pass
        return out


@dataclass(frozen=True)
class UDPHeatmapDecoder:
    """MMPose 1.x `UDPHeatmap.decode` with heatmap_type 'gaussian' and the heatmap head's flip test: HRNet-W32/W48
    UDP (`td-hm_hrnet-w*_udp-*_coco-*.py`; input cut with `pose.topdown`'s "udp" centring).

    - Flip test: `_flip_averaged_heatmaps` without the shift (the UDP configs set `shift_heatmap=False`: UDP's
      warp already makes the mirrored heatmap exact).
    - Arg-max and score: `heatmap_maximum` (score = the map's maximum).
    - `refine_keypoints_dark_udp`: maps blurred by `opencv_gaussian_blur` (`blur_kernel_size` 11, the UDPHeatmap
      default that all these configs keep, 384x288 included), clipped to [1e-3, 50], log, padded by one pixel
      with edge values; one Newton step at every keypoint (borders included) from first and second central
      differences of step 1 and a mixed difference (m[x+1,y+1] - m[x+1,y] - m[x,y+1] + 2 m - m[x-1,y] -
      m[x,y-1] + m[x-1,y-1]) / 2, with the Hessian + float32 eps * I inverted in float64 and the step applied
      to float32 coordinates. MMPose reads the neighbours by flat index into the stacked padded maps of one crop,
      so a "no peak" (-1, -1) keypoint reads its up and left neighbours from the end of the previous joint's
      padded map (the last joint's for joint 0): reproduced, as its output position is part of MMPose's result.
    - To input pixels: x * input_size / (heatmap_size - 1), in float64.
    """

    input_size: tuple[int, int] = (192, 256)  # (w, h)
    heatmap_size: tuple[int, int] = (48, 64)  # (w, h)
    blur_kernel_size: int = 11
    shift_flipped: bool = False

    def decode(self, output: torch.Tensor, flipped_output: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray]:
        """Heatmaps (N, K, H, W) and those of the mirrored crops (or None) -> keypoints (N, K, 2) float64 in input
        pixels, scores (N, K) float32."""
        heatmaps, xy, scores = _flip_averaged_maxima(output, flipped_output, self.shift_flipped, self.heatmap_size)
        keypoints = _udp_dark_step(heatmaps, xy, self.blur_kernel_size)
        w, h = self.heatmap_size
        return keypoints.astype(np.float64) / [w - 1, h - 1] * np.asarray(self.input_size), scores


def _udp_dark_step(heatmaps: np.ndarray, xy: np.ndarray, blur_kernel_size: int) -> np.ndarray:
    """MMPose's `refine_keypoints_dark_udp` on arg-maxima xy (N, K, 2) -> (N, K, 2) float32 heatmap coordinates."""
    n, k, h, w = heatmaps.shape
    logs = np.log(np.clip(opencv_gaussian_blur(heatmaps, blur_kernel_size), np.float32(1e-3), np.float32(50.0)))
    # One flat array per crop of its K edge-padded maps, read by flat index as MMPose reads it: an index below 0
    # wraps to the end (numpy's negative indexing there).
    flat = np.pad(logs, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge").reshape(n, k * (h + 2) * (w + 2))
    row = w + 2
    index = (xy[..., 0] + 1) + (xy[..., 1] + 1) * row + (h + 2) * row * np.arange(k)

    def m(offset: int) -> np.ndarray:
        return np.take(flat, np.mod(index + offset, flat.shape[1]) + flat.shape[1] * np.arange(n)[:, None])

    centre, right, left, down, up = m(0), m(1), m(-1), m(row), m(-row)
    half = np.float32(0.5)
    # MMPose's order of float32 operations, term by term.
    gradient = np.stack([half * (right - left), half * (down - up)], -1)[..., None]
    dxx = right - 2 * centre + left
    dyy = down - 2 * centre + up
    dxy = half * (m(row + 1) - right - down + centre + centre - left - up + m(-row - 1))
    hessian = np.stack([np.stack([dxx, dxy], -1), np.stack([dxy, dyy], -1)], -2)
    # float32 eps times float64 I: the sum, its inverse and the step are float64.
    inverse = np.linalg.inv(hessian + np.finfo(np.float32).eps * np.eye(2))
    step = np.einsum("aimn,aink->aimk", inverse, gradient)[..., 0]
    return (xy.astype(np.float32) - step).astype(np.float32)


@dataclass(frozen=True)
class SimCCDecoder:
    """MMPose 1.x `SimCCLabel.decode` as RTMPose's `RTMCCHead.predict` uses it (`simcc_split_ratio` 2.0,
    `use_dark` and `decode_visibility` off, `test_cfg=dict(flip_test=True)` in the RTMPose COCO configs).

    - Flip test (`flip_vectors`): the flipped x vectors reversed and both axes' joints swapped, no shift; then
      (output + flipped) * 0.5 per axis, in float32 on the network's device.
    - `get_simcc_maximum`: x = arg-max of the x vector, y = arg-max of the y vector (first on ties); the score is
      the smaller of the two maxima, raw (RTMCCHead normalises nothing, no softmax: scores are logits, not
      probabilities). Where the score is <= 0 the position is (-1, -1) bins.
    - To input pixels: bin / simcc_split_ratio, in float32.
    """

    input_size: tuple[int, int] = (192, 256)  # (w, h)
    simcc_split_ratio: float = 2.0

    def decode(
        self, output: tuple[torch.Tensor, torch.Tensor], flipped_output: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(simcc_x (N, K, Wx), simcc_y (N, K, Wy)) and those of the mirrored crops (or None) -> keypoints
        (N, K, 2) float64 in input pixels, scores (N, K) float32."""
        simcc_x, simcc_y = (o.float() for o in output)
        bins = round(self.input_size[0] * self.simcc_split_ratio), round(self.input_size[1] * self.simcc_split_ratio)
        if (simcc_x.shape[-1], simcc_y.shape[-1]) != bins:
            raise ValueError(
                f"SimCC vectors of {simcc_x.shape[-1]} and {simcc_y.shape[-1]} bins, but the decoder expects {bins}"
            )
        if flipped_output is not None:
            index = torch.as_tensor(flip_index(), device=simcc_x.device)
            flipped_x, flipped_y = (o.float().index_select(1, index) for o in flipped_output)
            simcc_x = (simcc_x + flipped_x.flip(-1)) * 0.5
            simcc_y = (simcc_y + flipped_y) * 0.5
        simcc_x, simcc_y = _numpy(simcc_x), _numpy(simcc_y)
        x, y = simcc_x.argmax(-1), simcc_y.argmax(-1)
        max_x, max_y = simcc_x.max(-1), simcc_y.max(-1)
        scores = np.where(max_x > max_y, max_y, max_x)  # not np.minimum: a NaN in y alone keeps x, as in MMPose
        bins_xy = np.where((scores <= 0)[..., None], -1, np.stack([x, y], -1)).astype(np.float32)
        return (bins_xy / np.float32(self.simcc_split_ratio)).astype(np.float64), scores


@dataclass(frozen=True)
class SimpleBaselinesDecoder:
    """The original releases' decoding: microsoft/human-pose-estimation.pytorch (`pose_resnet_*`) and
    leoxiaobin/deep-high-resolution-net.pytorch (`pose_hrnet_*`), `lib/core/function.py` `validate` and
    `lib/core/inference.py` `get_final_preds`; the two repositories' code is the same.

    - Flip test (`flip_back`, then `SHIFT_HEATMAP`): `_flip_averaged_heatmaps`. Their published results use
      `--flip-test` (Simple Baselines' README) or `TEST.FLIP_TEST: true` (the HRNet COCO yamls), with
      `TEST.SHIFT_HEATMAP` true (Simple Baselines' default config; set in the HRNet yamls): `shift_flipped=True`.
    - `get_max_preds`: the arg-max, and the score = the map's maximum; where the maximum is <= 0 the position is
      (0, 0) (their mask multiplies it by 0; MMPose uses -1).
    - `TEST.POST_PROCESS` (true in both: Simple Baselines' default, the HRNet yamls): the quarter step, on both
      axes only when 1 < x < W - 1 and 1 < y < H - 1 (MMPose's bounds differ by one, see `MSRAHeatmapDecoder`).
    - To input pixels: x * input_size / heatmap_size. They map heatmap coordinates to the image with
      `transform_preds` (the affine of `get_affine_transform(centre, scale, 0, heatmap_size, inv=1)`), which is
      kp_heatmap / heatmap_size * box + centre - box / 2, the same as `pose.topdown`'s "mmpose" back-map of these
      input pixels (kp_input / input_size * box + centre - box / 2), up to the float32 rounding of the points
      `get_affine_transform` builds its matrix from (at most 1.4e-4 px in images ~1,500 px wide).
    """

    input_size: tuple[int, int] = (192, 256)  # (w, h)
    heatmap_size: tuple[int, int] = (48, 64)  # (w, h)
    post_process: bool = True
    shift_flipped: bool = True

    def decode(self, output: torch.Tensor, flipped_output: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray]:
        """Heatmaps (N, K, H, W) and those of the mirrored crops (or None) -> keypoints (N, K, 2) float64 in input
        pixels, scores (N, K) float32."""
        heatmaps, xy, scores = _flip_averaged_maxima(output, flipped_output, self.shift_flipped, self.heatmap_size)
        h, w = heatmaps.shape[-2:]
        xy = np.where((scores > 0)[..., None], xy, 0)
        keypoints = xy.astype(np.float32)
        if self.post_process:
            x, y = xy[..., 0], xy[..., 1]
            inside = (1 < x) & (x < w - 1) & (1 < y) & (y < h - 1)
            diff = np.stack(
                [_at(heatmaps, x + 1, y) - _at(heatmaps, x - 1, y), _at(heatmaps, x, y + 1) - _at(heatmaps, x, y - 1)],
                -1,
            )
            keypoints += np.where(inside[..., None], np.sign(diff) * np.float32(0.25), np.float32(0))
        return keypoints.astype(np.float64) * (np.asarray(self.input_size) / np.asarray(self.heatmap_size)), scores


# --- Training targets: the `encode` half ----------------------------------------------------------------------


@dataclass(frozen=True)
class MSRAHeatmapEncoder:
    """The Gaussian heatmap targets of MMPose 1.x `MSRAHeatmap.encode` and of the Simple Baselines and HRNet
    releases' `JointsDataset.generate_target` (the same code in both; `unbiased=False`), or of DARK
    (`MSRAHeatmap(unbiased=True)`), computed as they compute them.

    `encode(keypoints, visible)`: keypoints (N, K, 2) (x, y) in model-input pixels of the framework's frame (where
    the decoder's output lives: heatmap x * input_size / heatmap_size), visible (N, K) 0/1 -> heatmaps
    (N, K, h, w) float32, weights (N, K) float32. N is a batch of samples, one person each, with a map per
    sample and joint; MMPose's N (the instances of one image, merged into one map per joint with a maximum) is
    not what N means here: MMPose asserts N == 1 and this is its encode done for each sample.

    Both variants, per joint, in the heatmap frame x / (input_size / heatmap_size) (the stride rounded to
    float32 as MMPose's `scale_factor`; the divide in the keypoints' dtype promoted with float32: MMPose's
    pipeline gives float32 keypoints, the releases' `joints` are float64 and their float64 stride equals MMPose's
    float32 one for all their sizes, a stride of 4):
    - Biased (`unbiased=False`): the centre mu = int(x + 0.5), truncated toward zero (Python's `int()` in the
      releases, `astype(np.int64)` in MMPose), so -1.5 < x < 0.5 all centre at 0. A window of
      2 * 3 sigma + 1 pixels from ul = int(mu - 3 sigma) to br = int(mu + 3 sigma + 1) holds
      exp(-(dx^2 + dy^2) / (2 sigma^2)) in float32, peak 1 at mu; its part inside the map is pasted, the rest cut.
    - Unbiased (DARK): the float centre, exp(-((X - x)^2 + (Y - y)^2) / (2 sigma^2)) over the whole map (not cut at
      3 sigma: a value is float32 zero only where d^2 / (2 sigma^2) > 103, d > 14.4 sigma). In float32, as
      MMPose computes it from its float32 keypoints (and under numpy 1 from any keypoints).
    - Weight: `visible`, set to 0 for a visible joint whose window lies wholly off the map by the releases' test
      ul_x >= w or ul_y >= h or br_x < 0 or br_y < 0 (for DARK with the float x - 3 sigma and x + 3 sigma + 1).
      So a joint a little outside the input keeps weight 1 and its cut Gaussian; one quirk kept: br_x = 0
      (mu_x = -3 sigma - 1) passes the test, so that joint keeps weight 1 with an empty map.
    Invisible joints (visible < 0.5) get a zero map and keep their weight, 0.
    """

    input_size: tuple[int, int] = (192, 256)  # (w, h)
    heatmap_size: tuple[int, int] = (48, 64)  # (w, h)
    sigma: float = 2.0
    unbiased: bool = False

    def encode(self, keypoints: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """keypoints (N, K, 2) input pixels, visible (N, K) 0/1 -> heatmaps (N, K, h, w) float32, weights (N, K)
        float32."""
        stride = (np.asarray(self.input_size) / np.asarray(self.heatmap_size)).astype(np.float32)
        centres, visible = _heatmap_frame(keypoints, visible, stride)
        w, h = self.heatmap_size
        if not self.unbiased:
            return _windowed_gaussians(centres, visible, w, h, float(self.sigma), sub_pixel=False)
        return _full_map_gaussians(centres, visible, w, h, float(self.sigma))


@dataclass(frozen=True)
class UDPHeatmapEncoder:
    """The Gaussian heatmap targets of MMPose 1.x `UDPHeatmap.encode` with heatmap_type 'gaussian'
    (`generate_udp_gaussian_heatmaps`; HRNet UDP configs), computed as it computes them.

    `encode(keypoints, visible)` as `MSRAHeatmapEncoder.encode` (N samples, one person each), but the heatmap
    frame is UDP's: x / ((input_size - 1) / (heatmap_size - 1)), the scale rounded to float32 as MMPose's
    `scale_factor` (191 / 47 for 192 -> 48). mu = int(x + 0.5) (truncated toward zero) places the same window
    and weight rule as the biased MSRA target, but the window holds the Gaussian of the float centre:
    exp(-((j - c_x)^2 + (i - c_y)^2) / (2 sigma^2)) for window pixel (j, i), with c = 3 sigma + (x - mu) computed
    in float64 and the rest in float32. That is MMPose's arithmetic under numpy 1 (for which it was written);
    numpy 2's promotion rules make MMPose compute the same Gaussian in float64 and round it once to float32:
    the two differ by a few float32 units in the last place (at most 1.8e-7 on the goldens).
    """

    input_size: tuple[int, int] = (192, 256)  # (w, h)
    heatmap_size: tuple[int, int] = (48, 64)  # (w, h)
    sigma: float = 2.0

    def encode(self, keypoints: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """keypoints (N, K, 2) input pixels, visible (N, K) 0/1 -> heatmaps (N, K, h, w) float32, weights (N, K)
        float32."""
        scale = ((np.asarray(self.input_size) - 1) / (np.asarray(self.heatmap_size) - 1)).astype(np.float32)
        centres, visible = _heatmap_frame(keypoints, visible, scale)
        w, h = self.heatmap_size
        return _windowed_gaussians(centres, visible, w, h, float(self.sigma), sub_pixel=True)


@dataclass(frozen=True)
class SimCCLabelEncoder:
    """The training labels of MMPose 1.x `SimCCLabel.encode` with Gaussian smoothing (`smoothing_type='gaussian'`,
    `normalize=False`, as RTMPose's configs set it), computed as it computes them.

    `encode(keypoints, visible)`: keypoints (N, K, 2) (x, y) in model-input pixels, visible (N, K) 0/1 ->
    ((x_labels (N, K, Wx), y_labels (N, K, Wy)) float32, weights (N, K) float32), Wx = round(w x split_ratio).
    Per joint: the bin centre mu = round(x x split_ratio) (half to even, numpy's `around`, on the float32 product
    of the float32 keypoint), then along each axis exp(-(b - mu)^2 / (2 sigma^2)) over every bin b (peak 1, no
    3-sigma cut; sigma in bins, (x, y)). In float32 throughout (b - mu, its square, the divide by
    float32(2 sigma^2), numpy's float32 exp): MMPose's arithmetic under numpy 1, for which it was written; under
    numpy 2 the int64 mu promotes b - mu to float64 and the label is rounded to float32 once, a few units in
    the last place apart.
    Weight: `visible`, set to 0 for a visible joint whose 3-sigma window lies wholly outside the bins on either
    axis (mu - 3 sigma >= W or mu + 3 sigma + 1 < 0, per axis, in float64), and then no labels are written. So
    a joint a little outside the input keeps weight 1 and labels that peak off the vector. Invisible joints
    (visible < 0.5) get zero labels and keep their weight.
    """

    input_size: tuple[int, int] = (192, 256)  # (w, h)
    sigma: tuple[float, float] = (4.9, 5.66)  # (x, y), in bins
    split_ratio: float = 2.0

    @property
    def bins(self) -> tuple[int, int]:
        """(Wx, Wy): (384, 512) at 192x256 and split ratio 2."""
        return tuple(int(np.around(v * self.split_ratio)) for v in self.input_size)

    def encode(self, keypoints: np.ndarray, visible: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
        """keypoints (N, K, 2) input pixels, visible (N, K) 0/1 -> ((x_labels (N, K, Wx), y_labels (N, K, Wy))
        float32, weights (N, K) float32)."""
        keypoints = np.asarray(keypoints, np.float32)
        weights = np.array(visible, np.float32)
        mu = np.around(keypoints * np.float32(self.split_ratio)).astype(np.int64)  # (N, K, 2)
        sigma = np.asarray(self.sigma, np.float64)
        radius = sigma * 3
        size = np.asarray(self.bins)
        labelled = weights >= 0.5
        off = ((mu - radius >= size) | (mu + radius + 1 < 0)).any(-1)
        weights[labelled & off] = 0
        drawn = labelled & ~off
        labels = []
        for axis in (0, 1):
            bins = np.arange(size[axis], dtype=np.float32)
            d = bins - mu[..., axis, None].astype(np.float32)  # exact: |mu| is far below 2^24
            values = np.exp(-(d * d) / np.float32(2 * sigma[axis] ** 2))
            labels.append(np.where(drawn[..., None], values, np.float32(0)).astype(np.float32))
        return (labels[0], labels[1]), weights


def encoder_for(
    codec: str, input_size: tuple[int, int], heatmap_size: tuple[int, int], sigma: float
) -> MSRAHeatmapEncoder | UDPHeatmapEncoder:
    """The training-target encoder of a heatmap codec: "msra" -> the biased `MSRAHeatmapEncoder` (Simple
    Baselines, HRNet, MMPose's MSRAHeatmap), "dark" -> `MSRAHeatmapEncoder(unbiased=True)`, "udp" ->
    `UDPHeatmapEncoder`. Sizes are (w, h): 256x192 crops are input_size (192, 256), heatmap_size (48, 64)."""
    if codec == "msra":
        return MSRAHeatmapEncoder(input_size, heatmap_size, sigma, unbiased=False)
    if codec == "dark":
        return MSRAHeatmapEncoder(input_size, heatmap_size, sigma, unbiased=True)
    if codec == "udp":
        return UDPHeatmapEncoder(input_size, heatmap_size, sigma)
    raise ValueError(f"unknown heatmap codec {codec!r}: expected 'msra', 'dark' or 'udp'")


def _heatmap_frame(keypoints: np.ndarray, visible: np.ndarray, stride: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """keypoints (N, K, 2) / stride (2,) float32, in the keypoints' dtype promoted with float32 (as MMPose divides
    by its float32 `scale_factor`), and visible as float32 (N, K)."""
    keypoints = np.asarray(keypoints)
    if keypoints.dtype.kind != "f":
        keypoints = keypoints.astype(np.float64)
    visible = np.asarray(visible, np.float32)
    if keypoints.ndim != 3 or keypoints.shape[-1] != 2 or visible.shape != keypoints.shape[:2]:
        raise ValueError(f"keypoints must be (N, K, 2) and visible (N, K), got {keypoints.shape} and {visible.shape}")
    return keypoints / stride, visible


def _window_bounds(centres: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The integer centre mu = int(x + 0.5) and the window's ul = int(mu - radius), br = int(mu + radius + 1),
    each (N, K, 2) int64, truncated toward zero as Python's int() and numpy's astype do."""
    mu = (centres + 0.5).astype(np.int64)
    return mu, (mu - radius).astype(np.int64), (mu + radius + 1).astype(np.int64)


def _weights(visible: np.ndarray, off_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MMPose's rule: joints with visible >= 0.5 are drawn unless off the map, where their weight becomes 0;
    the others keep their `visible` as weight. -> (drawn (N, K) bool, weights (N, K) float32)."""
    labelled = visible >= 0.5
    return labelled & ~off_map, np.where(labelled & off_map, np.float32(0), visible).astype(np.float32)


def _windowed_gaussians(
    centres: np.ndarray, visible: np.ndarray, w: int, h: int, sigma: float, sub_pixel: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The biased MSRA (sub_pixel=False) or UDP (sub_pixel=True) target of heatmap-frame centres (N, K, 2)."""
    n, k = visible.shape
    radius = sigma * 3
    size = 2 * radius + 1
    mu, ul, br = _window_bounds(centres, radius)
    drawn, weights = _weights(visible, (ul[..., 0] >= w) | (ul[..., 1] >= h) | (br[..., 0] < 0) | (br[..., 1] < 0))
    grid = np.arange(0, size, 1, dtype=np.float32)  # window pixel offsets, as the references' np.arange
    denominator = np.float32(2 * sigma**2)
    if sub_pixel:
        # UDP: the window's centre moved by the sub-pixel part; float32 - int64 scalars make float64 in numpy,
        # then numpy 1 rounds that scalar to float32 against the float32 grid.
        c = (size // 2 + (centres[drawn].astype(np.float64) - mu[drawn])).astype(np.float32)
        dx2 = (grid - c[:, 0, None]) ** 2  # (M, S)
        dy2 = (grid - c[:, 1, None]) ** 2
        windows = np.exp(-(dx2[:, None, :] + dy2[:, :, None]) / denominator)  # (M, S, S) [row, column]
    else:
        d2 = (grid - size // 2) ** 2
        windows = np.broadcast_to(
            np.exp(-(d2[None, :] + d2[:, None]) / denominator), (int(drawn.sum()),) + d2.shape * 2
        )
    heatmaps = _paste(windows, ul[drawn], br[drawn], np.flatnonzero(drawn), n * k, w, h)
    return heatmaps.reshape(n, k, h, w), weights


def _paste(
    windows: np.ndarray, ul: np.ndarray, br: np.ndarray, maps: np.ndarray, num_maps: int, w: int, h: int
) -> np.ndarray:
    """Zero maps (num_maps, h, w) float32 with windows (M, S, S) pasted at ul (M, 2) into maps[maps] (M,), each
    cut to the heatmap and to x < br_x, y < br_y (the references' slices g[g_y1:g_y2, g_x1:g_x2])."""
    out = np.zeros(num_maps * h * w + 1, np.float32)  # the last element takes every write that is cut
    s = windows.shape[-1]
    offsets = np.arange(s)
    xs = ul[:, 0, None] + offsets  # (M, S) heatmap columns of the window columns
    ys = ul[:, 1, None] + offsets
    keep_x = (xs >= 0) & (xs < np.minimum(br[:, 0, None], w))
    keep_y = (ys >= 0) & (ys < np.minimum(br[:, 1, None], h))
    index = maps[:, None, None] * (h * w) + ys[:, :, None] * w + xs[:, None, :]
    index = np.where(keep_y[:, :, None] & keep_x[:, None, :], index, num_maps * h * w)
    out[index] = windows
    return out[:-1].reshape(num_maps, h, w)


def _full_map_gaussians(
    centres: np.ndarray, visible: np.ndarray, w: int, h: int, sigma: float
) -> tuple[np.ndarray, np.ndarray]:
    """The DARK target of heatmap-frame centres (N, K, 2) (MMPose's `generate_unbiased_gaussian_heatmaps`)."""
    radius = sigma * 3
    left_top, right_bottom = centres - radius, centres + radius + 1
    off_map = (
        (left_top[..., 0] >= w) | (left_top[..., 1] >= h) | (right_bottom[..., 0] < 0) | (right_bottom[..., 1] < 0)
    )
    drawn, weights = _weights(visible, off_map)
    mu = centres.astype(np.float32)
    dx2 = (np.arange(w, dtype=np.float32) - mu[..., 0, None]) ** 2  # (N, K, w)
    dy2 = (np.arange(h, dtype=np.float32) - mu[..., 1, None]) ** 2  # (N, K, h)
    # -(dx^2 + dy^2) / (2 sigma^2), then exp, in place: the same float32 operations as MMPose's, without
    # allocating a batch of maps for each.
    heatmaps = dx2[..., None, :] + dy2[..., :, None]
    np.negative(heatmaps, out=heatmaps)
    np.divide(heatmaps, np.float32(2 * sigma**2), out=heatmaps)
    np.exp(heatmaps, out=heatmaps)
    heatmaps[~drawn] = 0
    return heatmaps, weights
