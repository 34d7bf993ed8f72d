"""Golden training targets of the frameworks themselves: the heatmaps and joint weights that MMPose 1.3.2's codecs
and the Simple Baselines / HRNet releases' `JointsDataset.generate_target` make from given keypoints.

For each size (`SIZES`: 256x192 with 64x48 heatmaps and sigma 2, 384x288 with 96x72 and sigma 3, as in the COCO
configs and yamls) this makes 8 samples x 17 joints of keypoints (`keypoints_for`: hand-placed cases on the
rounding, window and weight boundaries in the first four samples, random ones in the rest) and saves what each
framework computes from them in `tests/data/goldens/targets_<size>.npz` (format: `tools/README.md`). pose-jobs'
`pose.codecs` encoders are tested against these files; nothing here is imported by `pose/` or `jobs/`.

- MMPose: `MSRAHeatmap(input_size, heatmap_size, sigma).encode`, the same with `unbiased=True` (DARK) and
  `UDPHeatmap(input_size, heatmap_size, heatmap_type='gaussian', sigma)`.encode, one sample at a time (they
  assert one instance), on float32 keypoints and visibilities (the dtypes MMPose's pipeline hands them:
  `BaseCocoStyleDataset.parse_data_info` reads the annotation as float32, visible = min(1, v), and
  `TopdownAffine` writes the warped points into a float32 copy).
- The releases: `JointsDataset.generate_target(self, joints, joints_vis)` of Simple Baselines (and HRNet's, which
  adds only `use_different_joints_weight`, off in its COCO yamls), called on a bare object holding the attributes
  it reads (`num_joints`, `target_type`, `image_size`, `heatmap_size`, `sigma`, as their `__init__` sets them from
  the yaml), on float64 joints (what their `__getitem__` passes: `affine_transform` returns float64).
- numpy: MMPose's UDP Gaussian is computed in float32 under numpy 1 and in float64 (then rounded to float32)
  under numpy 2, whose promotion rules differ for a float64 scalar against a float32 array. So MMPose runs twice:
  in this process (numpy 2) and in a child process that puts numpy 1.26 first on its path (`--numpy1`). The file
  stores numpy 1's targets (the arithmetic MMPose 1.x was written for) and numpy 2's UDP heatmaps apart; the script
  checks that the other targets are the same under both.

Scratch environment (nothing of it goes into the repo or its venv), from the repo root: the MMPose sources, its
pure dependencies and the releases' code as in `tools/make_pose_goldens.py`'s docstring, and numpy 1:

    .venv/bin/python -m pip install --target /tmp/np1 numpy==1.26.4
    PYTHONPATH=/tmp/mmdeps:/tmp/mmref/src .venv/bin/python tools/make_training_goldens.py --numpy1 /tmp/np1

About 30 seconds. Import stubs: `_mmpose_stubs.install_import_stubs`, shared with `make_pose_goldens` (MMPose's
codecs import its registry, which imports modules never called here).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
from _mmpose_stubs import install_import_stubs

REPO = Path(__file__).resolve().parents[1]
RELEASES = Path(os.environ.get("POSE_RELEASES", "/tmp/orig"))
GOLDENS = REPO / "tests" / "data" / "goldens"
NUM_SAMPLES, NUM_JOINTS = 8, 17
DARK_SAMPLES = 4  # DARK's maps are dense: only the samples of hand-placed cases are stored (the weights of all)

# name -> (input_size (w, h), heatmap_size (w, h), sigma): the COCO configs' and yamls' values
SIZES = {
    "256x192": ((192, 256), (48, 64), 2),
    "384x288": ((288, 384), (72, 96), 3),
}


def keypoints_for(
    input_size: tuple[int, int], heatmap_size: tuple[int, int], sigma: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """keypoints (NUM_SAMPLES, NUM_JOINTS, 2) float64 in input pixels and visible (NUM_SAMPLES, NUM_JOINTS) float32.

    Samples 0-3 hold, along x and y in turn (the other coordinate inside), the cases where the targets' rules
    switch, in heatmap units u (input pixels = u * stride, stride 4): u + 0.5 on an integer and just below it,
    -1.5 < u < 0.5 (truncation toward zero centres them all at 0), the last centres whose 3-sigma window still
    touches the map on each side (mu = -3 sigma - 1 keeps weight 1 with nothing drawn) and the first that do not,
    DARK's float bounds u - 3 sigma >= size and u + 3 sigma + 1 < 0, UDP's frame ((size - 1) / (heatmap - 1)),
    far outside, and u = 0.5 - 2^-25 (in float32 u + 0.5 rounds up to 1, in float64 it does not). Samples 4-7 are
    random, from 10 pixels left of / above the crop to 10 pixels past it, 15% invisible."""
    w = heatmap_size[0]
    stride = input_size[0] / w
    r = 3 * sigma
    udp = (input_size[0] - 1) / (w - 1)
    units = [
        3.5,
        3.5 - 2**-20,
        10.0,
        0.0,
        0.5,
        0.5 - 2**-20,
        -0.49,
        -1.2,
        -1.5,
        -1.5 + 2**-20,
        -1.6,
        -r - 1.0,
        -r - 1.5,
        -r - 1.5 + 2**-18,
        -r - 2.0,
        -r - 2.5,
        -r - 2.5 + 2**-18,
        -r - 0.9,
        -r - 1.1,
        w - 0.5,
        w,
        w + r - 1,
        w + r - 0.5,
        w + r - 0.5 - 2**-18,
        w + r,
        -20.0,
        w + 30.0,
        0.5 - 2**-25,
    ]
    specials = [u * stride for u in units] + [u * udp for u in (w - 1, w + r - 0.5, -r - 1.5, -0.5)]
    keypoints = np.zeros((NUM_SAMPLES, NUM_JOINTS, 2))
    visible = np.ones((NUM_SAMPLES, NUM_JOINTS), np.float32)
    keypoints[:4] = rng.uniform(0, input_size, (4, NUM_JOINTS, 2))
    keypoints[4:] = rng.uniform(-10, np.asarray(input_size) + 10, (4, NUM_JOINTS, 2))
    visible[4:] = rng.random((4, NUM_JOINTS)) > 0.15
    flat = keypoints[:4].reshape(-1, 2)
    for i, value in enumerate(specials):  # x in samples 0-1, y (scaled to the height) in samples 2-3
        flat[i, 0] = value
        flat[2 * NUM_JOINTS + i, 1] = value * input_size[1] / input_size[0]
    # two invisible joints after the specials: one inside, one far outside (neither drawn, weight stays 0)
    assert len(specials) < 2 * NUM_JOINTS - 1
    visible[1, 16] = visible[3, 16] = 0
    flat[3 * NUM_JOINTS + 16] = [-500.0, 900.0]
    return keypoints, visible


def mmpose_targets(
    keypoints: np.ndarray, visible: np.ndarray, input_size, heatmap_size, sigma
) -> dict[str, np.ndarray]:
    """MMPose's encoders on float32 keypoints, one sample at a time -> heatmaps (N, K, h, w) and weights (N, K)."""
    from mmpose.codecs import MSRAHeatmap, UDPHeatmap

    codecs = {
        "msra": MSRAHeatmap(input_size=input_size, heatmap_size=heatmap_size, sigma=sigma),
        "dark": MSRAHeatmap(input_size=input_size, heatmap_size=heatmap_size, sigma=sigma, unbiased=True),
        "udp": UDPHeatmap(input_size=input_size, heatmap_size=heatmap_size, heatmap_type="gaussian", sigma=sigma),
    }
    out = {}
    for name, codec in codecs.items():
        encoded = [
            codec.encode(keypoints[i : i + 1].astype(np.float32), visible[i : i + 1]) for i in range(len(keypoints))
        ]
        out[f"{name}_heatmaps"] = np.stack([e["heatmaps"] for e in encoded])
        out[f"{name}_weights"] = np.concatenate([e["keypoint_weights"] for e in encoded])
    return out


def release_targets(
    release: str, keypoints: np.ndarray, visible: np.ndarray, input_size, heatmap_size, sigma
) -> dict[str, np.ndarray]:
    """`JointsDataset.generate_target` of a release ("sb" or "hr" under RELEASES) on float64 joints."""
    lib = RELEASES / release / "lib"
    sys.path.insert(0, str(lib))
    try:
        spec = importlib.util.spec_from_file_location(f"joints_dataset_{release}", lib / "dataset" / "JointsDataset.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(lib))
    dataset = types.SimpleNamespace(
        num_joints=NUM_JOINTS,
        target_type="gaussian",
        image_size=np.array(input_size),
        heatmap_size=np.array(heatmap_size),
        sigma=sigma,
        use_different_joints_weight=False,
    )
    heatmaps, weights = [], []
    for joints_xy, vis in zip(keypoints, visible):
        joints = np.zeros((NUM_JOINTS, 3))
        joints[:, :2] = joints_xy
        joints_vis = np.zeros((NUM_JOINTS, 3))
        joints_vis[:, 0] = joints_vis[:, 1] = vis
        target, target_weight = module.JointsDataset.generate_target(dataset, joints, joints_vis)
        heatmaps.append(target)
        weights.append(target_weight[:, 0])
    return {"heatmaps": np.stack(heatmaps), "weights": np.stack(weights)}


SIMCC = {
    "input_size": (192, 256),
    "sigma": (4.9, 5.66),
    "simcc_split_ratio": 2.0,
}  # rtmpose-m_8xb256-420e_coco-256x192.py
SIMCC_SAMPLES = 6


def simcc_keypoints_for(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """keypoints (SIMCC_SAMPLES, NUM_JOINTS, 2) float64 input pixels and visible (SIMCC_SAMPLES, NUM_JOINTS) float32
    for the SimCC labels. Samples 0-1 hold x cases, 2-3 the same as y cases (bins = 2 x pixels, 384 x 512 bins,
    3 sigma = 14.7 / 16.98 bins): halves that `around` rounds to even (x.25, x.75 pixels), the last bin centres whose
    window still reaches the vector on each side and the first that do not, far outside. Samples 4-5 random,
    from 20 pixels before the input to 20 past it, 15% invisible."""
    w, h = SIMCC["input_size"]
    keypoints = np.zeros((SIMCC_SAMPLES, NUM_JOINTS, 2))
    visible = np.ones((SIMCC_SAMPLES, NUM_JOINTS), np.float32)
    keypoints[:4] = rng.uniform(0, (w, h), (4, NUM_JOINTS, 2))
    keypoints[4:] = rng.uniform(-20, (w + 20, h + 20), (2, NUM_JOINTS, 2))
    visible[4:] = rng.random((2, NUM_JOINTS)) > 0.15
    for axis, size, sigma in ((0, w, SIMCC["sigma"][0]), (1, h, SIMCC["sigma"][1])):
        bins = 2 * size
        last_in, first_out = (
            np.floor(bins + 3 * sigma - 1e-9),
            -np.floor(3 * sigma + 1) - 1,
        )  # mu - 3s < bins; mu + 3s + 1 >= 0
        cases = [
            10.25,
            10.75,
            11.25,
            0.25,
            -0.25,
            size - 0.25,
            size,
            last_in / 2,
            (last_in + 1) / 2,
            (first_out + 1) / 2,
            first_out / 2,
            -100.0,
            size + 100.0,
            0.0,
            size - 0.5,
            3.0 + 2**-20,
            3.0 - 2**-20,
            5.25 + 2**-18,
        ]
        flat = keypoints[2 * axis : 2 * axis + 2].reshape(-1, 2)
        flat[: len(cases), axis] = cases
    visible[1, 16] = visible[3, 16] = 0  # an invisible joint inside: no labels, weight stays 0
    return keypoints, visible


def mmpose_simcc_labels(keypoints: np.ndarray, visible: np.ndarray) -> dict[str, np.ndarray]:
    """MMPose's `SimCCLabel(input_size, sigma, simcc_split_ratio, normalize=False, use_dark=False).encode`, one
    sample at a time on float32 keypoints, as RTMPose's `GenerateTarget` calls it."""
    from mmpose.codecs import SimCCLabel

    codec = SimCCLabel(
        input_size=SIMCC["input_size"],
        sigma=SIMCC["sigma"],
        simcc_split_ratio=SIMCC["simcc_split_ratio"],
        normalize=False,
        use_dark=False,
    )
    encoded = [codec.encode(keypoints[i : i + 1].astype(np.float32), visible[i : i + 1]) for i in range(len(keypoints))]
    return {
        "x_labels": np.concatenate([e["keypoint_x_labels"] for e in encoded]),
        "y_labels": np.concatenate([e["keypoint_y_labels"] for e in encoded]),
        "weights": np.concatenate([e["keypoint_weights"] for e in encoded]),
    }


def mmpose_kl_loss(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """MMPose's `KLDiscretLoss(use_target_weight=True, beta=10., label_softmax=True)` (RTMPose's head loss) on random
    logits, SimCC labels of random joints and 0/1 weights: 4 samples x 17 joints with 96 x 128 bins (the loss does
    not depend on the bin count; small vectors keep the file small). Also `beta=1, label_softmax=False`, the
    class defaults, so that the test sees both switches."""
    import torch
    from mmpose.codecs import SimCCLabel
    from mmpose.models.losses import KLDiscretLoss

    codec = SimCCLabel(input_size=(48, 64), sigma=(4.9, 5.66), simcc_split_ratio=2.0, normalize=False)
    joints = rng.uniform(-5, (53, 69), (4, NUM_JOINTS, 2)).astype(np.float32)
    encoded = [codec.encode(joints[i : i + 1], np.ones((1, NUM_JOINTS), np.float32)) for i in range(4)]
    labels_x = np.concatenate([e["keypoint_x_labels"] for e in encoded])
    labels_y = np.concatenate([e["keypoint_y_labels"] for e in encoded])
    weights = (rng.random((4, NUM_JOINTS)) > 0.2).astype(np.float32)
    logits_x = (rng.standard_normal((4, NUM_JOINTS, 96)) * 2).astype(np.float32)
    logits_y = (rng.standard_normal((4, NUM_JOINTS, 128)) * 2).astype(np.float32)
    t = torch.from_numpy
    rtmpose = KLDiscretLoss(use_target_weight=True, beta=10.0, label_softmax=True)
    plain = KLDiscretLoss()
    return {
        "logits_x": logits_x,
        "logits_y": logits_y,
        "labels_x": labels_x,
        "labels_y": labels_y,
        "weights": weights,
        "loss": np.float32(rtmpose((t(logits_x), t(logits_y)), (t(labels_x), t(labels_y)), t(weights)).item()),
        "loss_defaults": np.float32(plain((t(logits_x), t(logits_y)), (t(labels_x), t(labels_y)), t(weights)).item()),
    }


def run_mmpose_under_numpy1(numpy1: str, inputs: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, dict]:
    """This script's `--child` mode in a process whose path starts with numpy 1 -> {size: MMPose's targets}."""
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "in.npz", **{f"{k}:{i}": v for k, pair in inputs.items() for i, v in enumerate(pair)})
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([numpy1, os.environ.get("PYTHONPATH", "")]))
        subprocess.run([sys.executable, __file__, "--child", tmp], check=True, env=env)
        with np.load(Path(tmp) / "out.npz") as f:
            out = {k: f[k] for k in f.files}
    return {size: {k.split(":")[1]: v for k, v in out.items() if k.startswith(size + ":")} for size in inputs}


def child(tmp: str) -> None:
    import numpy

    assert numpy.__version__.startswith("1."), f"--child expects numpy 1 first on the path, got {numpy.__version__}"
    with np.load(Path(tmp) / "in.npz") as f:
        arrays = {k: f[k] for k in f.files}
    out = {}
    for size, (input_size, heatmap_size, sigma) in SIZES.items():
        targets = mmpose_targets(arrays[f"{size}:0"], arrays[f"{size}:1"], input_size, heatmap_size, sigma)
        out.update({f"{size}:{k}": v for k, v in targets.items()})
    simcc = mmpose_simcc_labels(arrays["simcc:0"], arrays["simcc:1"])
    out.update({f"simcc:{k}": v for k, v in simcc.items()})
    np.savez(Path(tmp) / "out.npz", **out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--numpy1", required=False, help="folder with numpy 1.x (pip install --target)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    install_import_stubs()
    if args.child:
        child(args.child)
        return
    if not args.numpy1:
        parser.error("--numpy1 is required (see the docstring)")
    assert np.__version__.startswith("2."), f"run the parent under numpy 2, got {np.__version__}"
    inputs = {size: keypoints_for(*SIZES[size], np.random.default_rng(seed)) for seed, size in enumerate(SIZES)}
    inputs["simcc"] = simcc_keypoints_for(np.random.default_rng(7))
    numpy1 = run_mmpose_under_numpy1(args.numpy1, inputs)
    write_simcc(inputs["simcc"], numpy1["simcc"])
    for size, (input_size, heatmap_size, sigma) in SIZES.items():
        keypoints, visible = inputs[size]
        ours = numpy1[size]
        numpy2 = mmpose_targets(keypoints, visible, input_size, heatmap_size, sigma)
        sb = release_targets("sb", keypoints, visible, input_size, heatmap_size, sigma)
        hr = release_targets("hr", keypoints, visible, input_size, heatmap_size, sigma)
        from mmpose.codecs import MSRAHeatmap

        codec = MSRAHeatmap(input_size=input_size, heatmap_size=heatmap_size, sigma=sigma)
        encoded = [codec.encode(keypoints[i : i + 1], visible[i : i + 1]) for i in range(len(keypoints))]
        mmpose_float64 = {
            "heatmaps": np.stack([e["heatmaps"] for e in encoded]),
            "weights": np.concatenate([e["keypoint_weights"] for e in encoded]),
        }
        report = {
            "numpy 1 == numpy 2 (msra, dark, weights)": all(
                np.array_equal(ours[k], numpy2[k]) for k in ours if k != "udp_heatmaps"
            ),
            "udp heatmaps numpy 2 - numpy 1, max |diff|": float(
                np.abs(numpy2["udp_heatmaps"] - ours["udp_heatmaps"]).max()
            ),
            "udp heatmaps differing values": int((numpy2["udp_heatmaps"] != ours["udp_heatmaps"]).sum()),
            "sb == hr": all(np.array_equal(sb[k], hr[k]) for k in sb),
            "sb == mmpose msra on float64 keypoints": all(np.array_equal(sb[k], mmpose_float64[k]) for k in sb),
            "sb != mmpose msra on float32 keypoints (joints)": int(
                (sb["heatmaps"] != ours["msra_heatmaps"]).any(axis=(2, 3)).sum()
            ),
        }
        print(size, json.dumps(report, indent=1))
        path = GOLDENS / f"targets_{size}.npz"
        np.savez_compressed(
            path,
            keypoints=keypoints,
            visible=visible,
            input_size=np.array(input_size),
            heatmap_size=np.array(heatmap_size),
            sigma=np.array(sigma),
            **{k: v[:DARK_SAMPLES] if k == "dark_heatmaps" else v for k, v in ours.items()},
            udp_heatmaps_numpy2_minus_numpy1=numpy2["udp_heatmaps"] - ours["udp_heatmaps"],
            release_heatmaps=sb["heatmaps"],
            release_weights=sb["weights"],
            source=np.array(
                "MMPose 1.3.2 codecs (numpy 1.26 and 2); Simple Baselines 49f3f44 / HRNet 6f69e46 "
                "lib/dataset/JointsDataset.py generate_target"
            ),
        )
        print(path, path.stat().st_size, "bytes")


def write_simcc(inputs: tuple[np.ndarray, np.ndarray], numpy1: dict[str, np.ndarray]) -> None:
    """targets_simcc_256x192.npz: MMPose's SimCC labels under numpy 1, numpy 2's differences, the KL loss."""
    keypoints, visible = inputs
    numpy2 = mmpose_simcc_labels(keypoints, visible)
    report = {
        "weights numpy 1 == numpy 2": bool(np.array_equal(numpy1["weights"], numpy2["weights"])),
        "labels numpy 2 - numpy 1, max |diff|": max(
            float(np.abs(numpy2[k] - numpy1[k]).max()) for k in ("x_labels", "y_labels")
        ),
        "joints with weight 0 (visible)": int(((numpy1["weights"] == 0) & (visible > 0)).sum()),
    }
    print("simcc", json.dumps(report, indent=1))
    loss = mmpose_kl_loss(np.random.default_rng(8))
    path = GOLDENS / "targets_simcc_256x192.npz"
    np.savez_compressed(
        path,
        keypoints=keypoints,
        visible=visible,
        input_size=np.array(SIMCC["input_size"]),
        sigma=np.array(SIMCC["sigma"]),
        split_ratio=np.array(SIMCC["simcc_split_ratio"]),
        **numpy1,
        x_labels_numpy2_minus_numpy1=numpy2["x_labels"] - numpy1["x_labels"],
        y_labels_numpy2_minus_numpy1=numpy2["y_labels"] - numpy1["y_labels"],
        **{f"kl_{k}": v for k, v in loss.items()},
        source=np.array("MMPose 1.3.2 SimCCLabel.encode (numpy 1.26 and 2), KLDiscretLoss (torch)"),
    )
    print(path, path.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
