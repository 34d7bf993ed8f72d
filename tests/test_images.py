import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from pose.images import ImageDecodeError, decode_image, encode_jpeg, encode_png


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
