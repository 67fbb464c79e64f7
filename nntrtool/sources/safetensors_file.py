"""Safetensors files: header parsed and validated here, rows read with guarded ``pread``.

The format: an unsigned 64-bit little-endian header length ``N``, ``N`` bytes of JSON mapping each
tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the end
of the header; an optional ``"__metadata__"`` maps strings to strings), then the data.
Everything in the header is checked at open, before any data is touched, so a corrupt or
truncated file fails with one line naming the file, the tensor, and what was expected.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np

from nntrtool.errors import SourceError
from nntrtool.sources.base import DTYPE_BITS, RAW_DTYPES, SourceTensor, dtype_nbytes
from nntrtool.sources.mapped import MappedFile

#: Headers larger than this are refused (safetensors' own reader uses the same bound).
MAX_HEADER_BYTES = 100_000_000

#: What to do about a damaged file, at the end of each line refusing one.
_AGAIN = ": download or save it again"


class SafetensorsTensor(SourceTensor):
    """A tensor whose bytes are a slice of a memory-mapped safetensors file."""

    def __init__(self, owner: SafetensorsFile, name: str, dtype: str, shape, begin: int, end: int):
        super().__init__(name, dtype, shape, owner.path)
        self._owner = owner
        #: Absolute byte range of the tensor's data in the file.
        self.begin = begin
        self.end = end

    def _read_rows(self, start: int, stop: int) -> np.ndarray:
        np_dtype = RAW_DTYPES[self.dtype]
        row_bytes = self.cols * np_dtype.itemsize
        lo = self.begin + start * row_bytes
        hi = self.begin + stop * row_bytes
        flat = self._owner.read_bytes(lo, hi).view(np_dtype)
        return flat.reshape(stop - start, self.cols)


class SafetensorsFile(MappedFile):
    """One safetensors file, mapped read-only; ``tensors`` are in data order."""

    what = "a safetensors file"
    min_size = 8

    def __init__(self, path: str | os.PathLike):
        super().__init__(path)
        self.metadata: dict[str, str] = {}
        size, buf = self.size, self.buffer()
        (header_len,) = struct.unpack("<Q", bytes(buf[:8]))
        if header_len > size - 8:
            self.close()
            raise SourceError(
                f"{self.path}: header length {header_len} runs past the end of the file "
                f"({size} bytes); the file is truncated or not safetensors{_AGAIN}"
            )
        if header_len > MAX_HEADER_BYTES:
            self.close()
            raise SourceError(
                f"{self.path}: header of {header_len} bytes is larger than the "
                f"{MAX_HEADER_BYTES} allowed; the file is corrupt or not safetensors{_AGAIN}"
            )
        self.data_start = 8 + header_len
        try:
            self.tensors = self._parse_header(
                bytes(buf[8 : self.data_start]), size - self.data_start
            )
        except SourceError:
            self.close()
            raise

    def _parse_header(self, raw: bytes, data_size: int) -> list[SafetensorsTensor]:
        where = self.path
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SourceError(
                f"{where}: header is not valid JSON ({exc}); the file is corrupt or not "
                f"safetensors{_AGAIN}"
            ) from None
        if not isinstance(header, dict):
            raise SourceError(f"{where}: header is not a JSON object; the file is corrupt{_AGAIN}")
        meta = header.pop("__metadata__", None)
        if isinstance(meta, dict):
            self.metadata = {str(k): str(v) for k, v in meta.items()}
        tensors: list[SafetensorsTensor] = []
        for name, info in header.items():
            tensors.append(self._parse_entry(name, info, data_size))
        tensors.sort(key=lambda t: (t.begin, t.end))
        prev: SafetensorsTensor | None = None
        for t in tensors:
            # Zero-byte tensors occupy no range and cannot overlap anything.
            if t.end == t.begin:
                continue
            if prev is not None and t.begin < prev.end:
                raise SourceError(
                    f"{where}: tensors {prev.name!r} (bytes {prev.begin - self.data_start}-"
                    f"{prev.end - self.data_start}) and {t.name!r} (bytes "
                    f"{t.begin - self.data_start}-{t.end - self.data_start}) overlap; "
                    f"the file is corrupt{_AGAIN}"
                )
            prev = t
        return tensors

    def _parse_entry(self, name: str, info: object, data_size: int) -> SafetensorsTensor:
        where = f"{self.path}: tensor {name!r}"
        if not isinstance(info, dict):
            raise SourceError(
                f"{where}: header entry is not a JSON object; the file is corrupt{_AGAIN}"
            )
        dtype = info.get("dtype")
        shape = info.get("shape")
        offsets = info.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
            raise SourceError(
                f"{where}: unknown dtype {dtype!r}; the file is corrupt or too new{_AGAIN}"
            )
        if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
            raise SourceError(f"{where}: shape {shape!r} is not a list of non-negative integers")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_uint(o) for o in offsets)
            or offsets[0] > offsets[1]
        ):
            raise SourceError(f"{where}: data_offsets {offsets!r} is not a [begin, end] pair")
        begin, end = offsets
        numel = 1
        for d in shape:
            numel *= d
        expected = dtype_nbytes(dtype, numel)
        if end - begin != expected:
            raise SourceError(
                f"{where}: {dtype} x {shape} needs {expected} bytes but data_offsets "
                f"[{begin}, {end}] hold {end - begin}; the file is corrupt{_AGAIN}"
            )
        if end > data_size:
            raise SourceError(
                f"{where}: data ends at byte {end} of the data section but the file holds only "
                f"{data_size} bytes after the header; the file is truncated{_AGAIN}"
            )
        return SafetensorsTensor(
            self, name, dtype, tuple(shape), self.data_start + begin, self.data_start + end
        )


def _is_uint(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
