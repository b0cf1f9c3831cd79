"""`text_split:` in a pipeline file: one plain-text file cut into training and dev documents for causal-LM runs.

    text_split: {file: ${shared_dir}/data/lm/wikitext-2/valid.txt, dev_documents: 129}

Documents are what `--task_name causal_lm` reads from a text file: runs of non-blank lines separated by blank
ones. The last `dev_documents` documents become OUTPUT/<task>/data/dev.txt and the others train.txt, and every
stage reads those two files (`train_file` / `validation_file`). Holding out the end of the file keeps whole
articles apart when the count ends on an article boundary. The files are written when the run is planned (their
content is part of every stage's fingerprint), and rewritten only when their content would change.
"""

from __future__ import annotations

from pathlib import Path

from ted import artifacts
from ted.errors import TedInputError

KEYS = {"file", "dev_documents"}
FOLDER = "data"


def documents(text: str) -> list[str]:
    """Runs of non-blank lines, separated by blank (or whitespace-only) lines, as tasks/causal_lm reads them."""
    docs, current = [], []
    for line in text.splitlines() + [""]:
        if line.strip():
            current.append(line)
        elif current:
            docs.append("\n".join(current))
            current = []
    return docs


def check_spec(spec: object, common: dict) -> tuple[Path, int]:
    """The file and the dev document count of a `text_split` mapping, refused in one line when unusable."""
    if not isinstance(spec, dict) or set(spec) != KEYS:
        raise TedInputError("text_split needs exactly `file: PATH` and `dev_documents: N` (the last N documents).")
    if common.get("train_file") or common.get("validation_file"):
        raise TedInputError("text_split writes train_file and validation_file itself: drop them from `common`.")
    path, count = Path(str(spec["file"])), spec["dev_documents"]
    if not path.is_file():
        raise TedInputError(f"text_split: {path} is not a file. Pass a plain-text file.")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise TedInputError(f"text_split: dev_documents must be a whole number >= 1, got {count!r}.")
    return path, count


def write_split(spec: object, common: dict, task_dir: Path) -> tuple[str, str]:
    """Write (or keep) OUTPUT/<task>/data/{train,dev}.txt; returns their paths."""
    path, count = check_spec(spec, common)
    docs = documents(path.read_text(encoding="utf-8-sig", errors="strict"))
    if count >= len(docs):
        raise TedInputError(
            f"text_split: {path} holds {len(docs)} documents; dev_documents {count} leaves none for training."
        )
    folder = task_dir / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, part in (("train.txt", docs[:-count]), ("dev.txt", docs[-count:])):
        target, text = folder / name, "\n\n".join(part) + "\n"
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            artifacts.atomic_write(target, text)
        out.append(str(target))
    return out[0], out[1]


def apply_text_split(cfg: dict, task_dir: Path) -> None:
    """Point `common.train_file` / `common.validation_file` at the split files when the config has `text_split`."""
    if cfg.get("text_split") is None or cfg.get("text_split_files"):
        return  # none, or already written for this config
    train, dev = write_split(cfg["text_split"], {**cfg["common"], **cfg["cli"]["common"]}, task_dir)
    cfg["common"].update(train_file=train, validation_file=dev)
    cfg["text_split_files"] = [train, dev]
