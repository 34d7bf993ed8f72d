import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from pose.images import ImageDecodeError, decode_image, encode_jpeg, encode_png, load_reduced, open_image


def save(image: Image.Image, format: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **kwargs)
    return buffer.getvalue()


def test_rgb_round_trip_png():
    pixels = np.random.default_rng(0).integers(0, 255, (7, 9, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_image(encode_png(pixels)), pixels)
    assert decode_image(encode_jpeg(pixels)).shape == (7, 9, 3)


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "RGBA", "LA", "1"])
def test_any_mode_becomes_rgb(mode):
    image = Image.new(mode, (5, 4))
    format = "JPEG" if mode == "CMYK" else "PNG"
    decoded = decode_image(save(image, format))
    assert decoded.shape == (4, 5, 3) and decoded.dtype == np.uint8


def test_sixteen_bit_is_rescaled_not_clipped():
    values = np.array([[0, 32768, 65535]], dtype=np.uint16)
    decoded = decode_image(save(Image.fromarray(values), "PNG"))
    assert decoded[0, :, 0].tolist() == [0, 128, 255]


def test_alpha_is_composited_over_black():
    rgba = np.zeros((1, 2, 4), np.uint8)
    rgba[0, 0] = (255, 255, 255, 255)
    rgba[0, 1] = (255, 255, 255, 0)
    decoded = decode_image(save(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert decoded[0, 0].tolist() == [255, 255, 255] and decoded[0, 1].tolist() == [0, 0, 0]


def test_exif_orientation_applied_only_when_asked():
    image = Image.new("RGB", (30, 10), (255, 0, 0))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = save(image, "JPEG", exif=exif.tobytes())
    assert decode_image(data).shape[:2] == (30, 10)
    assert decode_image(data, exif_transpose=False).shape[:2] == (10, 30)


def test_first_frame_of_animation():
    frames = [Image.new("RGB", (4, 4), color) for color in ((255, 0, 0), (0, 0, 255))]
    data = save(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode_image(data)[0, 0].tolist() == [255, 0, 0]


def _png_declaring(width: int, height: int) -> bytes:
    data = bytearray(save(Image.new("RGB", (1, 1)), "PNG"))
    ihdr = data[12:29]  # chunk type + 13 bytes of IHDR data
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"this is not an image", "not an image file"),
        (save(Image.new("RGB", (64, 64), (9, 9, 9)), "JPEG")[:200], "not a decodable image"),
        (_png_declaring(100_000, 100_000), "pixels"),
    ],
)
def test_bad_bytes_give_a_clear_reason(data, reason):
    with pytest.raises(ImageDecodeError, match=reason):
        decode_image(data)


def test_not_an_image_gives_the_same_reason_every_time():
    reasons = set()
    for _ in range(2):
        with pytest.raises(ImageDecodeError) as caught:
            decode_image(b"plain text, not pixels")
        reasons.add(str(caught.value))
    assert reasons == {"not an image file (no known image format recognised)"}


def _smooth_image(width: int, height: int) -> np.ndarray:
    """A smooth colour pattern (as photos mostly are): sampling it at a lower resolution is exact
    up to the JPEG noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.stack(
        [128 + 90 * np.sin(x / 17.0), 128 + 90 * np.cos(y / 13.0), 128 + 60 * np.sin((x + y) / 23.0)], -1
    ).astype(np.uint8)


@pytest.mark.parametrize("scale, reduction", [(1.0, 1), (0.6, 1), (0.5, 2), (0.3, 2), (0.25, 4), (0.05, 8)])
def test_jpeg_decoded_at_the_smallest_size_the_warp_allows(scale, reduction):
    from pose.geometry import compose_affine, reduction_affine, warp_image

    data = encode_jpeg(_smooth_image(288, 384), quality=95)
    pixels, got = load_reduced(open_image(data), scale)
    assert got == reduction and pixels.mode == "RGB"
    assert pixels.size == (-(-288 // reduction), -(-384 // reduction))
    # Warping the reduced image by the matrix composed with reduction_affine gives the full
    # decode's warp: the geometry is exact, only the pixel values differ by DCT-scaling noise.
    matrix = np.array([[scale, 0.0, 3.3], [0.0, scale, -2.1]])
    size = (int(288 * scale) - 8, int(384 * scale) - 8)
    full = warp_image(decode_image(data), matrix, size).astype(np.float64)
    reduced = warp_image(pixels, compose_affine(matrix, reduction_affine(reduction)), size).astype(np.float64)
    assert np.abs(full - reduced).mean() < 1.0


def test_other_formats_decode_whole_and_bad_bytes_fail_clearly():
    pixels, reduction = load_reduced(open_image(encode_png(_smooth_image(64, 48))), 0.1)
    assert reduction == 1 and pixels.size == (64, 48)
    with pytest.raises(ImageDecodeError, match="empty file"):
        open_image(b"")
    truncated = encode_jpeg(_smooth_image(64, 48))[:200]
    with pytest.raises(ImageDecodeError, match="not a decodable image"):
        load_reduced(open_image(truncated), 0.5)
