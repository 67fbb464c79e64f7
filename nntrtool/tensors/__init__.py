"""Tensors as every source hands them out, and the declared transforms between a checkpoint's
tensors and the stored ones.

- :mod:`.base`: :class:`SourceTensor` (read by row chunks) and the dtypes it knows;
- :mod:`.transforms`: :class:`DerivedTensor`, :class:`Rule`, :class:`Placement` and the small
  operations families declare (row permutations, expert slices, transposes);
- :mod:`.experts`: mixture-of-experts helpers (per-expert slices, routers);
- :mod:`.mxfp4`: exact MXFP4 decoding.

Nothing here knows a model family or a file format: families (:mod:`nntrtool.architectures`)
and sources (:mod:`nntrtool.sources`) build on it.
"""
