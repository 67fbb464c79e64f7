"""Which GGUF file a source names: a ``.gguf`` path, one of a folder's, or one of a hub repo's."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from nntrtool.errors import SourceError, UsageError
from nntrtool.sources.base import ModelSource


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.gguf") if p.is_file())


def pick_gguf(path: Path, gguf_file: str | None) -> Path | None:
    """The GGUF file ``path`` stands for, or None when it is not a GGUF source.

    A ``.gguf`` file is itself; a folder is a GGUF source when ``gguf_file`` names one of its
    files, or when it holds ``.gguf`` files and no Hugging Face weights (several need
    ``gguf_file``).
    """
    if path.is_file():
        if path.name.lower().endswith(".gguf"):
            if gguf_file is not None and gguf_file != path.name:
                raise UsageError(
                    f"--gguf-file {gguf_file} names another file than {path.name}; give the "
                    "folder, or drop --gguf-file"
                )
            return path
        if gguf_file is not None:
            raise UsageError(f"--gguf-file applies to GGUF sources, and {path.name} is not one")
        return None
    if not path.is_dir():
        return None
    found = _listing(path)
    if gguf_file is not None:
        chosen = path / gguf_file
        if Path(gguf_file).name != gguf_file or not chosen.is_file():
            listed = ", ".join(found) if found else "none"
            raise SourceError(f"no GGUF file {gguf_file!r} in {path} (GGUF files there: {listed})")
        return chosen
    if not found or _has_hf_weights(path):
        return None
    if len(found) > 1:
        raise UsageError(
            f"{path} holds {len(found)} GGUF files ({', '.join(found)}); pick one with "
            "--gguf-file NAME"
        )
    return path / found[0]


def _has_hf_weights(folder: Path) -> bool:
    from nntrtool.sources.folder import find_weights

    if not (folder / "config.json").is_file():
        return False
    try:
        find_weights(folder)
    except SourceError:
        return False
    return True


def gguf_from_hub(
    repo_id: str, revision: str | None, gguf_file: str, *, raw_names: bool = False
) -> ModelSource:
    """Open ``gguf_file`` of the hub repo ``repo_id``: from the cache, else downloaded alone."""
    from nntrtool.sources.gguf_model import open_gguf
    from nntrtool.sources.hub import resolve_hub

    def is_complete(folder: Path) -> str | None:
        return None if (folder / gguf_file).is_file() else f"no {gguf_file}"

    def patterns(repo_files: Iterable[str]) -> list[str]:
        files = set(repo_files)
        if gguf_file not in files:
            ggufs = sorted(f for f in files if f.endswith(".gguf"))
            raise SourceError(
                f"the repo has no file {gguf_file!r} (GGUF files: {', '.join(ggufs) or 'none'})"
            )
        return [gguf_file]

    folder, origin = resolve_hub(
        repo_id, revision, is_complete, marker=gguf_file, patterns=patterns
    )
    path = folder / gguf_file
    return open_gguf(path, {**origin, "path": str(path)}, raw_names=raw_names)
