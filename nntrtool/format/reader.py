"""Reading NNTR v1 files: directory parsing with full validation, and zero-copy mapped views.

:func:`read_directory` checks everything a header can get wrong before any tensor data is
touched; :class:`NntrFile` maps the file and hands out numpy views of each tensor's bytes.
Every problem with a file is a :class:`~nntrtool.errors.FormatError` naming what is wrong.
"""

from __future__ import annotations

import json
import mmap
import os
import stat
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nntrtool import lease, messages
from nntrtool.errors import FormatError, TensorNotFoundError, UsageError
from nntrtool.format.binary import (
    ALIGNMENT,
    DIM,
    ENTRY_FIXED_BYTES,
    ENTRY_TAIL,
    ENTRY_TYPE,
    FIXED_HEADER,
    MAGIC,
    MAX_DIMS,
    MAX_NAME_BYTES,
    NAME_LEN,
    TENSOR_COUNT,
    VERSION,
    TensorEntry,
    align_up,
    quote_name,
    tensor_problem,
)
from nntrtool.guarded import GuardedFile
from nntrtool.qtypes import TYPES_BY_ID, RepackLayout, TensorType, layout_for

#: Bytes hashed per step when checking a tensor, so huge tensors report progress and stay responsive.
CHECK_CHUNK = 64 << 20


@dataclass(frozen=True)
class Directory:
    """What the header of an NNTR file says: version, config, tensors and where data starts."""

    version: int
    config: dict[str, Any]
    data_start: int
    tensors: tuple[TensorEntry, ...]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _decode_config(raw: bytes) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise FormatError(f"the config is not valid UTF-8 (byte {err.start})") from None
    try:
        config = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise FormatError("the config JSON is nested too deeply") from None
    except ValueError as err:
        raise FormatError(f"the config is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise FormatError(f"the config must be a JSON object, found {type(config).__name__}")
    return config


def _need(size: int, at: int, n: int, where: str, what: str) -> None:
    if at + n > size:
        raise FormatError(f"truncated directory: {where} {what} runs past the end of the file")


def read_directory(buf: Any, file_size: int | None = None) -> Directory:
    """Parse and validate the header and directory in ``buf`` (bytes, mmap, memoryview ...).

    ``file_size`` defaults to ``len(buf)``. Reads only the header bytes; raises ``FormatError``.
    """
    size = len(buf) if file_size is None else file_size
    version, config, data_start, pos, count = _read_header(buf, size)
    entries: list[TensorEntry] = []
    names: set[str] = set()
    for index in range(count):
        entry, pos = _read_entry(buf, size, pos, index)
        if entry.name in names:
            raise FormatError(f"tensor {quote_name(entry.name)} appears twice in the directory")
        names.add(entry.name)
        entries.append(entry)
    if data_start != align_up(pos):
        raise FormatError(
            f"header says data starts at {data_start}, but the directory ends at {pos} "
            f"(expected {align_up(pos)})"
        )
    if data_start > size:
        raise FormatError(f"truncated file: data starts at {data_start}, the file is {size} bytes")
    _check_placement(entries, data_start, size)
    return Directory(version, config, data_start, tuple(entries))


def _read_header(buf: Any, size: int) -> tuple[int, dict[str, Any], int, int, int]:
    """The fixed header (checked), the config and the tensor count: ``(version, config,
    data_start, position after the count, count)``."""
    if size == 0:
        raise FormatError("the file is empty, not an NNTR file")
    if size < len(MAGIC) or bytes(buf[: len(MAGIC)]) != MAGIC:
        found = bytes(buf[: min(size, len(MAGIC))])
        raise FormatError(f"not an NNTR file: starts with {found!r}, expected {MAGIC!r}")
    if size < FIXED_HEADER.size:
        raise FormatError(
            f"truncated header: the file is {size} bytes, the fixed header alone is "
            f"{FIXED_HEADER.size}"
        )
    _, version, flags, config_len, data_start = FIXED_HEADER.unpack_from(buf, 0)
    if version != VERSION:
        raise FormatError(
            f"unsupported NNTR version {version}; this nntrtool reads version {VERSION}"
        )
    if flags != 0:
        raise FormatError(f"header flags are {flags:#x}, expected 0 in version {VERSION}")
    pos = FIXED_HEADER.size
    if pos + config_len + TENSOR_COUNT.size > size:
        raise FormatError(
            f"truncated header: the config of {config_len} bytes at offset {pos} runs past "
            f"the end of the {size}-byte file"
        )
    config = _decode_config(bytes(buf[pos : pos + config_len]))
    pos += config_len
    (count,) = TENSOR_COUNT.unpack_from(buf, pos)
    pos += TENSOR_COUNT.size
    if count * ENTRY_FIXED_BYTES > size - pos:
        raise FormatError(
            f"truncated directory: {count} tensors need at least {count * ENTRY_FIXED_BYTES} "
            f"bytes at offset {pos}, the file has {size - pos} left"
        )
    return version, config, data_start, pos, count


def _read_name(buf: Any, size: int, pos: int, index: int) -> tuple[str, int]:
    where = f"directory entry {index}"
    _need(size, pos, NAME_LEN.size, where, "name length")
    (name_len,) = NAME_LEN.unpack_from(buf, pos)
    pos += NAME_LEN.size
    if name_len == 0:
        raise FormatError(f"{where}: empty tensor name")
    if name_len > MAX_NAME_BYTES:
        raise FormatError(
            f"{where}: name length {name_len} bytes, at most {MAX_NAME_BYTES} are allowed"
        )
    _need(size, pos, name_len, where, f"name of {name_len} bytes")
    try:
        name = bytes(buf[pos : pos + name_len]).decode("utf-8")
    except UnicodeDecodeError:
        raise FormatError(f"{where}: the tensor name is not valid UTF-8") from None
    return name, pos + name_len


def _read_entry(buf: Any, size: int, pos: int, index: int) -> tuple[TensorEntry, int]:
    """Directory entry ``index`` at ``pos``, checked on its own, and the position after it."""
    name, pos = _read_name(buf, size, pos, index)
    where = f"tensor {quote_name(name)}"
    _need(size, pos, ENTRY_TYPE.size, where, "type and rank")
    type_id, ndim = ENTRY_TYPE.unpack_from(buf, pos)
    pos += ENTRY_TYPE.size
    ttype = TYPES_BY_ID.get(type_id)
    if ttype is None:
        known = ", ".join(
            f"{t.type_id} ({t.name})" for t in sorted(TYPES_BY_ID.values(), key=lambda t: t.type_id)
        )
        raise FormatError(
            f"{where}: unknown type id {type_id}; known ids: {known} "
            "(a newer nntrtool may have written this file)"
        )
    if ndim > MAX_DIMS:
        raise FormatError(f"{where}: {ndim} dimensions, at most {MAX_DIMS} are allowed")
    _need(size, pos, DIM.size * ndim + ENTRY_TAIL.size, where, "shape and offsets")
    shape = tuple(DIM.unpack_from(buf, pos + DIM.size * i)[0] for i in range(ndim))
    pos += DIM.size * ndim
    group_rows, interleave, offset, nbytes, checksum, eflags = ENTRY_TAIL.unpack_from(buf, pos)
    pos += ENTRY_TAIL.size
    layout = _entry_layout(where, ttype, type_id, group_rows, interleave)
    problem = tensor_problem(ttype, shape, layout)
    if problem:
        raise FormatError(f"{where}: {problem}")
    expected = ttype.nbytes(shape)
    if nbytes != expected:
        raise FormatError(
            f"{where}: byte length is {nbytes}, expected {expected} for {ttype.name} {list(shape)}"
        )
    if eflags != 0:
        raise FormatError(f"{where}: entry flags are {eflags:#x}, expected 0")
    if offset % ALIGNMENT:
        raise FormatError(f"{where}: data offset {offset} is not a multiple of {ALIGNMENT}")
    return TensorEntry(name, ttype, shape, layout, offset, nbytes, checksum, eflags), pos


def _entry_layout(
    where: str, ttype: TensorType, type_id: int, group_rows: int, interleave: int
) -> RepackLayout | None:
    """The repack layout an entry records: a known one for a layout type, none otherwise."""
    if ttype.plain_name is None:
        if group_rows or interleave:
            raise FormatError(
                f"{where}: type {type_id} ({ttype.name}) is not repacked but records a "
                f"layout rows={group_rows} interleave={interleave}; expected 0 and 0"
            )
        return None
    layout = layout_for(group_rows, interleave)
    if layout is None:
        raise FormatError(
            f"{where}: type {type_id} ({ttype.name}) has an unknown repack layout "
            f"rows={group_rows} interleave={interleave}; known: 4x4, 4x8, 8x8"
        )
    return layout


def _check_placement(entries: list[TensorEntry], data_start: int, size: int) -> None:
    """Tensor data lies after the directory, without overlap, and fills the file exactly."""
    end = data_start
    previous = None
    for entry in sorted(entries, key=lambda e: e.offset):
        if entry.offset < end:
            other = (
                f"tensor {quote_name(previous.name)} (ends at {end})"
                if previous
                else (f"the header and directory (end at {data_start})")
            )
            raise FormatError(
                f"tensor {quote_name(entry.name)}: data at offset {entry.offset} overlaps {other}"
            )
        if entry.end > size:
            raise FormatError(
                f"truncated file: tensor {quote_name(entry.name)} needs bytes "
                f"{entry.offset}..{entry.end}, the file is {size} bytes"
            )
        end = entry.end
        previous = entry
    if size != end:
        raise FormatError(
            f"the file is {size} bytes but its data ends at {end}: "
            f"{size - end} unexpected bytes at the end"
        )


class NntrFile:
    """An open NNTR file: validated directory, config, and zero-copy views of tensor data.

    Use as a context manager or call :meth:`close`. Views returned by :meth:`raw` and
    :meth:`array` stay valid after ``close`` for as long as they are referenced.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._mmap: mmap.mmap | None = None
        self._data: np.ndarray | None = None
        self._lease: lease.ReadLease | None = None
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            raise UsageError(messages.no_such_input(self.path)) from None
        except IsADirectoryError:
            raise UsageError(messages.input_is_folder(self.path)) from None
        except OSError as err:
            raise UsageError(f"cannot open {self.path}: {err.strerror or err}") from None
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise UsageError(messages.input_is_folder(self.path))
            if not stat.S_ISREG(st.st_mode):
                raise UsageError(messages.not_regular_file(self.path))
            self.file_size = st.st_size
            self._ident = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
            if self.file_size == 0:
                raise FormatError(messages.damaged_nntr(self.path, "the file is empty"))
            try:
                self._mmap = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError) as err:
                raise UsageError(f"cannot map {self.path}: {err}") from None
        finally:
            os.close(fd)
        try:
            directory = read_directory(self._mmap, self.file_size)
        except FormatError as err:
            self.close()
            raise FormatError(messages.damaged_nntr(self.path, str(err))) from None
        self._data = np.frombuffer(self._mmap, dtype=np.uint8)
        # no process may cut the mapped file short while it is read (SIGBUS): see nntrtool/lease.py
        self._lease = lease.take(self.path)
        # no lease to be had (another user's file, one open for writing elsewhere ...): the
        # command line reads copies with pread, which a cut file turns into one error line
        self._copies = GuardedFile(self.path) if self._lease is None and lease.wanted() else None
        self.version = directory.version
        self.config = directory.config
        self.data_start = directory.data_start
        self.tensors: list[TensorEntry] = list(directory.tensors)
        self._by_name = {t.name: t for t in self.tensors}

    # -- lifetime -----------------------------------------------------------------------------
    def close(self) -> None:
        """Release the mapping (views still referenced keep it alive until they go)."""
        self._data = None
        copies, self._copies = getattr(self, "_copies", None), None
        if copies is not None:
            copies.close()
        held, self._lease = getattr(self, "_lease", None), None
        if held is not None:
            held.release()
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:
                pass  # numpy views still point into it; the mapping ends when they do
            self._mmap = None

    def __enter__(self) -> NntrFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"NntrFile({str(self.path)!r}, {len(self.tensors)} tensors, {self.file_size} bytes)"

    # -- directory ----------------------------------------------------------------------------
    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __len__(self) -> int:
        return len(self.tensors)

    def __iter__(self):
        return iter(self.tensors)

    @property
    def names(self) -> list[str]:
        """Tensor names in directory order."""
        return [t.name for t in self.tensors]

    def tensor(self, name: str) -> TensorEntry:
        """The entry of tensor ``name``; ``TensorNotFoundError`` (a KeyError) if there is none."""
        try:
            return self._by_name[name]
        except KeyError:
            raise TensorNotFoundError(f"no tensor named '{name}' in {self.path}") from None

    # -- data ---------------------------------------------------------------------------------
    def _buffer(self) -> np.ndarray:
        if self._data is None:
            raise UsageError(f"{self.path} is closed")
        return self._data

    def check_unchanged(self) -> None:
        """Raise :class:`SourceError` if the file on disk is no longer the one opened (another
        size or modification time, or replaced): reading its mapping past a new, shorter end
        would kill the process with SIGBUS, and changed bytes would mix with the old."""
        from nntrtool.errors import SourceError
        from nntrtool.messages import source_changed

        if self._lease is not None:
            self._lease.check()
        try:
            st = os.stat(self.path)
        except OSError:
            raise SourceError(source_changed(self.path, "it was removed")) from None
        now = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
        if now != self._ident:
            detail = (
                f"it was {self._ident[0]} bytes, now {st.st_size}"
                if st.st_size != self._ident[0]
                else "it was rewritten or replaced"
            )
            raise SourceError(source_changed(self.path, detail))

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes: a read-only 1-D uint8 view into the mapping (no copy), or a
        copy read with ``pread`` where the command line could not lease the file. The file is
        checked unchanged first (see :meth:`check_unchanged`)."""
        entry = self.tensor(name)
        self.check_unchanged()
        if self._copies is not None:
            return self._copies.read(entry.offset, entry.end - entry.offset)
        return self._buffer()[entry.offset : entry.end]

    def array(self, name: str) -> np.ndarray:
        """F32 / F16: a float32 / float16 view of the tensor's shape; quantized: uint8
        ``(rows, row_bytes)``."""
        entry = self.tensor(name)
        raw = self.raw(name)
        if not entry.ttype.quantized:
            return raw.view(f"<f{entry.ttype.block_bytes}").reshape(entry.shape)
        return raw.reshape(entry.rows, entry.row_bytes)

    def checksum(self, name: str, progress: Callable[[int], None] | None = None) -> int:
        """CRC32 of the tensor's data as it is in the file; ``progress(n)`` after each chunk."""
        raw = self.raw(name)
        crc = 0
        for start in range(0, raw.size, CHECK_CHUNK):
            chunk = raw[start : start + CHECK_CHUNK]
            crc = zlib.crc32(chunk, crc)
            if progress is not None:
                progress(chunk.size)
        return crc

    def check(self, name: str, progress: Callable[[int], None] | None = None) -> bool:
        """Whether the tensor's data matches the CRC32 in the directory."""
        return self.checksum(name, progress) == self.tensor(name).checksum

    def bad_tensors(self, progress: Callable[[int], None] | None = None) -> list[str]:
        """Names of every tensor whose data does not match its checksum (reads all data)."""
        return [t.name for t in self.tensors if not self.check(t.name, progress)]
