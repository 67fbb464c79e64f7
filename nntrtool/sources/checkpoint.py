"""PyTorch pickle checkpoints (``pytorch_model.bin``, ``.pt``), loaded safely and memory-mapped.

Loading goes through ``torch.load(weights_only=True)``, which refuses any pickle that would run
code, and ``mmap=True``, so tensors stay on disk until their rows are read. torch is imported
here only, when a checkpoint is actually opened.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from nntrtool import lease
from nntrtool.errors import SourceError
from nntrtool.sources.base import SourceTensor

TORCH_EXTRA_HINT = "pip install 'nntrtool[torch]'"

# torch dtype name -> safetensors dtype name
_TORCH_DTYPES = {
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float64": "F64",
    "int8": "I8",
    "uint8": "U8",
    "int16": "I16",
    "uint16": "U16",
    "int32": "I32",
    "uint32": "U32",
    "int64": "I64",
    "uint64": "U64",
    "bool": "BOOL",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "float8_e8m0fnu": "F8_E8M0",
    "complex64": "C64",
}


def import_torch(what: Path) -> Any:
    """torch, or a SourceError naming the extra to install."""
    try:
        import torch
    except ImportError:
        raise SourceError(
            f"{what.name} is a PyTorch checkpoint, which needs the torch extra: {TORCH_EXTRA_HINT}"
        ) from None
    return torch


class CheckpointTensor(SourceTensor):
    """A tensor of a loaded checkpoint, converted to numpy one row range at a time."""

    def __init__(self, name: str, dtype: str, tensor: Any, file: Path):
        super().__init__(name, dtype, tuple(tensor.shape), file)
        self._tensor = tensor
        self._matrix: Any = None

    #: Set by the owning file: raises if the file changed since it was loaded.
    _guard: Any = None

    def _read_rows(self, start: int, stop: int) -> np.ndarray:
        if self._guard is not None:  # a mapped page past a new end would be SIGBUS
            self._guard()
        if self._matrix is None:
            t = self._tensor.detach()
            if not t.is_contiguous():
                t = t.contiguous()
            self._matrix = t.reshape(self.rows, self.cols)
        chunk = self._matrix[start:stop]
        if self.dtype == "BF16":
            import torch

            return chunk.view(torch.int16).numpy().view(np.uint16)
        return chunk.numpy()

    def release(self) -> None:
        self._tensor = None
        self._matrix = None


def _identity(path: Path) -> tuple[int, int, int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1, -1, -1)
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


class CheckpointFile:
    """One checkpoint file; ``tensors`` are in the order the state dict was saved in."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        torch = import_torch(self.path)
        self._ident = _identity(self.path)
        # torch maps the file: no process may cut it short while it is read (see nntrtool/lease.py)
        self._lease = lease.take(self.path)
        self.tensors: list[CheckpointTensor] = []
        try:
            self._read_state(torch)
        except BaseException:
            self.close()
            raise

    def _read_state(self, torch: Any) -> None:
        obj = self._load(torch)
        state = _find_state_dict(obj, torch)
        if state is None:
            raise SourceError(
                f"{self.path}: holds no state dict of tensors; expected a checkpoint saved "
                "with torch.save(model.state_dict())"
            )
        for name, value in state.items():
            if not isinstance(value, torch.Tensor):
                continue
            if value.layout != torch.strided:
                raise SourceError(
                    f"{self.path}: tensor {name!r} is stored {value.layout}, not as a dense "
                    "tensor; save it dense first"
                )
            dtype_name = str(value.dtype).removeprefix("torch.")
            dtype = _TORCH_DTYPES.get(dtype_name)
            if dtype is None:
                raise SourceError(
                    f"{self.path}: tensor {name!r} has dtype {dtype_name}, which nntrtool cannot "
                    "read; convert the model to float32, float16 or bfloat16 first"
                )
            self.tensors.append(CheckpointTensor(str(name), dtype, value, self.path))
            self.tensors[-1]._guard = self.check_unchanged

    def check_unchanged(self) -> None:
        """Raise SourceError if the file is no longer the one loaded (size, time, inode)."""
        from nntrtool.messages import source_changed

        if self._lease is not None:
            self._lease.check()
        now = _identity(self.path)
        if now != self._ident:
            detail = (
                f"it was {self._ident[0]} bytes, now {now[0]}"
                if now[0] != self._ident[0]
                else "it was rewritten or replaced"
            )
            raise SourceError(source_changed(self.path, detail))

    def _load(self, torch: Any) -> Any:
        if self._lease is None and lease.wanted():
            # no lease to be had: the command line loads the file whole rather than map it, so
            # a file cut short while it is read is an error line, not SIGBUS
            try:
                return torch.load(self.path, map_location="cpu", weights_only=True)
            except Exception as exc:
                self._raise_load_error(torch, exc)
        try:
            return torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # torch raises many types for a bad file
            first = _first_line(exc)
            if "mmap" not in first:
                self._raise_load_error(torch, exc)
        # Files from the pre-zip serialization cannot be mapped; they load whole instead.
        try:
            return torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:
            self._raise_load_error(torch, exc)

    def _raise_load_error(self, torch: Any, exc: BaseException) -> None:
        import pickle

        text = str(exc)
        if isinstance(exc, pickle.UnpicklingError) and "WeightsUnpickler error" in text:
            detail = text.split("WeightsUnpickler error:", 1)[1].strip()
            detail = detail.splitlines()[0].strip() if detail else "unknown"
            found = re.search(r"GLOBAL (\S+)", detail)
            if found:
                raise SourceError(
                    f"{self.path}: refusing to load: the checkpoint holds a Python object ({found.group(1)}) "
                    "and unpickling objects other than tensors could run code; re-save "
                    "it as safetensors or as a plain state dict"
                ) from None
            raise SourceError(
                f"{self.path}: cannot read as a PyTorch checkpoint ({detail}); the file is "
                "corrupt or not a checkpoint"
            ) from None
        raise SourceError(
            f"{self.path}: cannot read as a PyTorch checkpoint ({_first_line(exc)})"
        ) from None

    def close(self) -> None:
        """Drop the tensors (their maps go with the last reference) and the lease."""
        for t in getattr(self, "tensors", ()):
            t.release()
        held, self._lease = self._lease, None
        if held is not None:
            held.release()


def _find_state_dict(obj: Any, torch: Any) -> dict | None:
    """The mapping of names to tensors, also when wrapped as ``{"state_dict": ...}``."""
    if not isinstance(obj, dict):
        return None
    if any(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    for key in ("state_dict", "model", "module", "model_state_dict"):
        inner = obj.get(key)
        if isinstance(inner, dict) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            return inner
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].strip()
