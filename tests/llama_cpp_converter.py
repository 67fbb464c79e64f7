"""llama.cpp's own ``convert_hf_to_gguf.py``, pinned, for the tests that write GGUFs the real way.

The converter comes from the llama-cpp-python source distribution on PyPI, which vendors a full
llama.cpp tree (``vendor/llama.cpp``: ``convert_hf_to_gguf.py``, its ``conversion`` package and
its own ``gguf-py``), fetched by ``llama_cpp_sdist.py`` (version and SHA-256 pinned in
``tools/llama_cpp/build.sh``; 0.3.36 carries llama.cpp commit 0c1e57098). Where
``tools/llama_cpp/build.sh`` has already unpacked the same tree (``llama_cpp_tools.find()``),
that tree is used; otherwise only those three parts are unpacked,
into a cache folder outside the repository (``~/.cache/nntrtool-tests/llama.cpp-0.3.36-converter``,
or ``NNTRTOOL_LLAMA_CPP_CONVERTER_DIR``), once; nothing is installed into the environment.

The converter runs in a subprocess through ``convert_hf_to_gguf_run.py``, with the vendored
``gguf-py`` first on ``sys.path`` (the converter is written against its own copy of the package)
and a stand-in vocabulary, so that a tiny random model needs no tokenizer files.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import llama_cpp_sdist

VERSION = llama_cpp_sdist.VERSION
LLAMA_CPP_COMMIT = llama_cpp_sdist.LLAMA_CPP_COMMIT
#: What is unpacked from the archive (under ``vendor/llama.cpp/``).
PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")
RUNNER = Path(__file__).resolve().parent / "convert_hf_to_gguf_run.py"


def cache_dir() -> Path:
    if os.environ.get("NNTRTOOL_LLAMA_CPP_CONVERTER_DIR"):
        return Path(os.environ["NNTRTOOL_LLAMA_CPP_CONVERTER_DIR"])
    return llama_cpp_sdist.cache_dir() / f"llama.cpp-{VERSION}-converter"


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
    import llama_cpp_tools

    built = llama_cpp_tools.find()
    if built is not None and llama_cpp_tools.version() == VERSION:
        if (built.llama_cpp_dir / "convert_hf_to_gguf.py").is_file():
            return built.llama_cpp_dir
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
            _unpack(llama_cpp_sdist.sdist(), Path(tmp) / "llama.cpp")
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
