"""numba code shared by the Q4_K, Q5_K and Q5_1 kernels: ggml's ``make_qkx2_quants`` /
``make_qkx3_quants`` search on 64 runs of 32 values at once, and ``make_qp_quants``.

The 64 runs sit in a position-major tile (``s[XT + 64*i + lane]`` is value i of run
``lane``), so each step of ggml's sequential per-run loops is one 64-lane loop that LLVM turns
into SIMD code without reordering any single sum (``fastmath`` stays off; a loop much shorter
than 64 would be unrolled into scalar code before the vectorizer sees it). For the K-quants
the 64 runs are the 8 sub-blocks of 8 superblocks; ggml's candidates must be tried in order
(an accepted one moves the min the next is measured from), so superblocks side by side are
what keeps the vector units busy. The candidates round with float arithmetic, which equals
ggml's bit-level ``nearest_int`` while ``|v| <= 2^22 - 1``; each candidate bounds its ``|v|``
per run, and a tile where a bound is beyond that (or NaN) is searched again with the
bit-level rounding. The chosen candidate's codes are recomputed once at the end. Imported on first use only.
"""

from __future__ import annotations

import numpy as np
from numba.extending import register_jitable

from . import _numba_common as nc
from .kquants import (
    GROUP_MAX_EPS,
    PLAIN_SEARCH,
    SCALE_NMAX,
    SUB,
    WEIGHTED_SEARCH,
    qp_numerators,
    search_numerators,
)

LANES = 64  # runs searched side by side
SB_PER_TILE = LANES // 8  # superblocks per tile
_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
_TWO = np.float32(2.0)
_BIAS = np.float32(12582912.0)
_MASK = np.uint32(0x7FFFFF)
_OFFSET = np.int32(0x400000)
_EPS = GROUP_MAX_EPS
_SC_NMAX = np.float32(SCALE_NMAX)

#: Candidate numerators of the sub-block search, by (nmax, weighted).
NUMS_Q4_PLAIN = search_numerators(15, *PLAIN_SEARCH[15])
NUMS_Q5_PLAIN = search_numerators(31, *PLAIN_SEARCH[31])
NUMS_Q4_WEIGHTED = search_numerators(15, *WEIGHTED_SEARCH)
NUMS_Q5_WEIGHTED = search_numerators(31, *WEIGHTED_SEARCH)
QP_NUMS = qp_numerators()

# Offsets into one flat float32 scratch (constant offsets let LLVM see that the tiles never
# overlap, which it needs to vectorize the lane loops).
XT = 0  # (32 positions, LANES lanes) values
W = XT + SUB * LANES  # weights
QL = W + SUB * LANES  # codes of the candidate being tried
CODES = QL + SUB * LANES  # codes of the best candidate so far, then the final codes
MN = CODES + SUB * LANES  # per lane from here on
MX = MN + LANES
SUMW = MX + LANES
SUMX = SUMW + LANES
CUR = SUMX + LANES  # ggml's `min` as the search moves it
FLAT = CUR + LANES
RNG = FLAT + LANES
INV = RNG + LANES
SCALE = INV + LANES
BEST = SCALE + LANES
SL = BEST + LANES
SL2 = SL + LANES
SXL = SL2 + LANES
TS = SXL + LANES
TM = TS + LANES
TAKE = TM + LANES
ERR = TAKE + LANES
MINS = ERR + LANES  # ggml's *the_min of each run
BAD = MINS + LANES  # lanes the float rounding of the search may have got wrong
LOW = BAD + LANES  # each run's smallest value (before ggml clamps its min to 0)
BINV = LOW + LANES  # inverse scale and min of the chosen candidate
BCUR = BINV + LANES
BESTC = BCUR + LANES  # 1 where a candidate beat the first guess
DJ = BESTC + LANES
DMJ = DJ + LANES
SCRATCH = DMJ + LANES


@register_jitable
def nearest_code(v, nmax):
    """``clamp(nearest_int(v), 0, nmax)`` as float32, with ggml's bit-level nearest_int."""
    t = v + _BIAS
    q = np.int32(nc.f32_bits(t) & _MASK) - _OFFSET
    q = q if q > 0 else np.int32(0)
    q = q if q < nmax else np.int32(nmax)
    return np.float32(q)


_EXACT_LIMIT = np.float32(4194303.0)


@register_jitable
def fast_code(v, nmax):
    """:func:`nearest_code` as float arithmetic: the same for ``|v| <= 2^22 - 1``, which the
    search checks (see :func:`qkx_search`)."""
    t = (v + _BIAS) - _BIAS
    t = t if t > _ZERO else _ZERO
    fnmax = np.float32(nmax)
    return t if t < fnmax else fnmax


def _make_qkx_search(code, check):
    @register_jitable
    def qkx_search(s, nmax, nums, strict_flat):
        """ggml's make_qkx2_quants (``strict_flat``) / make_qkx3_quants on the 64 runs of the tile
        in ``s`` (values at XT, weights at W). Leaves each run's scale at SCALE, its ``*the_min`` at
        MINS, its codes at CODES and its weight sum at SUMW."""
        for j in range(LANES):
            v = s[XT + j]
            s[MN + j] = v
            s[MX + j] = v
            w = s[W + j]
            s[SUMW + j] = w
            s[SUMX + j] = w * v
        for i in range(1, SUB):
            for j in range(LANES):
                v = s[XT + LANES * i + j]
                w = s[W + LANES * i + j]
                s[MN + j] = v if v < s[MN + j] else s[MN + j]
                s[MX + j] = v if v > s[MX + j] else s[MX + j]
                s[SUMW + j] = s[SUMW + j] + w
                s[SUMX + j] = s[SUMX + j] + w * v
        fnmax = np.float32(nmax)
        for j in range(LANES):
            mn = s[MN + j]
            s[LOW + j] = mn
            mn = _ZERO if mn > _ZERO else mn
            s[MN + j] = mn
            s[CUR + j] = mn
            mx = s[MX + j]
            flat = (mx == mn) if strict_flat else (mx <= mn)
            s[FLAT + j] = _ONE if flat else _ZERO
            rng = _ONE if flat else mx - mn
            s[RNG + j] = rng
            inv = fnmax / rng
            s[INV + j] = inv
            s[SCALE + j] = _ONE / inv
            s[BEST + j] = _ZERO
            s[BAD + j] = _ZERO
            s[BESTC + j] = _ZERO
        for i in range(SUB):
            for j in range(LANES):
                x = s[XT + LANES * i + j]
                q = nearest_code(s[INV + j] * (x - s[MN + j]), nmax)
                s[CODES + LANES * i + j] = q
                diff = (s[SCALE + j] * q + s[MN + j]) - x
                s[BEST + j] = s[BEST + j] + s[W + LANES * i + j] * (diff * diff)
        for c in range(nums.size):
            num = nums[c]
            for j in range(LANES):
                rng = s[MX + j] - s[CUR + j]
                flat = s[FLAT + j] != _ZERO
                rng = _ONE if flat else rng
                inv = num / rng
                s[INV + j] = inv
                if check:
                    # Every |inv * (x - min)| of the run is at most this (rounding is
                    # monotonic), so one test per run covers its 32 values; NaN fails it.
                    a = abs(s[MX + j] - s[CUR + j])
                    b = abs(s[LOW + j] - s[CUR + j])
                    bound = abs(inv) * (a if a > b else b)
                    ok = bound <= _EXACT_LIMIT or flat
                    s[BAD + j] = s[BAD + j] if ok else _ONE
                s[SL + j] = _ZERO
                s[SL2 + j] = _ZERO
                s[SXL + j] = _ZERO
                s[ERR + j] = _ZERO
            for i in range(SUB):
                for j in range(LANES):
                    x = s[XT + LANES * i + j]
                    q = code(s[INV + j] * (x - s[CUR + j]), nmax)
                    s[QL + LANES * i + j] = q
                    wl = s[W + LANES * i + j] * q
                    s[SL + j] = s[SL + j] + wl
                    s[SL2 + j] = s[SL2 + j] + wl * q
                    s[SXL + j] = s[SXL + j] + wl * x
            for j in range(LANES):
                sw = s[SUMW + j]
                sx = s[SUMX + j]
                sl = s[SL + j]
                sl2 = s[SL2 + j]
                sxl = s[SXL + j]
                d = sw * sl2 - sl * sl
                ts = (sw * sxl - sx * sl) / d
                tm = (sl2 * sx - sl * sxl) / d
                pos = tm > _ZERO
                s[TM + j] = _ZERO if pos else tm
                s[TS + j] = sxl / sl2 if pos else ts
                s[TAKE + j] = _ONE if d > _ZERO else _ZERO
            for i in range(SUB):
                for j in range(LANES):
                    diff = (s[TS + j] * s[QL + LANES * i + j] + s[TM + j]) - s[XT + LANES * i + j]
                    s[ERR + j] = s[ERR + j] + s[W + LANES * i + j] * (diff * diff)
            for j in range(LANES):
                take = s[TAKE + j] != _ZERO and s[ERR + j] < s[BEST + j]
                s[TAKE + j] = _ONE if take else _ZERO
                s[BEST + j] = s[ERR + j] if take else s[BEST + j]
                s[SCALE + j] = s[TS + j] if take else s[SCALE + j]
                s[BINV + j] = s[INV + j] if take else s[BINV + j]
                s[BCUR + j] = s[CUR + j] if take else s[BCUR + j]
                s[BESTC + j] = _ONE if take else s[BESTC + j]
                s[CUR + j] = s[TM + j] if take else s[CUR + j]
        # The chosen candidate's codes, recomputed once rather than kept after every pass.
        for i in range(SUB):
            for j in range(LANES):
                k = LANES * i + j
                q = code(s[BINV + j] * (s[XT + k] - s[BCUR + j]), nmax)
                s[CODES + k] = q if s[BESTC + j] != _ZERO else s[CODES + k]
        for j in range(LANES):
            flat = s[FLAT + j] != _ZERO
            s[SCALE + j] = _ZERO if flat else s[SCALE + j]
            s[MINS + j] = -(s[MN + j] if flat else s[CUR + j])
        for i in range(SUB):
            for j in range(LANES):
                k = LANES * i + j
                s[CODES + k] = _ZERO if s[FLAT + j] != _ZERO else s[CODES + k]

    return qkx_search


#: The search with ggml's bit-level rounding everywhere.
qkx_search = _make_qkx_search(nearest_code, False)
#: The search rounding candidates with float arithmetic; lanes where that may differ from
#: ggml's (a value beyond 2^22 - 1, or NaN) are flagged at BAD.
qkx_search_fast = _make_qkx_search(fast_code, True)


@register_jitable(inline="always")
def _ni(v):
    """ggml's nearest_int (int32)."""
    return np.int32(nc.f32_bits(v + _BIAS) & _MASK) - _OFFSET


@register_jitable
def qp_search(x, w, out_l):
    """ggml's make_qp_quants(8, 63, x, L, w): returns the scale; ``out_l`` (int32, 8) gets the
    codes as ggml's uint8_t holds them."""
    n = x.size
    mx = _ZERO
    for i in range(n):
        mx = mx if mx > x[i] else x[i]
    if mx < _EPS:
        for i in range(n):
            out_l[i] = 0
        return _ZERO
    iscale = _SC_NMAX / mx
    scale = _ONE / iscale
    best = _ZERO
    for i in range(n):
        q = np.float32(_ni(iscale * x[i]) & 0xFF)
        diff = x[i] - scale * q
        best = best + (w[i] * diff) * diff
    for c in range(QP_NUMS.size):
        inv = QP_NUMS[c] / mx
        sc = _ONE / inv
        mse = _ZERO
        for i in range(n):
            q = np.float32(min(_ni(inv * x[i]), SCALE_NMAX))
            diff = x[i] - sc * q
            mse = mse + (w[i] * diff) * diff
        if mse < best:
            best = mse
            iscale = inv
    sumlx = _ZERO
    suml2 = _ZERO
    for i in range(n):
        q = min(_ni(iscale * x[i]), SCALE_NMAX)
        out_l[i] = q & 0xFF
        qf = np.float32(q)
        sumlx = sumlx + (w[i] * x[i]) * qf
        suml2 = suml2 + (w[i] * qf) * qf
    for _ in range(5):
        changed = 0
        for i in range(n):
            li = np.float32(out_l[i])
            slx = sumlx - (w[i] * x[i]) * li
            sl2 = suml2 - (w[i] * li) * li
            if slx > _ZERO and sl2 > _ZERO:
                new_l = min(_ni((x[i] * sl2) / slx), SCALE_NMAX)
                if new_l != out_l[i]:
                    nf = np.float32(new_l)
                    slx = slx + (w[i] * x[i]) * nf
                    sl2 = sl2 + (w[i] * nf) * nf
                    if (slx * slx) * suml2 > (sumlx * sumlx) * sl2:
                        out_l[i] = new_l & 0xFF
                        sumlx = slx
                        suml2 = sl2
                        changed += 1
        if changed == 0:
            break
    return sumlx / suml2 if suml2 > _ZERO else _ZERO


@register_jitable
def load_tile(x, r, c0, nruns, src_kind, s):
    """Load runs of 32 values from ``x[r, c0:c0 + 32*nruns]`` into the tile (lanes past
    ``nruns`` get zeros); False if any is inf or NaN."""
    row = x[r]
    chk = _ZERO
    for j in range(LANES):
        if j < nruns:
            for i in range(SUB):
                v = nc.load_f32(row, c0 + SUB * j + i, src_kind)
                chk = chk + (v - v)  # stays 0 unless some v is inf or NaN
                s[XT + LANES * i + j] = v
        else:
            for i in range(SUB):
                s[XT + LANES * i + j] = _ZERO
    return chk == _ZERO


@register_jitable
def plain_weights(s):
    """ggml's plain K-quant weights ``sqrt(sum(x*x)/32) + |x|`` per run."""
    for j in range(LANES):
        s[SL + j] = _ZERO
    for i in range(SUB):
        for j in range(LANES):
            v = s[XT + LANES * i + j]
            s[SL + j] = s[SL + j] + v * v
    for j in range(LANES):
        s[SL + j] = np.float32(np.sqrt(s[SL + j] / np.float32(SUB)))
    for i in range(SUB):
        for j in range(LANES):
            s[W + LANES * i + j] = s[SL + j] + abs(s[XT + LANES * i + j])


@register_jitable
def sigma2_of(s, lane0, nlanes):
    """``2 * sum(x*x) / 256`` of the superblock in lanes lane0.. (values in column order)."""
    total = _ZERO
    for j in range(lane0, lane0 + nlanes):
        for i in range(SUB):
            v = s[XT + LANES * i + j]
            total = total + v * v
    return (_TWO * total) / np.float32(SUB * nlanes)


@register_jitable
def weighted(s, qwt, q0, lane0, sigma2):
    """Weights ``qw * sqrt(sigma2 + x*x)`` for the 8 lanes from ``lane0``; ``qwt[q0:]`` holds
    the superblock's importance position-major (``[8*i + j]`` is column ``32*j + i``)."""
    for i in range(SUB):
        for j in range(8):
            v = s[XT + LANES * i + lane0 + j]
            s[W + LANES * i + lane0 + j] = qwt[q0 + 8 * i + j] * np.float32(np.sqrt(sigma2 + v * v))


@register_jitable
def finish_superblock(s, lane0, nmax, weighted_flag, ls, lm, out, o):
    """Scales, mins, d and dmin of the superblock in lanes lane0..lane0+7 after the search,
    written to ``out[o:o+16]``; leaves each sub-block's ``d*sc`` at DJ and ``dmin*m`` at DMJ.
    ``ls`` / ``lm``: int32 scratch of 8."""
    if weighted_flag:
        d_block = qp_search(
            s[SCALE + lane0 : SCALE + lane0 + 8], s[SUMW + lane0 : SUMW + lane0 + 8], ls
        )
        m_block = qp_search(
            s[MINS + lane0 : MINS + lane0 + 8], s[SUMW + lane0 : SUMW + lane0 + 8], lm
        )
        if nmax == 31:  # ggml's Q5_K clamps the codes; its Q4_K stores them as they are
            for j in range(8):
                ls[j] = min(ls[j], SCALE_NMAX)
                lm[j] = min(lm[j], SCALE_NMAX)
    else:
        max_scale = _ZERO
        max_min = _ZERO
        for j in range(8):
            sc = s[SCALE + lane0 + j]
            mn = s[MINS + lane0 + j]
            max_scale = sc if sc > max_scale else max_scale
            max_min = mn if mn > max_min else max_min
        inv_scale = _SC_NMAX / max_scale if max_scale > _ZERO else _ZERO
        inv_min = _SC_NMAX / max_min if max_min > _ZERO else _ZERO
        for j in range(8):
            ls[j] = min(_ni(inv_scale * s[SCALE + lane0 + j]) & 0xFF, SCALE_NMAX)
            lm[j] = min(_ni(inv_min * s[MINS + lane0 + j]) & 0xFF, SCALE_NMAX)
        d_block = max_scale / _SC_NMAX
        m_block = max_min / _SC_NMAX
    b = o + 4
    for j in range(4):
        out[b + j] = np.uint8(ls[j] & 0xFF)
        out[b + j + 4] = np.uint8(lm[j] & 0xFF)
    for j in range(4, 8):
        out[b + j + 4] = np.uint8(((ls[j] & 0xF) | ((lm[j] & 0xF) << 4)) & 0xFF)
        out[b + j - 4] = np.uint8((np.int32(out[b + j - 4]) | ((ls[j] >> 4) << 6)) & 0xFF)
        out[b + j] = np.uint8((np.int32(out[b + j]) | ((lm[j] >> 4) << 6)) & 0xFF)
    d_bits = nc.f32_to_f16_bits(d_block)
    m_bits = nc.f32_to_f16_bits(m_block)
    nc.store_f16_bits(out, o, d_bits)
    nc.store_f16_bits(out, o + 2, m_bits)
    d = nc.f16_bits_to_f32(d_bits)
    dmin = nc.f16_bits_to_f32(m_bits)
    for j in range(8):
        sc, m = scale_min(out, b, j)
        s[DJ + lane0 + j] = d * sc
        s[DMJ + lane0 + j] = dmin * m


@register_jitable
def scale_min(sc_bytes, o, j):
    """ggml's get_scale_min_k4: scale and min (6 bits each, as float32) of sub-block ``j``."""
    if j < 4:
        sc = np.int32(sc_bytes[o + j]) & 63
        mn = np.int32(sc_bytes[o + j + 4]) & 63
    else:
        sc = (np.int32(sc_bytes[o + j + 4]) & 0x0F) | ((np.int32(sc_bytes[o + j - 4]) >> 6) << 4)
        mn = (np.int32(sc_bytes[o + j + 4]) >> 4) | ((np.int32(sc_bytes[o + j]) >> 6) << 4)
    return np.float32(sc), np.float32(mn)


@register_jitable
def requantize(s, nmax):
    """Final codes of every lane with ``d*sc != 0``: ``nearest_int((x + dmin*m) / (d*sc))``."""
    for i in range(SUB):
        for j in range(LANES):
            k = LANES * i + j
            dj = s[DJ + j]
            nz = dj != _ZERO
            q = nearest_code((s[XT + k] + s[DMJ + j]) / (dj if nz else _ONE), nmax)
            s[CODES + k] = q if nz else s[CODES + k]


@register_jitable
def quantize_tile(x, r, b0, nsb, src_kind, qwt, weighted_flag, nmax, nums, s, ls, lm, orow, bb):
    """Quantize superblocks b0 .. b0+nsb-1 (nsb <= SB_PER_TILE) of row ``r`` into ``orow`` (blocks of
    ``bb`` bytes); False if a value is not finite."""
    if not load_tile(x, r, b0 * 256, 8 * nsb, src_kind, s):
        return False
    if weighted_flag:
        for i in range(SUB):
            for j in range(LANES):
                s[W + LANES * i + j] = _ZERO
        for t in range(nsb):
            weighted(s, qwt, (b0 + t) * 256, 8 * t, sigma2_of(s, 8 * t, 8))
    else:
        plain_weights(s)
    qkx_search_fast(s, nmax, nums, not weighted_flag)
    redo = False
    for j in range(LANES):
        redo = redo or s[BAD + j] != _ZERO
    if redo:
        qkx_search(s, nmax, nums, not weighted_flag)
    for t in range(nsb):
        finish_superblock(s, 8 * t, nmax, weighted_flag, ls, lm, orow, (b0 + t) * bb)
    requantize(s, nmax)
    for t in range(nsb):
        o = (b0 + t) * bb
        lane0 = 8 * t
        if nmax == 15:
            for g in range(4):
                for li in range(32):
                    c1 = np.int32(s[CODES + LANES * li + lane0 + 2 * g])
                    c2 = np.int32(s[CODES + LANES * li + lane0 + 2 * g + 1])
                    orow[o + 16 + 32 * g + li] = np.uint8(c1 | (c2 << 4))
        else:
            for li in range(32):
                h = np.int32(0)
                for g in range(4):
                    c1 = np.int32(s[CODES + LANES * li + lane0 + 2 * g])
                    c2 = np.int32(s[CODES + LANES * li + lane0 + 2 * g + 1])
                    h |= ((c1 >> 4) << (2 * g)) | ((c2 >> 4) << (2 * g + 1))
                    orow[o + 48 + 32 * g + li] = np.uint8((c1 & 15) | ((c2 & 15) << 4))
                orow[o + 16 + li] = np.uint8(h)
    return True


def tile_importance(qw: np.ndarray) -> np.ndarray:
    """Importance per column laid out per superblock position-major (``[b*256 + 8*i + j]``
    holds column ``b*256 + 32*j + i``), made once per call."""
    qw = np.asarray(qw, dtype=np.float32)
    tiles = qw.reshape(-1, 8, SUB).transpose(0, 2, 1)
    return np.ascontiguousarray(tiles).reshape(-1)


_TILES_PER_TASK = 2  # tiles per parallel work item


@nc.njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def quantize_kernel(x, src_kind, qwt, weighted_flag, nmax, nums, bb, out, bad):
    """Quantize every row of ``x`` to K-quant blocks of ``bb`` bytes (codes 0..nmax)."""
    rows, cols = x.shape
    per_row = cols // 256
    tpr = (per_row + SB_PER_TILE - 1) // SB_PER_TILE
    total = rows * tpr
    ntasks = (total + _TILES_PER_TASK - 1) // _TILES_PER_TASK
    for task in nc.prange(ntasks):
        s = np.empty(SCRATCH, dtype=np.float32)
        ls = np.empty(8, dtype=np.int32)
        lm = np.empty(8, dtype=np.int32)
        for k in range(task * _TILES_PER_TASK, min(total, (task + 1) * _TILES_PER_TASK)):
            r = k // tpr
            b0 = SB_PER_TILE * (k - r * tpr)
            nsb = min(SB_PER_TILE, per_row - b0)
            ok = quantize_tile(
                x, r, b0, nsb, src_kind, qwt, weighted_flag, nmax, nums, s, ls, lm, out[r], bb
            )
            if not ok:
                bad[r] = b0 * 256  # tasks may race here; any value >= 0 marks the row


_NO_WEIGHTS = np.empty(0, dtype=np.float32)


def quantize(name, ttype, nmax, x, src_kind, qw):
    """K-quant bytes of a C-contiguous 2-D source (float32, or uint16 fp16/bf16 bits)."""
    from nntrtool.errors import QuantError

    rows, cols = x.shape
    if cols <= 0 or cols % 256:
        raise QuantError(
            f"{name} needs rows that are a whole number of 256-value blocks, got {cols} columns"
        )
    if qw is not None and np.size(qw) != cols:
        raise QuantError(f"{name}: {np.size(qw)} importance values for {cols} columns")
    weighted_flag = qw is not None
    qwt = tile_importance(qw) if weighted_flag else _NO_WEIGHTS
    if nmax == 15:
        nums = NUMS_Q4_WEIGHTED if weighted_flag else NUMS_Q4_PLAIN
    else:
        nums = NUMS_Q5_WEIGHTED if weighted_flag else NUMS_Q5_PLAIN

    def kernel(x, src_kind, out, bad):
        quantize_kernel(x, src_kind, qwt, weighted_flag, nmax, nums, ttype.block_bytes, out, bad)

    return nc.run_quantize(kernel, ttype, np.ascontiguousarray(x), src_kind)
