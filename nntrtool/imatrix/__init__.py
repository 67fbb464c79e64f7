"""Importance matrices: per-column activation statistics of a model's linear layers.

- :mod:`~nntrtool.imatrix.collect`: runs the source model over a text and accumulates, for
  every linear layer's input (every expert separately), the sum of squared activations per
  input column and the rows seen (``nntrtool imatrix``).
- :mod:`~nntrtool.imatrix.gguf_writer`: writes them in llama.cpp's GGUF imatrix format.
"""
