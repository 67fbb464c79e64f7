#!/usr/bin/env bash
# Build llama.cpp's llama-quantize and llama-imatrix (CPU only) for nntrtool's comparison tests
# (tests/test_llama_cpp.py), in a cache folder outside the repository.
#
# The llama.cpp sources come from the llama-cpp-python source distribution on PyPI, which vendors
# a full llama.cpp tree (vendor/llama.cpp, with convert_hf_to_gguf.py and its gguf-py). The
# version is pinned below: llama-cpp-python 0.3.36 carries llama.cpp commit 0c1e57098. The
# converter's one extra requirement for the tests' models, sentencepiece, is installed into the
# cache folder too (python/), never into the environment running the tests.
#
#   tools/llama_cpp/build.sh        # prints the cache folder on its last line
#
# Idempotent: a finished build (marked by the file .built) is reused at once; an interrupted one
# resumes where it stopped. About 3 minutes on 2 cores.
# Environment:
#   NNTRTOOL_LLAMA_CPP_DIR   the cache folder (default ~/.cache/nntrtool-tests/llama.cpp-VERSION)
#   NNTRTOOL_LLAMA_CPP_JOBS  parallel compile jobs (default 2)
#   NNTRTOOL_LLAMA_CPP_SDIST the source distribution, already downloaded (its SHA-256 is checked)
#   PYTHON                   the Python whose pip downloads (default python3)
set -euo pipefail

VERSION=0.3.36
LLAMA_CPP_COMMIT=0c1e57098
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
SENTENCEPIECE="sentencepiece>=0.1.98,<0.3.0"

ROOT="${NNTRTOOL_LLAMA_CPP_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/nntrtool-tests/llama.cpp-$VERSION}"
JOBS="${NNTRTOOL_LLAMA_CPP_JOBS:-2}"
PYTHON="${PYTHON:-python3}"
TARGETS=(llama-quantize llama-imatrix)

if [[ -f "$ROOT/.built" ]]; then
    echo "$ROOT"
    exit 0
fi
mkdir -p "$ROOT"
cd "$ROOT"
# One build at a time (parallel test workers may all ask): the others wait, then reuse it.
exec 9>.lock
flock 9
if [[ -f .built ]]; then
    echo "$ROOT"
    exit 0
fi

if [[ ! -d src/vendor/llama.cpp ]]; then
    sdist="${NNTRTOOL_LLAMA_CPP_SDIST:-llama_cpp_python-$VERSION.tar.gz}"
    if [[ ! -f "$sdist" ]]; then
        echo "downloading llama-cpp-python $VERSION (source distribution) from PyPI" >&2
        rm -rf dl
        "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: \
            "llama-cpp-python==$VERSION" -d dl >&2
        mv "dl/$sdist" "$sdist"
        rm -rf dl
    fi
    echo "$SDIST_SHA256  $sdist" | sha256sum --check --quiet -
    rm -rf src.tmp && mkdir src.tmp
    tar -xzf "$sdist" -C src.tmp --strip-components=1
    mv src.tmp src
fi

if [[ ! -f python/.installed ]]; then
    rm -rf python
    "$PYTHON" -m pip install --quiet --no-deps --only-binary :all: --target python \
        "$SENTENCEPIECE" >&2
    touch python/.installed
fi

echo "building ${TARGETS[*]} of llama.cpp $LLAMA_CPP_COMMIT in $ROOT/build" >&2
generator=(-G "Unix Makefiles")
if command -v ninja >/dev/null; then generator=(-G Ninja); fi
cmake -S src/vendor/llama.cpp -B build "${generator[@]}" \
    -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=OFF \
    -DGGML_OPENMP=OFF \
    -DGGML_CCACHE=OFF \
    -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_UI=OFF >&2
cmake --build build -j "$JOBS" --target "${TARGETS[@]}" >&2

mkdir -p bin
for t in "${TARGETS[@]}"; do
    cp "build/bin/$t" "bin/$t"
done
touch .built
echo "$ROOT"
