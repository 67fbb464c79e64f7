"""Helpers shared by every type's kernels: fp16/bf16 bit conversions, GGML's ``nearest_int``,
the non-finite check and the source-dtype codes the numba kernels take.

The array functions take ``xp`` (``numpy`` or ``cupy``) so the same code runs on the CPU and on
a GPU. Everything stays float32: a Python float or a float64 scalar in an expression would
promote the arithmetic and change bits, so constants are spelled ``np.float32(...)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nntrtool.errors import NonFiniteError, QuantError

#: Source element kinds the numba kernels decode on the fly (``quantize_numba(x, src_kind)``).
SRC_F32 = 0
SRC_F16 = 1
SRC_BF16 = 2

SRC_NAMES = {SRC_F32: "F32", SRC_F16: "F16", SRC_BF16: "BF16"}

_SRC_BY_NAME = {
    "f32": SRC_F32,
    "float32": SRC_F32,
    "f16": SRC_F16,
    "float16": SRC_F16,
    "half": SRC_F16,
    "bf16": SRC_BF16,
    "bfloat16": SRC_BF16,
}

#: The float32 bias of GGML's ``nearest_int``: 1.5 * 2^23 puts the integer part of
#: ``v + bias`` in the low mantissa bits, rounding half to even.
NEAREST_INT_BIAS = np.float32(12582912.0)


def source_kind(dtype_name: str) -> int:
    """The ``SRC_*`` code of a source dtype name (``"F32"``, ``"f16"``, ``"BF16"``, ...)."""
    try:
        return _SRC_BY_NAME[str(dtype_name).lower()]
    except KeyError:
        raise QuantError(
            f"unknown source dtype {dtype_name!r}: use one of F32, F16, BF16"
        ) from None


def f16_bits(x_f32: Any, xp: Any = np) -> Any:
    """fp16 bits (uint16) of float32 values, round to nearest even, overflow to inf."""
    with np.errstate(over="ignore"):  # overflow to inf is the defined result (ggml's too)
        return x_f32.astype(xp.float16).view(xp.uint16)


def f16_to_f32(bits_u16: Any, xp: Any = np) -> Any:
    """float32 values of fp16 bit patterns (exact)."""
    return bits_u16.view(xp.float16).astype(xp.float32)


def bf16_to_f32(bits_u16: Any, xp: Any = np, out: Any = None) -> Any:
    """float32 values of bfloat16 bit patterns (exact: bf16 is the top half of a float32),
    written into ``out`` (C-contiguous float32 of the same shape) when given."""
    if out is None:
        out = xp.empty(bits_u16.shape, dtype=xp.float32)
    wide = out.view(xp.uint32)
    # Widen, then shift in place: about twice as fast as shifting a widened copy, and a
    # Python-int shift amount would keep the loop in uint16 and shift every bit out.
    xp.copyto(wide, bits_u16.view(xp.uint16))
    wide <<= xp.uint32(16)
    return out


#: Bytes of the fp16 scale in front of the codes of a Q4_0 or Q8_0 block.
SCALE_BYTES = np.dtype(np.float16).itemsize
#: What the CPU layouts of Q4_0 XOR into every code byte: each nibble becomes the signed q - 8.
REPACK_XOR = 0x88
_F0 = np.float32(0.0)
_F1 = np.float32(1.0)


def scaled_values(xb: Any, d: Any, xp: Any = np, bias: Any = None) -> Any:
    """``xb * (1/d)`` (plus ``bias``) per block, in float32, as ggml computes codes: ``1/d`` is
    0 where ``d`` is 0, and a result that is not finite (``1/d`` overflowed) becomes 0, which
    is what x86 stores when such a value is converted to an integer. ``d`` is (rows, blocks)."""
    nz = d != _F0
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        inv = xp.where(nz, _F1 / xp.where(nz, d, _F1), _F0).astype(xp.float32)
        v = xb * inv[..., None]
        if bias is not None:
            v = v + bias
    return xp.where(xp.isfinite(v), v, _F0)


def join_scale_blocks(d: Any, codes: Any, xp: Any = np) -> Any:
    """Rows of blocks that are an fp16 scale followed by code bytes: float32 scales
    (rows, blocks) and uint8 codes (rows, blocks, n) -> uint8 (rows, blocks * (2 + n))."""
    rows, nb, n = codes.shape
    out = xp.empty((rows, nb, SCALE_BYTES + n), dtype=xp.uint8)
    out[..., :SCALE_BYTES] = f16_bits(d, xp)[..., None].view(xp.uint8)
    out[..., SCALE_BYTES:] = codes
    return out.reshape(rows, nb * (SCALE_BYTES + n))


def split_scale_blocks(data: Any, block_bytes: int, xp: Any = np) -> tuple[Any, Any]:
    """The float32 scales (rows, blocks, 1) and code bytes (rows, blocks, block_bytes - 2) of
    uint8 rows of blocks that are an fp16 scale followed by codes."""
    rows = data.shape[0]
    blocks = data.reshape(rows, data.shape[1] // block_bytes, block_bytes)
    d = f16_to_f32(xp.ascontiguousarray(blocks[..., :SCALE_BYTES]).view(xp.uint16), xp)
    return d, blocks[..., SCALE_BYTES:]


def nearest_int(v_f32: Any, xp: Any = np) -> Any:
    """GGML's ``nearest_int``: round half to even via the float32 ``+12582912`` trick (int32)."""
    t = (v_f32 + NEAREST_INT_BIAS).astype(xp.float32)
    return (t.view(xp.int32) & xp.int32(0x7FFFFF)) - xp.int32(0x400000)


def search_numerators(nmax: int) -> np.ndarray:
    """The 19 numerators of the inverse scales ggml's ``make_qx_quants`` tries, in its order
    (``iscale = num / max``): first ``-nmax``, then ``-(nmax + 0.1f*k)`` for k = -9..9, k != 0,
    each rounded in float32."""
    nums = [np.float32(-nmax)]
    for k in range(-9, 10):
        if k:
            nums.append(-(np.float32(nmax) + np.float32(0.1) * np.float32(k)))
    return np.array(nums, dtype=np.float32)


def qx_scale_search(
    xt: Any, w: Any, wx: Any, vmax: Any, nmax: int, xp: Any = np
) -> tuple[Any, Any]:
    """ggml's ``make_qx_quants`` (rmse_type 1) scale search on many runs at once.

    ``xt``, ``w`` and ``wx`` (= ``w * x``) are position-major ``(n, m)`` float32 arrays: row i
    holds value i of each of the m runs, so every step of ggml's sequential per-run sums is one
    vector operation across runs. ``vmax`` is each run's signed value of largest magnitude (not
    zero). Returns each run's chosen scale and the index of its chosen numerator in
    :func:`search_numerators`. ``nearest_int`` is taken as ``(v + 1.5*2^23) - 1.5*2^23``,
    exact here since ``|v| <= nmax + 1``.
    """
    nums = search_numerators(nmax)
    lo, hi = np.float32(-nmax), np.float32(nmax - 1)
    m = xt.shape[1]
    v = xp.empty(m, dtype=xp.float32)
    tmp = xp.empty(m, dtype=xp.float32)
    sumlx = xp.empty(m, dtype=xp.float32)
    suml2 = xp.empty(m, dtype=xp.float32)
    scale = best = best_c = None
    for c, num in enumerate(nums):
        inv = num / vmax
        sumlx.fill(0)
        suml2.fill(0)
        for i in range(xt.shape[0]):
            xp.multiply(inv, xt[i], out=v)
            xp.add(v, NEAREST_INT_BIAS, out=v)
            xp.subtract(v, NEAREST_INT_BIAS, out=v)
            xp.maximum(v, lo, out=v)
            xp.minimum(v, hi, out=v)
            xp.multiply(wx[i], v, out=tmp)
            xp.add(sumlx, tmp, out=sumlx)
            xp.multiply(w[i], v, out=tmp)
            xp.multiply(tmp, v, out=tmp)
            xp.add(suml2, tmp, out=suml2)
        if c == 0:
            # `suml2 ? sumlx/suml2 : 0` in C: NaN counts as true.
            with np.errstate(all="ignore"):
                scale = xp.where(suml2 != _F0, sumlx / suml2, _F0)
                best = scale * sumlx
            best_c = xp.zeros(m, dtype=xp.int32)
        else:
            with np.errstate(all="ignore"):
                take = (suml2 > _F0) & (sumlx * sumlx > best * suml2)
                new_scale = sumlx / suml2
                scale = xp.where(take, new_scale, scale)
                best = xp.where(take, new_scale * sumlx, best)
            best_c = xp.where(take, xp.int32(c), best_c)
    return scale, best_c


def row_sigma2(x: Any, xp: Any = np) -> Any:
    """``sum(x*x) / cols`` per row, summed in float32 in column order as ggml does."""
    rows, cols = x.shape
    sq = xp.ascontiguousarray((x * x).T)
    total = xp.zeros(rows, dtype=xp.float32)
    for j in range(cols):
        xp.add(total, sq[j], out=total)
    return total / np.float32(cols)


#: ggml's GROUP_MAX_EPS: a run below this magnitude gets scale 0 and codes 0.
GROUP_MAX_EPS = np.float32(1e-15)


def weighted_block_search(x: Any, qw: Any, qk: int, nmax: int, xp: Any = np) -> tuple[Any, Any]:
    """ggml's importance-weighted search of the symmetric 32-value types (Q4_0, Q5_0):
    ``make_qx_quants(qk, nmax, x, L, 1, w)`` per block with ``w = qw * sqrt(sigma2 + x*x)``
    (``sigma2`` the row's mean square). ``x`` is float32 ``(rows, cols)``; returns the float32
    scales ``(rows, blocks)`` and the codes ``(rows, blocks, qk)`` (uint8, ``l + nmax``)."""
    check_finite(x, xp)
    rows, cols = x.shape
    nb = cols // qk
    m = rows * nb
    with np.errstate(all="ignore"):  # overflowing rows give inf/NaN weights, as in C
        sigma2 = row_sigma2(x, xp)
        qw = xp.asarray(qw, dtype=xp.float32)
        w = qw[None, :] * xp.sqrt(sigma2[:, None] + x * x)
        # Position-major (qk, m): row i holds value i of every block.
        xt = xp.ascontiguousarray(x.reshape(m, qk).T)
        wt = xp.ascontiguousarray(w.reshape(m, qk).T)
        amax, vmax = column_signed_max(xt, xp)
        tiny = amax < GROUP_MAX_EPS
        vmax = xp.where(tiny, _F1, vmax)  # keeps the search finite; masked below
        scale, best_c = qx_scale_search(xt, wt, wt * xt, vmax, nmax, xp)
        nums = search_numerators(nmax)
        nums = nums if xp is np else xp.asarray(nums)
        inv = nums[best_c] / vmax
        v = (inv * xt + NEAREST_INT_BIAS) - NEAREST_INT_BIAS
        lo, hi = np.float32(-nmax), np.float32(nmax - 1)
        codes = xp.minimum(xp.maximum(v, lo), hi).astype(xp.int32) + nmax
    codes = xp.where(tiny, 0, codes).astype(xp.uint8).T.reshape(rows, nb, qk)
    d = xp.where(tiny, _F0, scale).reshape(rows, nb)
    return d, codes


def to_f32(raw: Any, src_kind: int, xp: Any = np) -> Any:
    """Decode a chunk of source elements (float32, or uint16 fp16/bf16 bits) to float32."""
    if src_kind == SRC_F32:
        return raw
    if src_kind == SRC_F16:
        return f16_to_f32(raw, xp)
    if src_kind == SRC_BF16:
        return bf16_to_f32(raw, xp)
    raise QuantError(f"unknown source kind {src_kind}")


def non_finite_error(row: int, col: int, value: float) -> NonFiniteError:
    """The error for a NaN/inf at (row, col), one line saying what to do."""
    what = "NaN" if value != value else ("+inf" if value > 0 else "-inf")
    return NonFiniteError(
        f"tensor holds {what} at row {row}, column {col}: quantization needs finite weights; "
        "fix or drop this tensor (or keep it in f32)",
        row=row,
        col=col,
        value=float(value),
    )


def check_finite(x: Any, xp: Any = np, row_offset: int = 0) -> None:
    """Raise :class:`NonFiniteError` naming the row and column of the first NaN/inf in ``x``."""
    finite = xp.isfinite(x)
    if bool(finite.all()):
        return
    x2 = x.reshape(1, -1) if x.ndim == 1 else x.reshape(x.shape[0], -1)
    flat = int(xp.argmax((~finite).reshape(-1).view(xp.uint8)))  # first True; any xp
    row, col = divmod(flat, x2.shape[1])
    raise non_finite_error(row + row_offset, col, float(x2[row, col]))


def signed_absmax(xb: Any, xp: Any) -> Any:
    """Per block (the last axis of ``xb``): the signed value of largest magnitude, the first of
    equal ones, as ggml's walk keeps it; +0.0 for an all-zero block (the walk starts there)."""
    ax = xp.abs(xb)
    amax = ax.max(axis=-1)
    first = xp.argmax(ax == amax[..., None], axis=-1)
    mx = xp.take_along_axis(xb, first[..., None], axis=-1)[..., 0]
    return xp.where(amax == 0, xp.float32(0.0), mx)


def column_signed_max(xt: Any, xp: Any) -> tuple[Any, Any]:
    """Per column of position-major blocks ``xt`` (row ``i`` holds value ``i`` of every
    block): the largest magnitude and the signed value that has it, walking the values in
    order as ggml does (strictly larger only, so the first of equal magnitudes wins; a block
    of zeros gives 0 and +0.0)."""
    amax = xp.zeros(xt.shape[1], dtype=xp.float32)
    vmax = xp.zeros(xt.shape[1], dtype=xp.float32)
    for i in range(xt.shape[0]):
        ax = xp.abs(xt[i])
        take = ax > amax
        amax = xp.where(take, ax, amax)
        vmax = xp.where(take, xt[i], vmax)
    return amax, vmax


def signed_scale_codes(x: Any, qk: int, nmax: int, xp: Any) -> tuple[Any, Any]:
    """Scales and codes of the types whose block scale is the signed largest value over
    ``-nmax`` (Q4_0 and Q5_0): ``d`` per block and int32 codes ``0 .. 2 * nmax - 1`` per value,
    as ggml rounds them (``x / d + nmax + 0.5``, truncated). Raises on NaN/inf."""
    check_finite(x, xp)
    rows, cols = x.shape
    xb = x.reshape(rows, cols // qk, qk)
    d = (signed_absmax(xb, xp) / np.float32(-nmax)).astype(xp.float32)
    v = scaled_values(xb, d, xp, bias=np.float32(nmax + 0.5))
    return d, xp.minimum(v.astype(xp.int32), 2 * nmax - 1)
