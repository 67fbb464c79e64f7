"""Shared pytest fixtures: small models built once per test session, an offline hub cache.

Helpers to build models live in ``tests/models.py`` (import it as ``models``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parent
for _p in (str(_TESTS), str(_TESTS.parent)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from models import make_hf_model  # noqa: E402

EXAMPLE_DIR = _TESTS.parent / "examples" / "tiny-llama"


@pytest.fixture(autouse=True)
def _no_lease_outlives_a_test():
    """A test that ran the command line in this process leaves no read lease behind (a later
    test that rewrites its own files would otherwise wait on one)."""
    yield
    lease = sys.modules.get("nntrtool.lease")
    if lease is not None:
        lease.reset()


@pytest.fixture(scope="session")
def hf_model(tmp_path_factory):
    """``hf_model(arch="llama", **kwargs) -> Path``: a model folder built by
    ``models.make_hf_model`` once per session and argument set. Do not modify it."""
    built: dict[tuple, Path] = {}

    def build(arch: str = "llama", **kwargs) -> Path:
        key = (arch, tuple(sorted(kwargs.items())))
        if key not in built:
            folder = tmp_path_factory.mktemp(f"{arch}-model")
            built[key] = make_hf_model(folder, arch, **kwargs)
        return built[key]

    return build


@pytest.fixture(scope="session")
def example_model() -> Path:
    """The built-in example model folder shipped in ``examples/tiny-llama``."""
    return EXAMPLE_DIR


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline, with the working folder moved out of the way (so
    "org/name" cannot be a local path); lay models into it with ``models.cache_model``."""
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    return cache


@pytest.fixture(scope="session")
def llama_cpp():
    """llama.cpp's own tools (``tests/llama_cpp_tools.py``), built by ``tools/llama_cpp/build.sh``;
    built here when ``NNTRTOOL_BUILD_LLAMA_CPP=1``, else the test skips when they are missing."""
    import os

    import llama_cpp_tools as tools

    found = tools.find()
    if found is None:
        if os.environ.get(tools.BUILD_ENV) != "1":
            pytest.skip(tools.SKIP_REASON)
        found = tools.build()
    return found
