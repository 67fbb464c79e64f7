"""What every model source hands out: tensors read by row chunks.

:class:`SourceTensor` is the one interface the conversion pipeline reads weights through, whatever
file they come from (safetensors over a memory map, or a PyTorch checkpoint). Dtypes are named as
safetensors names them (``"F32"``, ``"BF16"``, ``"I8"`` ...), whatever the file format.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from nntrtool.errors import SourceError
from nntrtool.quant.common import bf16_to_f32
from nntrtool.shapes import Shaped

#: Bits per element of every dtype safetensors knows (sub-byte float types pack along the data).
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "F64": 64,
    "I64": 64,
    "U64": 64,
    "C64": 64,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
}

#: The dtypes nntrtool converts, and the numpy dtype their raw rows are handed out in.
#: BF16 has no numpy type: its rows come out as the raw 16-bit patterns.
READABLE_DTYPES: dict[str, np.dtype] = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
}


#: Byte-sized integer dtypes whose raw rows transforms read (MXFP4 blocks and E8M0 scales are U8).
RAW_DTYPES: dict[str, np.dtype] = {**READABLE_DTYPES, "U8": np.dtype("u1"), "I8": np.dtype("i1")}

#: Block-quantized dtypes (ggml types such as ``"Q4_K"``, registered by the GGUF reader when it is
#: imported): name -> (values per block, bytes per block). Their raw rows are uint8 block bytes.
BLOCK_DTYPES: dict[str, tuple[int, int]] = {}
#: Decoders of block dtypes: (uint8 block rows, values per row) -> float32 (rows, cols).
_BLOCK_DECODERS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {}


def register_block_dtype(
    name: str,
    block_size: int,
    block_bytes: int,
    decode: Callable[[np.ndarray, int], np.ndarray],
) -> None:
    """Make a block-quantized dtype readable: its sizes and its decoder to float32."""
    BLOCK_DTYPES[name] = (int(block_size), int(block_bytes))
    _BLOCK_DECODERS[name] = decode


def decode_blocks(raw: np.ndarray, dtype: str, cols: int) -> np.ndarray:
    """float32 ``(rows, cols)`` values of raw block rows of a registered block dtype."""
    return _BLOCK_DECODERS[dtype](raw, cols)


def dtype_nbytes(dtype: str, numel: int) -> int:
    """Bytes that ``numel`` elements of ``dtype`` take in their file."""
    block = BLOCK_DTYPES.get(dtype)
    if block is not None:
        return numel // block[0] * block[1]
    return (numel * DTYPE_BITS[dtype] + 7) // 8


class SourceTensor(Shaped):
    """One tensor of a model source, read as a 2-D ``(rows, cols)`` matrix by row ranges.

    ``rows`` is the product of all dimensions but the last (1 for 0-D and 1-D tensors) and
    ``cols`` is the last dimension, which is the one quantization blocks run along.
    """

    def __init__(self, name: str, dtype: str, shape: tuple[int, ...], file: Path):
        self.name = name
        self.dtype = dtype
        self.shape = tuple(int(d) for d in shape)
        #: The file the tensor's bytes live in (named in error messages).
        self.file = file

    # ---- sizes ---------------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes the tensor takes in its source."""
        return dtype_nbytes(self.dtype, self.numel)

    @property
    def supported(self) -> bool:
        """True when nntrtool can read this tensor's dtype (F32, F16, BF16 or a block type)."""
        return self.dtype in READABLE_DTYPES or self.dtype in BLOCK_DTYPES

    @property
    def blocked(self) -> bool:
        """True for block-quantized dtypes, whose raw rows are block bytes."""
        return self.dtype in BLOCK_DTYPES

    @property
    def row_width(self) -> int:
        """Width of a raw row as :meth:`read` returns it: ``cols``, or bytes for block dtypes."""
        block = BLOCK_DTYPES.get(self.dtype)
        if block is None:
            return self.cols
        return self.cols // block[0] * block[1]

    # ---- reading -------------------------------------------------------------------------
    def read(self, start_row: int = 0, stop_row: int | None = None) -> np.ndarray:
        """Raw rows ``start_row:stop_row`` as a read-only ``(rows, cols)`` array.

        float32 for F32, float16 for F16, uint16 bit patterns for BF16, uint8 block bytes
        ``(rows, row_width)`` for block-quantized dtypes; a view, not a copy, wherever the
        source allows it.
        """
        start, stop = self._check_rows(start_row, stop_row)
        if not self.supported:
            raise SourceError(
                f"tensor {self.name!r} in {self.file.name} has dtype {self.dtype}, which nntrtool "
                f"cannot convert (supported: {', '.join(READABLE_DTYPES)} and GGUF block types); "
                "convert the model to one of those first"
            )
        arr = self._read_rows(start, stop)
        if arr.flags.writeable:
            arr.flags.writeable = False
        return arr

    def read_raw(self, start_row: int = 0, stop_row: int | None = None) -> np.ndarray:
        """Rows ``start_row:stop_row`` in the tensor's own dtype, also for the integer dtypes of
        :data:`RAW_DTYPES` that only transforms read (packed blocks, scales)."""
        start, stop = self._check_rows(start_row, stop_row)
        if self.dtype not in RAW_DTYPES:
            raise SourceError(
                f"tensor {self.name!r} in {self.file.name} has dtype {self.dtype}, which nntrtool "
                "cannot read"
            )
        return self._read_rows(start, stop)

    def read_f32(
        self, start_row: int = 0, stop_row: int | None = None, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Rows ``start_row:stop_row`` as float32 ``(rows, cols)``, widened from F16/BF16 or
        dequantized from block types.

        Without ``out``, an F32 source comes back as its read-only view; with ``out`` (a
        C-contiguous float32 array of the right shape) the values are written there.
        """
        raw = self.read(start_row, stop_row)
        shape = (raw.shape[0], self.cols)
        if out is not None:
            if out.dtype != np.float32 or out.shape != shape or not out.flags.c_contiguous:
                raise ValueError(
                    f"out must be C-contiguous float32 of shape {shape}, "
                    f"got {out.dtype} {out.shape}"
                )
        if self.blocked:
            values = decode_blocks(raw, self.dtype, self.cols)
            if out is None:
                return values
            np.copyto(out, values)
            return out
        if self.dtype == "BF16":
            return bf16_to_f32(raw, np, out)
        if out is None:
            return raw if raw.dtype == np.float32 else raw.astype(np.float32)
        np.copyto(out, raw)
        return out

    def iter_chunks(self, rows_per_chunk: int) -> Iterator[tuple[int, int]]:
        """``(start, stop)`` row ranges of at most ``rows_per_chunk`` rows covering the tensor."""
        if rows_per_chunk <= 0:
            raise ValueError("rows_per_chunk must be positive")
        for start in range(0, self.rows, rows_per_chunk):
            yield start, min(start + rows_per_chunk, self.rows)

    def _check_rows(self, start_row: int, stop_row: int | None) -> tuple[int, int]:
        stop = self.rows if stop_row is None else int(stop_row)
        start = int(start_row)
        if not 0 <= start <= stop <= self.rows:
            raise ValueError(
                f"row range {start}:{stop} is outside tensor {self.name!r} with {self.rows} rows"
            )
        return start, stop

    def _read_rows(self, start: int, stop: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"SourceTensor({self.name!r}, {self.dtype}, {list(self.shape)})"


class ArrayTensor(SourceTensor):
    """A tensor held in memory (tests, adapters, values computed at open): rows are views.

    ``array`` holds float32, float16, or uint16 BF16 bit patterns (then pass ``dtype="BF16"``).
    """

    def __init__(
        self, name: str, array: np.ndarray, dtype: str | None = None, file: Path | None = None
    ):
        arr = np.asarray(array)
        if dtype is None:
            dtype = {np.dtype("float32"): "F32", np.dtype("float16"): "F16"}.get(arr.dtype)
            if dtype is None:
                raise ValueError(f"give the dtype of a {arr.dtype} array")
        super().__init__(name, dtype, arr.shape, file or Path("<memory>"))
        self._matrix = arr.reshape(self.rows, self.cols)

    def _read_rows(self, start: int, stop: int) -> np.ndarray:
        return self._matrix[start:stop]
