"""SVHN's two formats: the streaming MATLAB v5 reader of cropped digits against scipy.io.loadmat,
and digitStruct.mat (MATLAB v7.3) written and read back, in MATLAB's exact layout."""

from __future__ import annotations

import io
import struct
import zlib

import h5py
import numpy as np
import pytest
import scipy.io

from pose.formats import svhn
from pose.formats.svhn import DigitBox, NumberAnnotation, SvhnFormatError


def _random_digits(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8), rng.integers(1, 11, size=n)


def _mat_bytes(pixels, labels, compress=True) -> bytes:
    buffer = io.BytesIO()
    svhn.write_cropped_mat(buffer, pixels, labels, compress=compress)
    return buffer.getvalue()


def _stream_all(data: bytes, **kwargs) -> np.ndarray:
    chunks = list(svhn.iter_cropped_digits(io.BytesIO(data), **kwargs))
    return np.concatenate([pixels for _, pixels in chunks]) if chunks else np.zeros((0, 32, 32, 3), np.uint8)


# ---- format 2: *_32x32.mat ------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
def test_write_cropped_mat_is_the_real_layout(compress):
    pixels, labels = _random_digits(23)
    loaded = scipy.io.loadmat(io.BytesIO(_mat_bytes(pixels, labels, compress)))
    assert loaded["X"].shape == (32, 32, 3, 23) and loaded["X"].dtype == np.uint8
    assert loaded["y"].shape == (23, 1)
    np.testing.assert_array_equal(loaded["y"][:, 0], labels)
    for i in (0, 7, 22):
        np.testing.assert_array_equal(loaded["X"][:, :, :, i], pixels[i])  # rows x columns x RGB


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize(
    "start, stop, chunk",
    [(0, None, 4096), (0, None, 7), (5, 61, 16), (13, 14, 5), (64, 64, 3), (0, 64, 1), (63, None, 2)],
)
def test_streaming_reader_equals_loadmat(compress, start, stop, chunk):
    pixels, labels = _random_digits(64)
    data = _mat_bytes(pixels, labels, compress)
    x_by_scipy = scipy.io.loadmat(io.BytesIO(data))["X"]
    expected = np.moveaxis(x_by_scipy, 3, 0)[start:stop]
    chunks = list(svhn.iter_cropped_digits(io.BytesIO(data), start=start, stop=stop, chunk=chunk))
    assert [first for first, _ in chunks] == list(range(start, 64 if stop is None else stop, chunk))
    assert all(len(block) <= chunk and block.dtype == np.uint8 and block.flags.c_contiguous for _, block in chunks)
    np.testing.assert_array_equal(_stream_all(data, start=start, stop=stop, chunk=chunk), expected)


@pytest.mark.parametrize("compress", [True, False])
def test_streaming_across_read_blocks_and_skips(compress):
    # 3,000 random images are 9 MB: several 1 MB read blocks and more than one skip step.
    pixels, labels = _random_digits(3000, seed=1)
    data = _mat_bytes(pixels, labels, compress)
    np.testing.assert_array_equal(_stream_all(data, start=2900, stop=2990, chunk=37), pixels[2900:2990])
    np.testing.assert_array_equal(_stream_all(data, chunk=1111), pixels)


class _CountingReader(io.BytesIO):
    """A file object that counts the bytes read from it (like a remote file would cost)."""

    bytes_read = 0

    def read(self, size=-1):
        data = super().read(size)
        self.bytes_read += len(data)
        return data


def test_count_and_labels_read_only_headers_and_y():
    pixels, labels = _random_digits(4000, seed=2)
    data = _mat_bytes(pixels, labels)  # 12 MB, incompressible
    counting = _CountingReader(data)
    assert svhn.cropped_digit_count(counting) == 4000
    assert counting.bytes_read < 200_000
    counting = _CountingReader(data)
    np.testing.assert_array_equal(svhn.read_cropped_labels(counting), labels)
    assert svhn.read_cropped_labels(io.BytesIO(data)).dtype == np.int64
    assert counting.bytes_read < 300_000


def test_labels_do_not_inflate_x():
    # Garbage in the middle of X's compressed stream: the labels and count are still read,
    # because only the head of X's element is inflated; streaming X finds the damage.
    pixels, labels = _random_digits(300, seed=3)
    data = bytearray(_mat_bytes(pixels, labels))
    element_type, element_bytes = struct.unpack("<II", data[128:136])
    assert element_type == 15  # miCOMPRESSED
    start, end = 136 + 4096, 136 + element_bytes - 64
    data[start:end] = np.random.default_rng(0).integers(0, 256, end - start, dtype=np.uint8).tobytes()
    assert svhn.cropped_digit_count(io.BytesIO(bytes(data))) == 300
    np.testing.assert_array_equal(svhn.read_cropped_labels(io.BytesIO(bytes(data))), labels)
    with pytest.raises(SvhnFormatError, match="corrupt compressed data|ends early"):
        _stream_all(bytes(data))


def _matlab_element(byteorder: str, element_type: int, data: bytes) -> bytes:
    """A data element as MATLAB writes it: the small form for up to 4 bytes, else padded to 8."""
    if len(data) <= 4:
        return struct.pack(byteorder + "I", (len(data) << 16) | element_type) + data.ljust(4, b"\0")
    return struct.pack(byteorder + "II", element_type, len(data)) + data + b"\0" * (-len(data) % 8)


def _matlab_matrix(byteorder, name, class_code, dims, data_type, values: np.ndarray, compress) -> bytes:
    body = (
        _matlab_element(byteorder, 6, struct.pack(byteorder + "II", class_code, 0))
        + _matlab_element(byteorder, 5, struct.pack(byteorder + f"{len(dims)}i", *dims))
        + _matlab_element(byteorder, 1, name.encode())
        + _matlab_element(byteorder, data_type, values.astype(values.dtype.newbyteorder(byteorder)).tobytes(order="F"))
    )
    matrix = struct.pack(byteorder + "II", 14, len(body)) + body
    if not compress:
        return matrix
    packed = zlib.compress(matrix)
    return struct.pack(byteorder + "II", 15, len(packed)) + packed


@pytest.mark.parametrize("byteorder, compress", [("<", True), ("<", False), (">", False), (">", True)])
@pytest.mark.parametrize("count", [1, 5])
def test_reads_files_as_matlab_writes_them(byteorder, compress, count):
    # MATLAB drops a trailing singleton dimension (one image: X is 32x32x3), stores a double
    # array of small integers as miUINT8, and writes short names and data as small elements.
    pixels, labels = _random_digits(count, seed=4)
    header = b"MATLAB 5.0 MAT-file, Platform: GLNXA64, Created on: Mon Dec  5 10:00:00 2011".ljust(116)
    header += b"\0" * 8 + struct.pack(byteorder + "H", 0x0100) + (b"IM" if byteorder == "<" else b"MI")
    x_dims = (32, 32, 3) if count == 1 else (32, 32, 3, count)
    data = (
        header
        + _matlab_matrix(byteorder, "X", 9, x_dims, 2, pixels.transpose(1, 2, 3, 0), compress)
        + _matlab_matrix(byteorder, "y", 6, (count, 1), 2, labels.astype(np.uint8).reshape(-1, 1), compress)
    )
    loaded = scipy.io.loadmat(io.BytesIO(data), mat_dtype=True)
    assert loaded["y"].dtype.kind == "f" and loaded["y"].itemsize == 8  # class double, stored as uint8
    np.testing.assert_array_equal(loaded["y"].ravel(), labels)
    assert svhn.cropped_digit_count(io.BytesIO(data)) == count
    np.testing.assert_array_equal(svhn.read_cropped_labels(io.BytesIO(data)), labels)
    np.testing.assert_array_equal(_stream_all(data, chunk=2), pixels)


@pytest.mark.parametrize(
    "reader", [svhn.cropped_digit_count, svhn.read_cropped_labels, lambda f: list(svhn.iter_cropped_digits(f))]
)
def test_broken_files_raise_format_errors_naming_the_file(tmp_path, reader):
    pixels, labels = _random_digits(50)
    data = _mat_bytes(pixels, labels)
    x_bytes = struct.unpack("<I", data[132:136])[0]
    cases = {
        "truncated.mat": data[: len(data) // 2],
        "truncated_in_tag.mat": data[: 136 + x_bytes + 3],
        "empty.mat": b"",
        "not_a_mat.mat": b"\x89PNG\r\n\x1a\n" + b"\0" * 300,
        "v73.mat": b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(512, b" ") + b"\x89HDF\r\n\x1a\n",
    }
    for file_name, content in cases.items():
        path = tmp_path / file_name
        path.write_bytes(content)
        with open(path, "rb") as file, pytest.raises(SvhnFormatError) as caught:
            reader(file)
        assert str(path) in str(caught.value), caught.value


def test_missing_variable_and_bad_labels(tmp_path):
    pixels, _ = _random_digits(3)
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"X": pixels.transpose(1, 2, 3, 0)}, do_compression=True)
    with pytest.raises(SvhnFormatError, match="no variable y"):
        svhn.read_cropped_labels(buffer)
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"X": pixels.transpose(1, 2, 3, 0), "y": np.array([[1], [0], [2]])})
    with pytest.raises(SvhnFormatError, match=r"y\[1\] = 0"):
        svhn.read_cropped_labels(buffer)
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"X": np.zeros((28, 28, 3), np.uint8), "y": np.array([[1]])})
    with pytest.raises(SvhnFormatError, match="expected \\(32, 32, 3, N\\)"):
        svhn.cropped_digit_count(buffer)
    with pytest.raises(ValueError, match="not within"):
        list(svhn.iter_cropped_digits(io.BytesIO(_mat_bytes(*_random_digits(3))), start=2, stop=4))


def test_digit_from_label():
    assert [svhn.digit_from_label(label) for label in range(1, 11)] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    assert svhn.digit_from_label(np.uint8(10)) == 0 and svhn.digit_from_label(10.0) == 0
    for bad in (0, 11, 1.5, -1, "x", None):
        with pytest.raises(SvhnFormatError):
            svhn.digit_from_label(bad)


# ---- format 1: digitStruct.mat --------------------------------------------------------------

NUMBERS = [
    NumberAnnotation("1.png", (DigitBox(246.0, 77.0, 81.0, 219.0, 1), DigitBox(323.0, 81.0, 96.0, 219.0, 9))),
    NumberAnnotation("2.png", (DigitBox(77.0, 29.0, 23.0, 32.0, 10),)),
    NumberAnnotation(
        "3.png", tuple(DigitBox(17.0 + 9 * i, 5.0, 8.5, 15.0, label) for i, label in enumerate((4, 10, 7, 2, 3)))
    ),
    NumberAnnotation("10.png", (DigitBox(1.0, 2.0, 3.0, 4.0, 6),)),
]


def test_digit_struct_round_trip(tmp_path):
    path = tmp_path / "digitStruct.mat"
    svhn.write_digit_struct(path, NUMBERS)
    assert svhn.read_digit_struct(path) == NUMBERS
    with open(path, "rb") as file:
        assert svhn.read_digit_struct(file) == NUMBERS
    assert svhn.read_digit_struct(io.BytesIO(path.read_bytes())) == NUMBERS


def test_digit_struct_has_matlabs_layout(tmp_path):
    path = tmp_path / "digitStruct.mat"
    svhn.write_digit_struct(path, NUMBERS)
    head = path.read_bytes()[:512]
    assert head.startswith(b"MATLAB 7.3 MAT-file") and b"HDF5 schema 1.00 ." in head[:116]
    assert head[124:128] == b"\x00\x02IM"
    with h5py.File(path, "r") as f:
        assert f.userblock_size == 512
        group = f["digitStruct"]
        assert group.attrs["MATLAB_class"] == b"struct"
        assert [b"".join(name).decode() for name in group.attrs["MATLAB_fields"]] == ["name", "bbox"]
        for field in ("name", "bbox"):
            assert group[field].shape == (len(NUMBERS), 1) and group[field].dtype == h5py.ref_dtype
            assert "MATLAB_class" not in group[field].attrs  # fields of a 1 x N struct array
        # The way the widely used SVHN loaders read it, value by value.
        for i, number in enumerate(NUMBERS):
            name = f[group["name"][i, 0]]
            assert name.dtype == np.uint16 and name.shape == (len(number.name), 1)
            assert name.attrs["MATLAB_class"] == b"char" and name.attrs["MATLAB_int_decode"] == 2
            assert "".join(chr(c) for c in name[:, 0]) == number.name
            box = f[group["bbox"][i, 0]]
            assert isinstance(box, h5py.Group) and box.attrs["MATLAB_class"] == b"struct"
            assert sorted(box) == ["height", "label", "left", "top", "width"]
            for field in box:
                values = box[field]
                assert values.shape == (len(number.boxes), 1)
                if len(number.boxes) == 1:
                    assert values.dtype == np.float64 and values.attrs["MATLAB_class"] == b"double"
                    stored = [values[0, 0]]
                else:
                    assert values.dtype == h5py.ref_dtype and "MATLAB_class" not in values.attrs
                    scalars = [f[ref] for ref in values[:, 0]]
                    assert all(s.shape == (1, 1) and s.attrs["MATLAB_class"] == b"double" for s in scalars)
                    stored = [s[0, 0] for s in scalars]
                assert stored == [getattr(b, field) for b in number.boxes]
        assert f["#refs#/a"].attrs["MATLAB_class"] == b"canonical empty"


def test_digit_struct_broken_files(tmp_path):
    cases = {"empty.mat": b"", "text.mat": b"hello, not a mat-file\n" * 10}
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"digitStruct": np.zeros(3)})
    cases["v5.mat"] = buffer.getvalue()
    for file_name, content in cases.items():
        (tmp_path / file_name).write_bytes(content)
    with h5py.File(tmp_path / "other.mat", "w", userblock_size=512) as f:
        f["something"] = np.zeros(3)
    svhn.write_digit_struct(tmp_path / "good.mat", NUMBERS)
    (tmp_path / "truncated.mat").write_bytes((tmp_path / "good.mat").read_bytes()[:3000])
    for file_name in [*cases, "other.mat", "truncated.mat"]:
        path = tmp_path / file_name
        with pytest.raises(SvhnFormatError) as caught:
            svhn.read_digit_struct(path)
        assert str(path) in str(caught.value), caught.value
        with open(path, "rb") as file, pytest.raises(SvhnFormatError) as caught:
            svhn.read_digit_struct(file)
        assert str(path) in str(caught.value), caught.value
