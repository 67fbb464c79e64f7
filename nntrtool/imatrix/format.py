"""Importance-matrix files: llama.cpp's GGUF layout (current) and its legacy ``.dat`` layout.

GGUF (what ``llama-imatrix`` writes today): ``general.type = "imatrix"``, the string array
``imatrix.datasets``, ``imatrix.chunk_count`` and ``imatrix.chunk_size`` (uint32), and per
matrix ``<name>.in_sum2`` (F32, ne = [n_cols, n_mat]: sums of squared activations per input
column, one row per expert) and ``<name>.counts`` (F32, ne = [1, n_mat]: activations summed,
per expert). ``<name>.in_sum`` (plain sums) may be present too; it is not needed here.

Legacy ``.dat``: int32 entry count; per entry int32 name length, the name, int32 ``ncall``,
int32 value count, float32 values (each a mean square times ``ncall``); then, in later
versions, int32 last chunk and an int32-length-prefixed dataset name.

The importance of a column is what llama.cpp's quantize tool hands to ggml: ``in_sum2 /
counts`` in float32 (all ones for an expert that saw no data), and for legacy files the stored
value divided by ``ncall``.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nntrtool.errors import UsageError

_GGUF_MAGIC = b"GGUF"
_IN_SUM2 = ".in_sum2"
_COUNTS = ".counts"
_IN_SUM = ".in_sum"
KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"


class ImatrixError(UsageError):
    """An importance-matrix file that cannot be used (exit 2, one line)."""


@dataclass(frozen=True)
class ImatrixEntry:
    """The statistics of one weight matrix: ``in_sum2`` (n_mat, n_cols) and ``counts`` (n_mat,)."""

    name: str
    in_sum2: np.ndarray
    counts: np.ndarray
    legacy: bool = False

    @property
    def n_mat(self) -> int:
        """Matrices (experts) the entry covers; 1 for a dense weight."""
        return int(self.in_sum2.shape[0])

    @property
    def n_cols(self) -> int:
        return int(self.in_sum2.shape[1])

    def importance(self) -> np.ndarray:
        """float32 (n_mat, n_cols): the importance per column, as llama.cpp computes it."""
        sums = self.in_sum2
        out = np.empty_like(sums)
        for m in range(self.n_mat):
            count = np.float32(self.counts[m])
            if self.legacy:
                # quantize.cpp: v /= ncall when ncall > 0, else the values as stored.
                out[m] = sums[m] / count if count > 0 else sums[m]
            elif count > 0:
                out[m] = sums[m] / count
            else:
                out[m] = np.float32(1.0)  # an expert that saw no data: uniform importance
        return out


@dataclass
class Imatrix:
    """An importance-matrix file read into memory."""

    path: Path
    format: str  # "gguf" or "dat"
    entries: dict[str, ImatrixEntry]
    chunk_count: int | None = None
    chunk_size: int | None = None
    datasets: list[str] = field(default_factory=list)
    sha256: str = ""

    def summary(self) -> dict[str, Any]:
        """What the conversion records about the file in the output's metadata."""
        return {
            "file": self.path.name,
            "sha256": self.sha256,
            "format": self.format,
            "entries": len(self.entries),
            "chunk_count": self.chunk_count,
            "chunk_size": self.chunk_size,
            "datasets": list(self.datasets),
        }


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_imatrix(path: str | Path) -> Imatrix:
    """Read an importance matrix (GGUF or legacy ``.dat``, told apart by the magic).

    Raises :class:`ImatrixError` for a missing, truncated or corrupt file, for entries whose
    sums and counts do not fit together, and for negative or non-finite values.
    """
    p = Path(path)
    if not p.exists():
        raise ImatrixError(f"importance matrix {str(p)!r} not found: check the path")
    if not p.is_file():
        raise ImatrixError(
            f"importance matrix {str(p)!r} is not a file; give the imatrix file itself "
            "(GGUF or legacy .dat)"
        )
    with open(p, "rb") as fh:
        magic = fh.read(4)
    if magic == _GGUF_MAGIC:
        from nntrtool import lease

        held = lease.take(p)  # the gguf package maps the file: no one may cut it meanwhile
        try:
            imx = _read_gguf(p)
        finally:
            if held is not None:
                held.release()
    else:
        imx = _read_dat(p)
    if not imx.entries:
        raise ImatrixError(
            f"importance matrix {str(p)!r} holds no entries; make it again (nntrtool imatrix "
            "or llama-imatrix)"
        )
    for entry in imx.entries.values():
        _check_values(p, entry)
    imx.sha256 = file_sha256(p)
    return imx


def _check_values(path: Path, e: ImatrixEntry) -> None:
    for what, arr in (("sums", e.in_sum2), ("counts", e.counts)):
        bad = ~np.isfinite(arr) | (arr < 0)
        if bad.any():
            value = arr.reshape(-1)[int(np.argmax(bad.reshape(-1)))]
            raise ImatrixError(
                f"importance matrix {str(path)!r}: entry {e.name!r} holds {value} in its "
                f"{what}: values must be finite and not negative; the file is corrupt, make it again"
            )


def _corrupt(path: Path, why: str) -> ImatrixError:
    return ImatrixError(
        f"importance matrix {str(path)!r} is truncated or corrupt ({why}); make it again"
    )


def _read_gguf(path: Path) -> Imatrix:
    try:
        from gguf import GGMLQuantizationType, GGUFReader
    except ImportError as err:  # pragma: no cover - gguf is a base dependency
        raise ImatrixError(
            f"reading a GGUF importance matrix needs the gguf package ({err})"
        ) from None
    try:
        reader = GGUFReader(path, "r")
        fields = {name: reader.fields[name] for name in reader.fields}
        general_type = _field_str(fields.get("general.type"))
        datasets = _field_strs(fields.get(KEY_DATASETS))
        chunk_count = _field_int(fields.get(KEY_CHUNK_COUNT))
        chunk_size = _field_int(fields.get(KEY_CHUNK_SIZE))
        tensors = {t.name: t for t in reader.tensors}
        sums: dict[str, np.ndarray] = {}
        counts: dict[str, np.ndarray] = {}
        for name, t in tensors.items():
            if name.endswith(_IN_SUM2):
                target, key = sums, name[: -len(_IN_SUM2)]
            elif name.endswith(_COUNTS):
                target, key = counts, name[: -len(_COUNTS)]
            else:
                continue
            if t.tensor_type != GGMLQuantizationType.F32:
                raise _corrupt(path, f"{name} is {t.tensor_type.name}, not F32")
            target[key] = np.array(t.data, dtype=np.float32).reshape(-1)
    except ImatrixError:
        raise
    except Exception as err:  # gguf raises ValueError, IndexError, struct errors ...
        raise _corrupt(path, f"{type(err).__name__}: {err}") from None
    if general_type is not None and general_type != "imatrix":
        raise ImatrixError(
            f"{str(path)!r} is a GGUF {general_type} file, not an importance matrix; give the "
            "file llama-imatrix or nntrtool imatrix wrote"
        )
    if not sums:
        raise ImatrixError(
            f"{str(path)!r} holds no importance data (no <tensor>.in_sum2); give the file "
            "llama-imatrix or nntrtool imatrix wrote"
        )
    entries = {}
    for name in sorted(set(sums) | set(counts)):
        if name not in sums or name not in counts:
            raise _corrupt(path, f"{name} has {'no counts' if name in sums else 'no sums'}")
        s, c = sums[name], counts[name]
        if c.size == 0 or s.size == 0 or s.size % c.size:
            raise _corrupt(path, f"{name}: {s.size} sums do not split over {c.size} counts")
        entries[name] = ImatrixEntry(name, s.reshape(c.size, -1), c)
    return Imatrix(path, "gguf", entries, chunk_count, chunk_size, datasets)


def _field_value(f: Any) -> Any:
    return f.parts[f.data[0]] if f is not None and f.data else None


def _field_str(f: Any) -> str | None:
    v = _field_value(f)
    return None if v is None else bytes(v).decode("utf-8", errors="replace")


def _field_strs(f: Any) -> list[str]:
    if f is None:
        return []
    return [bytes(f.parts[i]).decode("utf-8", errors="replace") for i in f.data]


def _field_int(f: Any) -> int | None:
    v = _field_value(f)
    return None if v is None else int(np.asarray(v).reshape(-1)[0])


def _read_dat(path: Path) -> Imatrix:
    data = path.read_bytes()
    pos = 0

    def take(n: int, what: str) -> bytes:
        nonlocal pos
        if pos + n > len(data):
            raise _corrupt(path, f"ends inside {what} at byte {pos}")
        out = data[pos : pos + n]
        pos += n
        return out

    def int32(what: str) -> int:
        return struct.unpack("<i", take(4, what))[0]

    n_entries = int32("the entry count")
    if n_entries < 1 or n_entries > len(data) // 12:
        raise ImatrixError(
            f"{str(path)!r} is neither a GGUF nor a legacy .dat importance matrix "
            f"(it would hold {n_entries} entries); give the file llama-imatrix or nntrtool "
            "imatrix wrote"
        )
    entries: dict[str, ImatrixEntry] = {}
    for i in range(n_entries):
        length = int32(f"entry {i}")
        if length < 1 or length > 4096:
            raise _corrupt(path, f"entry {i} has a name of {length} bytes")
        try:
            name = take(length, f"entry {i}'s name").decode("utf-8")
        except UnicodeDecodeError:
            raise _corrupt(path, f"entry {i}'s name is not text") from None
        ncall = int32(f"entry {name}")
        nval = int32(f"entry {name}")
        if nval < 1:
            raise _corrupt(path, f"entry {name} has {nval} values")
        values = np.frombuffer(take(4 * nval, f"entry {name}'s values"), dtype="<f4")
        counts = np.array([ncall], dtype=np.float32)
        entries[name] = ImatrixEntry(
            name, values.astype(np.float32).reshape(1, -1), counts, legacy=True
        )
    chunk_count = None
    datasets: list[str] = []
    if pos < len(data):  # later versions: last chunk, then the dataset's name
        chunk_count = int32("the chunk count")
        length = int32("the dataset name")
        if length < 0:
            raise _corrupt(path, f"a dataset name of {length} bytes")
        datasets = [take(length, "the dataset name").decode("utf-8", errors="replace")]
        if pos != len(data):
            raise _corrupt(path, f"{len(data) - pos} unexpected bytes at the end")
    return Imatrix(path, "dat", entries, chunk_count, None, datasets)


def _atomic_target(path: Path) -> Path:
    from nntrtool.outputs import temp_path

    return temp_path(path)


def write_imatrix(
    path: str | Path,
    entries: Mapping[str, tuple[np.ndarray, np.ndarray]],
    chunk_count: int,
    datasets: Sequence[str],
    chunk_size: int | None = None,
) -> None:
    """Write an importance matrix in llama.cpp's GGUF layout (what ``llama-imatrix`` writes).

    ``entries`` maps a weight's name (llama.cpp's, e.g. ``blk.0.attn_q.weight``) to
    ``(in_sum2, counts)``: sums of squared activations per input column, shape (n_cols,) or
    (n_experts, n_cols), and the activation counts, one per expert. The file is written
    atomically (a temporary file renamed into place).
    """
    from gguf import GGUFValueType, GGUFWriter

    p = Path(path)
    writer = GGUFWriter(None, arch="")
    # llama.cpp's imatrix files carry no architecture; the writer adds one on creation.
    for kv in writer.kv_data:
        kv.pop("general.architecture", None)
    writer.add_type("imatrix")
    if datasets:  # gguf's writer cannot store an empty array; readers take none as none
        writer.add_key_value(
            KEY_DATASETS, [str(d) for d in datasets], GGUFValueType.ARRAY, GGUFValueType.STRING
        )
    writer.add_uint32(KEY_CHUNK_COUNT, int(chunk_count))
    if chunk_size is not None:
        writer.add_uint32(KEY_CHUNK_SIZE, int(chunk_size))
    for name in sorted(entries):
        sums, counts = entries[name]
        counts = np.asarray(counts, dtype=np.float32).reshape(-1)
        sums = np.asarray(sums, dtype=np.float32).reshape(counts.size, -1)
        writer.add_tensor(name + _IN_SUM2, np.ascontiguousarray(sums))
        writer.add_tensor(name + _COUNTS, np.ascontiguousarray(counts.reshape(-1, 1)))
    tmp = _atomic_target(p)
    from nntrtool.outputs import forget, register

    register(tmp)
    try:
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, p)
        from nntrtool.outputs import mark_completed

        mark_completed(p)
    finally:
        if tmp.exists():
            tmp.unlink()
        forget(tmp)


def write_imatrix_dat(
    path: str | Path,
    entries: Mapping[str, tuple[np.ndarray, np.ndarray]],
    chunk_count: int,
    dataset: str,
    chunk_size: int = 512,
) -> None:
    """Write llama.cpp's legacy ``.dat`` layout: per entry ``ncall`` = the largest count over
    ``chunk_size`` rounded up, and values ``(in_sum2 / count) * ncall`` (as llama-imatrix
    writes them), then the chunk count and the dataset's name."""
    out = bytearray(struct.pack("<i", len(entries)))
    for name in sorted(entries):
        sums, counts = entries[name]
        counts = np.asarray(counts, dtype=np.float32).reshape(-1)
        sums = np.asarray(sums, dtype=np.float32).reshape(counts.size, -1)
        ncall = int((int(counts.max()) + chunk_size - 1) // chunk_size)
        per = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], 1.0)
        values = (per.astype(np.float32) * np.float32(ncall)).astype("<f4").reshape(-1)
        raw = name.encode()
        out += struct.pack("<i", len(raw)) + raw + struct.pack("<ii", ncall, values.size)
        out += values.tobytes()
    raw = dataset.encode()
    out += struct.pack("<ii", int(chunk_count), len(raw)) + raw
    p = Path(path)
    tmp = _atomic_target(p)
    try:
        tmp.write_bytes(bytes(out))
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
