"""Synthetic street numbers, written in SVHN's two formats (see `pose.formats.svhn`).

A house number is 1-5 digits in one of several fonts that ship with matplotlib, painted on a
plate or a wall with varied colours and contrast, then photographed badly: rotated, sheared,
seen in perspective, lit unevenly, blurred, noisy, sometimes JPEG-compressed. Cropped digits
follow SVHN's recipe for its format 2: each digit's box is widened to a square around its centre
and that square of the full-number image is resized to 32 x 32, so neighbouring digits show,
cut at the crop's edges; the label is the centre digit's.

Coordinates are pixels, origin at the image's top-left corner, x to the right, y down; a box
is (left, top, width, height). Labels follow SVHN: 1..9 for the digits 1-9 and 10 for 0.
Everything is deterministic given the numpy Generator (or the seed) passed in.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from pose.formats import svhn

# Digit fonts of matplotlib's mpl-data/fonts/ttf, chosen for legible, ordinary digits (the
# display, symbol and old-style-figure fonts there are left out).
FONT_FILES: tuple[str, ...] = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "cmr10.ttf",
    "cmss10.ttf",
    "cmb10.ttf",
    "cmtt10.ttf",
)
# Glyphs are rasterised once per font at these heights of the digit "0" (pixels); a number is
# laid out at the smallest one not far below its final size and warped from there, so the warp
# never shrinks by more than about 2x (bilinear sampling would alias) nor enlarges much.
_GLYPH_HEIGHTS = (24, 48, 96)
# How many digits a house number has, about as often as in SVHN (2.2 digits on average).
_LENGTH_PROBABILITIES = {1: 0.15, 2: 0.5, 3: 0.28, 4: 0.06, 5: 0.01}


def label_of_digit(digit: str) -> int:
    """SVHN's label of a digit character: "1".."9" -> 1..9, "0" -> 10."""
    return int(digit) or 10


@dataclass(frozen=True)
class _Glyph:
    mask: np.ndarray  # (h, w) uint8 coverage of the digit's ink
    left: int  # ink box relative to the pen position on the baseline (y up is negative)
    top: int
    advance: float  # pen movement to the next digit


def _font_dir() -> Path:
    # Located without importing matplotlib (which takes a while and is not needed here).
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("matplotlib is not installed; its bundled fonts draw the synthetic digits")
    return Path(spec.submodule_search_locations[0]) / "mpl-data" / "fonts" / "ttf"


@functools.cache
def _glyphs(font_file: str, digit_height: int) -> tuple[_Glyph, ...]:
    """The ten digits of a font, rasterised so that "0" is `digit_height` pixels tall."""
    path = os.fspath(_font_dir() / font_file)
    probe = ImageFont.truetype(path, 100)
    zero_box = probe.getbbox("0", anchor="ls")
    font = ImageFont.truetype(path, max(4, round(100 * digit_height / (zero_box[3] - zero_box[1]))))
    glyphs = []
    for digit in "0123456789":
        left, top, right, bottom = font.getbbox(digit, anchor="ls")
        canvas = Image.new("L", (right - left, bottom - top), 0)
        ImageDraw.Draw(canvas).text((-left, -top), digit, font=font, fill=255, anchor="ls")
        glyphs.append(_Glyph(np.asarray(canvas), left, top, font.getlength(digit)))
    return tuple(glyphs)


def random_number(rng: np.random.Generator) -> str:
    """A house number: 1-5 digits, no leading zero."""
    length = rng.choice(list(_LENGTH_PROBABILITIES), p=list(_LENGTH_PROBABILITIES.values()))
    first = str(rng.integers(1, 10))
    return first + "".join(str(d) for d in rng.integers(0, 10, size=length - 1))


def _random_colour(rng: np.random.Generator, luminance: float) -> np.ndarray:
    """An RGB colour (3,) float in 0..255 of a random hue and saturation with about this luminance."""
    tint = rng.uniform(0.0, 1.0, size=3) ** 2 * rng.uniform(0.0, 1.0)  # mostly greyish, some vivid
    colour = luminance + (tint - tint.mean())
    return np.clip(colour, 0.0, 1.0) * 255.0


def _colour_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(background, ink) RGB colours (3,) in 0..255 whose mean levels differ by 0.2-0.85 of
    black to white, low contrasts more often: hard, but legible."""
    contrast = 0.2 + 0.65 * rng.uniform(0.0, 1.0) ** 1.3
    while True:
        background = rng.uniform(0.0, 1.0)
        if background < contrast and background + contrast > 1.0:  # no room either way: move it
            background = contrast if rng.random() < 0.5 else 1.0 - contrast
        can_be_darker, can_be_lighter = background >= contrast, background + contrast <= 1.0
        # Dark-on-light is the more common street number, light-on-dark occurs too.
        darker = can_be_darker and (not can_be_lighter or rng.random() < 0.6)
        ink = background - contrast if darker else background + contrast
        background_rgb, ink_rgb = _random_colour(rng, background), _random_colour(rng, ink)
        if abs(background_rgb.mean() - ink_rgb.mean()) >= 0.8 * contrast * 255:  # tints can clip
            return background_rgb, ink_rgb


def _homography(rng: np.random.Generator, scale: float, centre: np.ndarray, half_size: np.ndarray) -> np.ndarray:
    """A 3x3 map from layout pixels to photo pixels: scale, squash, shear, rotate, tilt.

    centre, half_size: (2,) the number's ink box in layout pixels; the tilt makes one end of
    the number up to about 15 % larger than the other, whatever its length.
    """
    angle = np.deg2rad(np.clip(rng.normal(0.0, 6.0), -20.0, 20.0))
    shear = np.clip(rng.normal(0.0, 0.15), -0.4, 0.4)
    squash = rng.uniform(0.8, 1.25)  # narrow or wide lettering
    tilt = np.clip(rng.normal(0.0, 0.05, size=2), -0.15, 0.15) / half_size
    to_origin = np.array([[1, 0, -centre[0]], [0, 1, -centre[1]], [0, 0, 1]], dtype=np.float64)
    linear = np.array([[scale * squash, 0, 0], [0, scale, 0], [0, 0, 1]], dtype=np.float64)
    sheared = np.array([[1, shear, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float64)
    cos, sin = np.cos(angle), np.sin(angle)
    rotated = np.array([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]], dtype=np.float64)
    perspective = np.array([[1, 0, 0], [0, 1, 0], [tilt[0], tilt[1], 1]], dtype=np.float64)
    return rotated @ sheared @ linear @ perspective @ to_origin


def _apply(homography: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(n, 2) points (x, y) mapped by a 3x3 homography (homogeneous coordinates, divided out)."""
    mapped = points @ homography[:, :2].T + homography[:, 2]
    return mapped[:, :2] / mapped[:, 2:]


def _corners(left: float, top: float, right: float, bottom: float) -> np.ndarray:
    return np.array([[left, top], [right, top], [right, bottom], [left, bottom]], dtype=np.float64)


def _low_frequency_noise(rng: np.random.Generator, width: int, height: int, cells: int) -> np.ndarray:
    """(height, width) float32 smooth random field in about -1..1 (stains, weathering, shade)."""
    grid = rng.uniform(-1.0, 1.0, size=(cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC))


def _render(
    rng: np.random.Generator, digits: str, digit_height: float, margin: tuple[float, float]
) -> tuple[Image.Image, list[tuple[float, float, float, float]]]:
    """The scene of a full-number photo, before the camera's blur and noise, and its digit
    boxes (see render_number). margin: range of each side's margin, in digit heights."""
    font_file = FONT_FILES[rng.integers(len(FONT_FILES))]
    glyph_height = next((h for h in _GLYPH_HEIGHTS if h * 1.3 >= digit_height), _GLYPH_HEIGHTS[-1])
    glyphs = _glyphs(font_file, glyph_height)

    # Lay the digits out at glyph resolution: baseline y = 0, pen moving right.
    tracking = rng.uniform(-0.08, 0.3) * glyph_height  # below 0 neighbours touch
    pen, placed = 0.0, []
    for digit in digits:
        glyph = glyphs[int(digit)]
        x = round(pen + glyph.left + rng.normal(0.0, 0.02) * glyph_height)
        y = round(glyph.top + rng.normal(0.0, 0.02) * glyph_height)
        placed.append((glyph, x, y))
        pen += glyph.advance + tracking
    pad = glyph_height // 2  # room for the glyphs' bilinear fringe and for jitter
    ink_left = min(x for _, x, _ in placed) - pad
    ink_top = min(y for _, _, y in placed) - pad
    layout = np.zeros(
        (
            max(y + g.mask.shape[0] for g, _, y in placed) - ink_top + pad,
            max(x + g.mask.shape[1] for g, x, _ in placed) - ink_left + pad,
        ),
        dtype=np.uint8,
    )
    glyph_boxes = []  # (left, top, right, bottom) of each digit's ink in the layout
    for glyph, x, y in placed:
        glyph_height_px, glyph_width_px = glyph.mask.shape
        left, top = x - ink_left, y - ink_top
        region = layout[top : top + glyph_height_px, left : left + glyph_width_px]
        np.maximum(region, glyph.mask, out=region)  # overlapping digits (tight tracking) merge
        glyph_boxes.append((left, top, left + glyph_width_px, top + glyph_height_px))

    # Photograph it: warp the layout, then fit the photo around the number with some margin.
    all_ink = np.array(glyph_boxes, dtype=np.float64)
    number_box = (all_ink[:, 0].min(), all_ink[:, 1].min(), all_ink[:, 2].max(), all_ink[:, 3].max())
    centre = np.array([(number_box[0] + number_box[2]) / 2, (number_box[1] + number_box[3]) / 2])
    half_size = np.array([number_box[2] - number_box[0], number_box[3] - number_box[1]]) / 2
    warp = _homography(rng, digit_height / glyph_height, centre, half_size)
    ink_corners = _apply(warp, np.concatenate([_corners(*box) for box in glyph_boxes]))
    margins = rng.uniform(*margin, size=4) * digit_height  # left, top, right, bottom
    offset = margins[:2] - ink_corners.min(axis=0)
    warp = np.array([[1, 0, offset[0]], [0, 1, offset[1]], [0, 0, 1]]) @ warp
    width = int(np.ceil(np.ptp(ink_corners[:, 0]) + margins[0] + margins[2]))
    height = int(np.ceil(np.ptp(ink_corners[:, 1]) + margins[1] + margins[3]))
    inverse = np.linalg.inv(warp)
    ink = Image.fromarray(layout).transform(
        (width, height),
        Image.Transform.PERSPECTIVE,
        tuple((inverse / inverse[2, 2]).ravel()[:8]),
        resample=Image.Resampling.BILINEAR,
    )
    coverage = np.asarray(ink, dtype=np.float32) / 255.0

    # The wall, with an occasional plate behind the number; the ink contrasts with what it is on.
    wall, ink_colour = _colour_pair(rng)
    scene = Image.new("RGB", (width, height), tuple(int(c) for c in wall))
    draw = ImageDraw.Draw(scene)
    for _ in range(rng.poisson(0.7)):  # clutter: frames, edges, gutters
        xy = rng.uniform(0, 1, size=4) * [width, height, width, height]
        line_colour = tuple(int(c) for c in rng.uniform(0, 255, size=3))
        draw.line(list(xy), fill=line_colour, width=max(1, int(rng.uniform(0.03, 0.15) * digit_height)))
    if rng.random() < 0.6:
        plate_colour, ink_colour = _colour_pair(rng)
        border = rng.uniform(0.15, 0.6, size=2) * glyph_height
        plate = _apply(
            warp,
            _corners(
                number_box[0] - border[0],
                number_box[1] - border[1],
                number_box[2] + border[0],
                number_box[3] + border[1],
            ),
        )
        outline = tuple(int(c) for c in rng.uniform(0, 255, size=3)) if rng.random() < 0.4 else None
        draw.polygon(
            [tuple(p) for p in plate],
            fill=tuple(int(c) for c in plate_colour),
            outline=outline,
            width=max(1, round(0.06 * digit_height)),
        )
    background = np.asarray(scene, dtype=np.float32)
    background = background + rng.uniform(0, 30) * _low_frequency_noise(rng, width, height, 6)[..., None]

    if rng.random() < 0.25:  # a drop shadow or engraving edge under the ink
        shift = np.round(rng.normal(0, 0.04, size=2) * digit_height).astype(int)
        shadow = np.roll(coverage, tuple(shift[::-1]), axis=(0, 1))[..., None] * rng.uniform(0.3, 0.8)
        background = background * (1 - shadow)
    photo = background * (1 - coverage[..., None]) + ink_colour * coverage[..., None]

    # Light falls unevenly: overall gain and a ramp of +-25 % across the image in a random direction.
    direction = rng.normal(size=2)
    direction *= rng.uniform(0.0, 0.5) / (np.hypot(*direction) * max(width, height))
    ramp = (np.arange(width, dtype=np.float32)[None, :] - width / 2) * direction[0] + (
        np.arange(height, dtype=np.float32)[:, None] - height / 2
    ) * direction[1]
    photo *= (rng.uniform(0.8, 1.1) + ramp)[..., None]

    boxes = []
    for box in glyph_boxes:
        corners = _apply(warp, _corners(*box))
        (left, top), (right, bottom) = corners.min(axis=0), corners.max(axis=0)
        boxes.append((float(left), float(top), float(right - left), float(bottom - top)))
    image = Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8))
    if rng.random() < 0.15:  # something in front of the number: a wire, a branch, a pole
        xy = rng.uniform(0, 1, size=4) * [width, height, width, height]
        ImageDraw.Draw(image).line(
            list(xy),
            fill=tuple(int(c) for c in rng.uniform(0, 255, size=3)),
            width=max(1, int(rng.uniform(0.03, 0.1) * digit_height)),
        )
    return image, boxes


def _camera(rng: np.random.Generator, image: Image.Image, blur: float) -> np.ndarray:
    """What a street-level camera does to `image`: Gaussian blur (sigma `blur` pixels),
    sensor noise and, sometimes, JPEG compression. Returns (H, W, 3) uint8."""
    if blur > 0.3:
        image = image.filter(ImageFilter.GaussianBlur(blur))
    pixels = np.asarray(image, dtype=np.float32)
    pixels += rng.normal(0.0, rng.uniform(2.0, 12.0), size=pixels.shape).astype(np.float32)
    pixels = np.clip(pixels, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        encoded = io.BytesIO()
        Image.fromarray(pixels).save(encoded, format="JPEG", quality=int(rng.integers(20, 80)))
        pixels = np.asarray(Image.open(encoded).convert("RGB"))
    return pixels


def _blur_sigma(rng: np.random.Generator, digit_height: float) -> float:
    """Focus and motion blur, in pixels: at worst 6 % of the digits' height."""
    return float(rng.uniform(0.0, 0.06) * digit_height)


def render_number(
    rng: np.random.Generator, digits: str, digit_height: float | None = None
) -> tuple[np.ndarray, list[tuple[float, float, float, float]]]:
    """A photo of the house number `digits` (e.g. "271") like SVHN's full-number images.

    digit_height: the digits' height in pixels before rotation; random (14-80) when None, so
    that photos are roughly 30-200 pixels tall like SVHN's.
    Returns the image (H, W, 3) uint8 RGB and one box (left, top, width, height) per digit, in
    order, in pixels (origin top-left): the box around the digit's warped ink.
    """
    if not digits or not digits.isdigit() or not digits.isascii():
        raise ValueError(f"digits must be a string of 0-9, got {digits!r}")
    if digit_height is None:
        digit_height = float(np.exp(rng.uniform(np.log(14), np.log(80))))
    scene, boxes = _render(rng, digits, digit_height, margin=(0.2, 0.9))
    return _camera(rng, scene, _blur_sigma(rng, digit_height)), boxes


def make_cropped(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` SVHN-style 32 x 32 digit crops: pixels (n, 32, 32, 3) uint8 and labels (n,) in 1..10.

    Each number is rendered small (digits 18-40 pixels tall, which the crops shrink to about
    32) and every one of its digits gives one crop, in order, as in SVHN's format 2; the crop is
    the digit's box widened to a square about its centre, resized to 32 x 32. SVHN's boxes
    were drawn by hand, so the square is jittered a little in position and size.
    """
    size = svhn.CROPPED_SIZE
    pixels = np.empty((n, size, size, 3), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    count = 0
    while count < n:
        digits = random_number(rng)
        # The camera is applied to the crops: the same look, at a fraction of the pixels.
        digit_height = rng.uniform(18.0, 40.0)
        image, boxes = _render(rng, digits, digit_height, margin=(0.25, 0.55))
        for digit, (left, top, width, height) in zip(digits, boxes):
            if count == n:
                break
            side = float(max(width, height) * np.exp(rng.normal(0.0, 0.08)))
            centre_x, centre_y = np.array([left + width / 2, top + height / 2]) + rng.normal(0.0, 0.05 * side, size=2)
            window = (centre_x - side / 2, centre_y - side / 2, centre_x + side / 2, centre_y + side / 2)
            crop = _crop_square(image, window, size)
            pixels[count] = _camera(rng, crop, _blur_sigma(rng, digit_height) * size / side)
            labels[count] = label_of_digit(digit)
            count += 1
    return pixels, labels


def _crop_square(image: Image.Image, window: tuple[float, float, float, float], size: int) -> Image.Image:
    """The `window` (left, top, right, bottom) of `image` resized to size x size; outside the
    image the edge pixels are repeated (the margins make that rare)."""
    left, top, right, bottom = window
    pad = int(np.ceil(max(0.0, -left, -top, right - image.width, bottom - image.height)))
    if pad:
        image = Image.fromarray(np.pad(np.asarray(image), ((pad, pad), (pad, pad), (0, 0)), mode="edge"))
    return image.resize(
        (size, size),
        Image.Resampling.BILINEAR,
        box=(left + pad, top + pad, right + pad, bottom + pad),
        reducing_gap=None,
    )


def write_svhn(
    dest, format: str = "cropped", seed: int = 0, train: int = 2000, test: int = 500, extra: int = 0
) -> dict:
    """Write a synthetic SVHN into the local folder `dest`, in the real layout of one format.

    format "cropped" (SVHN format 2): dest/{train,test,extra}_32x32.mat with X and y; the counts
    are numbers of 32 x 32 crops. format "full" (format 1): dest/{train,test,extra}/1.png, ...
    and dest/{split}/digitStruct.mat; the counts are numbers of full-number images.
    Splits with count 0 are not written. Each split has its own random stream (seed, split), so
    changing one split's count leaves the others' contents unchanged.
    Returns {"format", "files": [the .mat files, relative to dest], "counts": {split: images},
    "digits": {split: digits}}; a full split's images are {split}/1.png ... {split}/{count}.png.
    """
    if format not in ("cropped", "full"):
        raise ValueError(f"format must be 'cropped' (SVHN format 2) or 'full' (format 1), got {format!r}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    summary = {"format": format, "files": [], "counts": {}, "digits": {}}
    for split_index, (split, count) in enumerate((("train", train), ("test", test), ("extra", extra))):
        if count <= 0:
            continue
        rng = np.random.default_rng([seed, split_index])
        if format == "cropped":
            pixels, labels = make_cropped(rng, count)
            svhn.write_cropped_mat(dest / f"{split}_32x32.mat", pixels, labels)
            summary["files"].append(f"{split}_32x32.mat")
            summary["digits"][split] = count
        else:
            folder = dest / split
            folder.mkdir(exist_ok=True)
            numbers = []
            for index in range(1, count + 1):
                digits = random_number(rng)
                image, boxes = render_number(rng, digits)
                name = f"{index}.png"
                Image.fromarray(image).save(folder / name, compress_level=1)
                # SVHN's boxes are whole pixels.
                numbers.append(
                    svhn.NumberAnnotation(
                        name,
                        tuple(
                            svhn.DigitBox(
                                float(round(left)),
                                float(round(top)),
                                float(round(width)),
                                float(round(height)),
                                label_of_digit(digit),
                            )
                            for digit, (left, top, width, height) in zip(digits, boxes)
                        ),
                    )
                )
            svhn.write_digit_struct(folder / "digitStruct.mat", numbers)
            summary["files"].append(f"{split}/digitStruct.mat")
            summary["digits"][split] = sum(len(number.boxes) for number in numbers)
        summary["counts"][split] = count
    return summary
