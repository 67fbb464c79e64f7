"""The numba kernel of importance-weighted Q4_0: the same bytes as ``q4_0.quantize_imatrix_xp``
and ggml's ``quantize_q4_0`` given ``quant_weights``. Imported on first use only.

ggml searches 19 candidate scales per block of 32 (``make_qx_quants`` with nmax 8), each a
sequential weighted sum over the block. Here one row is one parallel task, and its blocks are
taken 16 at a time, transposed into a 32 x 16 position-major tile, so that every step of those
sequential sums is a 16-lane loop over independent blocks that LLVM turns into SIMD code
without reordering any single sum (``fastmath`` stays off).
"""

from __future__ import annotations

import numpy as np

from nntrtool.errors import QuantError
from nntrtool.qtypes import Q4_0

from . import _numba_common as nc
from . import _simd as simd
from ._numba_common import njit
from .q4_0 import BLOCK_BYTES, D_BYTES, GROUP_MAX_EPS, NMAX, QK, SEARCH_NUMERATORS

_LANES = 16  # blocks searched side by side
_BIAS = np.float32(12582912.0)  # nearest_int as (v + 1.5*2^23) - 1.5*2^23, exact for |v| <= 9
_ZERO = np.float32(0.0)
_ONE = np.float32(1.0)
_LO = np.float32(-NMAX)
_HI = np.float32(NMAX - 1)
_CODE_OFFSET = np.float32(NMAX)
_EPS = GROUP_MAX_EPS
_NCAND = len(SEARCH_NUMERATORS)
_GROUP = 4  # candidates whose sums are built side by side
_NCAND_PADDED = -(-_NCAND // _GROUP) * _GROUP
# Padding candidates repeat the first one; their sums are computed and never looked at.
_NUMS = np.concatenate(
    [SEARCH_NUMERATORS, np.full(_NCAND_PADDED - _NCAND, SEARCH_NUMERATORS[0], np.float32)]
)
_clamp_code = nc.make_clamp(-NMAX, NMAX - 1)
_absmax_bits = simd.make_absmax_bits(QK)
_first_abs_equal = simd.make_first_abs(QK, "==")
_pack = simd.make_q4_0_pack_nearest(QK, NMAX)
# Numerator of each (candidate, lane) slot, so the inverse scales are one long loop that
# vectorizes (a 16-long loop would be unrolled into scalar divisions).
_NUMS_TILED = np.repeat(_NUMS, _LANES)

# Offsets into one flat float32 scratch per row (constant offsets let LLVM see that the tiles
# never overlap, which it needs to vectorize the lane loops).
_XT = 0  # (32 positions, 16 lanes) values
_W = _XT + QK * _LANES  # importance weights qw * sqrt(sigma2 + x*x)
_WX = _W + QK * _LANES  # w * x
_AMAX = _WX + QK * _LANES
_VMAX = _AMAX + _LANES
_INV = _VMAX + _LANES  # (candidate, lane) inverse scales
_SX = _INV + _NCAND_PADDED * _LANES  # (candidate, lane) sums of w*x*l
_S2 = _SX + _NCAND_PADDED * _LANES  # (candidate, lane) sums of w*l*l
_DIV = _S2 + _NCAND_PADDED * _LANES  # (candidate, lane) sumlx / suml2
_VREP = _DIV + _NCAND_PADDED * _LANES  # (candidate, lane) copies of the lane's max
_SCALE = _VREP + _NCAND_PADDED * _LANES
_BEST = _SCALE + _LANES
_BESTC = _BEST + _LANES
_SCRATCH = _BESTC + _LANES


@nc.register_jitable
def _quantize_group(xr, qwt, sigma2, b0, nblocks, orow, s):
    """Quantize blocks b0 .. b0+nblocks-1 (nblocks <= 16) of the decoded row ``xr``.

    ``qwt`` holds the importance of the group's columns already in tile order.
    """
    if nblocks < _LANES:
        for k in range(QK * _LANES):
            s[_XT + k] = _ZERO
    for j in range(_LANES):
        s[_AMAX + j] = _ZERO
        s[_VMAX + j] = _ONE  # empty lanes: keeps their search finite; never stored
    for j in range(nblocks):
        base = (b0 + j) * QK
        mbits = _absmax_bits(xr, base, 0)
        amax = nc.f32_from_bits(mbits)
        s[_AMAX + j] = amax
        if amax < _EPS:
            continue  # scale 0 and codes 0 below; 1 keeps the search finite
        s[_VMAX + j] = xr[base + _first_abs_equal(xr, base, 0, mbits)]
        for i in range(QK):
            s[_XT + _LANES * i + j] = xr[base + i]
    for k in range(QK * _LANES):
        v = s[_XT + k]
        w = qwt[k] * np.float32(np.sqrt(sigma2 + v * v))
        s[_W + k] = w
        s[_WX + k] = w * v
    for c in range(_NCAND_PADDED):
        for j in range(_LANES):
            s[_VREP + _LANES * c + j] = s[_VMAX + j]
    for k in range(_NCAND_PADDED * _LANES):
        s[_INV + k] = _NUMS_TILED[k] / s[_VREP + k]
    for g in range(0, _NCAND_PADDED, _GROUP):
        for k in range(_GROUP * _LANES):
            s[_SX + _LANES * g + k] = _ZERO
            s[_S2 + _LANES * g + k] = _ZERO
        for i in range(QK):
            for c in range(g, g + _GROUP):
                for j in range(_LANES):
                    v = (s[_INV + _LANES * c + j] * s[_XT + _LANES * i + j] + _BIAS) - _BIAS
                    v = _clamp_code(v)
                    s[_SX + _LANES * c + j] = s[_SX + _LANES * c + j] + s[_WX + _LANES * i + j] * v
                    s[_S2 + _LANES * c + j] = (
                        s[_S2 + _LANES * c + j] + (s[_W + _LANES * i + j] * v) * v
                    )
    for k in range(_NCAND_PADDED * _LANES):
        s[_DIV + k] = s[_SX + k] / s[_S2 + k]
    for j in range(_LANES):
        sx = s[_SX + j]
        s2 = s[_S2 + j]
        sc = s[_DIV + j] if s2 != _ZERO else _ZERO  # `suml2 ? ... : 0`: NaN counts as true
        s[_SCALE + j] = sc
        s[_BEST + j] = sc * sx
        s[_BESTC + j] = _ZERO
    for c in range(1, _NCAND):
        cf = np.float32(c)
        for j in range(_LANES):
            sx = s[_SX + _LANES * c + j]
            s2 = s[_S2 + _LANES * c + j]
            sc = s[_DIV + _LANES * c + j]
            take = (s2 > _ZERO) & (sx * sx > s[_BEST + j] * s2)
            s[_SCALE + j] = sc if take else s[_SCALE + j]
            s[_BEST + j] = sc * sx if take else s[_BEST + j]
            s[_BESTC + j] = cf if take else s[_BESTC + j]
    for j in range(nblocks):
        o = (b0 + j) * BLOCK_BYTES
        base = (b0 + j) * QK
        if s[_AMAX + j] < _EPS:  # ggml: scale 0, all codes 0
            for k in range(BLOCK_BYTES):
                orow[o + k] = 0
            continue
        nc.store_f16_bits(orow, o, nc.f32_to_f16_bits(s[_SCALE + j]))
        inv = s[_INV + _LANES * np.int32(s[_BESTC + j]) + j]
        _pack(xr, base, 0, inv, orow, o + D_BYTES)


@njit(parallel=True, cache=True, nogil=True, error_model="numpy")
def _quantize_rows(x, src_kind, qwt, out, bad):
    rows, cols = x.shape
    nb = cols // QK
    for r in nc.prange(rows):
        xr = np.empty(cols, dtype=np.float32)
        s = np.empty(_SCRATCH, dtype=np.float32)
        sigma2 = nc.load_row_sigma2(x, r, src_kind, xr, bad)
        if bad[r] >= 0:
            continue
        for b0 in range(0, nb, _LANES):
            g = b0 * QK
            _quantize_group(
                xr, qwt[g : g + QK * _LANES], sigma2, b0, min(_LANES, nb - b0), out[r], s
            )


def tile_importance(qw: np.ndarray) -> np.ndarray:
    """The importance of each group of 16 blocks in the kernel's tile order (position-major,
    zero for the lanes past the last block), so rows never transpose it again."""
    qw = np.asarray(qw, dtype=np.float32)
    nb = qw.size // QK
    groups = -(-nb // _LANES)
    padded = np.zeros(groups * _LANES * QK, dtype=np.float32)
    padded[: qw.size] = qw
    tiles = padded.reshape(groups, _LANES, QK).transpose(0, 2, 1)
    return np.ascontiguousarray(tiles).reshape(-1)


def quantize(x: np.ndarray, src_kind: int, qw: np.ndarray) -> np.ndarray:
    """Importance-weighted Q4_0 bytes of a C-contiguous 2-D float32 array (or uint16 fp16/bf16
    bits per ``src_kind``); ``qw`` is float32, one importance per column."""
    if x.ndim != 2 or np.size(qw) != x.shape[1]:
        raise QuantError(f"q4_0: {np.size(qw)} importance values for an array of shape {x.shape}")
    qwt = tile_importance(qw)

    def kernel(x, src_kind, out, bad):
        _quantize_rows(x, src_kind, qwt, out, bad)

    return nc.run_quantize(kernel, Q4_0, x, src_kind)
