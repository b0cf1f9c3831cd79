"""Finds the stage folders of pipeline runs and reads what they recorded: scores, predictions and sizes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from ted import artifacts
from ted.errors import TedInputError
from ted.method.kinds import HeadKind, get_kind
from ted.pipelines.roles import ROLES

if TYPE_CHECKING:
    import numpy as np

RESULT_ROWS = (
    ("teacher", "teacher (fine-tuned)"),
    ("initial_student", "student (initialised, before training)"),
    ("student", "student (fine-tuned)"),
    ("kd", "student + KD"),
    ("lwd", "student + LWD"),
    ("ted", "student + TED"),
)
# Metrics shown beside the selection metric when a task reports them (SQuAD: exact and f1).
SHOWN_METRICS = (
    "accuracy",
    "f1",
    "matthews_correlation",
    "pearson",
    "spearmanr",
    "exact",
    "validation_mismatched_accuracy",
)
METRIC_NAMES = {
    "accuracy": "acc",
    "f1": "F1",
    "matthews_correlation": "MCC",
    "pearson": "Pearson",
    "spearmanr": "Spearman",
    "exact": "EM",
    "validation_mismatched_accuracy": "acc (mm)",
    "perplexity": "perplexity",
}
LM_EVAL_FILE = "lm_eval_results.json"  # ted.lm: what `ted lm-eval --output_dir` writes
# lm-eval columns: (task in the file, key, column name, shown in percent, higher is better).
LM_EVAL_COLUMNS = (
    ("wikitext", "perplexity", "WikiText ppl", False, False),
    ("lambada", "accuracy", "LAMBADA acc", True, True),
    ("lambada", "perplexity", "LAMBADA ppl", False, False),
)
PREDICTIONS_FILE = "eval_predictions.npz"  # stages.saving.EVAL_PREDICTIONS (not imported: it pulls in torch)


def model_folder(folder: str | Path) -> str:
    """Where a stage's model is: the folder itself, or for a stage that only scored a model (`evaluate`, no
    weights of its own) the model it scored."""
    if (Path(folder) / "config.json").is_file():
        return str(folder)
    return str(((artifacts.stage_info(folder) or {}).get("lineage") or {}).get("model") or folder)


def count_parameters(folder: str | Path) -> int:
    """Parameters of the stock model in a stage folder (filters and Stage I heads excluded); a folder holding
    GGUF files counts the tensors of its first one."""
    from safetensors import safe_open

    ggufs = sorted(Path(folder).glob("*.gguf")) if not (Path(folder) / "config.json").is_file() else []
    if ggufs:
        from gguf import GGUFReader

        return sum(int(t.n_elements) for t in GGUFReader(str(ggufs[0])).tensors)
    total = 0
    for file in sorted(Path(folder).glob("model*.safetensors")):
        with safe_open(str(file), "pt") as f:
            for key in f.keys():
                total += _numel(f.get_slice(key).get_shape())
    return total


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def selection_score(folder: str | Path) -> tuple[str, Optional[float]]:
    """The selection metric's name and its dev score in a stage folder (None when not recorded)."""
    stage = artifacts.stage_info(folder) or {}
    metric = stage.get("task", {}).get("selection_metric", "accuracy")
    results = artifacts.read_json(Path(folder) / artifacts.EVAL_RESULTS)
    return metric, results.get(f"eval_{metric}")


class TaskRuns:
    """Stage folders of one task: role -> seed -> folder, plus the run's pipeline.json."""

    def __init__(self, task: str) -> None:
        self.task = task
        self.stages: dict[str, dict[int, Path]] = {}
        self.pipeline: dict = {}

    def folders(self, role: str) -> list[Path]:
        return [self.stages[role][s] for s in sorted(self.stages.get(role, {}))]

    def info(self) -> dict:
        """The ted_stage.json of a stage that names the task's head (a student made by init-student names none)."""
        found = {}
        for seeds in self.stages.values():
            for folder in seeds.values():
                found = artifacts.stage_info(folder) or {}
                if found.get("task", {}).get("head"):
                    return found
        return found

    def label(self, role: str, name: str) -> str:
        """A row's name; a teacher scored as it is (no Stage 0, a causal LM) is the pre-trained teacher."""
        folder = next(iter(self.folders(role)), None)
        if role == "teacher" and folder is not None and (artifacts.stage_info(folder) or {}).get("stage") == "evaluate":
            return "teacher (pre-trained)"
        return name


def _seed_of(folder: Path, info: dict) -> int:
    name = folder.parent.name
    if name.startswith("seed") and name[4:].isdigit():
        return int(name[4:])
    return int(info.get("args", {}).get("seed", 0))


def find_runs(run_dirs: list[str | Path]) -> dict[str, TaskRuns]:
    """Every pipeline stage folder under the given run folders, grouped by task, role and seed."""
    runs: dict[str, TaskRuns] = {}
    for run_dir in map(Path, run_dirs):
        if not run_dir.is_dir():
            raise TedInputError(f"{run_dir} is not a folder. Pass the --output_dir of `ted pipeline`.")
        for path in sorted(run_dir.rglob(artifacts.STAGE_FILE)):
            folder = path.parent
            if any(p.endswith(".incomplete") or p.startswith(".") for p in folder.relative_to(run_dir).parts):
                continue
            info = artifacts.read_json(path)
            meta = info.get("pipeline") or {}
            role = meta.get("role") or (folder.name if folder.name in ROLES else None)
            if role is None:
                continue
            task = meta.get("task") or info.get("task", {}).get("name", "task")
            entry = runs.setdefault(task, TaskRuns(task))
            seed = meta["seed"] if "seed" in meta else _seed_of(folder, info)
            # A stage made once per task (seed None) is filed under seed 0: its role has no other seeds.
            entry.stages.setdefault(role, {})[int(seed or 0)] = folder
            for pipeline_file in (folder.parent.parent / "pipeline.json", folder.parent / "pipeline.json"):
                if not entry.pipeline and pipeline_file.is_file():
                    entry.pipeline = artifacts.read_json(pipeline_file)
    if not runs:
        raise TedInputError(
            f"No pipeline stage folders under {', '.join(map(str, run_dirs))} (run `ted pipeline` first)."
        )
    return runs


def metric_keys(runs: TaskRuns) -> list[str]:
    """The selection metric first, then the other task metrics the results hold."""
    info = runs.info()
    selection = info.get("task", {}).get("selection_metric", "accuracy")
    present: set[str] = set()
    for role, _ in RESULT_ROWS:
        for folder in runs.folders(role):
            present |= {k[5:] for k in artifacts.read_json(folder / artifacts.EVAL_RESULTS) if k.startswith("eval_")}
    return [selection] + [m for m in SHOWN_METRICS if m in present and m != selection]


def greater_is_better(runs: TaskRuns) -> bool:
    """Which way the selection metric improves (the task's head kind says: perplexity is lower-is-better)."""
    return task_kind(runs.info()).greater_is_better


def lm_eval_results(folder: Path) -> dict[str, dict]:
    """task -> the `ted lm-eval` result saved in a stage folder (`--output_dir` the folder or one below it)."""
    found: dict[str, dict] = {}
    for path in sorted(Path(folder).glob(LM_EVAL_FILE)) + sorted(Path(folder).glob(f"*/**/{LM_EVAL_FILE}")):
        result = artifacts.read_json(path)
        if isinstance(result, dict) and result.get("task"):
            found.setdefault(str(result["task"]), result)
    return found


def task_kind(info: dict) -> HeadKind:
    """The head kind of a run's task (ted_stage.json), classification when a stage does not say."""
    return get_kind(info.get("task", {}).get("head") or "classification")


def metric_scale(runs: TaskRuns) -> float:
    """Scores are shown in percent, like the paper (SQuAD metrics already are)."""
    return task_kind(runs.info()).metric_scale


def seed_values(folders: list[Path], key: str) -> list[float]:
    """The recorded dev value `key` of each folder that has it."""
    values = []
    for folder in folders:
        results = artifacts.read_json(folder / artifacts.EVAL_RESULTS)
        if isinstance(results.get(key), (int, float)):
            values.append(float(results[key]))
    return values


def eval_curve(history: list[dict], key: str) -> list[tuple[float, float]]:
    """(epoch, value) of the per-epoch evaluations (the final re-evaluation after training is left out)."""
    points: dict[float, float] = {}
    for entry in history:
        if "train_runtime" in entry:
            break
        if isinstance(entry.get(key), (int, float)) and "epoch" in entry:
            points.setdefault(float(entry["epoch"]), float(entry[key]))
    return sorted(points.items())


def metric_function(info: dict) -> Callable[[np.ndarray, np.ndarray], float]:
    """The selection metric of a stage's task as `fn(decoded predictions, labels) -> float`."""
    from ted.reporting.stats import fast_metric
    from ted.tasks.metrics import classification_metric_fn, glue_metric_fn, regression_metric_fn

    task = info.get("task", {})
    fast = fast_metric(task.get("selection_metric", "accuracy"))
    if fast is not None:
        return fast
    try:
        fn = glue_metric_fn(task.get("name", ""))
    except ValueError:
        labels = task.get("label_list") or []
        fn = regression_metric_fn() if task_kind(info).scores else classification_metric_fn(len(labels))
    key = task.get("selection_metric", "accuracy")
    return lambda preds, labels: fn(preds, labels)[key]


def decoded_predictions(folder: Path, kind: HeadKind) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(decoded predictions, labels) from a stage's eval_predictions.npz, or None."""
    import numpy as np

    from ted.tasks.metrics import class_predictions, regression_predictions

    path = folder / PREDICTIONS_FILE
    if not path.is_file():
        return None
    with np.load(path) as data:
        predictions, labels = data["predictions"], data["labels"]
    if kind.token_labels:  # causal LMs save each dev block's (summed NLL, scored tokens): used as they are
        return predictions, labels
    decode = regression_predictions if kind.scores else class_predictions
    return decode(predictions), labels


def constant_baseline(runs: TaskRuns) -> Optional[float]:
    """The best dev score of a model that predicts one class for every example (0 for a correlation of a
    constant), from the dev labels a stage saved in eval_predictions.npz; None when no stage saved them."""
    import numpy as np

    info = runs.info()
    kind = task_kind(info)
    if not kind.sequence_level:  # token-level outputs (span, next-token) have no one constant prediction
        return None
    metric = metric_function(info)
    for role, _ in RESULT_ROWS:
        for folder in runs.folders(role):
            found = decoded_predictions(folder, kind)
            if found is None:
                continue
            labels = found[1]
            if kind.scores:
                return float(metric(np.full(len(labels), float(np.mean(labels))), labels))
            return max(float(metric(np.full(len(labels), c), labels)) for c in np.unique(labels))
    return None
