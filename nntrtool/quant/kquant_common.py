"""Pieces shared by the K-quants with a min (Q4_K, Q5_K): the block header and the 6-bit packed
sub-block scales and mins.

Both types start a 256-value superblock with ``d`` and ``dmin`` (fp16 each) and 12 bytes that
hold eight 6-bit scales and eight 6-bit mins: sub-blocks 0..3 keep their scale in the low six
bits of byte ``j`` and their min in byte ``j + 4``; sub-blocks 4..7 keep the low four bits of
both in byte ``j + 4`` (scale low nibble, min high nibble) and their top two bits in the top
two bits of bytes ``j - 4`` (scale) and ``j`` (min). A value is ``d * scale * q - dmin * min``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .common import f16_to_f32

QK_K = 256
SUB = 32  # values per sub-block
NSUB = QK_K // SUB  # 8 sub-blocks, one 6-bit scale and one 6-bit min each
D_OFF = 0
DMIN_OFF = 2
SCALES_OFF = 4
SCALES_BYTES = 12
HEADER_BYTES = SCALES_OFF + SCALES_BYTES  # 16


def unpack_scales(sb: Any, xp: Any = np) -> tuple[Any, Any]:
    """Scales and mins (uint8, ``(n, 8)`` each) of ``n`` blocks' 12 scale bytes ``(n, 12)``."""
    lo = sb[:, 0:4]
    mid = sb[:, 4:8]
    hi = sb[:, 8:12]
    six = xp.uint8(63)
    sc = xp.concatenate([lo & six, (hi & xp.uint8(15)) | ((lo >> xp.uint8(6)) << xp.uint8(4))], 1)
    mn = xp.concatenate([mid & six, (hi >> xp.uint8(4)) | ((mid >> xp.uint8(6)) << xp.uint8(4))], 1)
    return sc, mn


def pack_scales(ls: Any, lm: Any, xp: Any = np) -> Any:
    """The 12 scale bytes ``(n, 12)`` of 6-bit scales and mins ``(n, 8)`` (uint8, < 64)."""
    ls = ls.astype(xp.uint8)
    lm = lm.astype(xp.uint8)
    out = xp.empty((ls.shape[0], SCALES_BYTES), dtype=xp.uint8)
    two = xp.uint8(6)
    out[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> xp.uint8(4)) << two)
    out[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> xp.uint8(4)) << two)
    out[:, 8:12] = (ls[:, 4:] & xp.uint8(15)) | ((lm[:, 4:] & xp.uint8(15)) << xp.uint8(4))
    return out


def block_scales(blocks: Any, xp: Any = np) -> tuple[Any, Any]:
    """Per sub-block ``d * scale`` and ``dmin * min`` (float32 ``(n, 8)``), as ggml forms them."""
    n = blocks.shape[0]
    d = f16_to_f32(xp.ascontiguousarray(blocks[:, D_OFF:DMIN_OFF]).view("<u2").reshape(n), xp)
    dmin = f16_to_f32(
        xp.ascontiguousarray(blocks[:, DMIN_OFF:SCALES_OFF]).view("<u2").reshape(n), xp
    )
    sc, mn = unpack_scales(blocks[:, SCALES_OFF:HEADER_BYTES], xp)
    with np.errstate(all="ignore"):  # an inf d times scale 0 is NaN, as in C
        return d[:, None] * sc.astype(xp.float32), dmin[:, None] * mn.astype(xp.float32)


_F0 = np.float32(0.0)
_F1 = np.float32(1.0)


def candidate_numerators(nmax: int, rmin: float, rdelta: float, nstep: int) -> np.ndarray:
    """The numerators ``rmin + rdelta*is + nmax`` (is = 0..nstep, float32 as C evaluates them)
    of the inverse scales ggml's ``make_qkx2_quants`` / ``make_qkx3_quants`` try."""
    r, dlt, top = np.float32(rmin), np.float32(rdelta), np.float32(nmax)
    return np.array([(r + dlt * np.float32(i)) + top for i in range(nstep + 1)], np.float32)


def nearest_code(v: Any, nmax: int, xp: Any = np) -> Any:
    """``MAX(0, MIN(nmax, nearest_int(v)))`` as float32 codes (bit-level nearest_int, so
    inf and NaN give what ggml's C gives)."""
    t = (v + np.float32(12582912.0)).astype(xp.float32)
    q = (t.view(xp.int32) & xp.int32(0x7FFFFF)) - xp.int32(0x400000)
    return xp.clip(q, 0, nmax).astype(xp.float32)


def qkx_search(xt: Any, w: Any, nmax: int, nums: np.ndarray, xp: Any = np) -> tuple[Any, Any, Any]:
    """ggml's ``make_qkx2_quants`` / ``make_qkx3_quants`` (squared error, no MAD) on many
    sub-blocks at once.

    ``xt`` and ``w`` are position-major ``(n, m)`` float32: row i holds value i of each of the
    m sub-blocks, so every step of ggml's sequential sums is one vector operation. Returns
    the scale, ``the_min`` (= -min, the value subtracted) and the float32 codes ``(n, m)``.
    A flat sub-block (max == min) gets scale 0 and codes 0.
    """
    n, m = xt.shape
    mn = xt[0].copy()
    mx = xt[0].copy()
    sum_w = w[0].copy()
    sum_x = sum_w * xt[0]
    for i in range(1, n):
        v = xt[i]
        mn = xp.where(v < mn, v, mn)
        mx = xp.where(v > mx, v, mx)
        sum_w = sum_w + w[i]
        sum_x = sum_x + w[i] * v
    mn = xp.where(mn > _F0, _F0, mn)
    flat = ~(mx > mn)  # max == min (max <= min) for finite values
    nmax_f = np.float32(nmax)
    iscale = nmax_f / (mx - mn)
    scale = _F1 / iscale
    codes = xp.empty((n, m), dtype=xp.float32)
    best = xp.zeros(m, dtype=xp.float32)
    for i in range(n):
        q = nearest_code(iscale * (xt[i] - mn), nmax, xp)
        codes[i] = q
        diff = (scale * q + mn) - xt[i]
        best = best + w[i] * (diff * diff)
    aux = xp.empty((n, m), dtype=xp.float32)
    for num in nums:
        isc = num / (mx - mn)  # C updates min when it takes a candidate: later ones use it
        sum_l = xp.zeros(m, dtype=xp.float32)
        sum_l2 = xp.zeros(m, dtype=xp.float32)
        sum_xl = xp.zeros(m, dtype=xp.float32)
        for i in range(n):
            q = nearest_code(isc * (xt[i] - mn), nmax, xp)
            aux[i] = q
            wl = w[i] * q
            sum_l = sum_l + wl
            sum_l2 = sum_l2 + wl * q
            sum_xl = sum_xl + wl * xt[i]
        dd = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / dd
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / dd
        pos = this_min > _F0
        this_min = xp.where(pos, _F0, this_min)
        this_scale = xp.where(pos, sum_xl / sum_l2, this_scale)
        err = xp.zeros(m, dtype=xp.float32)
        for i in range(n):
            diff = (this_scale * aux[i] + this_min) - xt[i]
            err = err + w[i] * (diff * diff)
        take = (dd > _F0) & (err < best)
        best = xp.where(take, err, best)
        scale = xp.where(take, this_scale, scale)
        mn = xp.where(take, this_min, mn)
        codes = xp.where(take[None, :], aux, codes)
    scale = xp.where(flat, _F0, scale)
    codes = xp.where(flat[None, :], _F0, codes)
    return scale, -mn, codes


def nearest_int_xp(v: Any, xp: Any = np) -> Any:
    """ggml's ``nearest_int`` (int32), bit-level."""
    t = (v + np.float32(12582912.0)).astype(xp.float32)
    return (t.view(xp.int32) & xp.int32(0x7FFFFF)) - xp.int32(0x400000)


def qp_search(x: Any, w: Any, nmax: int, xp: Any = np) -> tuple[Any, Any]:
    """ggml's ``make_qp_quants`` on many runs at once: ``x`` and ``w`` are ``(k, n)`` float32
    (n runs of k values; here the 8 sub-block scales or mins of each superblock and the sums
    of their weights). Returns the float32 scale (n,) and the codes as C's uint8 ``L`` holds
    them (int32 0..255, ``(k, n)``)."""
    k, n = x.shape
    nmax_f = np.float32(nmax)
    mx = xp.zeros(n, dtype=xp.float32)
    for i in range(k):
        mx = xp.where(mx > x[i], mx, x[i])
    zero = mx < np.float32(1e-15)
    mx = xp.where(zero, _F1, mx)  # keeps the search finite; masked below
    iscale = nmax_f / mx
    codes = nearest_int_xp(iscale * x, xp) & 0xFF
    scale = _F1 / iscale
    best = xp.zeros(n, dtype=xp.float32)
    for i in range(k):
        diff = x[i] - scale * codes[i].astype(xp.float32)
        best = best + (w[i] * diff) * diff
    for step in (-4, -3, -2, -1, 1, 2, 3, 4):
        isc = (np.float32(0.1) * np.float32(step) + nmax_f) / mx
        sc = _F1 / isc
        mse = xp.zeros(n, dtype=xp.float32)
        for i in range(k):
            lf = xp.minimum(nearest_int_xp(isc * x[i], xp), nmax).astype(xp.float32)
            diff = x[i] - sc * lf
            mse = mse + (w[i] * diff) * diff
        take = mse < best
        best = xp.where(take, mse, best)
        iscale = xp.where(take, isc, iscale)
    sumlx = xp.zeros(n, dtype=xp.float32)
    suml2 = xp.zeros(n, dtype=xp.float32)
    for i in range(k):
        li = xp.minimum(nearest_int_xp(iscale * x[i], xp), nmax)
        codes[i] = li & 0xFF
        lf = li.astype(xp.float32)
        sumlx = sumlx + (w[i] * x[i]) * lf
        suml2 = suml2 + (w[i] * lf) * lf
    for _ in range(5):
        for i in range(k):
            cur = codes[i].astype(xp.float32)
            wx = w[i] * x[i]
            slx = sumlx - wx * cur
            sl2 = suml2 - (w[i] * cur) * cur
            ok = (slx > _F0) & (sl2 > _F0)
            new_l = xp.minimum(nearest_int_xp((x[i] * sl2) / xp.where(ok, slx, _F1), xp), nmax)
            nf = new_l.astype(xp.float32)
            ok = ok & (new_l != codes[i])
            slx2 = slx + wx * nf
            sl22 = sl2 + (w[i] * nf) * nf
            ok = ok & ((slx2 * slx2) * suml2 > (sumlx * sumlx) * sl22)
            codes[i] = xp.where(ok, new_l & 0xFF, codes[i])
            sumlx = xp.where(ok, slx2, sumlx)
            suml2 = xp.where(ok, sl22, suml2)
    scale = xp.where(suml2 > _F0, sumlx / xp.where(suml2 > _F0, suml2, _F1), _F0)
    scale = xp.where(zero, _F0, scale)
    codes = xp.where(zero[None, :], 0, codes)
    return scale, codes
