"""GGUF files (llama.cpp's format) read over a memory map: header checked here, data by the
``gguf`` package's memory-mapped reader.

A GGUF file is: ``GGUF``, a version (2 or 3), a tensor count and a key/value count (64-bit), the
key/value metadata, one info record per tensor (name, dimensions innermost first, ggml type,
offset into the data section), padding to the alignment, then the data. ``gguf.GGUFReader``
trusts every count and length it reads (an absurd array length makes it loop or allocate without
bound, a truncated file raises assorted exceptions), so :func:`scan_header` walks the header first
with every count bounded by the bytes left and every tensor's data checked to lie inside the
file; only a header that passes is handed to the reader. Anything wrong is one
:class:`SourceError` line.

Tensors come out as :class:`GGUFTensor`: F32/F16/BF16 rows like a safetensors tensor's, and the
block types (``"Q4_0"``, ``"Q4_K"``, ``"IQ2_XS"`` ...) as raw uint8 block rows with a float32
decoder registered in :data:`nntrtool.sources.base.BLOCK_DTYPES`.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nntrtool.errors import SourceError
from nntrtool.sources.base import READABLE_DTYPES, SourceTensor, register_block_dtype

#: The GGUF versions read (version 1 had 32-bit counts and is long gone).
VERSIONS = (2, 3)
#: Dimensions a ggml tensor can have.
MAX_DIMS = 4
#: Longest key or tensor name accepted (ggml's own limit on names is 64 bytes).
MAX_NAME_BYTES = 1 << 16
_DEFAULT_ALIGNMENT = 32

# GGUF value types: scalar sizes; 8 is a string, 9 an array.
_SCALAR_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY, _UINT32 = 8, 9, 4


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
    keys: tuple[str, ...]
    tensors: tuple[TensorInfo, ...]
    alignment: int
    data_start: int


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
    keys: list[str] = []
    seen: set[str] = set()
    alignment = _DEFAULT_ALIGNMENT
    for _ in range(n_kv):
        key = _text(cur.string("metadata key", MAX_NAME_BYTES), path, "metadata key")
        if key in seen:
            raise SourceError(f"{path}: metadata key {key!r} appears twice; the GGUF is corrupt")
        seen.add(key)
        keys.append(key)
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
        _skip_value(cur, vtype, key, path)
    sizes = _ggml_sizes()
    tensors: list[tuple[str, tuple[int, ...], int, int]] = []
    names: set[str] = set()
    for i in range(n_tensors):
        name = _text(cur.string(f"name of tensor {i}", MAX_NAME_BYTES), path, "tensor name")
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
        if dims and dims[0] % block:
            raise SourceError(
                f"{path}: tensor {name!r} rows of {dims[0]} values are not whole {tname} blocks "
                f"of {block}; the GGUF is corrupt"
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
    return Header(version, tuple(keys), tuple(infos), alignment, data_start)


def _text(raw: bytes, path: Path, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SourceError(f"{path}: a {what} is not UTF-8; the GGUF is corrupt") from None


def _skip_value(cur: _Cursor, vtype: int, key: str, path: Path) -> None:
    if vtype in _SCALAR_SIZES:
        cur.take(_SCALAR_SIZES[vtype], f"value of {key!r}")
    elif vtype == _STRING:
        cur.take(cur.u64(f"length of {key!r}"), f"value of {key!r}")
    elif vtype == _ARRAY:
        itype = cur.u32(f"item type of {key!r}")
        count = cur.u64(f"length of {key!r}")
        if itype in _SCALAR_SIZES:
            cur.take(count * _SCALAR_SIZES[itype], f"values of {key!r}")
        elif itype == _STRING:
            if count * 8 > cur.left:
                raise SourceError(
                    f"{path}: metadata {key!r} claims {count} strings, more than the file "
                    "holds; the GGUF is corrupt or truncated"
                )
            for _ in range(count):
                cur.take(cur.u64(f"length of a string in {key!r}"), f"a string in {key!r}")
        else:
            what = "arrays of arrays" if itype == _ARRAY else f"value type {itype}"
            raise SourceError(f"{path}: metadata {key!r} holds {what}, which GGUF readers reject")
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


class GGUFFile:
    """One GGUF file, checked and mapped read-only: ``metadata`` by key, ``tensors`` in file order."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            size = os.path.getsize(self.path)
        except OSError as exc:
            raise SourceError(f"cannot open {self.path}: {exc.strerror or exc}") from None
        if size < 24:
            raise SourceError(
                f"{self.path}: not a GGUF file ({size} bytes, too short for a header)"
            )
        try:
            data = np.memmap(self.path, mode="r", dtype=np.uint8)
        except (OSError, ValueError) as exc:
            raise SourceError(f"cannot map {self.path}: {exc}") from None
        self.header = scan_header(self.path, size, memoryview(data))
        self._reader = _open_reader(self.path)
        self._buf: np.ndarray | None = np.asarray(self._reader.data)
        self.version = self.header.version
        self.tensors = [
            GGUFTensor(self, info, _ggml_sizes()[info.ggml_type][0]) for info in self.header.tensors
        ]

    def field(self, key: str, default: Any = None) -> Any:
        """A metadata value as Python data (str, int, float, bool or a list); ``default`` if absent."""
        if self._reader is None:
            raise SourceError(f"{self.path} was closed; open the model again to read it")
        f = self._reader.fields.get(key)
        if f is None:
            return default
        try:
            return f.contents()
        except (UnicodeDecodeError, ValueError, IndexError) as exc:
            raise SourceError(f"{self.path}: metadata {key!r} cannot be read ({exc})") from None

    @property
    def keys(self) -> tuple[str, ...]:
        return self.header.keys

    def buffer(self) -> np.ndarray:
        """The whole file as a read-only uint8 array over the map."""
        if self._buf is None:
            raise SourceError(f"{self.path} was closed; open the model again to read it")
        return self._buf

    def read_bytes(self, lo: int, hi: int) -> np.ndarray:
        """Bytes ``lo:hi`` of the file, read with a guard (see :mod:`nntrtool.sources.guarded`):
        a file truncated or rewritten meanwhile is one SourceError, never SIGBUS."""
        from nntrtool.sources.guarded import GuardedFile

        if self._buf is None:
            raise SourceError(f"{self.path} was closed; open the model again to read it")
        guard = getattr(self, "_guard", None)
        if guard is None:
            guard = self._guard = GuardedFile(self.path)
        out = guard.read(lo, hi - lo)
        out.flags.writeable = False
        return out

    def close(self) -> None:
        """Drop the map (arrays still viewing it keep it alive until they are gone)."""
        self._buf = None
        self._reader = None
        guard, self._guard = getattr(self, "_guard", None), None
        if guard is not None:
            guard.close()

    def __enter__(self) -> GGUFFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _open_reader(path: Path) -> Any:
    from gguf import GGUFReader

    try:
        return GGUFReader(path, "r")
    except Exception as exc:  # the header passed our checks; anything left is still bad input
        first = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise SourceError(f"{path}: the GGUF cannot be read: {first}") from None
