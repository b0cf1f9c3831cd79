"""Pipeline configuration: YAML presets, `${VAR:-default}` expansion, paths, CLI overrides, typing.

A pipeline file is a mapping:

    preset: minilm/rte                 # optional name, shown in reports
    shared_dir: ${TED_SHARED_DIR:-${REPO_ROOT}/../shared}
    task: rte                          # or tasks: [rte, mrpc]
    seeds: [42]
    teacher: ${shared_dir}/models/all-MiniLM-L6-v2
    student: ${shared_dir}/models/paraphrase-MiniLM-L3-v2
    baseline_init: pretrained          # or finetuned
    text_split: {file: text.txt, dev_documents: 100}   # causal LMs: one text file -> train / dev documents
    methods: [ted, kd, lwd]
    output_dir: runs/rte               # optional; --output_dir wins
    common: {data_dir: ${shared_dir}/data/glue, max_seq_length: 128}     # every stage that takes the key
    student_init: {...}                # optional: make the student from the teacher (ted init-student)
    teacher_finetune: {...}            # then one section per stage, same keys as the stage's CLI flags
    student_finetune: {...}
    teacher_stage1: {...}
    student_stage1: {...}
    ted: {...}
    kd: {...}
    lwd: {...}
    paper_results: {metrics: [accuracy], teacher: [86.3], ...}           # optional, for reports

`${NAME}` / `${NAME:-default}` read a top-level scalar of the file, then the environment, then the
built-ins `REPO_ROOT` (the nearest folder above the file holding pyproject.toml or .git) and
`CONFIG_DIR`. Path values starting with `./` or `../` are relative to the file's folder.
"""

from __future__ import annotations

import os
import typing
from collections.abc import Callable, Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any, Optional

from ted.errors import TedInputError
from ted.pipelines.roles import ROLE_SECTION

# One section per stage that has settings of its own, in the order the pipeline runs them.
STAGE_SECTIONS = tuple(section for section in ROLE_SECTION.values() if section)
SECTIONS = ("common",) + STAGE_SECTIONS
TOP_KEYS = {
    "preset",
    "description",
    "shared_dir",
    "task",
    "tasks",
    "seeds",
    "teacher",
    "student",
    "baseline_init",
    "methods",
    "output_dir",
    "paper_results",
    "text_split",
}
# Set by the pipeline itself for every stage; a section may not set them.
PIPELINE_KEYS = {"model_name_or_path", "teacher_model_name_or_path", "output_dir", "seed", "overwrite_output_dir"}
PATH_KEYS = {
    "shared_dir",
    "teacher",
    "student",
    "output_dir",
    "data_dir",
    "train_file",
    "validation_file",
    "tokenizer_name",
    "cache_dir",
    "logging_dir",
    "file",
}
BASELINE_INITS = ("pretrained", "finetuned")

# `${NAME}` -> its value (a config scalar, an environment variable, a built-in), or None when unset.
Lookup = Callable[[str], Any]


def read_yaml(path: Path) -> dict:
    import yaml

    if not path.is_file():
        raise TedInputError(f"Pipeline config {path} does not exist.")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise TedInputError(f"{path} must hold a mapping (task, teacher, student, common, ted, ...).")
    return data


def repo_root(start: Path) -> Path:
    for folder in [start, *start.parents]:
        if (folder / "pyproject.toml").is_file() or (folder / ".git").exists():
            return folder
    return start


# ----------------------------------------------------------------------------------------- ${...}


def expand(text: str, lookup: Lookup) -> str:
    """Replace `${NAME}` and `${NAME:-default}` (defaults may nest `${...}`)."""
    out, i = [], 0
    while (start := text.find("${", i)) >= 0:
        out.append(text[i:start])
        end, depth = start + 2, 1
        while end < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            end += 1
        if depth:
            raise TedInputError(f"Unclosed '${{' in config value {text!r}.")
        body = text[start + 2 : end - 1]
        name, _, default = body.partition(":-")
        value = lookup(name.strip())
        if value in (None, ""):
            if ":-" not in body:
                raise TedInputError(f"${{{name}}} in {text!r} is not set (no config key or environment variable).")
            value = expand(default, lookup)
        out.append(str(value))
        i = end
    out.append(text[i:])
    return "".join(out)


def _expand_tree(value: Any, lookup: Lookup) -> Any:
    if isinstance(value, str):
        return expand(value, lookup)
    if isinstance(value, list):
        return [_expand_tree(v, lookup) for v in value]
    if isinstance(value, dict):
        return {k: _expand_tree(v, lookup) for k, v in value.items()}
    return value


def _resolve_paths(value: Any, key: Optional[str], base: Path) -> Any:
    if isinstance(value, dict):
        return {k: _resolve_paths(v, k, base) for k, v in value.items()}
    if key in PATH_KEYS and isinstance(value, str) and (value.startswith(("./", "../")) or value in (".", "..")):
        return os.path.normpath(str(base / value))
    if key in PATH_KEYS and isinstance(value, str) and value.startswith("~"):
        return os.path.expanduser(value)
    if key in PATH_KEYS and isinstance(value, str) and os.path.isabs(value):
        return os.path.normpath(value)
    return value


def load_file(path: str | Path, top_overrides: Optional[dict] = None) -> dict:
    """One pipeline file, expanded and with its relative paths resolved; `top_overrides` win."""
    path = Path(path).resolve()
    raw = read_yaml(path)
    raw.update(top_overrides or {})
    unknown = set(raw) - TOP_KEYS - set(SECTIONS)
    if unknown:
        raise TedInputError(
            f"{path}: unknown key(s) {sorted(unknown)}. Top-level keys: {sorted(TOP_KEYS)}; stage sections: "
            f"{', '.join(SECTIONS)}."
        )
    builtins = {"REPO_ROOT": str(repo_root(path.parent)), "CONFIG_DIR": str(path.parent)}
    scalars: dict[str, Any] = {}

    def lookup(name: str) -> Any:
        if name in scalars:
            return scalars[name]
        return os.environ.get(name, builtins.get(name))

    # Top-level scalars first, in file order, so later ones (teacher) can use earlier ones (shared_dir).
    for key, value in raw.items():
        if isinstance(value, str):
            scalars[key] = _resolve_paths(expand(value, lookup), key, path.parent)
    data = {k: (scalars[k] if k in scalars else _expand_tree(v, lookup)) for k, v in raw.items()}
    data = {k: _resolve_paths(v, k, path.parent) for k, v in data.items()}
    data["config_file"] = str(path)
    return data


# ------------------------------------------------------------------------------------- CLI overrides


def parse_overrides(argv: list[str]) -> tuple[list[str], dict]:
    """`--config A.yaml [B.yaml] --seeds 1 2 --num_train_epochs 1 --ted.kl_alpha 5` -> (files, overrides).

    Top-level keys stay top-level, `--section.key v` goes to that section, anything else to `common`.
    A flag with no value is `true`; a flag with several values is a list.
    """
    configs: list[str] = []
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--"):
            raise TedInputError(f"Unexpected argument {token!r}; options look like --key value.")
        key = token[2:].replace("-", "_") if "." not in token else token[2:]
        values = []
        i += 1
        while i < len(argv) and not argv[i].startswith("--"):
            values.append(argv[i])
            i += 1
        if key == "config":
            if not values:
                raise TedInputError("--config needs at least one YAML file.")
            configs.extend(values)
            continue
        value: Any = True if not values else (values[0] if len(values) == 1 else values)
        if key in ("seeds", "tasks", "methods") and not isinstance(value, list):
            value = [value]
        set_override(overrides, key, value)
    return configs, overrides


def set_override(overrides: dict, key: str, value: Any) -> None:
    if "." in key:
        section, _, name = key.partition(".")
        if section not in SECTIONS:
            raise TedInputError(f"--{key}: unknown section {section!r}; choose one of {', '.join(SECTIONS)}.")
        overrides.setdefault(section, {})[name.replace("-", "_")] = value
    elif key in TOP_KEYS:
        # Paths given on the command line are relative to the current folder (teacher/student may be hub ids).
        local = key not in ("teacher", "student") or os.path.exists(value)
        if key in PATH_KEYS and isinstance(value, str) and local:
            value = os.path.abspath(os.path.expanduser(value))
        overrides[key] = value
    else:
        overrides.setdefault("common", {})[key] = value


# ------------------------------------------------------------------------------------------- typing


def field_types(groups: Iterable[type]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for cls in groups:
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            if f.init:
                out[f.name] = hints.get(f.name, f.type)
    return out


def _members(hint: Any) -> set:
    """The plain types a hint allows: Optional[list[str]] -> {list, NoneType}."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (list, tuple):
        return {list}
    if not args:
        return {origin or hint}
    return set().union(*(_members(arg) for arg in args))


def _item_hint(hint: Any) -> Any:
    """The element type of the list a hint allows (str when unknown)."""
    if typing.get_origin(hint) in (list, tuple):
        return (typing.get_args(hint) or (str,))[0]
    for arg in typing.get_args(hint):
        if typing.get_origin(arg) in (list, tuple):
            return _item_hint(arg)
    return str


def coerce(name: str, value: Any, hint: Any) -> Any:
    """Strings from YAML or the command line to the field's type (`6e-5` is a string in YAML 1.1)."""
    kinds = _members(hint)
    if list in kinds and str not in kinds:
        items = value if isinstance(value, list) else [value]
        return [coerce(name, v, _item_hint(hint)) for v in items]
    if isinstance(value, int) and not isinstance(value, bool) and float in kinds and int not in kinds:
        return float(value)  # 20 in YAML and "20" on the command line must fingerprint alike
    if not isinstance(value, str) or str in kinds:
        return value
    try:
        if bool in kinds:
            low = value.strip().lower()
            if low in ("true", "yes", "1", "on"):
                return True
            if low in ("false", "no", "0", "off"):
                return False
            raise ValueError(value)
        if int in kinds:
            return int(value)
        if float in kinds:
            return float(value)
    except ValueError as err:
        names = "/".join(sorted(getattr(k, "__name__", str(k)) for k in kinds))
        raise TedInputError(f"--{name}: {value!r} is not a valid {names}.") from err
    return value
