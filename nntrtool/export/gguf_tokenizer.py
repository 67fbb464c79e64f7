"""Tokenizer files for a model converted from a GGUF: the GGUF's own tokenizer, turned into a
fast tokenizer by transformers (the ``torch`` extra) and saved as ``tokenizer.json`` and
``tokenizer_config.json``.

``AutoTokenizer.from_pretrained(folder, gguf_file=...)`` first builds the model's config from
the GGUF to pick the tokenizer class, and for most architectures it reads the whole file with
``gguf.GGUFReader`` to do so: seconds and most of a gigabyte for a 262k-token vocabulary, for a
class name. The class follows from the config's model type alone (when the GGUF's folder holds
no ``tokenizer_config.json`` naming another), and the family module already knows that type,
so the class is picked here the way ``AutoTokenizer`` picks it and asked to load the GGUF
itself: the same class, the same arguments, the same files, without the config pass. What the
family does not cover (an architecture read with ``--gguf-raw-names``, a llama GGUF whose name
says Mistral, which transformers reads as Mistral) goes through ``AutoTokenizer`` as before.
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
        load_gguf_tokenizer(gguf_path).save_pretrained(str(folder))
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


def load_gguf_tokenizer(gguf_path: Path):
    """The transformers tokenizer of ``gguf_path`` (needs transformers; raises what it raises)."""
    tok = _by_model_type(gguf_path)
    if tok is None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    return tok


def _model_type(gguf_path: Path) -> str | None:
    """The ``model_type`` transformers' GGUF config would have, where the family says it."""
    from nntrtool.architectures import for_gguf
    from nntrtool.sources.gguf_file import GGUFFile

    with GGUFFile(gguf_path) as gf:
        arch, name = gf.field("general.architecture"), gf.field("general.name")
    family = for_gguf(arch) if isinstance(arch, str) else None
    if family is None or not family.reads_gguf:
        return None
    if arch == "llama" and isinstance(name, str) and "mistral" in name.lower():
        return None  # transformers reads such a file as Mistral
    return family.model_type


def _by_model_type(gguf_path: Path):
    """The tokenizer ``AutoTokenizer`` would build from ``gguf_path``, without building the
    config first; None where that choice is not certain here."""
    if (gguf_path.parent / "tokenizer_config.json").exists():
        return None  # AutoTokenizer would read the class it names
    model_type = _model_type(gguf_path)
    if model_type is None:
        return None
    from transformers import AutoConfig
    from transformers.models.auto.tokenization_auto import TOKENIZER_MAPPING
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    try:
        config_class = type(AutoConfig.for_model(model_type))
    except ValueError:  # a model type this transformers does not know
        return None
    tokenizer_class = TOKENIZER_MAPPING.get(config_class, TokenizersBackend)
    if tokenizer_class is None:
        return None
    # The arguments AutoTokenizer passes on: it marks the call as its own and resolves the
    # revision (a local folder's is None).
    return tokenizer_class.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, _from_auto=True, revision=None
    )
