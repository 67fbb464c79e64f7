"""llama.cpp's own tools as the oracle: ``convert_hf_to_gguf.py``, ``llama-quantize``,
``llama-imatrix``.

``tools/llama_cpp/build.sh`` unpacks the pinned llama-cpp-python source distribution (it vendors
a full llama.cpp tree; fetched by ``llama_cpp_sdist.py``, shared with the converter), builds the
two tools into a cache folder outside the repository and installs the converter's extra requirement (sentencepiece) beside them. This
module finds that folder (:func:`find`), builds it on request (:func:`build`) and runs the tools
(:class:`LlamaCpp`). The ``llama_cpp`` fixture in ``conftest.py`` skips when nothing is built and
``NNTRTOOL_BUILD_LLAMA_CPP=1`` is not set.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import llama_cpp_sdist

BUILD_SCRIPT = Path(__file__).resolve().parent.parent / "tools" / "llama_cpp" / "build.sh"
#: Set to 1 to let the tests build the tools (about 3 minutes on 2 cores) when they are missing.
BUILD_ENV = "NNTRTOOL_BUILD_LLAMA_CPP"
SKIP_REASON = (
    f"llama.cpp's tools are not built: run {BUILD_SCRIPT.relative_to(BUILD_SCRIPT.parents[2])}"
    f" (about 3 min) or set {BUILD_ENV}=1"
)

#: Trains a byte-fallback BPE SentencePiece model on CPython's pydoc topics (argv: out, vocab).
_TRAIN_TOKENIZER = """
import importlib.resources, io, sys
import sentencepiece as spm
text = importlib.resources.files("pydoc_data").joinpath("topics.py").read_text()[:200_000]
out = io.BytesIO()
spm.SentencePieceTrainer.train(
    sentence_iterator=iter([line for line in text.splitlines() if line.strip()]),
    model_writer=out, vocab_size=int(sys.argv[2]), model_type="bpe", byte_fallback=True,
    character_coverage=1.0, minloglevel=2, num_threads=1,
)
open(sys.argv[1], "wb").write(out.getvalue())
"""


def version() -> str:
    """The pinned llama-cpp-python version, read from the build script."""
    return llama_cpp_sdist.VERSION


def cache_root() -> Path:
    """Where the build script builds (its own default, or ``NNTRTOOL_LLAMA_CPP_DIR``)."""
    if os.environ.get("NNTRTOOL_LLAMA_CPP_DIR"):
        return Path(os.environ["NNTRTOOL_LLAMA_CPP_DIR"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "nntrtool-tests" / f"llama.cpp-{version()}"


@dataclass(frozen=True)
class LlamaCpp:
    """A finished build: the tools in ``root/bin``, the sources in ``root/src``."""

    root: Path

    @property
    def llama_cpp_dir(self) -> Path:
        return self.root / "src" / "vendor" / "llama.cpp"

    def tool(self, name: str) -> Path:
        return self.root / "bin" / name

    def _run(self, argv: list[str], env: dict[str, str] | None = None) -> str:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
            raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}):\n{tail}")
        return done.stdout + done.stderr

    def _python_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(self.root / "python"), env.get("PYTHONPATH", "")) if p
        )
        env.pop("NO_LOCAL_GGUF", None)  # the converter uses its own gguf-py, as shipped
        return env

    def add_tokenizer(self, model_dir: Path, vocab: int) -> Path:
        """Write a SentencePiece ``tokenizer.model`` of ``vocab`` pieces (byte fallback, so
        llama.cpp can tokenize any text) into ``model_dir``: what the converter reads for
        Llama and Qwen models that ship one."""
        out = Path(model_dir) / "tokenizer.model"
        self._run([sys.executable, "-c", _TRAIN_TOKENIZER, str(out), str(vocab)],
                  self._python_env())  # fmt: skip
        return out

    def convert_hf(self, model_dir: Path, out: Path, outtype: str = "f32") -> Path:
        """``convert_hf_to_gguf.py model_dir --outtype OUTTYPE --outfile out``."""
        script = self.llama_cpp_dir / "convert_hf_to_gguf.py"
        argv = [sys.executable, str(script), str(model_dir), "--outtype", outtype]
        self._run([*argv, "--outfile", str(out)], self._python_env())
        return Path(out)

    def quantize(
        self, src: Path, out: Path, ftype: str, imatrix: Path | None = None, flags=()
    ) -> str:
        """``llama-quantize [FLAGS] [--imatrix FILE] src out FTYPE 1``; returns its log."""
        argv = [str(self.tool("llama-quantize")), *flags]
        if imatrix is not None:
            argv += ["--imatrix", str(imatrix)]
        return self._run([*argv, str(src), str(out), ftype, "1"])

    def imatrix(self, model: Path, text: Path, out: Path, ctx: int, chunks: int) -> str:
        """``llama-imatrix`` over ``chunks`` chunks of ``ctx`` tokens of ``text``; returns its
        log."""
        argv = [str(self.tool("llama-imatrix")), "-m", str(model), "-f", str(text)]
        argv += ["-o", str(out), "-c", str(ctx), "--chunks", str(chunks), "-t", "1"]
        return self._run(argv)


def find() -> LlamaCpp | None:
    """The finished build in the cache folder, or ``None``."""
    root = cache_root()
    if (root / ".built").is_file():
        return LlamaCpp(root)
    return None


def build() -> LlamaCpp:
    """Run the build script (idempotent; it waits for a build already under way)."""
    # The archive comes from the tests' shared download (the script would fetch its own).
    env = dict(os.environ, NNTRTOOL_LLAMA_CPP_SDIST=str(llama_cpp_sdist.sdist()))
    done = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        tail = "\n".join(done.stderr.splitlines()[-30:])
        raise RuntimeError(f"{BUILD_SCRIPT} failed ({done.returncode}):\n{tail}")
    return LlamaCpp(Path(done.stdout.strip().splitlines()[-1]))
