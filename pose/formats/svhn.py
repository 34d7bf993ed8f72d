"""The Street View House Numbers (SVHN) dataset in its two published formats.

Format 2, cropped digits: `{train,test,extra}_32x32.mat`, MATLAB v5 MAT-files holding
    X  (32, 32, 3, N) uint8   image i is X[:, :, :, i], rows x columns x RGB
    y  (N, 1)                 the digit of image i, with 10 standing for the digit 0
(MATLAB may store a double array of small integers as uint8 data: scipy.io.loadmat then
returns y as uint8, and as double only with mat_dtype=True; any numeric storage is read here.)
`extra_32x32.mat` is 1.6 GB once decompressed, so the reader here walks the MAT-file's data
elements itself and streams X in chunks instead of loading it (`scipy.io.loadmat` would).

Format 1, full numbers: `{train,test,extra}/1.png, 2.png, ...` plus `digitStruct.mat`, a
MATLAB v7.3 MAT-file (an HDF5 file behind a 512-byte MATLAB header) holding the 1 x N struct
array `digitStruct` with fields `name` (the PNG's file name) and `bbox` (a 1 x k struct array
with fields `height`, `left`, `top`, `width`, `label`: one box per digit, in pixels, origin at
the image's top-left corner, label 10 standing for the digit 0).

Labels are kept as stored (10 = zero) everywhere in this module; `digit_from_label` turns one
into the digit it names.
"""

from __future__ import annotations

import io
import os
import struct
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import h5py
import numpy as np
import scipy.io

from pose.errors import UserError

SPLITS = ("train", "test", "extra")  # the splits SVHN is published in
CROPPED_SIZE = 32
_CHANNELS = 3
_IMAGE_BYTES = CROPPED_SIZE * CROPPED_SIZE * _CHANNELS  # one uint8 image of X
_ZERO_LABEL = 10


class SvhnFormatError(UserError, ValueError):
    """A file is not what an SVHN reader expects; the message names the file and the problem."""


def digit_from_label(label) -> int:
    """The digit (0-9) an SVHN label names: SVHN stores the digit 0 as label 10.

    Raises SvhnFormatError for anything that is not an integral value in 1..10.
    """
    try:
        value = float(label)
    except (TypeError, ValueError):
        raise SvhnFormatError(f"SVHN label {label!r} is not a number; labels are 1..10") from None
    if not value.is_integer() or not 1 <= value <= _ZERO_LABEL:
        raise SvhnFormatError(f"SVHN label {label!r} is not in 1..10 (10 stands for the digit 0)")
    return int(value) % _ZERO_LABEL


def _file_name(fileobj) -> str:
    return str(getattr(fileobj, "name", None) or repr(fileobj))


# ---------------------------------------------------------------------------------------------
# MATLAB v5 MAT-files (format 2).
#
# Layout (MathWorks, "MAT-File Format", chapter 1): a 128-byte header (116 bytes of text, an
# 8-byte subsystem offset, a 2-byte version 0x0100 and the 2-byte endian mark b"IM" for
# little-endian files, b"MI" for big-endian ones), then data elements. Every element starts
# with an 8-byte tag (uint32 type, uint32 byte count) and its data is padded to 8 bytes, except
# the "small element" form, where the tag's upper 16 bits are nonzero: the byte count is those
# 16 bits, the type the lower 16, and up to 4 data bytes sit in the tag's second word.
# A variable is a miMATRIX element whose data is a sequence of sub-elements: array flags
# (miUINT32, class in the low byte), dimensions (miINT32), name (miINT8), real part (of any
# numeric type: MATLAB stores a double array of small integers as miUINT8, for example).
# MATLAB (and scipy with do_compression=True) wraps each top-level miMATRIX in a miCOMPRESSED
# element: its data is one zlib stream that inflates to the complete miMATRIX element, tag
# included.
# ---------------------------------------------------------------------------------------------

_MI_MATRIX = 14
_MI_COMPRESSED = 15
# miXXX type codes of numeric data, as numpy dtype codes (byte order added per file).
_MI_DTYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
# mxXXX array classes that hold plain numbers (mxDOUBLE_CLASS = 6 ... mxUINT64_CLASS = 15).
_MX_NUMERIC = {
    6: "double",
    7: "single",
    8: "int8",
    9: "uint8",
    10: "int16",
    11: "uint16",
    12: "int32",
    13: "uint32",
    14: "int64",
    15: "uint64",
}
_MX_NAMES = {1: "cell", 2: "struct", 3: "object", 4: "char", 5: "sparse", **_MX_NUMERIC}
_COMPLEX_FLAG = 0x800

# The file may be an S3 object, so it is read in blocks: small reads (tags, headers) are served
# from one cached block of _HEADER_BLOCK bytes; compressed data is read in blocks that grow
# from _FIRST_INFLATE_BLOCK (reading a header inflates little) to _INFLATE_BLOCK.
_HEADER_BLOCK = 64 << 10
_FIRST_INFLATE_BLOCK = 16 << 10
_INFLATE_BLOCK = 1 << 20
# Images inflated and thrown away at a time when skipping to `start` in a compressed X.
_SKIP_BYTES = 8 << 20


class _BlockReader:
    """Positioned reads from a seekable binary file, small ones served from one cached block."""

    def __init__(self, fileobj: BinaryIO, file_name: str):
        self.fileobj = fileobj
        self.file_name = file_name
        try:
            fileobj.seek(0, io.SEEK_END)
            self.size = fileobj.tell()
        except (OSError, ValueError) as err:
            raise SvhnFormatError(f"{file_name}: cannot seek in the file ({err})") from err
        self._block_start = 0
        self._block = b""

    def read_at(self, offset: int, n: int) -> bytes:
        """Exactly `n` bytes starting at `offset`; SvhnFormatError if the file ends first."""
        if offset + n > self.size:
            raise SvhnFormatError(
                f"{self.file_name}: file is truncated: needs bytes {offset}..{offset + n} "
                f"but has only {self.size} bytes"
            )
        in_block = offset - self._block_start
        if 0 <= in_block and in_block + n <= len(self._block):
            return self._block[in_block : in_block + n]
        length = n if n >= _HEADER_BLOCK else min(_HEADER_BLOCK, self.size - offset)
        self.fileobj.seek(offset)
        data = self.fileobj.read(length)
        if len(data) < n:
            raise SvhnFormatError(f"{self.file_name}: file ended early reading bytes {offset}..{offset + n}")
        if length > n:  # only small reads are worth keeping: they come in runs (tags, headers)
            self._block_start, self._block = offset, data
        return data[:n] if len(data) > n else data


class _RawElement:
    """The data of an uncompressed element: bytes [start, end) of the file, read in order."""

    def __init__(self, reader: _BlockReader, start: int, end: int):
        self.reader, self.pos, self.end = reader, start, end

    def read(self, n: int) -> bytes:
        self._check(n)
        data = self.reader.read_at(self.pos, n)
        self.pos += n
        return data

    def skip(self, n: int) -> None:
        self._check(n)
        self.pos += n

    def _check(self, n: int) -> None:
        if self.pos + n > self.end:
            raise SvhnFormatError(
                f"{self.reader.file_name}: malformed MAT-file: a sub-element at byte {self.pos} "
                f"runs past the end of its element (byte {self.end})"
            )


class _InflatedElement:
    """The inflated data of a miCOMPRESSED element at file bytes [start, end), read in order.

    Inflates incrementally: memory stays at one compressed block plus what the caller asks for.
    """

    def __init__(self, reader: _BlockReader, start: int, end: int):
        self.reader, self.start, self.end = reader, start, end
        self._next_input = start
        self._input_block = _FIRST_INFLATE_BLOCK
        self._inflate = zlib.decompressobj()
        self._pending = b""  # compressed input read from the file but not yet inflated

    def read(self, n: int) -> bytearray:
        out = bytearray(n)
        view = memoryview(out)
        filled = 0
        while filled < n:
            if not self._pending and self._next_input < self.end:
                size = min(self._input_block, self.end - self._next_input)
                self._pending = self.reader.read_at(self._next_input, size)
                self._next_input += size
                self._input_block = min(2 * self._input_block, _INFLATE_BLOCK)
            try:
                # max_length bounds the output, so a 1.6 GB X never exists inflated at once.
                piece = self._inflate.decompress(self._pending, n - filled)
            except zlib.error as err:
                raise SvhnFormatError(
                    f"{self.reader.file_name}: corrupt compressed data in the element at byte {self.start - 8}: {err}"
                ) from err
            self._pending = self._inflate.unconsumed_tail
            view[filled : filled + len(piece)] = piece
            filled += len(piece)
            if not piece and not self._pending and (self._inflate.eof or self._next_input >= self.end):
                raise SvhnFormatError(
                    f"{self.reader.file_name}: compressed element at byte {self.start - 8} ends "
                    f"early: it inflates to fewer bytes than its MATLAB array says"
                )
        return out

    def skip(self, n: int) -> None:
        while n > 0:
            step = min(n, _SKIP_BYTES)
            self.read(step)
            n -= step


@dataclass(frozen=True)
class _MatrixHeader:
    """What a miMATRIX element says about its variable, up to the start of its real part."""

    name: str
    class_name: str
    dims: tuple[int, ...]  # MATLAB order: rows, columns, ...; data is column-major
    dtype: np.dtype  # how the real part is stored (may differ from the class)
    data_bytes: int
    small_data: bytes | None  # the real part itself, when stored in a small element


def _parse_tag(raw: bytes, byteorder: str) -> tuple[int, int, bytes | None]:
    """(type, byte count, inline data or None) of an 8-byte element tag."""
    first, second = struct.unpack(byteorder + "II", raw)
    if first >> 16:  # small element: count and type share the first word, data the second
        count = first >> 16
        return first & 0xFFFF, count, raw[4 : 4 + count]
    return first, second, None


def _padded(n: int) -> int:
    return (n + 7) & ~7


def _read_subelement(source, byteorder: str, file_name: str, expected_type: str) -> tuple[int, bytes]:
    element_type, count, inline = _parse_tag(bytes(source.read(8)), byteorder)
    if inline is not None:
        return element_type, inline
    if count > 1 << 16:
        raise SvhnFormatError(f"{file_name}: malformed MAT-file: {expected_type} sub-element of {count} bytes")
    data = bytes(source.read(_padded(count)))
    return element_type, data[:count]


def _read_matrix_header(source, byteorder: str, file_name: str) -> _MatrixHeader:
    """Parse a miMATRIX's array flags, dimensions, name and real-part tag from `source`."""
    flags_type, flags = _read_subelement(source, byteorder, file_name, "array flags")
    if flags_type != 6 or len(flags) != 8:
        raise SvhnFormatError(f"{file_name}: malformed MAT-file: bad array flags sub-element")
    flag_word = struct.unpack(byteorder + "I", flags[:4])[0]
    class_code = flag_word & 0xFF
    class_name = _MX_NAMES.get(class_code, f"class {class_code}")
    dims_type, dims_raw = _read_subelement(source, byteorder, file_name, "dimensions")
    if dims_type != 5 or len(dims_raw) % 4 or not dims_raw:
        raise SvhnFormatError(f"{file_name}: malformed MAT-file: bad dimensions sub-element")
    dims = tuple(int(d) for d in np.frombuffer(dims_raw, dtype=byteorder + "i4"))
    _, name_raw = _read_subelement(source, byteorder, file_name, "array name")
    name = name_raw.decode("ascii", errors="replace")
    if class_code not in _MX_NUMERIC or flag_word & _COMPLEX_FLAG:
        kind = "complex " + class_name if flag_word & _COMPLEX_FLAG else class_name
        return _MatrixHeader(name, kind, dims, np.dtype("u1"), 0, None)
    data_type, data_bytes, small_data = _parse_tag(bytes(source.read(8)), byteorder)
    if data_type not in _MI_DTYPES:
        raise SvhnFormatError(f"{file_name}: variable {name!r} stores its numbers as unknown type {data_type}")
    return _MatrixHeader(name, class_name, dims, np.dtype(byteorder + _MI_DTYPES[data_type]), data_bytes, small_data)


def _read_file_header(reader: _BlockReader) -> str:
    """Check the 128-byte MAT-file header; return the file's byte order, '<' or '>'."""
    file_name = reader.file_name
    if reader.size == 0:
        raise SvhnFormatError(f"{file_name}: file is empty (0 bytes); expected a MATLAB v5 MAT-file")
    head = reader.read_at(0, min(128, reader.size))
    if head.startswith(b"\x89HDF") or head.startswith(b"MATLAB 7.3"):
        raise SvhnFormatError(
            f"{file_name}: is a MATLAB v7.3 (HDF5) file; SVHN cropped digits are MATLAB v5 "
            f"MAT-files (is this a digitStruct.mat? read it with read_digit_struct)"
        )
    if not head.startswith(b"MATLAB") or len(head) < 128:
        raise SvhnFormatError(f"{file_name}: not a MATLAB v5 MAT-file (no 'MATLAB 5.0 MAT-file' header)")
    endian = head[126:128]
    if endian not in (b"IM", b"MI"):
        raise SvhnFormatError(f"{file_name}: not a MATLAB v5 MAT-file (bad endian mark {endian!r})")
    return "<" if endian == b"IM" else ">"


def _read_variables(reader: _BlockReader) -> dict[str, tuple[_MatrixHeader, _RawElement | _InflatedElement]]:
    """Walk all top-level elements of the MAT-file: each variable's header and a data source.

    Each source is positioned at its variable's real-part data and reads on demand, so a
    variable nobody reads costs its header alone (for a compressed one, inflating a few dozen
    bytes) and skipping it is a seek. Walking every element finds a truncated file whichever
    variable the caller wants.
    """
    byteorder = _read_file_header(reader)
    variables = {}
    position = 128
    while position < reader.size:
        if position + 8 > reader.size:
            raise SvhnFormatError(f"{reader.file_name}: file is truncated inside the element tag at byte {position}")
        element_type, count, _ = _parse_tag(reader.read_at(position, 8), byteorder)
        start, end = position + 8, position + 8 + count
        if end > reader.size:
            raise SvhnFormatError(
                f"{reader.file_name}: file is truncated: the element at byte {position} needs "
                f"{count} bytes but the file ends after {reader.size - start}"
            )
        if element_type == _MI_COMPRESSED:
            source = _InflatedElement(reader, start, end)
            inner_type, _, _ = _parse_tag(bytes(source.read(8)), byteorder)
            if inner_type == _MI_MATRIX:
                header = _read_matrix_header(source, byteorder, reader.file_name)
                variables[header.name] = header, source
        elif element_type == _MI_MATRIX:
            source = _RawElement(reader, start, end)
            header = _read_matrix_header(source, byteorder, reader.file_name)
            variables[header.name] = header, source
        position = end  # element sizes include their padding
    return variables


def _variable(variables: dict, wanted: str, file_name: str) -> tuple[_MatrixHeader, _RawElement | _InflatedElement]:
    if wanted not in variables:
        raise SvhnFormatError(
            f"{file_name}: has no variable {wanted} (found {', '.join(variables) or 'none'}); "
            f"SVHN cropped-digit files hold X and y"
        )
    return variables[wanted]


def _image_count(header: _MatrixHeader, file_name: str) -> int:
    """N of X (32, 32, 3, N); MATLAB drops a trailing 1, so a single image reads (32, 32, 3)."""
    dims = header.dims + (1,) if len(header.dims) == 3 else header.dims
    if len(dims) != 4 or dims[:3] != (CROPPED_SIZE, CROPPED_SIZE, _CHANNELS):
        raise SvhnFormatError(f"{file_name}: X has dimensions {header.dims}; expected (32, 32, 3, N)")
    if header.class_name not in _MX_NUMERIC.values():
        raise SvhnFormatError(f"{file_name}: X is a {header.class_name} array; expected uint8 images")
    if header.data_bytes != int(np.prod(dims)) * header.dtype.itemsize:
        raise SvhnFormatError(f"{file_name}: X holds {header.data_bytes} bytes, not {dims} values")
    return dims[3]


def cropped_digit_count(fileobj: BinaryIO) -> int:
    """The number N of images in an SVHN `*_32x32.mat` file, read from X's header alone."""
    file_name = _file_name(fileobj)
    header, _ = _variable(_read_variables(_BlockReader(fileobj, file_name)), "X", file_name)
    return _image_count(header, file_name)


def read_cropped_labels(fileobj: BinaryIO) -> np.ndarray:
    """All labels y of an SVHN `*_32x32.mat` file as (N,) int64, as stored (10 = digit 0).

    Reads X's header for N and leaves the rest of X unread, so the cost is that of y alone.
    """
    file_name = _file_name(fileobj)
    variables = _read_variables(_BlockReader(fileobj, file_name))
    image_count = _image_count(_variable(variables, "X", file_name)[0], file_name)
    labels = _read_labels(*_variable(variables, "y", file_name), file_name)
    if len(labels) != image_count:
        raise SvhnFormatError(f"{file_name}: has {len(labels)} labels y for {image_count} images X")
    return labels


def _read_labels(header: _MatrixHeader, source, file_name: str) -> np.ndarray:
    count = int(np.prod(header.dims))
    if header.class_name not in _MX_NUMERIC.values() or sum(d != 1 for d in header.dims) > 1:
        raise SvhnFormatError(
            f"{file_name}: y is a {header.class_name} array of dimensions {header.dims}; expected numbers (N, 1)"
        )
    if header.data_bytes != count * header.dtype.itemsize:
        raise SvhnFormatError(f"{file_name}: y holds {header.data_bytes} bytes, not {count} values")
    raw = header.small_data if header.small_data is not None else source.read(header.data_bytes)
    values = np.frombuffer(raw, dtype=header.dtype)
    labels = values.astype(np.int64)
    bad = (labels != values) | (labels < 1) | (labels > _ZERO_LABEL)
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise SvhnFormatError(f"{file_name}: label y[{index}] = {values[index].item()} is not in 1..10")
    return labels


def iter_cropped_digits(
    fileobj: BinaryIO, start: int = 0, stop: int | None = None, chunk: int = 4096
) -> Iterator[tuple[int, np.ndarray]]:
    """Stream images [start, stop) of an SVHN `*_32x32.mat` file, `chunk` images at a time.

    Yields (index of the chunk's first image, pixels (n, 32, 32, 3) uint8), rows x columns x
    RGB, in file order; memory stays at about one chunk (4096 images = 12 MB) whatever N is.
    X is (32, 32, 3, N) in MATLAB's column-major order: the row index varies fastest, then the
    column, the channel, the image. So image i is the contiguous run of 3072 values at
    i * 3072; read as a C-order (3, 32, 32) array it is indexed [channel, column, row], and
    transposing it gives (row, column, channel).
    A compressed X is inflated from its start up to `stop`: skipping to `start` costs time.
    """
    file_name = _file_name(fileobj)
    header, source = _variable(_read_variables(_BlockReader(fileobj, file_name)), "X", file_name)
    image_count = _image_count(header, file_name)
    stop = image_count if stop is None else stop
    if not 0 <= start <= stop <= image_count:
        raise ValueError(f"{file_name}: images [{start}, {stop}) are not within the file's {image_count}")
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1 image, got {chunk}")
    image_bytes = _IMAGE_BYTES * header.dtype.itemsize
    source.skip(start * image_bytes)
    for first in range(start, stop, chunk):
        count = min(chunk, stop - first)
        values = np.frombuffer(source.read(count * image_bytes), dtype=header.dtype)
        if header.dtype != np.uint8:  # not how SVHN stores X, but a valid MAT-file of images
            if ((values < 0) | (values > 255) | (values != np.round(values))).any():
                raise SvhnFormatError(f"{file_name}: X holds values outside the uint8 range 0..255")
            values = values.astype(np.uint8)
        by_channel_column_row = values.reshape(count, _CHANNELS, CROPPED_SIZE, CROPPED_SIZE)
        yield first, np.ascontiguousarray(by_channel_column_row.transpose(0, 3, 2, 1))


def write_cropped_mat(path_or_file, pixels: np.ndarray, labels: np.ndarray, compress: bool = True) -> None:
    """Write an SVHN format-2 MAT-file: X (32, 32, 3, N) uint8 and y (N, 1) uint8.

    pixels: (N, 32, 32, 3) uint8, rows x columns x RGB. labels: (N,) values 1..10 (10 = zero).
    scipy writes the same MATLAB v5 layout as MATLAB's `save`, one miCOMPRESSED element per
    variable when `compress`; it holds the whole file in memory, fine for synthetic sizes.
    """
    pixels = np.asarray(pixels)
    labels = np.asarray(labels)
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[1:] != (CROPPED_SIZE, CROPPED_SIZE, _CHANNELS):
        raise ValueError(f"pixels must be (N, 32, 32, 3) uint8, got {pixels.shape} {pixels.dtype}")
    if labels.shape != (len(pixels),):
        raise ValueError(f"labels must be ({len(pixels)},), got {labels.shape}")
    if len(labels) and (labels.min() < 1 or labels.max() > _ZERO_LABEL):
        raise ValueError("labels must be 1..10 (SVHN stores the digit 0 as 10)")
    matlab_arrays = {
        "X": pixels.transpose(1, 2, 3, 0),  # (32, 32, 3, N): X[r, c, ch, i] = pixels[i, r, c, ch]
        "y": labels.astype(np.uint8).reshape(-1, 1),
    }
    scipy.io.savemat(path_or_file, matlab_arrays, do_compression=compress, format="5", oned_as="column")


# ---------------------------------------------------------------------------------------------
# digitStruct.mat (format 1): MATLAB v7.3, i.e. HDF5 with a 512-byte MATLAB header in front.
#
# How MATLAB maps the 1 x N struct array `digitStruct` (and its 1 x k `bbox` structs) to HDF5:
# a struct is a group (attributes MATLAB_class "struct", MATLAB_fields = the field names);
# in a struct array of more than one element each field is a dataset of object references,
# shape (elements, 1) in HDF5's C order (MATLAB's dims reversed), with no MATLAB_class,
# pointing at the element values kept in the group "/#refs#"; a scalar struct (k == 1) holds
# its fields' values directly. A number is a (1, 1) float64 dataset, MATLAB_class "double";
# a string is (length, 1) uint16 UTF-16 code units, MATLAB_class "char", MATLAB_int_decode 2.
# ---------------------------------------------------------------------------------------------

_BOX_FIELDS = ("height", "left", "top", "width", "label")  # MATLAB_fields order of a bbox
_USERBLOCK_BYTES = 512


@dataclass(frozen=True)
class DigitBox:
    """One digit of a house number: its box in pixels (origin at the image's top-left corner,
    x to the right, y down) and its label as stored (10 = digit 0)."""

    left: float
    top: float
    width: float
    height: float
    label: int


@dataclass(frozen=True)
class NumberAnnotation:
    """One full-number image (`name`, e.g. "1.png") and its digits' boxes, left to right."""

    name: str
    boxes: tuple[DigitBox, ...]


def read_digit_struct(fileobj) -> list[NumberAnnotation]:
    """All entries of a format-1 `digitStruct.mat` (a path or a seekable binary file), in order.

    The file holds about half a million tiny HDF5 datasets for the real train split (33,402
    numbers, 73,257 digits), so the per-object cost is what matters: each value is taken
    straight from the file's bytes at its dataset's data offset (a tenth of the cost of an
    HDF5 read), and only the objects themselves are opened through HDF5. A path is memory-
    mapped; a file object is read into memory whole first, because HDF5 makes many small
    reads, each of which would be a Python call and, on S3, possibly a request (the real train
    file is a few hundred MB: copy the extra split's to local disk and pass its path).
    """
    if isinstance(fileobj, (str, os.PathLike)):
        file_name = os.fspath(fileobj)
        try:
            image = np.memmap(file_name, dtype=np.uint8, mode="r") if os.path.getsize(file_name) else b""
        except OSError as err:
            raise SvhnFormatError(f"{file_name}: cannot read the file ({err})") from err
    else:
        file_name = _file_name(fileobj)
        fileobj.seek(0)
        image = fileobj.read()
    head = bytes(image[:10])
    if not head.startswith(b"MATLAB 7.3") and not head.startswith(b"\x89HDF"):
        what = "is empty (0 bytes)" if not head else "is not a MATLAB v7.3 MAT-file (no HDF5 header)"
        if head.startswith(b"MATLAB 5.0"):
            what = "is a MATLAB v5 MAT-file; digitStruct.mat is MATLAB v7.3 (HDF5)"
        raise SvhnFormatError(f"{file_name}: {what}")
    try:
        h5file = h5py.File(file_name, "r") if isinstance(image, np.memmap) else _open_hdf5_image(image)
    except (OSError, ValueError) as err:
        raise SvhnFormatError(f"{file_name}: not a readable MATLAB v7.3 (HDF5) file ({err})") from err
    with h5file:
        try:
            return _read_digit_struct(h5file, image)
        except SvhnFormatError as err:
            raise SvhnFormatError(f"{file_name}: {err}") from None
        except (KeyError, OSError, ValueError, TypeError, IndexError) as err:
            raise SvhnFormatError(f"{file_name}: not an SVHN digitStruct.mat ({type(err).__name__}: {err})") from err


def _open_hdf5_image(image: bytes) -> h5py.File:
    """Open an HDF5 file held in memory (HDF5's "file image" on its in-memory core driver)."""
    access = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    access.set_fapl_core(backing_store=False)
    access.set_file_image(image)
    return h5py.File(h5py.h5f.open(b"digitStruct.mat", h5py.h5f.ACC_RDONLY, fapl=access))


class _ObjectReader:
    """Small datasets addressed by HDF5 object references, read with h5py's low-level API."""

    def __init__(self, h5file: h5py.File, image: bytes | np.memmap):
        self.file_id = h5file.id
        self.image = image

    def open(self, ref):
        return h5py.h5r.dereference(ref, self.file_id)

    def refs(self, dataset_id) -> np.ndarray:
        """A dataset of object references, flattened."""
        out = np.empty(dataset_id.shape, dtype=h5py.ref_dtype)
        dataset_id.read(h5py.h5s.ALL, h5py.h5s.ALL, out)
        return out.reshape(-1)

    def values(self, dataset_id, dtype: np.dtype, count: int) -> np.ndarray:
        """The first `count` values of a dataset known to hold `dtype`, flattened."""
        # A contiguous dataset's data is `count` plain values at this file offset; reading them
        # here costs a tenth of an HDF5 read. Compact or chunked layouts have no offset.
        offset = dataset_id.get_offset()
        if offset is not None:
            return np.frombuffer(self.image, dtype=dtype, count=count, offset=offset)
        out = np.empty(dataset_id.shape, dtype=dtype)
        dataset_id.read(h5py.h5s.ALL, h5py.h5s.ALL, out)
        return out.reshape(-1)[:count]


def _check_type(dataset_id, expected: np.dtype, what: str) -> None:
    stored = dataset_id.get_type().dtype
    if stored != expected:
        raise SvhnFormatError(f"{what} is stored as {stored}; MATLAB stores it as {expected}")


def _read_digit_struct(h5file: h5py.File, image: bytes | np.memmap) -> list[NumberAnnotation]:
    if "digitStruct" not in h5file:
        raise SvhnFormatError(f"has no variable 'digitStruct' (found {sorted(h5file)})")
    digit_struct = h5file["digitStruct"]
    if not isinstance(digit_struct, h5py.Group) or "name" not in digit_struct or "bbox" not in digit_struct:
        raise SvhnFormatError("'digitStruct' is not a struct array with fields name and bbox")
    objects = _ObjectReader(h5file, image)
    name_refs = objects.refs(digit_struct["name"].id)
    box_refs = objects.refs(digit_struct["bbox"].id)
    if len(name_refs) != len(box_refs):
        raise SvhnFormatError(f"digitStruct has {len(name_refs)} names but {len(box_refs)} bbox entries")
    # MATLAB writes every char as uint16 and every number as float64; checking each of the
    # half million datasets would double the reading time, so the first of each is checked.
    checked_text = checked_number = False
    numbers = []
    for index, (name_ref, box_ref) in enumerate(zip(name_refs, box_refs)):
        name_id = objects.open(name_ref)
        if not checked_text:
            _check_type(name_id, np.dtype("<u2"), "digitStruct.name")
            checked_text = True
        name = objects.values(name_id, np.dtype("<u2"), name_id.shape[0]).tobytes().decode("utf-16-le")
        box_group = objects.open(box_ref)  # a GroupID: the 1 x k struct array of this number's digits
        fields = {}
        for field in _BOX_FIELDS:
            try:
                field_id = h5py.h5d.open(box_group, field.encode())
            except KeyError:
                raise SvhnFormatError(
                    f"digitStruct.bbox of entry {index + 1} ({name}) has no field {field!r}"
                ) from None
            if field == _BOX_FIELDS[0]:
                digit_count = int(np.prod(field_id.shape))
                several = field_id.get_type().get_class() == h5py.h5t.REFERENCE
            if int(np.prod(field_id.shape)) != digit_count:
                raise SvhnFormatError(f"bbox fields of entry {index + 1} ({name}) differ in length")
            value_ids = [objects.open(ref) for ref in objects.refs(field_id)] if several else [field_id]
            if not checked_number:
                _check_type(value_ids[0], np.dtype("<f8"), "digitStruct.bbox." + field)
                checked_number = True
            if several:  # k > 1: each value is its own (1, 1) dataset
                fields[field] = [objects.values(value_id, np.dtype("<f8"), 1)[0] for value_id in value_ids]
            else:  # k == 1: the (1, 1) field dataset holds the value itself
                fields[field] = list(objects.values(field_id, np.dtype("<f8"), digit_count))
        boxes = tuple(
            DigitBox(float(left), float(top), float(width), float(height), int(label))
            for left, top, width, height, label in zip(
                fields["left"], fields["top"], fields["width"], fields["height"], fields["label"]
            )
        )
        numbers.append(NumberAnnotation(name, boxes))
    return numbers


def _matlab_header(version: bytes) -> bytes:
    """The 128-byte header MATLAB writes in front of a MAT-file (v7.3: at the start of the userblock)."""
    created = time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(0))
    text = f"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: {created} HDF5 schema 1.00 ."
    return text.encode("ascii").ljust(116, b" ") + b"\0" * 8 + version + b"IM"


def write_digit_struct(path, numbers: Sequence[NumberAnnotation]) -> None:
    """Write a format-1 `digitStruct.mat` at `path` as MATLAB's `save -v7.3` lays it out.

    Layout as described above this function; `#refs#` starts with MATLAB's "canonical empty"
    placeholder and names its objects with short letter names (a, b, ...) as MATLAB does. The header's creation date is
    fixed (1970) so that the same numbers give the same bytes. Uses h5py's low-level API: the
    high-level one spends ~150 us per tiny dataset, the bulk of the time for thousands of numbers.
    """
    with h5py.File(path, "w", userblock_size=_USERBLOCK_BYTES, libver="earliest") as h5file:
        writer = _MatlabObjectWriter(h5file)
        placeholder = writer.dataset(writer.refs_group, np.zeros(2, dtype=np.uint64), "canonical empty")
        h5py.h5a.create(placeholder, b"MATLAB_empty", h5py.h5t.STD_U8LE, writer.scalar_space).write(
            np.array(1, dtype=np.uint8)
        )
        name_refs, box_refs = [], []
        for number in numbers:
            if not number.boxes:
                raise ValueError(f"number {number.name!r} has no digit boxes; SVHN numbers have 1 or more")
            characters = np.frombuffer(number.name.encode("utf-16-le"), dtype=np.uint16).reshape(-1, 1)
            name_id = writer.dataset(writer.refs_group, characters, "char")
            h5py.h5a.create(name_id, b"MATLAB_int_decode", h5py.h5t.STD_I32LE, writer.scalar_space).write(
                np.array(2, dtype=np.int32)
            )
            name_refs.append(writer.ref(name_id))

            box_group = writer.struct_group(writer.refs_group, _BOX_FIELDS)
            for field in _BOX_FIELDS:
                values = [float(getattr(box, field)) for box in number.boxes]
                if len(values) == 1:
                    writer.dataset(box_group, np.full((1, 1), values[0]), "double", name=field)
                else:
                    value_refs = [
                        writer.ref(writer.dataset(writer.refs_group, np.full((1, 1), value), "double"))
                        for value in values
                    ]
                    writer.ref_dataset(box_group, field, value_refs)
            box_refs.append(writer.ref(box_group))

        digit_struct = writer.struct_group(h5file.id, ("name", "bbox"), name="digitStruct")
        writer.ref_dataset(digit_struct, "name", name_refs)
        writer.ref_dataset(digit_struct, "bbox", box_refs)
    with open(path, "r+b") as raw:
        raw.write(_matlab_header(version=b"\x00\x02").ljust(_USERBLOCK_BYTES, b"\0"))


class _MatlabObjectWriter:
    """Creates the HDF5 objects of a v7.3 MAT-file with their MATLAB attributes (low-level h5py)."""

    _LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

    def __init__(self, h5file: h5py.File):
        self.file_id = h5file.id
        self.refs_group = h5py.h5g.create(h5file.id, b"#refs#")
        self.scalar_space = h5py.h5s.create(h5py.h5s.SCALAR)
        self._refs_count = 0

    def next_refs_name(self) -> bytes:
        """Short names for objects in #refs#, like MATLAB's: a, ..., z, A, ..., Z, aa, ab, ..."""
        n, name = self._refs_count, ""
        self._refs_count += 1
        while True:
            name = self._LETTERS[n % len(self._LETTERS)] + name
            n = n // len(self._LETTERS) - 1
            if n < 0:
                return name.encode()

    def class_attribute(self, object_id, matlab_class: str) -> None:
        text = np.array(matlab_class.encode())
        string_type = h5py.h5t.C_S1.copy()
        string_type.set_size(len(matlab_class))
        h5py.h5a.create(object_id, b"MATLAB_class", string_type, self.scalar_space).write(text, mtype=string_type)

    def dataset(self, parent_id, values: np.ndarray, matlab_class: str, name: str | None = None):
        """A dataset of `values` under `parent_id` (named by #refs# order unless `name`)."""
        values = np.ascontiguousarray(values)
        dataset_id = h5py.h5d.create(
            parent_id,
            name.encode() if name else self.next_refs_name(),
            h5py.h5t.py_create(values.dtype.newbyteorder("<")),
            h5py.h5s.create_simple(values.shape),
        )
        dataset_id.write(h5py.h5s.ALL, h5py.h5s.ALL, values)
        self.class_attribute(dataset_id, matlab_class)
        return dataset_id

    def ref_dataset(self, parent_id, name: str, refs: list) -> None:
        """A (len(refs), 1) dataset of object references: a non-scalar struct's field."""
        values = np.array(refs, dtype=h5py.ref_dtype).reshape(-1, 1)
        dataset_id = h5py.h5d.create(
            parent_id, name.encode(), h5py.h5t.STD_REF_OBJ, h5py.h5s.create_simple(values.shape)
        )
        dataset_id.write(h5py.h5s.ALL, h5py.h5s.ALL, values)

    def struct_group(self, parent_id, fields: Sequence[str], name: str | None = None):
        group_id = h5py.h5g.create(parent_id, name.encode() if name else self.next_refs_name())
        self.class_attribute(group_id, "struct")
        # MATLAB_fields: the field names, each a variable-length sequence of 1-byte chars.
        names_type = h5py.vlen_dtype(np.dtype("S1"))
        field_names = np.empty(len(fields), dtype=names_type)
        for i, field in enumerate(fields):
            field_names[i] = np.frombuffer(field.encode(), dtype="S1")
        h5py.Group(group_id).attrs.create("MATLAB_fields", field_names, dtype=names_type)
        return group_id

    def ref(self, object_id) -> h5py.Reference:
        return h5py.h5r.create(object_id, b".", h5py.h5r.OBJECT)
