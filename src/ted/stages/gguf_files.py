"""Find and check the GGUF weights file of a model folder: one `*.gguf` beside no config.json, or `--gguf_file NAME`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from ted.errors import TedInputError

GGUF_SUFFIX = ".gguf"

# Files a tokenizer is loaded from; when a GGUF folder has none, the tokenizer is rebuilt from the GGUF metadata.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def resolve_gguf_file(folder: Path, gguf_file: Optional[str] = None) -> Optional[str]:
    """The GGUF file (a name inside `folder`) the model is loaded from, or None for a Hugging Face folder.

    With `gguf_file`, that file must be in the folder. Without it, a folder with a config.json is a Hugging Face
    folder, and a folder without one is a GGUF model when it holds exactly one `*.gguf` file."""
    if gguf_file:
        if Path(gguf_file).name != gguf_file:
            raise TedInputError(f"--gguf_file takes a file name inside the model folder, not a path: got {gguf_file}.")
        if not (folder / gguf_file).is_file():
            found = ", ".join(_gguf_names(folder)) or "none"
            raise TedInputError(f"--gguf_file {gguf_file} is not in {folder} (its .gguf files: {found}).")
        check_gguf_file(folder / gguf_file)
        return gguf_file
    if (folder / "config.json").is_file():
        return None
    names = _gguf_names(folder)
    if len(names) > 1:
        raise TedInputError(
            f"{folder} holds {len(names)} .gguf files ({', '.join(names)}): pass --gguf_file NAME to pick one."
        )
    if not names:
        return None
    check_gguf_file(folder / names[0])
    return names[0]


def _gguf_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(f"*{GGUF_SUFFIX}") if p.is_file())


def check_gguf_file(path: Path) -> None:
    """The file parses as GGUF and holds every tensor it declares (a truncated copy does not)."""
    from gguf import GGUFReader

    try:
        GGUFReader(str(path))
    except (ValueError, IndexError, OSError, KeyError) as err:
        raise TedInputError(
            f"GGUF file {path} is damaged or not a GGUF file ({path.stat().st_size:,} bytes: {err}). "
            "Copy or download it again."
        ) from None


def has_tokenizer_files(folder: Path) -> bool:
    """Whether a GGUF folder carries its tokenizer as Hugging Face files (faster than rebuilding it from the GGUF)."""
    return any((folder / name).is_file() for name in TOKENIZER_FILES)


def looks_like_local_path(name: str) -> bool:
    """A hub id is `name` or `owner/name`; anything else (./x, /x, ~/x, a/b/c, a Windows path) is a folder."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def is_hub_id(name_or_path: str) -> bool:
    """Not a local folder: a hub repository id (`name` or `owner/name`), which transformers downloads from."""
    return not Path(name_or_path).expanduser().exists() and not looks_like_local_path(name_or_path)


def gguf_for(name_or_path: Optional[str], gguf_file: Optional[str]) -> Optional[str]:
    """A run's --gguf_file for one of its models: the name when that model's folder holds the file, or when the model
    is a hub id (transformers fetches the file from the repository); else None. The option applies to every model
    folder holding a file of that name and to every hub id of the run: student and teacher alike."""
    if not gguf_file or not name_or_path:
        return None
    if (Path(name_or_path).expanduser() / gguf_file).is_file() or is_hub_id(name_or_path):
        return gguf_file
    return None


def check_gguf_option(gguf_file: Optional[str], paths: tuple[Optional[str], ...]) -> None:
    """A --gguf_file that no model folder of the run holds is one line (a path, or a name in none of them)."""
    if not gguf_file or any(gguf_for(p, gguf_file) for p in paths):
        return
    if Path(gguf_file).name != gguf_file or len(paths) == 1:
        resolve_gguf_file(Path(str(paths[0])).expanduser(), gguf_file)  # its own line: a path, or not in the folder
    raise TedInputError(
        f"--gguf_file {gguf_file} is in none of the model folders ({', '.join(map(str, paths))}). Pass the name of "
        "a .gguf file inside the model's or the teacher's folder."
    )
