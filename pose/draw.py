"""Every picture pose-jobs writes: persons with skeletons, detections, crops, digits, heatmaps, curves.

Images go in as numpy arrays (H, W, 3) uint8 RGB (a PIL image is accepted too) and come out as PIL
RGB images; the caller saves them (PNG). Coordinates are pixels, origin at the top-left corner, x to
the right, y down; pixel (i, j) covers [i, i + 1) x [j, j + 1). Boxes are COCO's [x, y, w, h].

Keypoints are COCO's 17 joints in `pose.joints` order, one row (x, y, c) per joint. What c means is
the caller's to say, never guessed from the values:
- `visibility=True` (COCO annotations, the default): c is COCO's flag. 2 = visible: a filled dot;
  1 = labelled but occluded: a hollow ring, and its limbs dashed; 0 = not labelled: not drawn.
- `visibility=False` (model predictions): c is a confidence. A joint with c >= `min_confidence` is a
  filled dot, any other joint is not drawn.
A limb is drawn when both of its joints are. Limbs and joints on the person's left side are orange,
on the right side blue, those across the body (shoulders, hips, eyes) and the nose green, so a
swapped left/right shows at a glance. "Left" is the person's own left: on a person facing the
camera it appears on the right of the picture.

Drawing is plain PIL (fast, no display); only `training_curves` uses matplotlib, through the Agg
canvas of a `Figure` (no pyplot state). Text uses matplotlib's bundled DejaVu Sans.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.ticker
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageDraw, ImageFont

from pose.joints import JOINT_NAMES, NUM_JOINTS, SKELETON

Colour = tuple[int, int, int]

LEFT_COLOUR: Colour = (255, 128, 0)  # orange
RIGHT_COLOUR: Colour = (0, 128, 255)  # blue
CENTRE_COLOUR: Colour = (40, 200, 70)  # green
PERSON_BOX_COLOUR: Colour = (230, 40, 200)  # magenta: none of the three limb colours
RIGHT_ANSWER_COLOUR: Colour = (0, 150, 60)
WRONG_ANSWER_COLOUR: Colour = (220, 30, 30)
BACKGROUND: Colour = (255, 255, 255)  # of figures assembled from panels
# matplotlib's tab10, for classes of detections and the digits of a number.
PALETTE: tuple[Colour, ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)


def _side_colour(joint_name: str) -> Colour:
    if joint_name.startswith("left_"):
        return LEFT_COLOUR
    if joint_name.startswith("right_"):
        return RIGHT_COLOUR
    return CENTRE_COLOUR


def _limb_colour(a: int, b: int) -> Colour:
    """Left when both ends are left (or one is the nose), right likewise, centre when it crosses."""
    colours = {_side_colour(JOINT_NAMES[a]), _side_colour(JOINT_NAMES[b])} - {CENTRE_COLOUR}
    return colours.pop() if len(colours) == 1 else CENTRE_COLOUR


JOINT_COLOURS: tuple[Colour, ...] = tuple(_side_colour(name) for name in JOINT_NAMES)
LIMB_COLOURS: tuple[Colour, ...] = tuple(_limb_colour(a, b) for a, b in SKELETON)

_ABSENT, _OCCLUDED, _VISIBLE = 0, 1, 2
MIN_NAMED_PERSON = 96  # px: `draw_persons(joint_names=True)` names the joints of persons this big


# --- shared helpers ---------------------------------------------------------------------------


@functools.cache
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    try:
        return ImageFont.truetype(str(path), size)
    except OSError:
        return ImageFont.load_default(size)


def _text_size(text: str, font: ImageFont.ImageFont, stroke_width: int = 0) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text, stroke_width=stroke_width)
    return right - left, bottom - top


def _line_height(font: ImageFont.ImageFont) -> int:
    # From a string with ascenders and descenders, so that bands of text line up whatever the text.
    return _text_size("Ag0|", font)[1]


def _draw_text(
    draw: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    text: str,
    font,
    fill: Colour,
    stroke_width: int = 0,
    stroke_fill: Colour | None = None,
) -> None:
    """Text whose ink box has its top-left corner at `xy` (PIL's own anchor includes the ascent)."""
    left, top, _, _ = font.getbbox(text, stroke_width=stroke_width)
    draw.text(
        (xy[0] - left, xy[1] - top), text, font=font, fill=fill, stroke_width=stroke_width, stroke_fill=stroke_fill
    )


def _label(
    draw: ImageDraw.ImageDraw, text: str, x: float, y_top: float, colour: Colour, font, image_size: tuple[int, int]
) -> None:
    """Text on a filled rectangle of `colour`, placed above `y_top` at `x`, kept inside the image
    (in a smaller font, down to 8 px, when the image is narrower than the text)."""
    width, height = image_size
    text_w, text_h = _text_size(text, font)
    while text_w + 4 > width and getattr(font, "size", 8) > 8:
        font = _font(font.size - 1)
        text_w, text_h = _text_size(text, font)
    pad = max(2, text_h // 5)
    label_w, label_h = text_w + 2 * pad, _line_height(font) + 2 * pad
    x0 = min(max(0, x), max(0, width - label_w))
    # Above the box when there is room, otherwise just inside its top edge.
    y0 = y_top - label_h if y_top - label_h >= 0 else max(0, y_top)
    y0 = min(y0, max(0, height - label_h))
    draw.rectangle([x0, y0, x0 + label_w - 1, y0 + label_h - 1], fill=colour)
    _draw_text(draw, (x0 + pad, y0 + pad), text, font, _text_colour_on(colour))


def _text_colour_on(background: Colour) -> Colour:
    luminance = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    return (0, 0, 0) if luminance > 150 else (255, 255, 255)


def _rgb_image(image: np.ndarray | Image.Image) -> Image.Image:
    """A fresh PIL RGB copy of `image` ((H, W, 3) or (H, W) uint8, or a PIL image)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")  # convert always copies
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(
            f"expected a uint8 image, got dtype {array.dtype}; "
            "convert it first, e.g. (image * 255).clip(0, 255).astype(np.uint8)"
        )
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {array.shape}")
    return Image.fromarray(np.array(array, copy=True, order="C"))


def _label_font_size(image_size: tuple[int, int]) -> int:
    """Label text about 1/36 of the shorter side: readable at 128 px and at 4000 px."""
    return int(np.clip(round(min(image_size) / 36), 11, 40))


# --- persons and detections --------------------------------------------------------------------


@dataclass(frozen=True)
class _PersonStyle:
    limb_width: int
    joint_radius: int
    box_width: int
    name_font_size: int


def _person_style(person_size: float, image_size: tuple[int, int]) -> _PersonStyle:
    """Widths from the person's size (longer box side), with a floor from the image's size so that a
    small person in a huge image still shows when the image is viewed scaled down."""
    floor = min(image_size) / 600
    limb_width = int(np.clip(round(max(person_size / 80 + 1, floor)), 2, 12))
    return _PersonStyle(
        limb_width=limb_width,
        joint_radius=round(1.25 * limb_width),
        box_width=int(np.clip(round(max(person_size / 160, floor)), 1, 6)),
        name_font_size=int(np.clip(round(person_size / 28), 9, 18)),
    )


def _joint_states(keypoints: np.ndarray, visibility: bool, min_confidence: float) -> np.ndarray:
    """(17,) of _ABSENT / _OCCLUDED / _VISIBLE from keypoints (17, 3) by the rule in the module doc."""
    flags = keypoints[:, 2]
    if visibility:
        if not np.isin(flags, (0, 1, 2)).all():
            raise ValueError(
                f"keypoints[..., 2] holds {np.unique(flags)[:6]}, not COCO visibility flags 0/1/2; "
                "pass visibility=False if they are confidences"
            )
        states = flags.astype(int)
    else:
        states = np.where(flags >= min_confidence, _VISIBLE, _ABSENT)
    return np.where(np.isfinite(keypoints[:, :2]).all(axis=1), states, _ABSENT)


def _dashed_line(draw: ImageDraw.ImageDraw, start: np.ndarray, end: np.ndarray, fill: Colour, width: int) -> None:
    length = float(np.hypot(*(end - start)))
    pieces = max(1, round(length / (3 * width + 3)))
    if pieces % 2 == 0:
        pieces += 1  # odd, so that the dashes start and end on the joints
    for i in range(0, pieces, 2):
        a = start + (end - start) * (i / pieces)
        b = start + (end - start) * ((i + 1) / pieces)
        draw.line([tuple(a), tuple(b)], fill=fill, width=width)


def _draw_skeleton(
    draw: ImageDraw.ImageDraw,
    keypoints: np.ndarray,
    style: _PersonStyle,
    *,
    visibility: bool,
    min_confidence: float,
    joint_names: bool,
) -> None:
    """One person's limbs, then joints on top, then (optionally) joint names on top of all."""
    keypoints = np.asarray(keypoints, dtype=float)
    if keypoints.shape != (NUM_JOINTS, 3):
        raise ValueError(f"expected keypoints of shape ({NUM_JOINTS}, 3), got {keypoints.shape}")
    states = _joint_states(keypoints, visibility, min_confidence)
    xy = keypoints[:, :2]
    radius = style.joint_radius

    for (a, b), colour in zip(SKELETON, LIMB_COLOURS):
        if states[a] == _ABSENT or states[b] == _ABSENT:
            continue
        start, end = xy[a], xy[b]
        length = float(np.hypot(*(end - start)))
        # Stop the limb at an occluded joint's ring, so that the ring stays hollow.
        cut_a = radius if states[a] == _OCCLUDED else 0
        cut_b = radius if states[b] == _OCCLUDED else 0
        if length <= cut_a + cut_b:
            continue
        direction = (end - start) / length
        start, end = start + direction * cut_a, end - direction * cut_b
        if _OCCLUDED in (states[a], states[b]):
            _dashed_line(draw, start, end, colour, style.limb_width)
        else:
            draw.line([tuple(start), tuple(end)], fill=colour, width=style.limb_width)

    ring_width = max(1, round(style.limb_width * 0.6))
    for joint in range(NUM_JOINTS):
        if states[joint] == _ABSENT:
            continue
        x, y = xy[joint]
        bbox = [x - radius, y - radius, x + radius, y + radius]
        if states[joint] == _VISIBLE:
            # A thin dark rim keeps the dot apart from its limbs and from a background of its colour;
            # on small dots it would hide the colour.
            rim = radius // 4 if radius >= 4 else 0
            draw.ellipse(bbox, fill=JOINT_COLOURS[joint], outline=(0, 0, 0) if rim else None, width=rim)
        else:
            draw.ellipse(bbox, outline=JOINT_COLOURS[joint], width=ring_width)

    drawn = np.flatnonzero(states != _ABSENT)
    if joint_names and len(drawn):
        font = _font(style.name_font_size)
        line = _line_height(font) + 1
        centre_x = xy[drawn, 0].mean()
        placed: list[tuple[float, float, float, float]] = []
        for joint in drawn:
            x, y = xy[joint]
            name = JOINT_NAMES[joint]
            text_w, _ = _text_size(name, font, stroke_width=1)
            # On the side away from the body, where it covers fewer limbs; moved up or down by whole
            # lines when it would overlap a name already written (the face's five crowd together).
            text_x = x + radius + 2 if x >= centre_x else x - radius - 2 - text_w
            for shift in (0, 1, -1, 2, -2, 3, -3):
                rect = (text_x, y - line / 2 + shift * line, text_x + text_w, y + line / 2 + shift * line)
                if not any(rect[0] < r[2] and r[0] < rect[2] and rect[1] < r[3] and r[1] < rect[3] for r in placed):
                    break
            else:
                rect = (text_x, y - line / 2, text_x + text_w, y + line / 2)
            placed.append(rect)
            _draw_text(
                draw, (rect[0], rect[1]), name, font, fill=(255, 255, 255), stroke_width=1, stroke_fill=(0, 0, 0)
            )


def _label_texts(count: int, labels: Sequence[str] | None, scores: Sequence[float] | None) -> list[str]:
    texts = []
    for i in range(count):
        parts = []
        if labels is not None:
            parts.append(str(labels[i]))
        if scores is not None:
            parts.append(f"{float(scores[i]):.2f}")
        texts.append(" ".join(parts))
    return texts


def _box_corners(box: Sequence[float]) -> list[int]:
    """PIL's inclusive rectangle [x0, y0, x1, y1] of the pixels in a COCO box [x, y, w, h]."""
    x, y, w, h = (float(v) for v in box)
    x0, y0 = round(x), round(y)
    return [x0, y0, max(x0, round(x + w) - 1), max(y0, round(y + h) - 1)]


def draw_persons(
    image: np.ndarray,
    boxes: np.ndarray,
    keypoints: np.ndarray | None = None,
    *,
    labels: Sequence[str] | None = None,
    scores: Sequence[float] | None = None,
    joint_names: bool = False,
    min_confidence: float = 0.0,
    visibility: bool = True,
) -> Image.Image:
    """Persons' boxes and skeletons on `image`.

    image: (H, W, 3) uint8 RGB. boxes: (N, 4) COCO [x, y, w, h] in pixels. keypoints: (N, 17, 3)
    rows (x, y, c) with c a COCO visibility flag (`visibility=True`) or a confidence
    (`visibility=False`, joints below `min_confidence` are not drawn); see the module doc.
    labels / scores: per-box text, e.g. labels=["person"] * N, scores=[0.93, ...] -> "person 0.93".
    joint_names: write each drawn joint's name next to it, for persons of at least
    `MIN_NAMED_PERSON` px (on smaller ones the 17 names are an unreadable pile).
    Widths and radii follow each person's size (the longer side of the box).
    """
    picture = _rgb_image(image)
    draw = ImageDraw.Draw(picture)
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
    if keypoints is not None:
        keypoints = np.asarray(keypoints, dtype=float).reshape(-1, NUM_JOINTS, 3)
        if len(keypoints) != len(boxes):
            raise ValueError(f"{len(boxes)} boxes but {len(keypoints)} sets of keypoints")

    sizes = [max(box[2], box[3]) for box in boxes]
    styles = [_person_style(size, picture.size) for size in sizes]
    for box, style in zip(boxes, styles):
        draw.rectangle(_box_corners(box), outline=PERSON_BOX_COLOUR, width=style.box_width)
    if keypoints is not None:
        for person, style, size in zip(keypoints, styles, sizes):
            _draw_skeleton(
                draw,
                person,
                style,
                visibility=visibility,
                min_confidence=min_confidence,
                joint_names=joint_names and size >= MIN_NAMED_PERSON,
            )
    if labels is not None or scores is not None:
        font = _font(_label_font_size(picture.size))
        for box, text in zip(boxes, _label_texts(len(boxes), labels, scores)):
            x0, y0, _, _ = _box_corners(box)
            _label(draw, text, x0, y0, PERSON_BOX_COLOUR, font, picture.size)
    return picture


def draw_detections(
    image: np.ndarray, boxes: np.ndarray, labels: Sequence[str], scores: Sequence[float] | None
) -> Image.Image:
    """Detected objects of any classes: a box per object, coloured by class, with "class 0.98" text.

    image: (H, W, 3) uint8 RGB. boxes: (N, 4) COCO [x, y, w, h] in pixels. labels: N class names.
    scores: N confidences, or None for no score in the text. Classes get colours in sorted order of
    the names present, so that all classes in one picture have different colours (up to 10).
    """
    picture = _rgb_image(image)
    draw = ImageDraw.Draw(picture)
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
    if len(labels) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(labels)} labels")
    colour_of = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(sorted(set(map(str, labels))))}
    box_width = max(2, round(min(picture.size) / 250))
    font = _font(_label_font_size(picture.size))
    for box, label in zip(boxes, labels):
        draw.rectangle(_box_corners(box), outline=colour_of[str(label)], width=box_width)
    for box, label, text in zip(boxes, labels, _label_texts(len(boxes), labels, scores)):
        x0, y0, _, _ = _box_corners(box)
        _label(draw, text, x0, y0, colour_of[str(label)], font, picture.size)
    return picture


# --- figures made of panels ----------------------------------------------------------------------


def _scaled(picture: Image.Image, factor: float) -> Image.Image:
    if factor == 1:
        return picture
    size = (max(1, round(picture.width * factor)), max(1, round(picture.height * factor)))
    return picture.resize(size, Image.Resampling.BICUBIC if factor > 1 else Image.Resampling.LANCZOS)


def _with_title(picture: Image.Image, title: str | None, font_size: int) -> Image.Image:
    """`picture` under a white band with `title` centred, widened if the title is wider."""
    if not title:
        return picture
    font = _font(font_size)
    pad = 4
    text_w, _ = _text_size(title, font)
    width = max(picture.width, text_w + 2 * pad)
    band = _line_height(font) + 2 * pad
    canvas = Image.new("RGB", (width, picture.height + band), BACKGROUND)
    canvas.paste(picture, ((width - picture.width) // 2, band))
    _draw_text(ImageDraw.Draw(canvas), ((width - text_w) / 2, pad), title, font, (0, 0, 0))
    return canvas


def crop_panel(
    crop: np.ndarray,
    keypoints: np.ndarray,
    *,
    title: str | None = None,
    visibility: bool = True,
    min_confidence: float = 0.0,
    height: int = 256,
) -> Image.Image:
    """One person crop with its skeleton, scaled to `height` px, title above.

    crop: (h, w, 3) uint8 RGB. keypoints: (17, 3) (x, y, c) in crop pixels, c as in `draw_persons`.
    Every crop is scaled to the same height, so that panels of large and small persons put side by
    side have the same line widths and title sizes.
    """
    picture = _rgb_image(crop)
    factor = height / picture.height
    picture = _scaled(picture, factor)
    keypoints = np.array(keypoints, dtype=float).reshape(NUM_JOINTS, 3)
    keypoints[:, :2] *= factor
    style = _person_style(max(picture.size), picture.size)
    _draw_skeleton(
        ImageDraw.Draw(picture),
        keypoints,
        style,
        visibility=visibility,
        min_confidence=min_confidence,
        joint_names=False,
    )
    return _with_title(picture, title, int(np.clip(round(picture.height / 18), 11, 24)))


def stacked(rows: Sequence[Image.Image]) -> Image.Image:
    """Pictures (e.g. side_by_side rows) one above the other, left-aligned on white."""
    canvas = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), BACKGROUND)
    y = 0
    for row in rows:
        canvas.paste(row, (0, y))
        y += row.height
    return canvas


def side_by_side(
    panels: Sequence[Image.Image | np.ndarray],
    *,
    titles: Sequence[str] | None = None,
    height: int | None = None,
    gap: int = 8,
) -> Image.Image:
    """Panels in a row on white, each scaled to `height` (default: the tallest), titles above.

    `gap` px separate the panels and surround the row.
    """
    if not panels:
        raise ValueError("side_by_side needs at least one panel")
    if titles is not None and len(titles) != len(panels):
        raise ValueError(f"{len(panels)} panels but {len(titles)} titles")
    pictures = [_rgb_image(panel) for panel in panels]
    height = height or max(picture.height for picture in pictures)
    pictures = [_scaled(picture, height / picture.height) for picture in pictures]
    font_size = int(np.clip(round(height / 16), 12, 28))
    pictures = [_with_title(picture, titles[i] if titles else None, font_size) for i, picture in enumerate(pictures)]

    row_height = max(picture.height for picture in pictures)
    width = sum(picture.width for picture in pictures) + gap * (len(pictures) + 1)
    canvas = Image.new("RGB", (width, row_height + 2 * gap), BACKGROUND)
    x = gap
    for picture in pictures:
        # Titled and untitled panels share a bottom line.
        canvas.paste(picture, (x, gap + row_height - picture.height))
        x += picture.width + gap
    return canvas


def digit_grid(
    pixels: np.ndarray, labels: Sequence[int], predicted: Sequence[int] | None = None, *, cols: int = 10, scale: int = 3
) -> Image.Image:
    """Digit images in a grid, each upscaled `scale` times (nearest), its label underneath.

    pixels: (N, H, W, 3) or (N, H, W) uint8, e.g. SVHN's 32x32 crops. labels: N true digits.
    predicted: N predicted digits; then each tile reads "t:3 p:5" and is framed and captioned green
    when the prediction is right, red when it is wrong.
    """
    pixels = np.asarray(pixels)
    if pixels.ndim == 3:
        pixels = np.repeat(pixels[..., None], 3, axis=3)
    if pixels.ndim != 4 or pixels.shape[3] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"expected (N, H, W, 3) uint8 digit images, got {pixels.shape} {pixels.dtype}")
    count = len(pixels)
    if len(labels) != count or (predicted is not None and len(predicted) != count):
        raise ValueError(
            f"{count} images but {len(labels)} labels"
            + ("" if predicted is None else f" and {len(predicted)} predictions")
        )
    if count == 0:
        raise ValueError("digit_grid needs at least one image")

    tile_h, tile_w = pixels.shape[1] * scale, pixels.shape[2] * scale
    font = _font(int(np.clip(round(tile_h * 0.16), 10, 18)))
    if predicted is None:
        captions = [str(int(label)) for label in labels]
        colours = [(0, 0, 0)] * count
    else:
        captions = [f"t:{int(t)} p:{int(p)}" for t, p in zip(labels, predicted)]
        colours = [RIGHT_ANSWER_COLOUR if int(t) == int(p) else WRONG_ANSWER_COLOUR for t, p in zip(labels, predicted)]
    frame = max(2, scale) if predicted is not None else 0
    caption_h = _line_height(font) + 4
    cell_w = max(tile_w + 2 * frame, max(_text_size(c, font)[0] for c in captions) + 4)
    cell_h = tile_h + 2 * frame + caption_h
    spacing = max(4, 2 * scale)
    cols = max(1, min(cols, count))
    rows = math.ceil(count / cols)
    canvas = Image.new("RGB", (cols * cell_w + (cols + 1) * spacing, rows * cell_h + (rows + 1) * spacing), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for i in range(count):
        x = spacing + (i % cols) * (cell_w + spacing)
        y = spacing + (i // cols) * (cell_h + spacing)
        tile_x = x + (cell_w - tile_w) // 2
        tile = Image.fromarray(np.ascontiguousarray(pixels[i])).resize((tile_w, tile_h), Image.Resampling.NEAREST)
        if frame:
            draw.rectangle(
                [tile_x - frame, y, tile_x + tile_w + frame - 1, y + tile_h + 2 * frame - 1], fill=colours[i]
            )
        canvas.paste(tile, (tile_x, y + frame))
        text_w, _ = _text_size(captions[i], font)
        _draw_text(draw, (x + (cell_w - text_w) / 2, y + tile_h + 2 * frame + 2), captions[i], font, colours[i])
    return canvas


def number_panel(
    image: np.ndarray,
    boxes: Sequence[tuple[float, float, float, float]],
    labels: Sequence[int],
    *,
    min_height: int = 192,
) -> Image.Image:
    """An SVHN (format 1) house-number image with each digit's box and digit above it.

    image: (H, W, 3) uint8. boxes: per digit (left, top, width, height) in image pixels. labels: the
    digits; SVHN's label 10 (its code for the digit 0) is written as 0. Images lower than
    `min_height` are upscaled to it, and a white band on top leaves room for the digits.
    """
    if len(boxes) != len(labels):
        raise ValueError(f"{len(boxes)} boxes but {len(labels)} labels")
    picture = _rgb_image(image)
    factor = max(1.0, min_height / picture.height)
    picture = _scaled(picture, factor)
    font = _font(int(np.clip(round(picture.height / 9), 12, 32)))
    pad = 3
    band = _line_height(font) + 2 * pad + 2
    canvas = Image.new("RGB", (picture.width, picture.height + band), BACKGROUND)
    canvas.paste(picture, (0, band))
    draw = ImageDraw.Draw(canvas)
    box_width = max(2, round(picture.height / 100))
    for i, (box, label) in enumerate(zip(boxes, labels)):
        colour = PALETTE[i % len(PALETTE)]
        x0, y0, x1, y1 = _box_corners([v * factor for v in box])
        x0, x1 = np.clip([x0, x1], 0, picture.width - 1)
        y0, y1 = np.clip([y0, y1], 0, picture.height - 1) + band
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=box_width)
        text = str(int(label) % 10)
        text_w, _ = _text_size(text, font)
        label_w = text_w + 2 * pad
        x = min(max(0, (x0 + x1 + 1) / 2 - label_w / 2), canvas.width - label_w)
        _label(draw, text, x, y0, colour, font, canvas.size)
    return canvas


# --- heatmaps and curves -----------------------------------------------------------------------


@functools.cache
def _colormap_lut(name: str) -> np.ndarray:
    """(256, 3) uint8 RGB lookup table of a matplotlib colormap."""
    return (matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)


def heatmap_overlay(image: np.ndarray, heatmaps: np.ndarray, alpha: float = 0.5, colormap: str = "jet") -> Image.Image:
    """Joint heatmaps over their image: max over joints, upsampled, coloured, blended.

    image: (H, W, 3) uint8. heatmaps: (K, h, w) or (h, w) floats in [0, 1], at any resolution
    covering the same field of view (e.g. stride 4); upsampled bilinearly to (H, W), pixel centres
    aligned. Result = (1 - alpha) * image + alpha * colormap(heat).
    """
    picture = _rgb_image(image)
    heatmaps = np.asarray(heatmaps, dtype=np.float32)
    if heatmaps.ndim == 3:
        heatmaps = heatmaps.max(axis=0)
    if heatmaps.ndim != 2:
        raise ValueError(f"expected heatmaps of shape (K, h, w) or (h, w), got {heatmaps.shape}")
    heat = Image.fromarray(np.ascontiguousarray(np.clip(heatmaps, 0.0, 1.0)))
    heat = np.asarray(heat.resize(picture.size, Image.Resampling.BILINEAR))
    coloured = _colormap_lut(colormap)[np.clip(np.rint(heat * 255), 0, 255).astype(np.uint8)]
    blended = (1.0 - alpha) * np.asarray(picture, dtype=np.float32) + alpha * coloured.astype(np.float32)
    return Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8))


def _series(metrics: Sequence[dict], name: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of the rows that hold a finite number under `name`."""
    epochs, values = [], []
    for position, row in enumerate(metrics):
        value = row.get(name)
        if isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and math.isfinite(value):
            epochs.append(float(row.get("epoch", position + 1)))
            values.append(float(value))
    return epochs, values


def training_curves(metrics: Sequence[dict], keys: Sequence[str], *, title: str = "") -> Image.Image:
    """Training history, one subplot per metric, train and validation lines where both exist.

    metrics: one dict per report (e.g. Ray Train's per-epoch metrics), x = row["epoch"] (or the
    row's position, from 1). keys: metric names such as "loss" or "val_accuracy"; each subplot
    draws the metric's train series (`name` or `train_name`) and validation series (`val_name`).
    """
    if not keys:
        raise ValueError("training_curves needs at least one key")
    figure = Figure(figsize=(4.2 * len(keys), 3.4), dpi=100, layout="constrained")
    canvas = FigureCanvasAgg(figure)
    axes = figure.subplots(1, len(keys), squeeze=False)[0]
    for axis, key in zip(axes, keys):
        name = key.removeprefix("val_").removeprefix("train_")
        train = _series(metrics, name)
        if not train[1]:
            train = _series(metrics, f"train_{name}")
        drawn = False
        for (epochs, values), kind, colour, style in (
            (train, "train", "tab:blue", "-"),
            (_series(metrics, f"val_{name}"), "val", "tab:orange", "--"),
        ):
            if values:
                axis.plot(
                    epochs,
                    values,
                    style,
                    marker="o" if len(values) <= 30 else None,
                    markersize=3,
                    label=kind,
                    color=colour,
                )
                drawn = True
        if not drawn:
            available = sorted({k for row in metrics for k in row})
            raise ValueError(
                f"no metric {key!r} (nor train_/val_ variants) in the metrics; "
                f"available: {', '.join(available) or 'none'}"
            )
        axis.set_title(name)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        if len({row.get("epoch") for row in metrics}) == 1:  # one epoch: the locator falls back to fractions
            axis.set_xticks([metrics[0].get("epoch", 1)])
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize="small")
    if title:
        figure.suptitle(title)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[:, :, :3].copy())


def confusion_matrix(confusion: np.ndarray, class_names: Sequence[str], *, title: str = "") -> Image.Image:
    """A (C, C) confusion matrix (rows = true class, columns = predicted) as a heat map with counts,
    each row coloured by its share so that rare and common classes read alike."""
    confusion = np.asarray(confusion, dtype=np.int64)
    shares = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    size = 0.5 * len(class_names) + 1.5
    figure = Figure(figsize=(size + 1.0, size), dpi=100, layout="constrained")
    canvas = FigureCanvasAgg(figure)
    axis = figure.subplots()
    image = axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for true in range(confusion.shape[0]):
        for predicted in range(confusion.shape[1]):
            if confusion[true, predicted]:
                colour = "white" if shares[true, predicted] > 0.5 else "black"
                axis.text(
                    predicted, true, str(confusion[true, predicted]), ha="center", va="center", fontsize=7, color=colour
                )
    axis.set_xticks(range(len(class_names)), class_names)
    axis.set_yticks(range(len(class_names)), class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    figure.colorbar(image, ax=axis, label="share of the true class")
    if title:
        axis.set_title(title)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[:, :, :3].copy())
