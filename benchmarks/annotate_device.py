"""The annotate job's per-image work on one device, without Ray: how fast the models and the work
around them run on a GPU, and how busy the GPU is.

    python benchmarks/annotate_device.py --images DIR --device cuda --lanes 1,2,4
    python benchmarks/annotate_device.py --families rtmpose-m,hrnet-w32,resnet50 --device cuda --precision bf16

It imports no Ray (only `pose`, and `jobs.models` to read run folders), so it runs where Ray is not
installed, e.g. a lent GPU machine, and prints, on the same images:
- the model-only rates: the detector on images already on the device, `--detector-batch` at a
  time; the keypoint model (flip test) on person inputs already cut, `--keypoint-batch` at a time;
- the pipeline: images decoded on `--decode-threads` threads (`pose.feed.prefetch`), then, in
  each of L lanes (threads, like L detector + keypoint actor pairs sharing the GPU): detector,
  person inputs cut on the CPU, keypoint model, coordinates mapped back to the image. images/s and
  the GPU's busy fraction (NVML's utilisation: the share of time a kernel was running), sampled
  every 50 ms while the lanes run.

Without `--detector` / `--keypoints` (run folders from `train-detector` / `train-keypoints`, local)
the models are untrained (nothing is downloaded) and the detector's person logit is raised so that
it reports persons. That makes every proposal a person, which sends 1,000 boxes per image through
NMS: use a trained detector for the detector's real rate. `--max-persons` caps the persons per
image as the synthetic scenes have them.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path

import numpy as np
import torch
from _workload import cut_persons

from jobs.models import load_detector, load_keypoint_model
from pose.feed import prefetch
from pose.heatmaps import to_image_coordinates
from pose.images import IMAGE_SUFFIXES, decode_image
from pose.keypoint_task import KeypointRecipe, predict
from pose.models.detector import ARCHITECTURES, DetectorConfig, build_detector, detect
from pose.models.keypoints import build_keypoint_model
from pose.precision import PRECISIONS, Precision, inference_precision


class GpuBusy:
    """Samples NVML's GPU utilisation every `period` s on a thread; `mean()` of the samples."""

    def __init__(self, device: torch.device, period: float = 0.05):
        self.samples: list[int] = []
        self.period = period
        self.handle = None
        if device.type == "cuda":
            try:
                import pynvml

                pynvml.nvmlInit()
                self.handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
                self.nvml = pynvml
            except Exception as error:  # no NVML: report no figure rather than a wrong one
                print(f"GPU utilisation not available: {error}")

    def __enter__(self):
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while self.running and self.handle is not None:
            self.samples.append(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)
            time.sleep(self.period)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()

    def mean(self) -> float:
        return float(np.mean(self.samples)) / 100 if self.samples else float("nan")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def detector_only(
    detector, images: list[np.ndarray], device, batch: int, repeats: int, arithmetic: Precision = Precision()
) -> float:
    tensors = [torch.from_numpy(np.array(image)).permute(2, 0, 1).to(device) for image in images]
    with arithmetic.autocast(device):
        detect(detector, tensors[:batch])
        synchronize(device)
        started = time.perf_counter()
        for _ in range(repeats):
            for start in range(0, len(tensors), batch):
                detect(detector, tensors[start : start + batch])
    synchronize(device)
    return repeats * len(tensors) / (time.perf_counter() - started)


def keypoints_only(
    model,
    inputs: np.ndarray,
    recipe: KeypointRecipe,
    device,
    batch: int,
    repeats: int,
    amp_dtype=None,
    channels_last: bool = False,
) -> float:
    codec = recipe.codec()
    on_device = torch.from_numpy(inputs).to(device)
    predict(model, on_device[:batch], flip_test=True, codec=codec, amp_dtype=amp_dtype, channels_last=channels_last)
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        for start in range(0, len(on_device), batch):
            predict(
                model,
                on_device[start : start + batch],
                flip_test=True,
                codec=codec,
                amp_dtype=amp_dtype,
                channels_last=channels_last,
            )
    synchronize(device)
    return repeats * len(on_device) / (time.perf_counter() - started)


def pipeline(
    paths: list[Path],
    detector,
    keypoint_model,
    recipe,
    device,
    *,
    lanes: int,
    decode_threads: int,
    detector_batch: int,
    keypoint_batch: int,
    max_persons: int,
    threshold: float,
    arithmetic: Precision = Precision(),
    channels_last: bool = False,
) -> tuple[float, float]:
    """images/s and the GPU's busy fraction of decode -> detect -> cut -> keypoints in `lanes`
    threads, both models in `arithmetic`'s precision (annotate's `--precision`), the keypoint
    model's inputs channels-last when it is."""
    codec = recipe.codec()
    batches = [paths[i : i + detector_batch] for i in range(0, len(paths), detector_batch)]
    decoded = prefetch(
        batches,
        lambda chunk: [decode_image(path.read_bytes()) for path in chunk],
        decode_threads,
        ahead=2 * decode_threads + lanes,
    )
    lock = threading.Lock()
    done = [0]

    def lane():
        while True:
            with lock:
                images = next(decoded, None)
            if images is None:
                return
            with arithmetic.autocast(device):
                found = detect(detector, images, device)
            inputs, matrices = [], []
            for image, result in zip(images, found):
                pixels, affine = cut_persons(image, result, recipe.crop(), threshold, max_persons)
                inputs.append(pixels)
                matrices.append(affine)
            persons, affines = np.concatenate(inputs), np.concatenate(matrices)
            for start in range(0, len(persons), keypoint_batch):
                points, _, _ = predict(
                    keypoint_model,
                    persons[start : start + keypoint_batch],
                    flip_test=True,
                    codec=codec,
                    amp_dtype=arithmetic.amp_dtype,
                    channels_last=channels_last,
                )
                to_image_coordinates(points, affines[start : start + keypoint_batch])
            with lock:
                done[0] += len(images)

    with GpuBusy(device) as busy:
        started = time.perf_counter()
        threads = [threading.Thread(target=lane) for _ in range(lanes)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        synchronize(device)
        seconds = time.perf_counter() - started
    return done[0] / seconds, busy.mean()


def family_rates(families: list[str], device: torch.device, precision: str, batch: int, persons: int) -> None:
    """persons/s of the Ray-free top-down predictor (`pose.topdown.TopDownPredictor`: inputs,
    forward, flip forward, decoding, back map) for published families at 256x192, random weights in
    their published layout, on crops already cut."""
    from pose.checkpoints import CheckpointSpec, build_network, pose_model
    from pose.topdown import TopDownPredictor

    crops = np.random.default_rng(0).integers(0, 256, (persons, 256, 192, 3), dtype=np.uint8)
    backs = np.tile(np.eye(2, 3), (persons, 1, 1))
    arithmetic = inference_precision(device, precision)
    for family in families:
        spec = CheckpointSpec("mmpose", family, (192, 256), "simcc" if family.startswith("rtmpose") else "msra")
        predictor = TopDownPredictor(
            pose_model(spec, build_network(spec)), device=device, precision=arithmetic, batch_size=batch
        )
        predictor.keypoints(crops[:batch], backs[:batch])  # kernels chosen, memory allocated
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        predictor.keypoints(crops, backs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        print(
            f"{family:<10} {persons / seconds:8.0f} persons/s  "
            f"({arithmetic.describe()}, batch {batch}, flip test, {persons} crops on {device})",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--images",
        type=Path,
        default=None,
        help="a folder of images (e.g. a synthetic COCO val2017/); required unless --families",
    )
    parser.add_argument(
        "--families",
        default=None,
        help="only time the top-down predictor of these published families (e.g. rtmpose-m,hrnet-w32,resnet50)",
    )
    parser.add_argument("--persons", type=int, default=1024, help="crops timed per family with --families")
    parser.add_argument("--count", type=int, default=256, help="images used")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--detector", type=Path, default=None, help="a train-detector run folder (default: an untrained --arch)"
    )
    parser.add_argument(
        "--keypoints",
        type=Path,
        default=None,
        help="a train-keypoints run folder (default: an untrained --recipe model)",
    )
    parser.add_argument("--arch", choices=ARCHITECTURES, default="fasterrcnn_resnet50_fpn_v2")
    parser.add_argument(
        "--recipe",
        choices=["cpu", "coco"],
        default="coco",
        help="keypoint model: the CPU default or Simple Baselines' ResNet-50 at 256x192",
    )
    parser.add_argument("--detector-batch", type=int, default=8, help="annotate's GPU default")
    parser.add_argument("--keypoint-batch", type=int, default=128, help="annotate's GPU default")
    parser.add_argument("--max-persons", type=int, default=4)
    parser.add_argument(
        "--person-threshold", type=float, default=0.3, help="person score that gets keypoints (annotate's default)"
    )
    parser.add_argument(
        "--lanes", default="1,2,4", help="comma-separated numbers of detector+keypoint lanes sharing the device"
    )
    parser.add_argument("--decode-threads", type=int, default=8)
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="the models' arithmetic in the detector-alone and pipeline runs, as annotate's --precision",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.families:
        family_rates(args.families.split(","), device, args.precision, args.keypoint_batch, args.persons)
        return
    if args.images is None:
        parser.error("--images is required (unless --families)")
    torch.backends.cudnn.benchmark = True
    print(
        f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}, torch {torch.__version__}",
        flush=True,
    )

    paths = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[: args.count]
    if not paths:
        raise SystemExit(f"{args.images}: no images")
    torch.manual_seed(0)
    if args.detector:
        detector = load_detector(str(args.detector))
        config = detector.config
    else:
        config = DetectorConfig(arch=args.arch)
        detector = build_detector(config)
        with torch.no_grad():  # persons win over the classes the random weights favour
            detector.roi_heads.box_predictor.cls_score.bias[1] = 10.0
    arithmetic = inference_precision(device, args.precision)
    detector = arithmetic.prepare(detector.to(device).eval())
    if args.keypoints:
        keypoint_model, recipe = load_keypoint_model(str(args.keypoints))
    else:
        # "coco": Simple Baselines' network and input in pose-jobs' pipeline (the published families: --families)
        coco = KeypointRecipe(
            backbone="resnet50", backbone_stages=4, deconv_layers=3, deconv_channels=256, input_size=(192, 256)
        )
        recipe = coco if args.recipe == "coco" else KeypointRecipe()
        keypoint_model = build_keypoint_model(recipe.model_config())
    keypoint_model = keypoint_model.to(device).eval()
    channels_last = device.type == "cuda" or arithmetic.channels_last  # the keypoint model's memory format
    if channels_last:
        keypoint_model = keypoint_model.to(memory_format=torch.channels_last)

    images = [decode_image(path.read_bytes()) for path in paths]
    sizes = np.array([image.shape[:2] for image in images])
    print(
        f"{len(images)} images, median {int(np.median(sizes[:, 1]))}x{int(np.median(sizes[:, 0]))}; "
        f"detector {config.arch} "
        f"(short side {config.min_size}), keypoints {recipe.backbone} {recipe.input_size[0]}x{recipe.input_size[1]}",
        flush=True,
    )
    found = detect(detector, images[:1], device)
    inputs = []
    for image in images[:64]:
        result = detect(detector, [image], device)[0]
        inputs.append(cut_persons(image, result, recipe.crop(), args.person_threshold, args.max_persons)[0])
    persons = np.concatenate(inputs)
    per_image = len(persons) / 64
    if not len(persons):
        raise SystemExit("the detector found no persons to time the keypoint model on")
    del found

    print(f"precision: {arithmetic.describe()}", flush=True)
    detector_rate = detector_only(detector, images, device, args.detector_batch, 1, arithmetic)
    keypoint_rate = keypoints_only(
        keypoint_model,
        persons,
        recipe,
        device,
        args.keypoint_batch,
        4,
        amp_dtype=arithmetic.amp_dtype,
        channels_last=channels_last,
    )
    keypoint_bf16 = (
        keypoints_only(
            keypoint_model,
            persons,
            recipe,
            device,
            args.keypoint_batch,
            4,
            amp_dtype=torch.bfloat16,
            channels_last=channels_last,
        )
        if device.type == "cuda"
        else float("nan")
    )
    limit = 1 / (1 / detector_rate + per_image / keypoint_rate)
    print(f"detector alone (batch {args.detector_batch}):      {detector_rate:8.1f} images/s", flush=True)
    print(
        f"keypoints alone (batch {args.keypoint_batch}, flip): {keypoint_rate:8.1f} persons/s "
        f"(bf16: {keypoint_bf16:.1f})",
        flush=True,
    )
    print(f"model-only limit at {per_image:.2f} persons/image: {limit:8.1f} images/s", flush=True)
    for lanes in (int(v) for v in args.lanes.split(",")):
        rate, busy = pipeline(
            paths,
            detector,
            keypoint_model,
            recipe,
            device,
            lanes=lanes,
            decode_threads=args.decode_threads,
            detector_batch=args.detector_batch,
            keypoint_batch=args.keypoint_batch,
            max_persons=args.max_persons,
            threshold=args.person_threshold,
            arithmetic=arithmetic,
            channels_last=channels_last,
        )
        print(
            f"pipeline, {lanes} lane(s):                 {rate:8.1f} images/s  "
            f"({rate / limit:.2f} of the limit), GPU busy {busy:.0%}",
            flush=True,
        )


if __name__ == "__main__":
    main()
