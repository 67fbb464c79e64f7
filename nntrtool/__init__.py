"""nntrtool: convert Hugging Face / PyTorch weights into NNTR files in GGML block formats.

The package is a library first; the ``nntrtool`` command is a thin layer over it.

- ``nntrtool.qtypes``   the tensor-type registry (block sizes, type ids, repack layouts)
- ``nntrtool.format``   the NNTR v1 file format: streaming writer, validating mapped reader
- ``nntrtool.quant``    quantize / dequantize / repack kernels (numpy, numba, cupy backends)
- ``nntrtool.sources``  model sources: safetensors folders and files, torch checkpoints, hub ids
- ``nntrtool.convert``  the per-tensor plan and the conversion pipeline
- ``nntrtool.cli``      the Typer commands and the rich display
"""

__version__ = "0.2.0"
