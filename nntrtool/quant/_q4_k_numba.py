"""The numba Q4_K kernels: the same bytes as ``q4_k.quantize_xp`` / ``quantize_imatrix_xp`` (and
ggml's), on every core. Imported on first use only.

One superblock at a time, its 256 values transposed into a 32 x 8 position-major tile: each
step of ggml's sequential per-run loops is then an 8-lane loop over the independent runs,
which LLVM turns into SIMD code without reordering any single sum (``fastmath`` stays off, so
nothing is fused or reassociated). Branches of the C code become per-lane selects, and
``nearest_int`` is the bit-level one, so inf and NaN take the same path as in C.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nntrtool.errors import QuantError
from nntrtool.qtypes import Q4_K

from . import _numba_common as nc
from ._gguf_numba import dequantize as _gguf_dequantize
from ._numba_common import njit
from .common import SRC_BF16, SRC_F16, SRC_F32, SRC_NAMES
from .kquant_common import NSUB, SCALES_OFF, SUB
from .q4_k import BLOCK_BYTES, IMATRIX_NUMS, NMAX, PLAIN_NUMS, QK, QS_OFF

_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_F2 = np.float32(2.0)
_F63 = np.float32(63.0)
_FSUB = np.float32(SUB)
_FQK = np.float32(QK)
_FNMAX = np.float32(NMAX)
_BIAS = np.float32(12582912.0)
_EPS = np.float32(1e-15)
_NPLAIN = len(PLAIN_NUMS)
_NIMAT = len(IMATRIX_NUMS)
_CHUNK = 8  # superblocks per parallel work item

# Offsets into one flat float32 scratch per work item (constant offsets let LLVM see that the
# tiles never overlap).
_XT = 0  # (32 positions, 8 runs)
_W = _XT + QK
_L = _W + QK  # codes of the best candidate so far
_LA = _L + QK  # codes of the current candidate
_MN = _LA + QK  # per run from here on
_MX = _MN + NSUB
_SW = _MX + NSUB
_SX = _SW + NSUB
_SCALE = _SX + NSUB
_BEST = _SCALE + NSUB
_ISC = _BEST + NSUB
_SL = _ISC + NSUB
_SL2 = _SL + NSUB
_SXL = _SL2 + NSUB
_ERR = _SXL + NSUB
_TS = _ERR + NSUB
_TM = _TS + NSUB
_TAKE = _TM + NSUB
_DD = _TAKE + NSUB
_DM = _DD + NSUB
_FLAT = _DM + NSUB  # runs whose max <= min before the search: scale 0, codes 0
_AUX = _FLAT + NSUB  # 8 floats for the superblock step
_SCRATCH = _AUX + 4 * NSUB


@nc.register_jitable
def _code(v):
    """``MAX(0, MIN(15, nearest_int(v)))`` as float32, bit-level like ggml."""
    q = np.int32(nc.f32_bits(v + _BIAS) & np.uint32(0x7FFFFF)) - np.int32(0x400000)
    q = q if q > 0 else np.int32(0)
    q = q if q < NMAX else np.int32(NMAX)
    return np.float32(q)


@nc.register_jitable
def _nearest(v):
    return np.int32(nc.f32_bits(v + _BIAS) & np.uint32(0x7FFFFF)) - np.int32(0x400000)


@nc.register_jitable
def _search(s, nums, ncand, strict):
    """make_qkx2_quants / make_qkx3_quants on the 8 runs of the tile in ``s``: leaves each
    run's scale in _SCALE, -min in _MN and codes in _L."""
    for j in range(NSUB):
        v = s[_XT + j]
        s[_MN + j] = v
        s[_MX + j] = v
        w = s[_W + j]
        s[_SW + j] = w
        s[_SX + j] = w * v
    for i in range(1, SUB):
        for j in range(NSUB):
            v = s[_XT + NSUB * i + j]
            w = s[_W + NSUB * i + j]
            s[_MN + j] = v if v < s[_MN + j] else s[_MN + j]
            s[_MX + j] = v if v > s[_MX + j] else s[_MX + j]
            s[_SW + j] = s[_SW + j] + w
            s[_SX + j] = s[_SX + j] + w * v
    for j in range(NSUB):
        mn = s[_MN + j]
        mn = _F0 if mn > _F0 else mn
        s[_MN + j] = mn
        # max == min (qkx2) / max <= min (qkx3), the same for finite values; judged on the
        # min before the search (which may move it).
        flat = not (s[_MX + j] > mn) if strict else s[_MX + j] == mn
        s[_FLAT + j] = _F1 if flat else _F0
        isc = _FNMAX / (s[_MX + j] - s[_MN + j])
        s[_ISC + j] = isc
        s[_SCALE + j] = _F1 / isc
        s[_BEST + j] = _F0
    for i in range(SUB):
        for j in range(NSUB):
            v = s[_XT + NSUB * i + j]
            q = _code(s[_ISC + j] * (v - s[_MN + j]))
            s[_L + NSUB * i + j] = q
            diff = (s[_SCALE + j] * q + s[_MN + j]) - v
            s[_BEST + j] = s[_BEST + j] + s[_W + NSUB * i + j] * (diff * diff)
    for c in range(ncand):
        num = nums[c]
        for j in range(NSUB):
            s[_ISC + j] = num / (s[_MX + j] - s[_MN + j])
            s[_SL + j] = _F0
            s[_SL2 + j] = _F0
            s[_SXL + j] = _F0
            s[_ERR + j] = _F0
        for i in range(SUB):
            for j in range(NSUB):
                v = s[_XT + NSUB * i + j]
                q = _code(s[_ISC + j] * (v - s[_MN + j]))
                s[_LA + NSUB * i + j] = q
                wl = s[_W + NSUB * i + j] * q
                s[_SL + j] = s[_SL + j] + wl
                s[_SL2 + j] = s[_SL2 + j] + wl * q
                s[_SXL + j] = s[_SXL + j] + wl * v
        for j in range(NSUB):
            sw = s[_SW + j]
            sl = s[_SL + j]
            sl2 = s[_SL2 + j]
            sxl = s[_SXL + j]
            dd = sw * sl2 - sl * sl
            ts = (sw * sxl - s[_SX + j] * sl) / dd
            tm = (sl2 * s[_SX + j] - sl * sxl) / dd
            pos = tm > _F0
            s[_TM + j] = _F0 if pos else tm
            s[_TS + j] = sxl / sl2 if pos else ts
            s[_TAKE + j] = _F1 if dd > _F0 else _F0
        for i in range(SUB):
            for j in range(NSUB):
                diff = (s[_TS + j] * s[_LA + NSUB * i + j] + s[_TM + j]) - s[_XT + NSUB * i + j]
                s[_ERR + j] = s[_ERR + j] + s[_W + NSUB * i + j] * (diff * diff)
        for j in range(NSUB):
            take = s[_TAKE + j] != _F0 and s[_ERR + j] < s[_BEST + j]
            s[_TAKE + j] = _F1 if take else _F0
            s[_BEST + j] = s[_ERR + j] if take else s[_BEST + j]
            s[_SCALE + j] = s[_TS + j] if take else s[_SCALE + j]
            s[_MN + j] = s[_TM + j] if take else s[_MN + j]
        for i in range(SUB):
            for j in range(NSUB):
                k = NSUB * i + j
                s[_L + k] = s[_LA + k] if s[_TAKE + j] != _F0 else s[_L + k]
    for j in range(NSUB):
        s[_SCALE + j] = _F0 if s[_FLAT + j] != _F0 else s[_SCALE + j]
        s[_MN + j] = -s[_MN + j]
    for i in range(SUB):
        for j in range(NSUB):
            k = NSUB * i + j
            s[_L + k] = _F0 if s[_FLAT + j] != _F0 else s[_L + k]


@nc.register_jitable
def _qp(vals, ws, nmax, out_l):
    """ggml's make_qp_quants on 8 values ``vals`` weighted by ``ws``: the scale, and the codes
    (as C's uint8 holds them) in ``out_l`` (int32)."""
    n = NSUB
    fn = np.float32(nmax)
    mx = _F0
    for i in range(n):
        mx = mx if mx > vals[i] else vals[i]
    if mx < _EPS:
        for i in range(n):
            out_l[i] = 0
        return _F0
    iscale = fn / mx
    for i in range(n):
        out_l[i] = _nearest(iscale * vals[i]) & 0xFF
    scale = _F1 / iscale
    best = _F0
    for i in range(n):
        diff = vals[i] - scale * np.float32(out_l[i])
        best = best + (ws[i] * diff) * diff
    for step in range(-4, 5):
        if step == 0:
            continue
        isc = (np.float32(0.1) * np.float32(step) + fn) / mx
        sc = _F1 / isc
        mse = _F0
        for i in range(n):
            lv = min(nmax, _nearest(isc * vals[i]))
            diff = vals[i] - sc * np.float32(lv)
            mse = mse + (ws[i] * diff) * diff
        if mse < best:
            best = mse
            iscale = isc
    sumlx = _F0
    suml2 = _F0
    for i in range(n):
        lv = min(nmax, _nearest(iscale * vals[i]))
        out_l[i] = lv & 0xFF
        lf = np.float32(lv)
        sumlx = sumlx + (ws[i] * vals[i]) * lf
        suml2 = suml2 + (ws[i] * lf) * lf
    for _ in range(5):
        changed = 0
        for i in range(n):
            w = ws[i]
            cur = np.float32(out_l[i])
            slx = sumlx - (w * vals[i]) * cur
            sl2 = suml2 - (w * cur) * cur
            if slx > _F0 and sl2 > _F0:
                new_l = min(nmax, _nearest((vals[i] * sl2) / slx))
                if new_l != out_l[i]:
                    nf = np.float32(new_l)
                    slx = slx + (w * vals[i]) * nf
                    sl2 = sl2 + (w * nf) * nf
                    if (slx * slx) * suml2 > (sumlx * sumlx) * sl2:
                        out_l[i] = new_l & 0xFF
                        sumlx = slx
                        suml2 = sl2
                        changed += 1
        if changed == 0:
            break
    return sumlx / suml2 if suml2 > _F0 else _F0


@nc.register_jitable
def _superblock(x, r, c0, src_kind, qw, dst, o, s, ls, lm):
    """Quantize x[r, c0:c0+256] into dst[o:o+144]; False if a value is not finite."""
    src = x[r, c0 : c0 + QK]
    chk = _F0
    total = _F0
    for k in range(QK):
        v = nc.load_f32(src, k, src_kind)
        chk = chk + (v - v)  # stays 0 unless some v is inf or NaN
        total = total + v * v  # sigma2 of the importance path, summed in index order
        s[_XT + NSUB * (k % SUB) + k // SUB] = v
    if chk != _F0:
        return False
    imatrix = qw.size > 0
    if imatrix:
        sigma2 = (_F2 * total) / _FQK
        for i in range(SUB):
            for j in range(NSUB):
                k = NSUB * i + j
                v = s[_XT + k]
                s[_W + k] = qw[c0 + SUB * j + i] * np.float32(np.sqrt(sigma2 + v * v))
        _search(s, IMATRIX_NUMS, _NIMAT, True)
        for j in range(NSUB):
            s[_AUX + j] = _F0
        for i in range(SUB):
            for j in range(NSUB):
                s[_AUX + j] = s[_AUX + j] + s[_W + NSUB * i + j]
        sc_v = s[_SCALE : _SCALE + NSUB]
        mn_v = s[_MN : _MN + NSUB]
        sw_v = s[_AUX : _AUX + NSUB]
        d_block = _qp(sc_v, sw_v, 63, ls)
        m_block = _qp(mn_v, sw_v, 63, lm)
    else:
        for j in range(NSUB):
            s[_AUX + j] = _F0
        for i in range(SUB):
            for j in range(NSUB):
                v = s[_XT + NSUB * i + j]
                s[_AUX + j] = s[_AUX + j] + v * v
        for j in range(NSUB):
            s[_AUX + j] = np.float32(np.sqrt(s[_AUX + j] / _FSUB))
        for i in range(SUB):
            for j in range(NSUB):
                k = NSUB * i + j
                s[_W + k] = s[_AUX + j] + abs(s[_XT + k])
        _search(s, PLAIN_NUMS, _NPLAIN, False)
        max_scale = _F0
        max_min = _F0
        for j in range(NSUB):
            if s[_SCALE + j] > max_scale:
                max_scale = s[_SCALE + j]
            if s[_MN + j] > max_min:
                max_min = s[_MN + j]
        inv_scale = _F63 / max_scale if max_scale > _F0 else _F0
        inv_min = _F63 / max_min if max_min > _F0 else _F0
        for j in range(NSUB):
            ls[j] = min(63, _nearest(inv_scale * s[_SCALE + j]) & 0xFF)
            lm[j] = min(63, _nearest(inv_min * s[_MN + j]) & 0xFF)
        d_block = max_scale / _F63
        m_block = max_min / _F63
    d_bits = nc.f32_to_f16_bits(d_block)
    dmin_bits = nc.f32_to_f16_bits(m_block)
    nc.store_f16_bits(dst, o, d_bits)
    nc.store_f16_bits(dst, o + 2, dmin_bits)
    sb = o + SCALES_OFF
    for j in range(4):
        dst[sb + j] = np.uint8(ls[j] & 0xFF)
        dst[sb + j + 4] = np.uint8(lm[j] & 0xFF)
    for j in range(4, NSUB):
        dst[sb + j + 4] = np.uint8(((ls[j] & 0xF) | ((lm[j] & 0xF) << 4)) & 0xFF)
        dst[sb + j - 4] = np.uint8((dst[sb + j - 4] | ((ls[j] >> 4) << 6)) & 0xFF)
        dst[sb + j] = np.uint8((dst[sb + j] | ((lm[j] >> 4) << 6)) & 0xFF)
    d = nc.f16_bits_to_f32(d_bits)
    dmin = nc.f16_bits_to_f32(dmin_bits)
    for j in range(NSUB):
        if j < 4:
            sc = np.int32(dst[sb + j]) & 63
            mv = np.int32(dst[sb + j + 4]) & 63
        else:
            sc = (np.int32(dst[sb + j + 4]) & 0xF) | ((np.int32(dst[sb + j - 4]) >> 6) << 4)
            mv = (np.int32(dst[sb + j + 4]) >> 4) | ((np.int32(dst[sb + j]) >> 6) << 4)
        s[_DD + j] = d * np.float32(sc)
        s[_DM + j] = dmin * np.float32(mv)
        s[_TAKE + j] = _F1 if s[_DD + j] != _F0 else _F0  # `if (!d) continue`; NaN is true
        s[_DD + j] = s[_DD + j] if s[_DD + j] != _F0 else _F1
    for i in range(SUB):
        for j in range(NSUB):
            k = NSUB * i + j
            q = _code((s[_XT + k] + s[_DM + j]) / s[_DD + j])
            s[_L + k] = q if s[_TAKE + j] != _F0 else s[_L + k]
    for g in range(4):
        for li in range(SUB):
            lo = np.int32(s[_L + NSUB * li + 2 * g])
            hi = np.int32(s[_L + NSUB * li + 2 * g + 1])
            dst[o + QS_OFF + SUB * g + li] = np.uint8(lo | (hi << 4))
    return True


@njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def _quantize_kernel(x, src_kind, qw, out, bad):
    rows, cols = x.shape
    per_row = cols // QK
    total = rows * per_row
    nchunks = (total + _CHUNK - 1) // _CHUNK
    for t in nc.prange(nchunks):
        s = np.empty(_SCRATCH, dtype=np.float32)
        ls = np.empty(NSUB, dtype=np.int32)
        lm = np.empty(NSUB, dtype=np.int32)
        for k in range(t * _CHUNK, min(total, (t + 1) * _CHUNK)):
            r = k // per_row
            b = k - r * per_row
            if not _superblock(x, r, b * QK, src_kind, qw, out[r], b * BLOCK_BYTES, s, ls, lm):
                bad[r] = b * QK  # chunks may race here; any value >= 0 marks the row


_NO_WEIGHTS = np.empty(0, dtype=np.float32)
_DTYPE_OF_KIND = {SRC_F32: np.float32, SRC_F16: np.uint16, SRC_BF16: np.uint16}
_STRIDED_SLICE_BYTES = 16 << 20


def quantize(x: Any, src_kind: int, qw: np.ndarray | None = None) -> np.ndarray:
    """Q4_K bytes ``(rows, cols // 256 * 144)`` of ``x`` (float32, or uint16 fp16/bf16 bits
    per ``src_kind``), weighted by importance ``qw`` (float32, one per column) when given."""
    x = np.asarray(x)
    if src_kind not in _DTYPE_OF_KIND:
        raise QuantError(f"q4_k: unknown source kind {src_kind}")
    if x.dtype == np.float16 and src_kind == SRC_F16:
        x = x.view(np.uint16)
    want = np.dtype(_DTYPE_OF_KIND[src_kind])
    if x.dtype != want:
        raise QuantError(
            f"q4_k: {SRC_NAMES[src_kind]} source data must be {want.name}, got {x.dtype}"
        )
    if x.ndim != 2:
        raise QuantError(f"q4_k quantize takes a 2-D array (rows, cols), got {x.ndim}-D")
    rows, cols = x.shape
    if cols <= 0 or cols % QK:
        raise QuantError(
            f"q4_k needs rows that are a whole number of {QK}-value blocks, got {cols} columns"
        )
    if qw is not None and np.size(qw) != cols:
        raise QuantError(f"q4_k: {np.size(qw)} importance values for {cols} columns")
    weights = _NO_WEIGHTS if qw is None else np.ascontiguousarray(qw, dtype=np.float32)

    def kernel(x, src_kind, out, bad):
        _quantize_kernel(x, src_kind, weights, out, bad)

    if x.flags.c_contiguous:
        return nc.run_quantize(kernel, Q4_K, x, src_kind)
    out = np.empty((rows, Q4_K.row_bytes(cols)), dtype=np.uint8)
    step = max(1, _STRIDED_SLICE_BYTES // (cols * x.itemsize))
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        part = np.ascontiguousarray(x[r0:r1])
        nc.run_quantize(kernel, Q4_K, part, src_kind, out=out[r0:r1], row_offset=r0)
    return out


def dequantize(data: Any) -> np.ndarray:
    """float32 ``(rows, cols)`` of Q4_K bytes, bit-identical to ggml's ``dequantize_row_q4_K``."""
    data = np.asarray(data)
    if data.ndim != 2 or data.dtype != np.uint8 or data.shape[1] % BLOCK_BYTES:
        raise QuantError(
            f"q4_k data must be 2-D uint8 rows of whole {BLOCK_BYTES}-byte blocks, "
            f"got {data.dtype} of shape {data.shape}"
        )
    return _gguf_dequantize(np.ascontiguousarray(data), "Q4_K")
