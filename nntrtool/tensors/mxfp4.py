"""MXFP4, the packed expert format of GPT-OSS checkpoints: exact decoding, and exact Q8_0 blocks.

An MXFP4 block is 32 FP4 (E2M1) values sharing one E8M0 scale. The checkpoint stores a matrix
``[rows, cols]`` as ``*_blocks`` ``[rows, cols / 32, 16]`` (two values a byte, the low nibble
first) and ``*_scales`` ``[rows, cols / 32]`` (a biased exponent: the block's values are
``FP4_VALUES[nibble] * 2 ** (scale - 127)``), so blocks run along the last axis.

E2M1 values are ``{0, 0.5, 1, 1.5, 2, 3, 4, 6}`` with a sign, i.e. the integers ``{0, 1, 2, 3,
4, 6, 8, 12}`` times ``1/2``. A block is therefore exactly a Q8_0 block with ``d = 2 ** (scale -
128)`` and ``q = 2 * value`` in ``[-12, 12]``, as long as ``d`` is an fp16 number (``scale`` in
104..143) or the block is all zeros. ggml's Q8_0 quantizer does not find that encoding (it takes
``d = amax / 127``), so such blocks are written directly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nntrtool.tensors.base import SourceTensor
from nntrtool.tensors.transforms import DerivedTensor, done_reading

#: The 16 E2M1 values by nibble (sign in the top bit).
FP4_VALUES = np.array(
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
    dtype=np.float32,
)
#: Twice the E2M1 values: the Q8_0 integers of a block whose d is half its MXFP4 scale.
FP4_DOUBLED = (FP4_VALUES * 2).astype(np.int8)
BLOCK = 32
#: E8M0 scales whose ``2 ** (scale - 128)`` is an fp16 number (subnormals included).
EXACT_Q8_0_SCALES = range(127 - 23, 127 + 16 + 1)


_NIBBLE_LO, _NIBBLE_HI = np.arange(256) & 0x0F, np.arange(256) >> 4
#: Per packed byte, its two values (low nibble first) as one 8-byte word: one gather per byte.
_PAIRS_F32 = np.stack([FP4_VALUES[_NIBBLE_LO], FP4_VALUES[_NIBBLE_HI]], -1).view(np.uint64)[:, 0]
_PAIRS_Q = np.stack([FP4_DOUBLED[_NIBBLE_LO], FP4_DOUBLED[_NIBBLE_HI]], -1).view(np.uint16)[:, 0]
#: 2 ** (scale - 127) for every E8M0 scale (255, E8M0's NaN, gives inf as in transformers).
with np.errstate(over="ignore"):
    _POW2 = np.ldexp(np.float32(1), np.arange(256) - 127).astype(np.float32)


def _values(blocks: np.ndarray, pairs: np.ndarray, dtype: type) -> np.ndarray:
    """``(..., G, 16)`` packed bytes -> ``(..., G, 32)`` values from a table of byte pairs."""
    return pairs[blocks].view(dtype).reshape(*blocks.shape[:-1], BLOCK)


def decode_f32(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """MXFP4 ``(rows, G, 16)`` blocks and ``(rows, G)`` scales -> float32 ``(rows, G * 32)``."""
    vals = _values(blocks, _PAIRS_F32, np.float32)
    if (scales == 255).any():  # 0 * inf: ldexp keeps zeros zero, as transformers does
        exp = scales.astype(np.int32)[..., None] - 127
        with np.errstate(over="ignore"):
            vals = np.ldexp(vals, exp)
    else:  # multiplying by a power of two is exact, subnormal results included
        with np.errstate(over="ignore"):  # 6 * 2**127 is inf, as in transformers
            vals *= _POW2[scales][..., None]
    return vals.reshape(blocks.shape[0], -1)


def decode_bf16(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Like :func:`decode_f32`, as BF16 bit patterns: E2M1 values times a power of two have
    two significant bits, so cutting float32 to its top 16 bits loses nothing."""
    f32 = decode_f32(blocks, scales)
    return np.ascontiguousarray(f32.view("<u2")[:, 1::2])  # the high half of each value


def exact_in_q8_0(blocks: np.ndarray, scales: np.ndarray) -> bool:
    """Whether every block is exactly a Q8_0 block (its scale fits fp16, or it is all zeros)."""
    ok = (scales >= EXACT_Q8_0_SCALES.start) & (scales < EXACT_Q8_0_SCALES.stop)
    if ok.all():
        return True
    zero = ~((blocks & 0x77).any(axis=-1))  # +-0 nibbles only
    return bool((ok | zero).all())


def encode_q8_0(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray | None:
    """The Q8_0 rows holding exactly these MXFP4 blocks, ``(rows, G * 34)`` uint8; ``None``
    when a block's scale does not fit fp16."""
    if not exact_in_q8_0(blocks, scales):
        return None
    n, groups = scales.shape
    q = _values(blocks, _PAIRS_Q, np.int8)
    ok = (scales >= EXACT_Q8_0_SCALES.start) & (scales < EXACT_Q8_0_SCALES.stop)
    d = np.where(ok, _POW2[scales] * np.float32(0.5), 0).astype("<f2")
    out = np.empty((n, groups, 2 + BLOCK), dtype=np.uint8)
    out[..., :2] = d.view(np.uint8).reshape(n, groups, 2)
    out[..., 2:] = q.view(np.uint8)
    return out.reshape(n, groups * (2 + BLOCK))


def mxfp4_matrix(
    blocks: SourceTensor,
    scales: SourceTensor,
    name: str,
    expert: int,
    *,
    row_step: int = 1,
    row_offset: int = 0,
    note: str = "",
) -> DerivedTensor:
    """One expert's ``[out, in]`` matrix out of packed ``[E, R, G, 16]`` blocks and ``[E, R, G]``
    scales, decoded to BF16; stored row ``i`` is packed row ``row_offset + i * row_step``.

    Blocks run along ``in`` in both layouts, so the tensor also offers its rows as exact Q8_0
    blocks and prefers Q8_0 when every block of the expert fits (checked on the scales once).
    """
    # Blocks come as [E, R, G, 16] (the checkpoint) or [E, R, G * 16] (transformers' parameter).
    half = BLOCK // 2
    for part, want in ((blocks, "U8 (two E2M1 values a byte)"), (scales, "U8 (E8M0 exponents)")):
        if part.dtype != "U8":
            raise ValueError(
                f"MXFP4 {part.name} is {part.dtype}, expected {want}; the checkpoint is not "
                "GPT-OSS's MXFP4 layout: use the original files or an unpacked (bf16) copy"
            )
    if (
        scales.ndim != 3
        or blocks.ndim not in (3, 4)
        or tuple(blocks.shape[:2]) != tuple(scales.shape[:2])
        or blocks.numel != scales.numel * half
    ):
        raise ValueError(
            f"MXFP4 blocks {list(blocks.shape)} and scales {list(scales.shape)} do not match; "
            "the checkpoint is not GPT-OSS's MXFP4 layout: use the original files or an unpacked "
            "(bf16) copy"
        )
    n_exp, packed_rows, groups = scales.shape
    per_row = blocks.rows // (n_exp * packed_rows)  # rows of the blocks' 2-D view per matrix row
    rows = len(range(row_offset, packed_rows, row_step))
    shape = (rows, groups * BLOCK)

    def span(start: int, stop: int) -> tuple[int, int]:
        first = expert * packed_rows + row_offset + start * row_step
        return first, first + (stop - start - 1) * row_step + 1

    def scales_of(s_t: SourceTensor, start: int, stop: int) -> np.ndarray:
        if stop <= start:
            return np.zeros((0, groups), np.uint8)
        first, last = span(start, stop)
        raw = s_t.read_raw(first, last)
        s = raw.reshape(-1, groups)[::row_step].copy()
        done_reading(raw)
        return s

    def packed(inputs: Sequence[SourceTensor], start: int, stop: int) -> tuple[np.ndarray, ...]:
        b_t, s_t = inputs
        if stop <= start:
            return np.zeros((0, groups, half), np.uint8), scales_of(s_t, start, stop)
        first, last = span(start, stop)
        raw = b_t.read_raw(first * per_row, last * per_row)
        b = raw.reshape(-1, groups, half)[::row_step].copy()
        done_reading(raw)
        return b, scales_of(s_t, start, stop)

    def read(inputs: Sequence[SourceTensor], start: int, stop: int) -> np.ndarray:
        b, s = packed(inputs, start, stop)
        return decode_bf16(b, s).reshape(stop - start, shape[1])

    def read_q8_0(inputs: Sequence[SourceTensor], start: int, stop: int) -> np.ndarray | None:
        return encode_q8_0(*packed(inputs, start, stop))

    exact: dict[str, bool] = {}

    def prefer() -> tuple[str, str] | None:
        if "q8_0" not in exact:  # the scales decide; blocks are read only if some do not fit
            s = scales_of(scales, 0, rows)
            ok = bool(((s >= EXACT_Q8_0_SCALES.start) & (s < EXACT_Q8_0_SCALES.stop)).all())
            exact["q8_0"] = ok or exact_in_q8_0(*packed((blocks, scales), 0, rows))
        if not exact["q8_0"]:
            return None
        return "q8_0", "MXFP4 expert: q8_0 holds its blocks exactly (--type to choose another)"

    share = (blocks.nbytes + scales.nbytes) * rows // (n_exp * packed_rows)
    return DerivedTensor(
        name,
        "BF16",
        shape,
        [blocks, scales],
        read,
        note or "MXFP4 decoded",
        source_nbytes=share,
        prefer=prefer,
        encoders={"q8_0": read_q8_0},
    )


#: Bytes of one ggml MXFP4 block: its E8M0 scale, then 16 bytes of nibbles.
GGML_BLOCK_BYTES = 1 + BLOCK // 2


def from_ggml(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml MXFP4 rows ``(rows, G * 17)`` -> checkpoint-layout ``(rows, G, 16)`` blocks and
    ``(rows, G)`` scales. ggml keeps the scale first and value ``j`` in the low nibble of byte
    ``j``, value ``j + 16`` in its high nibble; the checkpoint packs values ``2k`` and ``2k + 1``
    into byte ``k`` (low nibble first). The nibble codes and the scale mean the same in both."""
    rows = raw.shape[0]
    b = raw.reshape(rows, -1, GGML_BLOCK_BYTES)
    scales = np.ascontiguousarray(b[..., 0])
    qs = b[..., 1:]
    nibbles = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)  # values 0..31 in order
    blocks = (nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)).astype(np.uint8)
    return blocks, scales


def ggml_mxfp4_matrix(base: SourceTensor, name: str, expert: int, note: str = "") -> DerivedTensor:
    """One expert's ``[out, in]`` matrix out of a ggml MXFP4 ``[E, out, in]`` tensor (a GGUF's),
    read as :func:`mxfp4_matrix` reads a checkpoint's: BF16 values, exact Q8_0 blocks offered
    and preferred when every block fits."""
    n_exp, rows, cols = base.shape

    def packed(inputs: Sequence[SourceTensor], start: int, stop: int) -> tuple[np.ndarray, ...]:
        raw = inputs[0].read(expert * rows + start, expert * rows + stop)
        out = from_ggml(raw)
        done_reading(raw)
        return out

    def read(inputs: Sequence[SourceTensor], start: int, stop: int) -> np.ndarray:
        return decode_bf16(*packed(inputs, start, stop)).reshape(stop - start, cols)

    def read_q8_0(inputs: Sequence[SourceTensor], start: int, stop: int) -> np.ndarray | None:
        return encode_q8_0(*packed(inputs, start, stop))

    exact: dict[str, bool] = {}

    def prefer() -> tuple[str, str] | None:
        if "q8_0" not in exact:
            exact["q8_0"] = exact_in_q8_0(*packed((base,), 0, rows))
        if not exact["q8_0"]:
            return None
        return "q8_0", "MXFP4 expert: q8_0 holds its blocks exactly (--type to choose another)"

    return DerivedTensor(
        name,
        "BF16",
        (rows, cols),
        [base],
        read,
        note or "MXFP4 decoded",
        source_nbytes=base.nbytes // n_exp,
        prefer=prefer,
        encoders={"q8_0": read_q8_0},
    )
