"""llama.cpp's own ``convert_hf_to_gguf.py``, pinned, for the tests that write GGUFs the real way.

The converter comes from the llama-cpp-python source distribution on PyPI, which vendors a full
llama.cpp tree (``vendor/llama.cpp``: ``convert_hf_to_gguf.py``, its ``conversion`` package and
its own ``gguf-py``). Version 0.3.36 carries llama.cpp commit 0c1e57098; the archive's SHA-256 is
checked. Only those three parts are unpacked, into a cache folder outside the repository
(``~/.cache/nntrtool-tests/llama.cpp-0.3.36-converter``, or ``NNTRTOOL_LLAMA_CPP_CONVERTER_DIR``),
once; nothing is installed into the environment.

The converter runs in a subprocess through ``convert_hf_to_gguf_run.py``, with the vendored
``gguf-py`` first on ``sys.path`` (the converter is written against its own copy of the package)
and a stand-in vocabulary, so that a tiny random model needs no tokenizer files.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VERSION = "0.3.36"
LLAMA_CPP_COMMIT = "0c1e57098"
SDIST = f"llama_cpp_python-{VERSION}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
#: What is unpacked from the archive (under ``vendor/llama.cpp/``).
PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
RUNNER = Path(__file__).resolve().parent / "convert_hf_to_gguf_run.py"


def cache_dir() -> Path:
    if os.environ.get("NNTRTOOL_LLAMA_CPP_CONVERTER_DIR"):
        return Path(os.environ["NNTRTOOL_LLAMA_CPP_CONVERTER_DIR"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "nntrtool-tests" / f"llama.cpp-{VERSION}-converter"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download(into: Path) -> Path:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
         ":all:", f"llama-cpp-python=={VERSION}", "-d", str(into)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    sdist = into / SDIST
    if done.returncode != 0 or not sdist.is_file():
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"pip download llama-cpp-python=={VERSION} failed: {tail}")
    if _sha256(sdist) != SDIST_SHA256:
        raise RuntimeError(f"{SDIST} does not have the pinned SHA-256 {SDIST_SHA256}")
    return sdist


def _unpack(sdist: Path, dest: Path) -> None:
    prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
    with tarfile.open(sdist) as tar:
        members = []
        for m in tar.getmembers():
            if not m.name.startswith(prefix):
                continue
            rel = m.name[len(prefix) :]
            if any(rel == p or (p.endswith("/") and rel.startswith(p)) for p in PARTS):
                m.name = rel
                members.append(m)
        tar.extractall(dest, members=members, filter="data")


def converter() -> Path:
    """The folder holding ``convert_hf_to_gguf.py`` (downloaded and unpacked on first use);
    RuntimeError when the archive cannot be had."""
    root = cache_dir()
    ready = root / "llama.cpp" / "convert_hf_to_gguf.py"
    if ready.is_file():
        return ready.parent
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:  # parallel test workers: one download
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready.is_file():
            return ready.parent
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            sdist = _download(Path(tmp))
            _unpack(sdist, Path(tmp) / "llama.cpp")
            os.replace(Path(tmp) / "llama.cpp", root / "llama.cpp")
    return ready.parent


def convert_hf(llama_cpp: Path, model_dir: Path, out: Path, outtype: str = "f32") -> Path:
    """``convert_hf_to_gguf.py model_dir --outtype OUTTYPE --outfile out`` (stand-in vocabulary)."""
    argv = [sys.executable, str(RUNNER), str(llama_cpp), str(model_dir)]
    argv += ["--outtype", outtype, "--outfile", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-25:])
        raise AssertionError(f"convert_hf_to_gguf.py failed ({done.returncode}):\n{tail}")
    return out
