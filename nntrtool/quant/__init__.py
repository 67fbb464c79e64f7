"""Quantization kernels: quantize, dequantize and repack GGML block formats (numpy, numba, cupy)."""
