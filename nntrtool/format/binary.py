"""The NNTR v1 on-disk encoding: constants, tensor records, and the header/directory encoder.

Both the writer and the reader take their sizes, offsets and tensor rules from here, so a file
the writer produces is exactly what the reader accepts. ``docs/FORMAT.md`` is the prose version.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

from nntrtool.errors import FormatError
from nntrtool.qtypes import RepackLayout, TensorType, display_name, layout_for
from nntrtool.shapes import Shaped

MAGIC = b"NNTR"
VERSION = 1
#: Every tensor's data starts at a multiple of this many bytes (one cache line; AVX-512 safe).
ALIGNMENT = 64
#: Most dimensions a tensor may have.
MAX_DIMS = 8
#: Longest tensor name, in UTF-8 bytes.
MAX_NAME_BYTES = 65535

# magic, version, flags, config_len, data_start
FIXED_HEADER = struct.Struct("<4sIIIQ")
TENSOR_COUNT = struct.Struct("<I")
NAME_LEN = struct.Struct("<I")
# type_id, ndim
ENTRY_TYPE = struct.Struct("<II")
DIM = struct.Struct("<Q")
# group_rows, interleave, offset, nbytes, crc32, flags
ENTRY_TAIL = struct.Struct("<IIQQII")
#: Bytes of a directory entry besides its name and dims.
ENTRY_FIXED_BYTES = NAME_LEN.size + ENTRY_TYPE.size + ENTRY_TAIL.size
#: Offset of the crc32 field inside ENTRY_TAIL.
CRC_IN_TAIL = 4 + 4 + 8 + 8


def quote_name(name: str) -> str:
    """``'name'`` for messages; names with control characters are escaped to stay on one line."""
    return f"'{name}'" if name.isprintable() else repr(name)


def align_up(n: int, alignment: int = ALIGNMENT) -> int:
    """``n`` rounded up to a multiple of ``alignment``."""
    return -(-n // alignment) * alignment


class Stored(Shaped):
    """Sizes and display name of a tensor stored as ``ttype`` in ``layout``."""

    __slots__ = ()
    ttype: TensorType
    layout: RepackLayout | None

    @property
    def display_type(self) -> str:
        """``q4_0_8`` for repacked tensors, else the type's name (``q6_k``, ``f32`` ...)."""
        return display_name(self.ttype, self.layout)


@dataclass(frozen=True)
class TensorSpec(Stored):
    """A tensor to be written: its name, stored type, shape (source order) and repack layout."""

    name: str
    ttype: TensorType
    shape: tuple[int, ...]
    layout: RepackLayout | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))

    @property
    def nbytes(self) -> int:
        """Bytes of the stored data (raises ``FormatError`` if the shape does not fit the type)."""
        problem = tensor_problem(self.ttype, self.shape, self.layout)
        if problem:
            raise FormatError(f"tensor '{self.name}': {problem}")
        return self.ttype.nbytes(self.shape)


@dataclass(frozen=True)
class TensorEntry(Stored):
    """One tensor of an open file, as its directory entry describes it."""

    name: str
    ttype: TensorType
    shape: tuple[int, ...]
    layout: RepackLayout | None
    offset: int
    nbytes: int
    checksum: int
    flags: int = field(default=0, compare=False)

    @property
    def row_bytes(self) -> int:
        """Bytes of one row of the 2-D view."""
        return self.ttype.row_bytes(self.shape[-1]) if self.shape else self.nbytes

    @property
    def bits_per_weight(self) -> float:
        """Stored bits per value."""
        return 8.0 * self.nbytes / self.numel

    @property
    def end(self) -> int:
        """Offset just past the tensor's data."""
        return self.offset + self.nbytes

    def spec(self) -> TensorSpec:
        """The :class:`TensorSpec` that writes this tensor again."""
        return TensorSpec(self.name, self.ttype, self.shape, self.layout)


def tensor_problem(
    ttype: TensorType, shape: tuple[int, ...], layout: RepackLayout | None
) -> str | None:
    """What is wrong with storing ``shape`` as ``ttype`` in ``layout``, or ``None`` if it fits."""
    if len(shape) > MAX_DIMS:
        return f"{len(shape)} dimensions, at most {MAX_DIMS} are allowed"
    for i, d in enumerate(shape):
        if d < 1:
            return f"dimension {i} of shape {list(shape)} is {d}, must be at least 1"
    if ttype.block_size > 1:
        if not shape:
            return f"type {ttype.name} needs at least one dimension, found a scalar"
        if shape[-1] % ttype.block_size:
            return (
                f"last dimension {shape[-1]} is not a multiple of the {ttype.name} block size "
                f"{ttype.block_size}"
            )
    if ttype.plain_name is not None:  # a layout type: its rows come in interleaved groups
        if layout is None:
            return f"type {ttype.name} (id {ttype.type_id}) needs a repack layout, found none"
        if layout_for(layout.rows, layout.interleave) is None:
            return (
                f"unknown repack layout rows={layout.rows} interleave={layout.interleave} "
                "(known: 4x4, 4x8, 8x8)"
            )
        rows = math.prod(shape[:-1])
        if rows % layout.rows:
            return (
                f"{rows} rows are not a multiple of the {layout.name} group of {layout.rows} rows"
            )
    elif layout is not None:
        return f"type {ttype.name} cannot carry a repack layout (found {layout.name})"
    return None


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays, Paths and tuples-like objects end up in configs now and then.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "__fspath__"):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def encode_config(config: dict) -> bytes:
    """The config as stored: compact UTF-8 JSON with sorted keys (same dict, same bytes)."""
    if not isinstance(config, dict):
        raise FormatError(f"the config must be a dict, found {type(config).__name__}")
    try:
        text = json.dumps(
            config,
            ensure_ascii=False,
            allow_nan=False,
            sort_keys=True,
            separators=(",", ":"),
            default=_json_default,
        )
    except (TypeError, ValueError, RecursionError) as err:
        raise FormatError(f"the config cannot be stored as JSON: {err}") from None
    data = text.encode("utf-8")
    if len(data) > 0xFFFFFFFF:
        raise FormatError(f"the config is {len(data)} bytes of JSON, at most 4 GiB is allowed")
    return data


def _encode_name(name: str) -> bytes:
    if not isinstance(name, str) or not name:
        raise FormatError(
            f"tensor name {name!r} must be a non-empty string: give the tensor a name in the source"
        )
    try:
        data = name.encode("utf-8")
    except UnicodeEncodeError:
        raise FormatError(
            f"tensor name {name!r} is not valid UTF-8: rename the tensor in the source"
        ) from None
    if len(data) > MAX_NAME_BYTES:
        raise FormatError(
            f"tensor name '{name[:60]}...' is {len(data)} bytes, more than the {MAX_NAME_BYTES} "
            "an NNTR file holds: give the tensor a shorter name in the source"
        )
    return data


@dataclass(frozen=True)
class HeaderPlan:
    """The encoded header and directory of a file to write, and where everything goes."""

    header: bytes  # fixed header + config + directory (checksums zero), without padding
    data_start: int
    offsets: tuple[int, ...]
    nbytes: tuple[int, ...]
    crc_positions: tuple[int, ...]  # absolute file offset of each entry's crc32 field
    file_size: int


def plan_file(config: dict, specs: list[TensorSpec]) -> HeaderPlan:
    """Encode the header and directory for ``specs`` and place every tensor's data."""
    config_bytes = encode_config(config)
    seen: set[str] = set()
    names: list[bytes] = []
    sizes: list[int] = []
    for spec in specs:
        if not isinstance(spec, TensorSpec):
            raise FormatError(f"expected a TensorSpec, found {type(spec).__name__}")
        names.append(_encode_name(spec.name))
        if spec.name in seen:
            raise FormatError(f"tensor '{spec.name}' appears twice; names must be unique")
        seen.add(spec.name)
        sizes.append(spec.nbytes)
    if len(specs) > 0xFFFFFFFF:
        raise FormatError(f"{len(specs)} tensors, at most 2**32-1 are allowed")

    dir_end = FIXED_HEADER.size + len(config_bytes) + TENSOR_COUNT.size
    for spec, name in zip(specs, names, strict=True):
        dir_end += ENTRY_FIXED_BYTES + len(name) + DIM.size * len(spec.shape)
    data_start = align_up(dir_end)

    offsets: list[int] = []
    pos = data_start
    for size in sizes:
        pos = align_up(pos)
        offsets.append(pos)
        pos += size
    file_size = pos

    parts = [
        FIXED_HEADER.pack(MAGIC, VERSION, 0, len(config_bytes), data_start),
        config_bytes,
        TENSOR_COUNT.pack(len(specs)),
    ]
    crc_positions: list[int] = []
    at = FIXED_HEADER.size + len(config_bytes) + TENSOR_COUNT.size
    for spec, name, offset, size in zip(specs, names, offsets, sizes, strict=True):
        rows, interleave = (spec.layout.rows, spec.layout.interleave) if spec.layout else (0, 0)
        parts.append(NAME_LEN.pack(len(name)))
        parts.append(name)
        parts.append(ENTRY_TYPE.pack(spec.ttype.type_id, len(spec.shape)))
        parts.extend(DIM.pack(d) for d in spec.shape)
        tail_at = at + NAME_LEN.size + len(name) + ENTRY_TYPE.size + DIM.size * len(spec.shape)
        parts.append(ENTRY_TAIL.pack(rows, interleave, offset, size, 0, 0))
        crc_positions.append(tail_at + CRC_IN_TAIL)
        at = tail_at + ENTRY_TAIL.size
    header = b"".join(parts)
    assert len(header) == dir_end
    return HeaderPlan(
        header, data_start, tuple(offsets), tuple(sizes), tuple(crc_positions), file_size
    )


def predict_file_size(config: dict, specs: list[TensorSpec]) -> int:
    """The exact size in bytes of the file :class:`NntrWriter` writes for ``config`` and ``specs``."""
    return plan_file(config, specs).file_size
