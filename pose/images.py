"""Decoding and encoding images, robustly: whatever a bucket holds becomes (H, W, 3) uint8 RGB or a
clear `ImageDecodeError`."""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
from PIL import Image, ImageOps

# A 16-bit greyscale PNG or a huge JPEG can declare more pixels than fit in memory; refuse before
# decoding. 2**28 pixels (~268 MP, ~800 MB as RGB) is far above any camera image.
DEFAULT_MAX_PIXELS = 1 << 28
# The file names taken for images in a bucket (any case): what `decode_image` reads.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


class ImageDecodeError(ValueError):
    """The bytes are not an image we can use; the message says why (without the file name,
    which the caller adds)."""


def open_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open encoded image bytes without decoding their pixels: the format is recognised and the
    declared size checked (above `max_pixels` is refused), so that `decode_image` or
    `load_reduced` can decode them after."""
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    with _decoding():
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise ImageDecodeError(f"declares {width}x{height} pixels, above the limit of {max_pixels}")
    return image


def decode_image(data: bytes, *, exif_transpose: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes to an (H, W, 3) uint8 RGB array.

    EXIF orientation is applied when `exif_transpose`; grey, palette, CMYK, alpha and 16-bit modes
    become RGB (transparent pixels composited over black); the first frame of an animation is
    used. A file declaring more than `max_pixels` pixels is refused before its pixels are decoded.
    """
    image = open_image(data, max_pixels=max_pixels)
    with _decoding():
        image.seek(0)
        image.load()
    if exif_transpose:
        try:
            image = ImageOps.exif_transpose(image)
        except Exception:  # a broken EXIF block should not cost us the pixels
            pass
    return np.asarray(to_rgb(image))


def load_reduced(image: Image.Image, scale: float) -> tuple[Image.Image, int]:
    """Decode an `open_image` result that will be sampled at `scale` output pixels per source
    pixel (at most, in any direction), as an RGB Pillow image and its reduction r.

    A JPEG is decoded by libjpeg's DCT scaling at the smallest size of 1/1, 1/2, 1/4, 1/8 that keeps
    at least one decoded pixel per output pixel: less work than decoding it whole and sampling it
    down, and averaged rather than aliased. Other formats decode whole (r = 1). Decoded pixel x_r
    covers source pixels [r x_r, r x_r + r), so its centre is at r (x_r + 0.5) - 0.5 in the source
    (`pose.geometry.reduction_affine`). No EXIF orientation is applied (for stored crops)."""
    reduction = 1
    if image.format == "JPEG":
        while reduction < 8 and scale * reduction * 2 <= 1.0:
            reduction *= 2
    width, height = image.size
    wanted = (-(-width // reduction), -(-height // reduction))
    with _decoding():
        if reduction > 1:
            image.draft("RGB", wanted)
            if image.size != wanted:  # not a DCT scale after all
                raise ImageDecodeError(
                    f"JPEG draft gave {image.size[0]}x{image.size[1]} for {width}x{height} at 1/{reduction}"
                )
        image.load()
    return to_rgb(image), reduction


@contextlib.contextmanager
def _decoding():
    """Pillow's many exceptions for bad data as one `ImageDecodeError` with a reproducible reason."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageDecodeError(f"decompression bomb refused: {error}") from None
    except Image.UnidentifiedImageError:
        # PIL's own message names the BytesIO object (a memory address): keep reasons reproducible.
        raise ImageDecodeError("not an image file (no known image format recognised)") from None
    except Exception as error:  # PIL raises many types for corrupt data
        raise ImageDecodeError(f"not a decodable image ({type(error).__name__}: {error})") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (16-bit and float modes are rescaled, not clipped)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        grey = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """Encode an (H, W, 3) uint8 array as JPEG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def encode_png(image: np.ndarray) -> bytes:
    """Encode an (H, W, 3) uint8 array as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()
