"""Hugging Face ids (``org/name``): found in the local hub cache first, downloaded only if needed.

The cache is looked up without any network call, so a cached model converts offline. When it is
not cached (or only partly, say config without weights), and the hub is not switched off with
``HF_HUB_OFFLINE``, only the files a conversion needs are downloaded: config, generation config,
tokenizer files, and one set of weights (safetensors when the repo has them, else ``.bin``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from nntrtool.errors import SourceError

_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_COMMIT = re.compile(r"[0-9a-f]{40}")

#: Files besides the weights that a conversion (and export) keeps from a repo.
SIDE_FILES = [
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template*",
]

_WEIGHT_PATTERNS_SHARDED_ST = ["model.safetensors.index.json", "model-*.safetensors"]
_WEIGHT_PATTERNS_SHARDED_BIN = ["pytorch_model.bin.index.json", "pytorch_model-*.bin"]


def looks_like_hub_id(spec: str) -> bool:
    """True for ``org/name``; paths (``./x``, ``/x``, ``~/x``, ``x.safetensors``) are not ids."""
    if spec.startswith((".", "/", "~")) or "\\" in spec or len(spec) > 96:
        return False
    if spec.lower().endswith((".safetensors", ".bin", ".pt", ".pth", ".json", ".ckpt", ".gguf")):
        return False
    return bool(_REPO_ID.fullmatch(spec)) and ".." not in spec and "--" not in spec


def hub_cache_dir() -> Path:
    """The hub cache folder, read from the environment at call time (``HF_HUB_CACHE``, ``HF_HOME``)."""
    env = os.environ
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(var):
            return Path(env[var]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).expanduser()


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` switches the hub off (read at call time)."""
    value = os.environ.get("HF_HUB_OFFLINE")
    if value is not None:
        return value.strip().upper() in {"1", "ON", "YES", "TRUE"}
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def weight_patterns(repo_files: Iterable[str]) -> list[str]:
    """The allow-patterns that fetch one set of weights from a repo listing, plus side files."""
    files = set(repo_files)
    if "model.safetensors.index.json" in files:
        weights = _WEIGHT_PATTERNS_SHARDED_ST
    elif "model.safetensors" in files:
        weights = ["model.safetensors"]
    elif "pytorch_model.bin.index.json" in files:
        weights = _WEIGHT_PATTERNS_SHARDED_BIN
    elif "pytorch_model.bin" in files:
        weights = ["pytorch_model.bin"]
    elif any(f.endswith(".safetensors") and "/" not in f for f in files):
        weights = ["*.safetensors"]
    else:
        raise SourceError(
            "the repo has no weights nntrtool can read (expected model.safetensors, "
            "model.safetensors.index.json or pytorch_model.bin at its top level)"
        )
    return SIDE_FILES + weights


def find_cached(
    repo_id: str, revision: str | None, cache_dir: Path, marker: str = "config.json"
) -> tuple[Path, str] | None:
    """``(snapshot folder, commit)`` of a cached snapshot holding ``marker``, or None."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(
        repo_id, marker, cache_dir=str(cache_dir), revision=revision or "main"
    )
    if not isinstance(found, str):
        return None
    folder = Path(found).parent
    return folder, folder.name


def resolve_hub(
    repo_id: str,
    revision: str | None,
    is_complete: Callable[[Path], str | None],
    *,
    marker: str = "config.json",
    patterns: Callable[[Iterable[str]], list[str]] = weight_patterns,
) -> tuple[Path, dict[str, Any]]:
    """The local folder of ``repo_id`` at ``revision``, from the cache or downloaded.

    ``is_complete(folder)`` returns None when the folder holds a whole model, else what is
    missing. ``marker`` is the file a cached snapshot must hold (a model's config, an adapter's
    config) and ``patterns(repo files)`` what to download. Returns the folder and the source's
    ``origin`` dict.
    """
    cache = hub_cache_dir()
    ref = revision or "main"
    missing = "nothing cached"
    cached = find_cached(repo_id, revision, cache, marker)
    if cached is not None:
        folder, commit = cached
        missing = is_complete(folder) or ""
        if not missing:
            return folder, _origin(repo_id, ref, commit, folder)
    if hub_offline():
        state = "is not in" if cached is None else "is only partly in"
        detail = "" if cached is None else f" ({missing})"
        raise SourceError(
            f"{repo_id} (revision {ref}) {state} the local Hugging Face cache {cache}{detail} and "
            "the hub is offline (HF_HUB_OFFLINE is set); download it once online, or pass a "
            "local folder"
        )
    folder, commit = _download(repo_id, revision, cache, patterns)
    missing = is_complete(folder)
    if missing:
        raise SourceError(
            f"{repo_id} (revision {ref}) was downloaded but is incomplete: {missing}; run again "
            "to fetch the rest, or remove it from the Hugging Face cache"
        )
    return folder, _origin(repo_id, ref, commit, folder)


def _origin(repo_id: str, ref: str, commit: str, folder: Path) -> dict[str, Any]:
    return {"kind": "hub", "path": str(folder), "repo_id": repo_id, "revision": commit, "ref": ref}


def _download(
    repo_id: str,
    revision: str | None,
    cache: Path,
    patterns_for: Callable[[Iterable[str]], list[str]] = weight_patterns,
) -> tuple[Path, str]:
    from huggingface_hub import HfApi, snapshot_download

    errors = _hub_errors()
    ref = revision or "main"
    try:
        info = HfApi().model_info(repo_id, revision=revision)
        commit = info.sha or ref
        patterns = patterns_for(s.rfilename for s in (info.siblings or []))
        folder = snapshot_download(
            repo_id, revision=commit, cache_dir=str(cache), allow_patterns=patterns
        )
    except SourceError as exc:
        raise SourceError(f"{repo_id} (revision {ref}): {exc}") from None
    except errors["RevisionNotFoundError"]:
        raise SourceError(f"{repo_id} has no revision {ref!r} on the Hugging Face hub") from None
    except errors["GatedRepoError"]:
        raise SourceError(
            f"{repo_id} is gated on the Hugging Face hub: accept its terms on the website and log "
            "in (hf auth login), or pass a local folder"
        ) from None
    except errors["RepositoryNotFoundError"]:
        raise SourceError(
            f"{repo_id} was not found on the Hugging Face hub (a private repo needs a login: "
            "hf auth login); check the id, or pass a local folder"
        ) from None
    except Exception as exc:  # network failures come in many types
        first = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise SourceError(
            f"cannot download {repo_id} (revision {ref}) from the Hugging Face hub and it is not "
            f"in the local cache {cache}: {first}"
        ) from None
    return Path(folder), commit if _COMMIT.fullmatch(commit) else Path(folder).name


def _hub_errors() -> dict[str, type[BaseException]]:
    try:
        from huggingface_hub import errors as mod
    except ImportError:  # older huggingface_hub keeps them in utils
        from huggingface_hub import utils as mod
    names = ("RevisionNotFoundError", "GatedRepoError", "RepositoryNotFoundError")
    return {n: getattr(mod, n) for n in names}
