"""Decoding and encoding images, robustly: whatever a bucket holds becomes (H, W, 3) uint8 RGB or a
clear `ImageDecodeError`."""

from __future__ import annotations

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


def decode_image(data: bytes, *, exif_transpose: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes to an (H, W, 3) uint8 RGB array.

    EXIF orientation is applied when `exif_transpose`; grey, palette, CMYK, alpha and 16-bit modes
    become RGB (transparent pixels composited over black); the first frame of an animation is
    used. A file declaring more than `max_pixels` pixels is refused before its pixels are decoded.
    """
    if not data:
        raise ImageDecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageDecodeError(f"declares {width}x{height} pixels, above the limit of {max_pixels}")
            image.seek(0)
            image.load()
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageDecodeError(f"decompression bomb refused: {error}") from None
    except Image.DecompressionBombWarning as error:
        raise ImageDecodeError(f"decompression bomb refused: {error}") from None
    except Image.UnidentifiedImageError:
        # PIL's own message names the BytesIO object (a memory address): keep reasons reproducible.
        raise ImageDecodeError("not an image file (no known image format recognised)") from None
    except Exception as error:  # PIL raises many types for corrupt data
        raise ImageDecodeError(f"not a decodable image ({type(error).__name__}: {error})") from None
    if exif_transpose:
        try:
            image = ImageOps.exif_transpose(image)
        except Exception:  # a broken EXIF block should not cost us the pixels
            pass
    return np.asarray(to_rgb(image))


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
