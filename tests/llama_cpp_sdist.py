"""The pinned llama-cpp-python source distribution (it vendors a full llama.cpp tree), fetched
once for every test helper that needs llama.cpp's sources.

The version and the archive's SHA-256 are read from ``tools/llama_cpp/build.sh``, the one place
they are pinned. :func:`sdist` downloads the archive with pip (no install) into the tests' cache
folder (``~/.cache/nntrtool-tests``, or ``NNTRTOOL_LLAMA_CPP_SDIST_DIR``), checks its SHA-256,
and reuses it afterwards; ``llama_cpp_converter.py`` unpacks the converter from it and
``llama_cpp_tools.py`` hands it to the build script, so neither downloads on its own.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

BUILD_SCRIPT = Path(__file__).resolve().parent.parent / "tools" / "llama_cpp" / "build.sh"


def _pinned(name: str) -> str:
    m = re.search(rf"^{name}=(\S+)$", BUILD_SCRIPT.read_text(), re.MULTILINE)
    assert m, f"no {name}= line in {BUILD_SCRIPT}"
    return m.group(1)


VERSION = _pinned("VERSION")
LLAMA_CPP_COMMIT = _pinned("LLAMA_CPP_COMMIT")
SHA256 = _pinned("SDIST_SHA256")
NAME = f"llama_cpp_python-{VERSION}.tar.gz"


def cache_dir() -> Path:
    if os.environ.get("NNTRTOOL_LLAMA_CPP_SDIST_DIR"):
        return Path(os.environ["NNTRTOOL_LLAMA_CPP_SDIST_DIR"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "nntrtool-tests"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sdist() -> Path:
    """The checked archive, downloaded on first use; RuntimeError when it cannot be had."""
    root = cache_dir()
    path = root / NAME
    if path.is_file() and sha256(path) == SHA256:
        return path
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{NAME}.lock", "w") as lock:  # parallel test workers: one download
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file() and sha256(path) == SHA256:
            return path
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            done = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
                 ":all:", f"llama-cpp-python=={VERSION}", "-d", tmp],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            got = Path(tmp) / NAME
            if done.returncode != 0 or not got.is_file():
                tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise RuntimeError(f"pip download llama-cpp-python=={VERSION} failed: {tail}")
            if sha256(got) != SHA256:
                raise RuntimeError(f"{NAME} does not have the pinned SHA-256 {SHA256}")
            os.replace(got, path)
    return path
