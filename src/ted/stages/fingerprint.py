"""The identity of a run, by content: the one place that fingerprints a stage (its resume and its pipeline reuse).

Inputs are identified by what they hold, not where they are, so a run folder that is moved or copied (with its
inputs) still resumes and is still reused. Both fingerprints are built here from the same pieces, so the
stage and the pipeline cannot drift apart; their values are those earlier versions wrote (existing run folders
keep resuming and being reused).
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

# Left out of every fingerprint (a stage's run and the pipeline's reuse): where things go and how they are
# watched, not what is computed.
UNFINGERPRINTED = frozenset(
    {"output_dir", "logging_dir", "overwrite_output_dir", "report_to", "disable_tqdm", "run_name", "cache_dir"}
)
# Arguments that name inputs: a run fingerprint holds what they contain, not where they are. Data files are
# identified together (data_identity).
MODEL_PATH_ARGS = ("model_name_or_path", "teacher_model_name_or_path", "tokenizer_name")
DATA_PATH_ARGS = ("train_file", "validation_file", "data_dir")


def file_digest(path: Path) -> str:
    """Content identity of a file that survives a copy or move: sha256 of the whole file up to 256 MiB; above,
    of its size and 16 evenly spread 1 MiB blocks (weights of big models: cheap, and any retraining changes them)."""
    st = path.stat()
    return _digest(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4096)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    block = 1 << 20
    with open(path, "rb") as f:
        if size <= 256 * block:
            for chunk in iter(lambda: f.read(block), b""):
                h.update(chunk)
        else:
            h.update(str(size).encode())
            for i in range(16):
                f.seek((size - block) * i // 15)
                h.update(f.read(block))
    return h.hexdigest()[:24]


def data_identity(args: dict) -> list:
    """Content identity of the data files a run reads (--train_file, --validation_file, the GLUE task folder
    of --data_dir), in a fixed order; a path that does not exist is kept as given."""
    files: list[Path] = [Path(args[k]) for k in ("train_file", "validation_file") if args.get(k)]
    if args.get("data_dir"):
        from ted.tasks.glue import GLUE_TASKS, canonical_glue_name

        root = Path(args["data_dir"])
        glue = canonical_glue_name(args.get("task_name"))
        folder = root / GLUE_TASKS[glue].folder if glue and (root / GLUE_TASKS[glue].folder).is_dir() else root
        files += sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else [folder]
    return [[p.name, file_digest(p)] if p.is_file() else [str(p), "missing"] for p in files]


def path_identity(value: Any) -> Any:
    """What a path argument means for a fingerprint: a file by its content, a folder by the content of its
    files (not recursive); anything else (a hub id, a missing path, an already identified input) as given."""
    if not isinstance(value, str) or not value:
        return value
    path = Path(value)
    if path.is_file():
        return {"file": file_digest(path)}
    if path.is_dir():
        return {
            "folder": {
                p.name: file_digest(p) for p in sorted(path.iterdir()) if p.is_file() and not p.name.startswith(".")
            }
        }
    return value


def _settings(args: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in sorted(args.items()) if k not in UNFINGERPRINTED}


def _hash(payload: dict, length: int) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:length]


def fingerprint(args: dict[str, Any]) -> str:
    """Identity of a run (its checkpoints resume only a run with the same one): its settings, its input models
    and its data, by content. Stored in `<output>.incomplete/` and in ted_stage.json as `run_fingerprint`."""
    stable = {k: v for k, v in _settings(args).items() if k not in DATA_PATH_ARGS}
    for key in MODEL_PATH_ARGS:
        if key in stable:
            stable[key] = path_identity(stable[key])
    stable["data"] = data_identity(args)
    return _hash(stable, 16)


def stage_fingerprint(command: str, args: dict[str, Any], inputs: dict[str, Any]) -> str:
    """Identity of a stage the pipeline may reuse: the command, its settings, its data by content and its input
    models. `inputs` maps each model argument to a path or hub id (identified by content here) or to
    `{"stage": fingerprint}` for a model another stage of the run makes. Stored in ted_stage.json as `fingerprint`."""
    identified = {key: path_identity(value) for key, value in inputs.items()}
    payload = {"command": command, "args": _settings(args), "inputs": identified, "data": data_identity(args)}
    return _hash(payload, 20)
