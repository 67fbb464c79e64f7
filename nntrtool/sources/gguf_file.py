"""GGUF files (llama.cpp's format) read over a memory map, header and metadata by nntrtool.

A GGUF file is: ``GGUF``, a version (2 or 3), a tensor count and a key/value count (64-bit), the
key/value metadata, one info record per tensor (name, dimensions innermost first, ggml type,
offset into the data section), padding to the alignment, then the data. :func:`scan_header`
walks the header once with every count and length bounded by the bytes left and every tensor's
data checked to lie inside the file; anything wrong is one :class:`SourceError` line.

The scan builds no Python object per array element: a metadata value is remembered as its type
and byte range (:class:`Field`) and decoded only when asked for. Numeric arrays (token scores,
token types) come back as read-only numpy views of the map, string arrays (tokens, merges) as a
:class:`StringArray` whose strings are decoded on demand, so a 262k-token vocabulary costs one
pass over its length prefixes when the file is opened and nothing more until a tokenizer is
built. (``gguf.GGUFReader`` makes several numpy views per array element, seconds and hundreds
of MB for such a vocabulary, and trusts every count it reads; the ``gguf`` package is still
the source of the ggml type tables and the block dequantizers.)

Tensors come out as :class:`GGUFTensor`: F32/F16/BF16 rows like a safetensors tensor's, and the
block types (``"Q4_0"``, ``"Q4_K"``, ``"IQ2_XS"`` ...) as raw uint8 block rows with a float32
decoder registered in :data:`nntrtool.sources.base.BLOCK_DTYPES`.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nntrtool.errors import SourceError
from nntrtool.memory import release_pages
from nntrtool.sources.base import READABLE_DTYPES, SourceTensor, register_block_dtype
from nntrtool.sources.mapped import MappedFile

#: The GGUF versions read (version 1 had 32-bit counts and is long gone).
VERSIONS = (2, 3)
#: Dimensions a ggml tensor can have.
MAX_DIMS = 4
#: Longest key or tensor name accepted (ggml's own limit on names is 64 bytes).
MAX_NAME_BYTES = 1 << 16
_DEFAULT_ALIGNMENT = 32

# GGUF value types: the scalars' little-endian numpy types; 8 is a string, 9 an array.
_SCALAR_DTYPES = {
    0: np.dtype("<u1"),
    1: np.dtype("<i1"),
    2: np.dtype("<u2"),
    3: np.dtype("<i2"),
    4: np.dtype("<u4"),
    5: np.dtype("<i4"),
    6: np.dtype("<f4"),
    7: np.dtype("bool"),
    10: np.dtype("<u8"),
    11: np.dtype("<i8"),
    12: np.dtype("<f8"),
}
_SCALAR_SIZES = {t: d.itemsize for t, d in _SCALAR_DTYPES.items()}
_STRING, _ARRAY, _UINT32 = 8, 9, 4
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class Field:
    """Where one metadata value lies: its GGUF type and the byte range of its contents.

    ``vtype`` is the value's GGUF type (0-12); for an array (9) ``item_type`` is the items'
    type and ``count`` their number, and ``begin`` points at the first item (past the array's
    type and length). For a string ``begin`` points at its bytes, past the length.
    """

    key: str
    vtype: int
    begin: int
    end: int
    item_type: int | None = None
    count: int = 1


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's record in the header: numpy-order shape, ggml type, absolute data range."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    begin: int
    end: int


@dataclass(frozen=True)
class Header:
    """What :func:`scan_header` found: version, metadata keys, tensors, alignment, data start."""

    version: int
    fields: dict[str, Field]
    tensors: tuple[TensorInfo, ...]
    alignment: int
    data_start: int

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.fields)


def _ggml_sizes() -> dict[int, tuple[str, int, int]]:
    """``{type id: (name, values per block, bytes per block)}`` from the gguf package's table."""
    from gguf.constants import GGML_QUANT_SIZES

    return {int(t): (t.name, bs, bb) for t, (bs, bb) in GGML_QUANT_SIZES.items()}


class _Cursor:
    """Bounded little-endian reads from the header bytes; running out is a truncated file."""

    def __init__(self, buf: memoryview, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    @property
    def left(self) -> int:
        return len(self.buf) - self.pos

    def take(self, n: int, what: str) -> memoryview:
        if n > self.left:
            raise SourceError(
                f"{self.path}: the file ends inside the header ({what} at byte {self.pos} needs "
                f"{n} bytes, {self.left} left); the GGUF is truncated"
            )
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack("<Q", self.take(8, what))[0]

    def skip_strings(self, count: int, key: str) -> None:
        """Step over ``count`` length-prefixed strings (one pass, no object per string)."""
        buf, pos, size = self.buf, self.pos, len(self.buf)
        last = size - 8
        unpack = _U64.unpack_from
        for _ in range(count):
            if pos > last:
                break
            pos += 8 + unpack(buf, pos)[0]
        else:
            if pos <= size:
                self.pos = pos
                return
        raise SourceError(
            f"{self.path}: the strings of metadata {key!r} run past the end of the file; the "
            "GGUF is truncated or corrupt"
        )

    def string(self, what: str, limit: int | None = None) -> bytes:
        n = self.u64(f"length of {what}")
        if limit is not None and n > limit:
            raise SourceError(
                f"{self.path}: {what} at byte {self.pos} claims {n} bytes (at most {limit} "
                "allowed); the GGUF is corrupt"
            )
        return bytes(self.take(n, what))


def scan_header(path: Path, size: int, head: memoryview) -> Header:
    """Walk and validate a GGUF header (``head`` is the file's bytes); SourceError if wrong.

    Checks the magic, the version and byte order, every count and length against the bytes
    left, value types, nested arrays, duplicate keys and names, tensor types, dimensions,
    alignment, and that every tensor's data lies inside the file.
    """
    cur = _Cursor(head, path)
    if size < 4 or bytes(head[:4]) != b"GGUF":
        magic = bytes(head[:4])
        raise SourceError(
            f"{path}: not a GGUF file (it starts with {magic!r}, not b'GGUF')"
            if size >= 4
            else f"{path}: not a GGUF file ({size} bytes)"
        )
    cur.pos = 4
    version = cur.u32("version")
    if version not in VERSIONS:
        swapped = struct.unpack(">I", struct.pack("<I", version))[0]
        if swapped in VERSIONS:
            raise SourceError(
                f"{path}: a big-endian GGUF, which nntrtool does not read; convert it to a "
                "little-endian GGUF first (llama.cpp's gguf tools)"
            )
        raise SourceError(
            f"{path}: GGUF version {version} is not supported (nntrtool reads versions "
            f"{' and '.join(map(str, VERSIONS))})"
        )
    n_tensors = cur.u64("tensor count")
    n_kv = cur.u64("key/value count")
    # A key/value takes at least 13 bytes (length, 1-byte key, type, 1-byte value) and a tensor
    # record at least 25: counts beyond what the file can hold are corrupt, not large.
    if n_kv * 13 > cur.left or n_tensors * 25 > cur.left:
        raise SourceError(
            f"{path}: the header claims {n_tensors} tensors and {n_kv} metadata keys, more "
            f"than a {size}-byte file can hold; the GGUF is truncated or corrupt"
        )
    fields: dict[str, Field] = {}
    alignment = _DEFAULT_ALIGNMENT
    for _ in range(n_kv):
        key = _text(cur.string("metadata key", MAX_NAME_BYTES), path, "metadata key")
        if key in fields:
            raise SourceError(f"{path}: metadata key {key!r} appears twice; the GGUF is corrupt")
        vtype = cur.u32(f"type of {key!r}")
        if key == "general.alignment":
            if vtype != _UINT32:
                raise SourceError(f"{path}: general.alignment is not a uint32; the GGUF is corrupt")
            alignment = struct.unpack("<I", bytes(cur.buf[cur.pos : cur.pos + 4]).ljust(4, b"\0"))[
                0
            ]
            if alignment == 0 or alignment & (alignment - 1):
                raise SourceError(
                    f"{path}: general.alignment {alignment} is not a power of two; the GGUF is "
                    "corrupt"
                )
        fields[key] = _value_field(cur, vtype, key, path)
    sizes = _ggml_sizes()
    tensors: list[tuple[str, tuple[int, ...], int, int]] = []
    names: set[str] = set()
    for i in range(n_tensors):
        name = _text(cur.string(f"name of tensor {i}", MAX_NAME_BYTES), path, "tensor name")
        if not name.isprintable():
            raise SourceError(
                f"{path}: tensor name {name!r} holds control characters; the GGUF is corrupt"
            )
        if name in names:
            raise SourceError(f"{path}: tensor {name!r} appears twice; the GGUF is corrupt")
        names.add(name)
        n_dims = cur.u32(f"dimension count of {name!r}")
        if n_dims > MAX_DIMS:
            raise SourceError(
                f"{path}: tensor {name!r} claims {n_dims} dimensions (ggml has at most "
                f"{MAX_DIMS}); the GGUF is corrupt"
            )
        dims = [cur.u64(f"dimensions of {name!r}") for _ in range(n_dims)]
        ggml_type = cur.u32(f"type of {name!r}")
        offset = cur.u64(f"data offset of {name!r}")
        if ggml_type not in sizes:
            raise SourceError(
                f"{path}: tensor {name!r} has ggml type {ggml_type}, which is unknown (too new a "
                "file, or a corrupt one)"
            )
        tname, block, _ = sizes[ggml_type]
        if 0 in dims or any(d > 1 << 62 for d in dims):
            raise SourceError(
                f"{path}: tensor {name!r} has dimensions {list(reversed(dims))}; the GGUF is "
                "corrupt"
            )
        if block > 1 and (not dims or dims[0] % block):
            row = f"rows of {dims[0]} values are" if dims else "a scalar is"
            raise SourceError(
                f"{path}: tensor {name!r} {row} not whole {tname} blocks of {block}; the GGUF "
                "is corrupt"
            )
        if offset % alignment:
            raise SourceError(
                f"{path}: tensor {name!r} data offset {offset} is not aligned to {alignment}; "
                "the GGUF is corrupt"
            )
        tensors.append((name, tuple(reversed(dims)), ggml_type, offset))
    data_start = -(-cur.pos // alignment) * alignment
    infos: list[TensorInfo] = []
    for name, shape, ggml_type, offset in tensors:
        tname, block, block_bytes = sizes[ggml_type]
        numel = 1
        for d in shape:
            numel *= d
            if numel > 1 << 62:
                raise SourceError(f"{path}: tensor {name!r} has absurd dimensions {list(shape)}")
        begin = data_start + offset
        end = begin + numel // block * block_bytes
        if end > size:
            raise SourceError(
                f"{path}: tensor {name!r} ({tname} {list(shape)}) has its data at bytes "
                f"{begin}-{end}, past the end of the {size}-byte file; the GGUF is truncated"
            )
        infos.append(TensorInfo(name, shape, ggml_type, begin, end))
    return Header(version, fields, tuple(infos), alignment, data_start)


def _text(raw: bytes, path: Path, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SourceError(f"{path}: a {what} is not UTF-8; the GGUF is corrupt") from None


def _value_field(cur: _Cursor, vtype: int, key: str, path: Path) -> Field:
    """Step over one metadata value, returning where it lies."""
    if vtype in _SCALAR_SIZES:
        begin = cur.pos
        cur.take(_SCALAR_SIZES[vtype], f"value of {key!r}")
        return Field(key, vtype, begin, cur.pos)
    elif vtype == _STRING:
        n = cur.u64(f"length of {key!r}")
        begin = cur.pos
        cur.take(n, f"value of {key!r}")
        return Field(key, vtype, begin, cur.pos)
    elif vtype == _ARRAY:
        itype = cur.u32(f"item type of {key!r}")
        count = cur.u64(f"length of {key!r}")
        begin = cur.pos
        if itype in _SCALAR_SIZES:
            cur.take(count * _SCALAR_SIZES[itype], f"values of {key!r}")
        elif itype == _STRING:
            if count * 8 > cur.left:
                raise SourceError(
                    f"{path}: metadata {key!r} claims {count} strings, more than the file "
                    "holds; the GGUF is corrupt or truncated"
                )
            cur.skip_strings(count, key)
        else:
            what = "arrays of arrays" if itype == _ARRAY else f"value type {itype}"
            raise SourceError(f"{path}: metadata {key!r} holds {what}, which GGUF readers reject")
        return Field(key, vtype, begin, cur.pos, itype, count)
    else:
        raise SourceError(
            f"{path}: metadata {key!r} has value type {vtype}, which is unknown; the GGUF is "
            "corrupt"
        )


# ---- tensors -----------------------------------------------------------------------------

#: ggml types read as plain floats (the others with a gguf dequantizer are block types).
_FLOAT_TYPES = ("F32", "F16", "BF16")


def _decoder(type_name: str) -> Any:
    def decode(raw: np.ndarray, cols: int) -> np.ndarray:
        from nntrtool.sources.gguf_dequant import dequantize_rows

        return dequantize_rows(raw, type_name, cols)

    return decode


def _register_block_types() -> None:
    from gguf import quants

    readable = {t.name for t in quants._type_traits}  # the types gguf can dequantize
    for _tid, (name, block, block_bytes) in _ggml_sizes().items():
        if name in readable and name not in _FLOAT_TYPES:
            register_block_dtype(name, block, block_bytes, _decoder(name))


_register_block_types()


class GGUFTensor(SourceTensor):
    """A tensor whose bytes are a range of a memory-mapped GGUF file.

    ``dtype`` is the ggml type's name; F32/F16/BF16 read like safetensors tensors, block types
    as raw ``(rows, row_bytes)`` uint8 rows. ``gguf_name`` is the name in the file (``name``
    may be the Hugging Face name it was mapped to).
    """

    def __init__(self, owner: GGUFFile, info: TensorInfo, type_name: str):
        super().__init__(info.name, type_name, info.shape, owner.path)
        self._owner = owner
        self.gguf_name = info.name
        self.begin, self.end = info.begin, info.end

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    def _read_rows(self, start: int, stop: int) -> np.ndarray:
        width = self.row_width
        if self.dtype in READABLE_DTYPES:
            np_dtype = READABLE_DTYPES[self.dtype]
            row_bytes = width * np_dtype.itemsize
        else:
            np_dtype, row_bytes = np.dtype(np.uint8), width
        lo = self.begin + start * row_bytes
        hi = self.begin + stop * row_bytes
        return self._owner.read_bytes(lo, hi).view(np_dtype).reshape(stop - start, width)


class StringArray:
    """A GGUF array of strings (a vocabulary, merges) left in the file until it is read.

    ``len()`` is free; iterating, indexing or :meth:`tolist` decode UTF-8 strings from the map
    (indexing first finds every string's offset, once, in one pass). A string that is not
    UTF-8 is a :class:`SourceError`.
    """

    def __init__(self, owner: GGUFFile, field: Field):
        self._owner, self.key = owner, field.key
        self.begin, self.end, self._count = field.begin, field.end, field.count
        self._offsets: np.ndarray | None = None

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"<StringArray {self.key!r}: {self._count} strings, {self.nbytes} bytes>"

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    def _decode(self, raw: bytes) -> str:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SourceError(
                f"{self._owner.path}: a string in metadata {self.key!r} is not UTF-8; the GGUF "
                "is corrupt"
            ) from None

    def raw(self) -> Iterator[bytes]:
        """The strings' bytes, in order."""
        buf, pos = self._owner.mapping(), self.begin
        unpack = _U64.unpack_from
        for _ in range(self._count):
            n = unpack(buf, pos)[0]
            pos += 8
            yield buf[pos : pos + n]
            pos += n

    def __iter__(self) -> Iterator[str]:
        decode = self._decode
        return (decode(b) for b in self.raw())

    def tolist(self) -> list[str]:
        return list(self)

    def offsets(self) -> np.ndarray:
        """``int64[len + 1]``: string ``i``'s bytes lie at ``offsets[i] + 8`` to ``offsets[i+1]``."""
        if self._offsets is None:
            buf, pos = self._owner.mapping(), self.begin
            unpack = _U64.unpack_from
            out = np.empty(self._count + 1, np.int64)
            for i in range(self._count):
                out[i] = pos
                pos += 8 + unpack(buf, pos)[0]
            out[self._count] = pos
            self._offsets = out
        return self._offsets

    def __getitem__(self, i: int) -> str:
        if not -self._count <= i < self._count:
            raise IndexError(f"{self.key}: index {i} out of {self._count}")
        at = self.offsets()
        i %= self._count
        return self._decode(self._owner.mapping()[int(at[i]) + 8 : int(at[i + 1])])


class GGUFFile(MappedFile):
    """One GGUF file, checked and mapped read-only: ``metadata`` by key, ``tensors`` in file order."""

    what = "a GGUF file"
    min_size = 24

    def __init__(self, path: str | os.PathLike):
        super().__init__(path)
        try:
            self.header = scan_header(self.path, self.size, memoryview(self.buffer()))
        except SourceError:
            self.close()
            raise
        # The scan touched every page of the metadata (a vocabulary: megabytes); the data
        # section starts past it, so those pages can leave this process (the page cache keeps
        # them) until a tokenizer reads them again.
        release_pages(self.buffer()[: self.header.data_start])
        self.fields = self.header.fields
        self.version = self.header.version
        sizes = _ggml_sizes()
        self.tensors = [
            GGUFTensor(self, info, sizes[info.ggml_type][0]) for info in self.header.tensors
        ]

    def field(self, key: str, default: Any = None) -> Any:
        """A metadata value as Python data (str, int, float, bool or a list); ``default`` if absent.

        Arrays become lists: for a vocabulary, :meth:`array` or :meth:`count` cost far less.
        """
        f = self.fields.get(key)
        if f is None:
            return default
        if f.vtype == _ARRAY:
            value = self.array(key)
            return value.tolist()
        buf = self.mapping()
        if f.vtype == _STRING:
            try:
                return buf[f.begin : f.end].decode("utf-8")
            except UnicodeDecodeError:
                raise SourceError(
                    f"{self.path}: metadata {key!r} is not UTF-8; the GGUF is corrupt"
                ) from None
        return np.frombuffer(buf, _SCALAR_DTYPES[f.vtype], 1, f.begin)[0].item()

    def array(self, key: str) -> np.ndarray | StringArray | None:
        """A metadata array without a Python object per item: numbers as a read-only numpy view
        of the map, strings as a :class:`StringArray`; ``None`` if absent or not an array."""
        f = self.fields.get(key)
        if f is None or f.vtype != _ARRAY:
            return None
        if f.item_type == _STRING:
            return StringArray(self, f)
        assert f.item_type is not None
        return np.frombuffer(self.mapping(), _SCALAR_DTYPES[f.item_type], f.count, f.begin)

    def count(self, key: str) -> int | None:
        """How many items the metadata array ``key`` holds (``None`` if absent or not an array)."""
        f = self.fields.get(key)
        return f.count if f is not None and f.vtype == _ARRAY else None

    @property
    def keys(self) -> tuple[str, ...]:
        return self.header.keys
