"""Array code shared by Q4_K and Q5_K: superblocks of 256 values in 8 sub-blocks of 32, each
with a 6-bit scale and a 6-bit min, codes ``0..nmax`` (15 or 31) and values ``d*sc*q - dmin*m``.

Byte-identical to ggml's ``quantize_row_q{4,5}_K_ref`` and, given an importance matrix, to
``quantize_q{4,5}_K`` with ``quant_weights``. Runs with ``xp`` = numpy or cupy.

The scale searches (ggml's ``make_qkx2_quants`` / ``make_qkx3_quants`` per sub-block,
``make_qp_quants`` per superblock) are sequential float32 loops per group in C; here they run
position by position across all groups at once (arrays laid out position-major), so each
sum keeps ggml's order and rounding. ``nearest_int`` is ggml's bit-level one throughout, so
inf and NaN intermediates (scales overflowing fp16) round as they do in C.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .common import check_finite, f16_bits, f16_to_f32, nearest_int

QK = 256  # values per superblock
SUB = 32  # values per sub-block
NSUB = QK // SUB  # 8 sub-blocks, one scale and one min each
SCALE_BYTES = 12  # 8 six-bit scales and 8 six-bit mins
D_OFF = 0  # fp16 d
DMIN_OFF = 2  # fp16 dmin
SC_OFF = 4  # the 12 scale bytes
QS_AFTER_SCALES = SC_OFF + SCALE_BYTES  # 16: Q4_K codes (Q5_K: its high bits first)
#: make_qp_quants' nmax: the 6-bit range of the sub-block scales and mins.
SCALE_NMAX = 63
#: ggml's GROUP_MAX_EPS.
GROUP_MAX_EPS = np.float32(1e-15)

_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_F2 = np.float32(2.0)
_NMAX_SC = np.float32(SCALE_NMAX)

# Superblocks per slice of the array code (bounds the temporaries).
_NUMPY_CHUNK = 2048
_DEVICE_CHUNK = 1 << 16


def search_numerators(nmax: int, rmin: float, rdelta: float, nstep: int) -> np.ndarray:
    """The numerators ``rmin + rdelta*is + nmax`` of the candidate inverse scales that
    ``make_qkx{2,3}_quants`` tries (``is`` = 0..nstep), each step rounded in float32."""
    out = []
    for i in range(nstep + 1):
        v = np.float32(rmin) + np.float32(np.float32(rdelta) * np.float32(i))
        out.append(np.float32(v + np.float32(nmax)))
    return np.array(out, dtype=np.float32)


def qp_numerators() -> np.ndarray:
    """The numerators ``0.1f*is + 63`` (is = -4..4, is != 0) of ``make_qp_quants``'s search."""
    out = []
    for i in range(-4, 5):
        if i:
            out.append(np.float32(np.float32(np.float32(0.1) * np.float32(i)) + _NMAX_SC))
    return np.array(out, dtype=np.float32)


#: (nmax, rmin, rdelta, nstep) of the sub-block search: plain (make_qkx2) and weighted (qkx3).
PLAIN_SEARCH = {15: (-1.0, 0.1, 20), 31: (-0.5, 0.1, 15)}
WEIGHTED_SEARCH = (-0.9, 0.05, 36)


def _codes(inv: Any, xt_i: Any, mn: Any, nmax: int, xp: Any) -> Any:
    """``clamp(nearest_int(inv * (x - min)), 0, nmax)`` as float32."""
    q = nearest_int(inv * (xt_i - mn), xp)
    return xp.clip(q, 0, nmax).astype(xp.float32)


def qkx_search(
    xt: Any, wt: Any, nmax: int, nums: np.ndarray, strict_flat: bool, xp: Any
) -> tuple[Any, Any, Any]:
    """ggml's ``make_qkx2_quants`` (``strict_flat``: ``max == min`` means flat) or
    ``make_qkx3_quants`` (``max <= min``) on the runs of position-major ``xt`` / weights ``wt``
    ``(32, m)``. Returns each run's scale, ``the_min`` and its codes ``(32, m)`` (uint8)."""
    n = xt.shape[0]
    mn = xt[0].copy()
    mx = xt[0].copy()
    sum_w = wt[0].copy()
    sum_x = sum_w * xt[0]
    for i in range(1, n):
        v = xt[i]
        mn = xp.where(v < mn, v, mn)
        mx = xp.where(v > mx, v, mx)
        sum_w = sum_w + wt[i]
        sum_x = sum_x + wt[i] * v
    mn = xp.where(mn > _F0, _F0, mn)  # keeps a -0.0 as C does
    flat = (mx == mn) if strict_flat else (mx <= mn)
    iscale = np.float32(nmax) / xp.where(flat, _F1, mx - mn)
    scale = _F1 / iscale
    best = xp.zeros_like(mn)
    for i in range(n):
        q = _codes(iscale, xt[i], mn, nmax, xp)
        diff = (scale * q + mn) - xt[i]
        best = best + wt[i] * (diff * diff)
    # ggml moves ``min`` to each accepted candidate's, and later candidates are measured from
    # it (their inverse scale and codes use the new ``max - min``), so the search is sequential.
    the_min = mn
    codes = xp.empty(xt.shape, dtype=xp.float32)
    for i in range(n):
        codes[i] = _codes(iscale, xt[i], mn, nmax, xp)
    ql = xp.empty_like(xt)
    for num in nums:
        inv = num / xp.where(flat, _F1, mx - the_min)
        sum_l = xp.zeros_like(mn)
        sum_l2 = xp.zeros_like(mn)
        sum_xl = xp.zeros_like(mn)
        for i in range(n):
            q = _codes(inv, xt[i], the_min, nmax, xp)
            ql[i] = q
            wl = wt[i] * q
            sum_l = sum_l + wl
            sum_l2 = sum_l2 + wl * q
            sum_xl = sum_xl + wl * xt[i]
        d = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / d
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d
        pos_min = this_min > _F0
        this_min = xp.where(pos_min, _F0, this_min)
        this_scale = xp.where(pos_min, sum_xl / sum_l2, this_scale)
        err = xp.zeros_like(mn)
        for i in range(n):
            diff = (this_scale * ql[i] + this_min) - xt[i]
            err = err + wt[i] * (diff * diff)
        take = (d > _F0) & (err < best)
        best = xp.where(take, err, best)
        scale = xp.where(take, this_scale, scale)
        the_min = xp.where(take, this_min, the_min)
        codes = xp.where(take[None, :], ql, codes)
    codes = codes.astype(xp.uint8)
    codes[:, flat] = 0
    scale = xp.where(flat, _F0, scale)
    the_min = xp.where(flat, mn, the_min)
    return scale, -the_min, codes


def qp_search(x: Any, w: Any, xp: Any) -> tuple[Any, Any]:
    """ggml's ``make_qp_quants(8, 63, x, L, w)`` on many superblocks: ``x`` and ``w`` are
    ``(n, 8)``. Returns the scale of each row and its codes ``(n, 8)`` as ggml's ``uint8_t``
    stores them (int32 0..255: a negative code wraps)."""
    n, k = x.shape
    mx = xp.zeros(n, dtype=xp.float32)
    for i in range(k):
        mx = xp.where(mx > x[:, i], mx, x[:, i])  # MAX(max, x[i])
    zero = mx < GROUP_MAX_EPS
    safe = xp.where(zero, _F1, mx)
    iscale = _NMAX_SC / safe
    scale = _F1 / iscale
    best = xp.zeros(n, dtype=xp.float32)
    for i in range(k):
        q = (nearest_int(iscale * x[:, i], xp) & 0xFF).astype(xp.float32)
        diff = x[:, i] - scale * q
        best = best + (w[:, i] * diff) * diff
    for num in qp_numerators():
        inv = num / safe
        sc = _F1 / inv
        mse = xp.zeros(n, dtype=xp.float32)
        for i in range(k):
            q = xp.minimum(nearest_int(inv * x[:, i], xp), SCALE_NMAX).astype(xp.float32)
            diff = x[:, i] - sc * q
            mse = mse + (w[:, i] * diff) * diff
        take = mse < best
        best = xp.where(take, mse, best)
        iscale = xp.where(take, inv, iscale)
    codes = xp.empty((n, k), dtype=xp.int32)
    sumlx = xp.zeros(n, dtype=xp.float32)
    suml2 = xp.zeros(n, dtype=xp.float32)
    for i in range(k):
        q = xp.minimum(nearest_int(iscale * x[:, i], xp), SCALE_NMAX)
        codes[:, i] = q & 0xFF
        qf = q.astype(xp.float32)
        sumlx = sumlx + (w[:, i] * x[:, i]) * qf
        suml2 = suml2 + (w[:, i] * qf) * qf
    active = ~zero
    for _ in range(5):
        changed = xp.zeros(n, dtype=bool)
        for i in range(k):
            wi, xi = w[:, i], x[:, i]
            li = codes[:, i].astype(xp.float32)
            slx = sumlx - (wi * xi) * li
            sl2 = suml2 - (wi * li) * li
            ok = (slx > _F0) & (sl2 > _F0)
            new_l = xp.minimum(nearest_int((xi * sl2) / slx, xp), SCALE_NMAX)
            nf = new_l.astype(xp.float32)
            slx2 = slx + (wi * xi) * nf
            sl22 = sl2 + (wi * nf) * nf
            better = (slx2 * slx2) * suml2 > (sumlx * sumlx) * sl22
            take = active & ok & (new_l != codes[:, i]) & better
            codes[:, i] = xp.where(take, new_l & 0xFF, codes[:, i])
            sumlx = xp.where(take, slx2, sumlx)
            suml2 = xp.where(take, sl22, suml2)
            changed = changed | take
        active = active & changed
        if not bool(active.any()):
            break
    d = xp.where(suml2 > _F0, sumlx / xp.where(suml2 > _F0, suml2, _F1), _F0)
    d = xp.where(zero, _F0, d)
    codes = xp.where(zero[:, None], 0, codes)
    return d, codes


def pack_scales(ls: Any, lm: Any, xp: Any) -> Any:
    """The 12 scale bytes of ``(n, 8)`` scale and min codes (int, 0..255), packed as ggml
    does (6 bits each; the top 2 bits of sub-blocks 4..7 ride in bytes 0..7)."""
    n = ls.shape[0]
    out = xp.zeros((n, SCALE_BYTES), dtype=xp.int32)
    out[:, 0:4] = ls[:, 0:4]
    out[:, 4:8] = lm[:, 0:4]
    out[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    out[:, 0:4] |= (ls[:, 4:8] >> 4) << 6
    out[:, 4:8] |= (lm[:, 4:8] >> 4) << 6
    return (out & 0xFF).astype(xp.uint8)


def unpack_scales(sc: Any, xp: Any) -> tuple[Any, Any]:
    """ggml's ``get_scale_min_k4`` for all 8 sub-blocks of ``(n, 12)`` scale bytes: float32
    scales and mins ``(n, 8)``."""
    b = sc.astype(xp.int32)
    lo_s = b[:, 0:4] & 63
    lo_m = b[:, 4:8] & 63
    hi_s = (b[:, 8:12] & 0xF) | ((b[:, 0:4] >> 6) << 4)
    hi_m = (b[:, 8:12] >> 4) | ((b[:, 4:8] >> 6) << 4)
    s = xp.concatenate([lo_s, hi_s], axis=1).astype(xp.float32)
    m = xp.concatenate([lo_m, hi_m], axis=1).astype(xp.float32)
    return s, m


def _subblocks_t(blocks: Any, xp: Any) -> Any:
    """Position-major ``(32, n*8)`` view of ``(n, 256)`` superblocks."""
    return xp.ascontiguousarray(blocks.reshape(-1, SUB).T)


def _seq_sum(a: Any, xp: Any) -> Any:
    """Sum of position-major ``(k, m)`` over k, sequentially in float32."""
    total = xp.zeros(a.shape[1], dtype=xp.float32)
    for i in range(a.shape[0]):
        total = total + a[i]
    return total


def quantize_blocks(blocks: Any, nmax: int, qw_blocks: Any, xp: Any) -> tuple[Any, Any]:
    """Quantize ``(n, 256)`` superblocks (weighted by ``qw_blocks`` ``(n, 256)`` when given).

    Returns the first 16 bytes of each block (d, dmin, scales) ``(n, 16)`` and the codes
    ``(n, 256)`` (uint8, 0..nmax) in value order; the caller packs the codes.
    """
    n = blocks.shape[0]
    xt = _subblocks_t(blocks, xp)  # (32, n*8)
    if qw_blocks is None:
        rmin, rdelta, nstep = PLAIN_SEARCH[nmax]
        av_x = xp.sqrt(_seq_sum(xt * xt, xp) / np.float32(SUB))
        wt = av_x + xp.abs(xt)
        scales, mins, codes = qkx_search(
            xt, wt, nmax, search_numerators(nmax, rmin, rdelta, nstep), True, xp
        )
        scales = scales.reshape(n, NSUB)
        mins = mins.reshape(n, NSUB)
        max_scale = xp.zeros(n, dtype=xp.float32)
        max_min = xp.zeros(n, dtype=xp.float32)
        for j in range(NSUB):
            max_scale = xp.where(scales[:, j] > max_scale, scales[:, j], max_scale)
            max_min = xp.where(mins[:, j] > max_min, mins[:, j], max_min)
        inv_scale = xp.where(
            max_scale > _F0, _NMAX_SC / xp.where(max_scale > _F0, max_scale, _F1), _F0
        )
        inv_min = xp.where(max_min > _F0, _NMAX_SC / xp.where(max_min > _F0, max_min, _F1), _F0)
        ls = xp.minimum(nearest_int(inv_scale[:, None] * scales, xp) & 0xFF, SCALE_NMAX)
        lm = xp.minimum(nearest_int(inv_min[:, None] * mins, xp) & 0xFF, SCALE_NMAX)
        d_block = max_scale / _NMAX_SC
        m_block = max_min / _NMAX_SC
    else:
        xb = blocks
        sum_x2 = _seq_sum(xp.ascontiguousarray((xb * xb).T), xp)
        sigma2 = (_F2 * sum_x2) / np.float32(QK)
        w = qw_blocks * xp.sqrt(sigma2[:, None] + xb * xb)
        wt = _subblocks_t(w, xp)
        sw = _seq_sum(wt, xp).reshape(n, NSUB)
        rmin, rdelta, nstep = WEIGHTED_SEARCH
        scales, mins, codes = qkx_search(
            xt, wt, nmax, search_numerators(nmax, rmin, rdelta, nstep), False, xp
        )
        d_block, ls = qp_search(scales.reshape(n, NSUB), sw, xp)
        m_block, lm = qp_search(mins.reshape(n, NSUB), sw, xp)
        if nmax == 31:  # ggml's Q5_K clamps the codes; its Q4_K stores them as they are
            ls = xp.minimum(ls, SCALE_NMAX)
            lm = xp.minimum(lm, SCALE_NMAX)
    head = xp.empty((n, QS_AFTER_SCALES), dtype=xp.uint8)
    d_bits = f16_bits(d_block.astype(xp.float32), xp)
    m_bits = f16_bits(m_block.astype(xp.float32), xp)
    head[:, D_OFF : D_OFF + 2] = d_bits.astype("<u2").view(xp.uint8).reshape(n, 2)
    head[:, DMIN_OFF : DMIN_OFF + 2] = m_bits.astype("<u2").view(xp.uint8).reshape(n, 2)
    packed = pack_scales(ls, lm, xp)
    head[:, SC_OFF:QS_AFTER_SCALES] = packed
    sc, m = unpack_scales(packed, xp)
    dj = (f16_to_f32(d_bits, xp)[:, None] * sc).reshape(-1)  # (n*8,)
    dmj = (f16_to_f32(m_bits, xp)[:, None] * m).reshape(-1)
    req = dj != _F0
    safe = xp.where(req, dj, _F1)
    q = nearest_int((xt + dmj) / safe, xp)
    q = xp.clip(q, 0, nmax).astype(xp.uint8)
    codes = xp.where(req, q, codes)
    return head, xp.ascontiguousarray(codes.T).reshape(n, QK)


def row_quantizers(name: str, nmax: int, block_bytes: int, pack: Any) -> tuple[Any, Any]:
    """A K-quant type's ``quantize_xp(x, xp)`` and ``quantize_imatrix_xp(x, qw, xp)``: its bytes
    ``(rows, cols // 256 * block_bytes)`` of float32 ``(rows, cols)``, plain and weighted by
    importance ``qw`` (float32, one per column)."""

    def quantize_xp(x: Any, xp: Any = np) -> Any:
        return quantize_rows(x, None, xp, name, nmax, block_bytes, pack)

    def quantize_imatrix_xp(x: Any, qw: Any, xp: Any = np) -> Any:
        return quantize_rows(x, qw, xp, name, nmax, block_bytes, pack)

    quantize_xp.__doc__ = f"{name} bytes of float32 ``(rows, cols)`` with ``xp``."
    quantize_imatrix_xp.__doc__ = f"{name} bytes weighted by importance ``qw``."
    return quantize_xp, quantize_imatrix_xp


def quantize_rows(
    x: Any, qw: Any, xp: Any, name: str, nmax: int, block_bytes: int, pack: Any
) -> Any:
    """Bytes ``(rows, cols // 256 * block_bytes)`` of float32 ``(rows, cols)``; ``pack(head,
    codes, xp)`` lays out one slice of blocks."""
    from nntrtool.errors import QuantError

    if x.ndim != 2:
        raise QuantError(f"{name} quantize takes a 2-D array (rows, cols), got {x.ndim}-D")
    rows, cols = (int(s) for s in x.shape)
    if cols <= 0 or cols % QK:
        raise QuantError(
            f"{name} needs rows that are a whole number of {QK}-value blocks, got {cols} columns"
        )
    if x.dtype != xp.float32:
        raise QuantError(f"{name} quantize_xp takes float32, got {x.dtype}")
    check_finite(x, xp)
    per_row = cols // QK
    nb = rows * per_row
    blocks = xp.ascontiguousarray(x).reshape(nb, QK)
    out = xp.empty((nb, block_bytes), dtype=xp.uint8)
    qw_blocks = None if qw is None else xp.asarray(qw, dtype=xp.float32).reshape(per_row, QK)
    chunk = _NUMPY_CHUNK if xp is np else _DEVICE_CHUNK
    with np.errstate(all="ignore"):  # inf/NaN from overflowing scales are part of the format
        for start in range(0, nb, chunk):
            stop = min(nb, start + chunk)
            wb = None if qw_blocks is None else qw_blocks[xp.arange(start, stop) % per_row]
            head, codes = quantize_blocks(blocks[start:stop], nmax, wb, xp)
            out[start:stop] = pack(head, codes, xp)
    return out.reshape(rows, per_row * block_bytes)


def check_blocks(data: Any, xp: Any, name: str, block_bytes: int) -> tuple[int, int]:
    """(rows, blocks per row) of uint8 rows of whole blocks, else QuantError."""
    from nntrtool.errors import QuantError

    if data.ndim != 2 or data.dtype != xp.uint8 or data.shape[1] % block_bytes:
        raise QuantError(
            f"{name} data must be 2-D uint8 rows of whole {block_bytes}-byte blocks, "
            f"got {data.dtype} of shape {tuple(data.shape)}"
        )
    return int(data.shape[0]), int(data.shape[1]) // block_bytes


def row_dequantizer(name: str, block_bytes: int, unpack: Any) -> Any:
    """A K-quant type's ``dequantize_xp(data, xp)``: float32 ``(rows, cols)`` of its bytes, as
    ggml's dequantize_row. ``unpack(b, xp)`` gives the codes ``(n, 256)``, in value order, of
    superblocks ``b`` ``(n, block_bytes)``."""

    def dequantize_xp(data: Any, xp: Any = np) -> Any:
        rows, per_row = check_blocks(data, xp, name, block_bytes)
        b = xp.ascontiguousarray(data).reshape(rows * per_row, block_bytes)
        return dequantize_blocks(b, unpack(b, xp), xp).reshape(rows, per_row * QK)

    dequantize_xp.__doc__ = f"float32 ``(rows, cols)`` of {name} bytes, as ggml dequantizes them."
    return dequantize_xp


def dequantize_blocks(b: Any, q: Any, xp: Any) -> Any:
    """float32 ``(n, 256)`` values of superblocks ``b`` ``(n, block_bytes)`` whose codes, in
    value order, are ``q`` ``(n, 256)``: ``(d*sc)*q - dmin*m`` as ggml evaluates it."""
    n = b.shape[0]
    d = f16_to_f32(xp.ascontiguousarray(b[:, D_OFF : D_OFF + 2]).view("<u2").reshape(n), xp)
    dmin = f16_to_f32(
        xp.ascontiguousarray(b[:, DMIN_OFF : DMIN_OFF + 2]).view("<u2").reshape(n), xp
    )
    sc, m = unpack_scales(b[:, SC_OFF:QS_AFTER_SCALES], xp)
    with np.errstate(all="ignore"):
        ds = (d[:, None] * sc)[:, :, None]
        dm = (dmin[:, None] * m)[:, :, None]
        y = ds * q.reshape(n, NSUB, SUB).astype(xp.float32) - dm
    return y.reshape(n, QK)
