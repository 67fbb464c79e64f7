"""Tokenizer files for a model converted from a GGUF: the GGUF's own tokenizer, turned into a
fast tokenizer by transformers (the ``torch`` extra) and saved as ``tokenizer.json`` and
``tokenizer_config.json``.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path


def gguf_tokenizer_files(gguf_path: Path) -> tuple[list[Path], str | None]:
    """The tokenizer files made from ``gguf_path``, or ``([], why not)`` in one line.

    The files lie in a temporary folder removed when the process ends.
    """
    try:
        from transformers import AutoTokenizer
        from transformers.utils import logging as tf_logging
    except ImportError:
        return [], (
            f"{gguf_path.name}'s tokenizer was not exported: turning a GGUF tokenizer into "
            "tokenizer.json needs transformers (pip install 'nntrtool[torch]'); or pass "
            "--tokenizer DIR"
        )
    folder = Path(tempfile.mkdtemp(prefix="nntr-gguf-tokenizer-"))
    atexit.register(shutil.rmtree, folder, True)
    verbosity = tf_logging.get_verbosity()
    tf_logging.set_verbosity_error()
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        tok.save_pretrained(str(folder))
    except Exception as exc:  # transformers raises many kinds; one line for the user
        first = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        return [], (
            f"{gguf_path.name}'s tokenizer could not be turned into tokenizer.json "
            f"({first}); pass --tokenizer DIR with the model's tokenizer files"
        )
    finally:
        tf_logging.set_verbosity(verbosity)
    files = sorted(p for p in folder.iterdir() if p.is_file())
    if not any(p.name == "tokenizer.json" for p in files):
        return [], f"{gguf_path.name}'s tokenizer has no fast form; pass --tokenizer DIR"
    return files, None
