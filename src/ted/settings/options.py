"""The options ted defines itself, as plain dataclasses that import neither torch nor transformers, so that
`ted.settings.parse` can check their values before the seconds-long import of `transformers.TrainingArguments`.

`ted.settings.training_args` adds the Trainer's options (`TedTrainingArguments`) and re-exports these classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


def option(default: Any = None, *, help: str, **kwargs: Any) -> Any:
    """A dataclass field with its `--help` text (HfArgumentParser shows `metadata["help"]`); every option has one."""
    if "default_factory" not in kwargs:
        kwargs["default"] = default
    return field(metadata={"help": help}, **kwargs)


@dataclass
class ModelArguments:
    _argument_group_name = "model options"  # a help section (HfArgumentParser)

    model_name_or_path: Optional[str] = option(
        None, help="Model to train or score: a hub id, a Hugging Face folder or a ted stage folder."
    )
    tokenizer_name: Optional[str] = option(
        None, help="Tokenizer to use (default: the one saved with --model_name_or_path)."
    )
    cache_dir: Optional[str] = option(None, help="Where hub downloads are cached.")
    gguf_file: Optional[str] = option(
        None, help="The .gguf file (a name) to load, dequantised, from every model folder holding it: teacher's too."
    )
    hidden_dropout_prob: Optional[float] = option(
        None, help="Override the model's hidden dropout (the paper sets 0 for RTE)."
    )
    attention_probs_dropout_prob: Optional[float] = option(None, help="Override the model's attention dropout.")
    classifier_dropout: Optional[float] = option(
        None, help="Override the dropout before the task head (DeBERTa: cls_dropout)."
    )


@dataclass
class DataArguments:
    _argument_group_name = "data options"

    task_name: Optional[str] = option(
        None,
        help="GLUE task (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli) or 'custom' for "
        "--train_file/--validation_file data. Default: custom when files are given.",
    )
    data_dir: Optional[str] = option(
        None, help="Folder of GLUE task folders in the original TSV format (DIR/RTE/train.tsv, ...)."
    )
    dataset_name: Optional[str] = option(
        None, help="Hub dataset id: GLUE tasks (default: nyu-mll/glue) or causal_lm text (e.g. wikitext)."
    )
    dataset_config_name: Optional[str] = option(None, help="causal_lm: the hub dataset's configuration, if any.")
    validation_split_percentage: Optional[int] = option(None, help="causal_lm hub data: dev = first P percent of train")
    train_file: Optional[str] = option(None, help="CSV/TSV/JSON/JSONL training file.")
    validation_file: Optional[str] = option(None, help="CSV/TSV/JSON/JSONL dev file.")
    text_columns: Optional[list[str]] = option(
        None, help="One or two text columns of a custom file (default: auto-detected)."
    )
    label_column: str = option("label", help="Label column of a custom file.")
    label_list: Optional[list[str]] = option(
        None, help="Label names in id order for custom data (default: sorted labels of the train file)."
    )
    task_type: Optional[str] = option(
        None, help="classification or regression for custom data (default: inferred from the labels)."
    )
    max_seq_length: Optional[int] = option(
        None, help="Truncate inputs to this many tokens (default: 128; SQuAD 384 as in the paper)."
    )
    pad_to_max_length: bool = option(False, help="Pad every batch to max_seq_length (default: dynamic padding).")
    doc_stride: int = option(128, help="SQuAD: overlap between windows of a long context.")
    n_best_size: int = option(20, help="SQuAD: start/end candidates kept per window.")
    max_answer_length: int = option(30, help="SQuAD: longest answer span, in tokens.")
    null_score_diff_threshold: float = option(
        0.0, help="SQuAD 2.0: predict no answer when null score - best span score > this."
    )
    max_train_samples: Optional[int] = option(None, help="Keep the first N train examples (causal_lm: blocks or rows).")
    max_eval_samples: Optional[int] = option(None, help="Keep the first N dev examples (causal_lm: as above).")
    # --task_name causal_lm (tasks/causal_lm.py, docs/language-models.md).
    block_size: Optional[int] = option(
        None, help="causal_lm: tokens per packed training block (default: min(1024, the model's positions))."
    )
    line_by_line: bool = option(
        False, help="causal_lm .txt files: every non-empty line is a document (default: blank lines separate them)."
    )
    text_column: Optional[str] = option(
        None, help="causal_lm CSV/JSON(L) files or hub dataset: the column holding each document (default: text)."
    )
    prompt_column: Optional[str] = option(
        None, help="causal_lm CSV/JSON(L): prompt column; with --completion_column only completion tokens are scored."
    )
    completion_column: Optional[str] = option(
        None, help="causal_lm CSV/JSON(L): completion column (rows are padded, not packed; see --prompt_column)."
    )
    messages_column: Optional[str] = option(
        None, help="causal_lm JSON(L): chats ([{role, content}, ...]) in the chat template; assistant turns scored."
    )


@dataclass
class FilterArguments:
    _argument_group_name = "filter options (Stage I and II)"

    filter_interval: int = option(
        1, help="Filter on layer i (0-based) when i+1 is a multiple of filter_interval (student)."
    )
    teacher_filter_interval: int = option(1, help="The same rule for the teacher in Stage II.")
    filter_output_dim: Optional[int] = option(
        None, help="Output width of every filter (default: the model's hidden size)."
    )
    filter_nonlinear: bool = option(False, help="Filters are Linear -> activation -> Linear instead of one Linear.")
    filter_disabled: bool = option(False, help="Stage II without filters: KD (mse_alpha 0) or LWD (mse_alpha > 0).")
    stage1_backbone_mode: str = option(
        "eval",
        help="Stage I frozen backbone in 'eval' mode (default: dropout off; for classification and "
        "regression token 0 of each selected layer is computed once and cached) or 'train' mode "
        "(the paper: dropout on, backbone run on every batch). See README 'Speed and scale'.",
    )
    stage1_lm_head: str = option(
        "lens",
        help="causal_lm Stage I head per filter: 'lens' (default: the model's own final norm and LM head, frozen, "
        "so each filter learns to map its layer into the output space) or 'fresh' (a new trainable "
        "filter_output_dim x vocabulary head per filter).",
    )


@dataclass
class DistillArguments:
    _argument_group_name = "distillation options (Stage II)"

    teacher_model_name_or_path: Optional[str] = option(
        None, help="Teacher: a Stage I folder for TED, a fine-tuned model for KD/LWD."
    )
    method: Optional[str] = option(
        None,
        help="ted | kd | lwd. Shortcut for the paper's flags; when omitted the method follows from "
        "them: mse_alpha 0 -> kd, --filter_disabled -> lwd, else ted.",
    )
    kl_alpha: float = option(0.0, help="Weight of the T^2-scaled KL term.")
    mse_alpha: float = option(0.0, help="Weight of the layer-averaged MSE term.")
    temperature: float = option(2.0, help="KD temperature T (the paper uses 2).")
    kd_loss: Optional[str] = option(
        None,
        help="Divergence of the KD term, NAME[:PARAM]: forward_kl (the paper's; default), reverse_kl, jsd:BETA, "
        "tvd, skew_kl:ALPHA, skew_rkl:ALPHA, or one you register (docs/extending.md). Classification and "
        "SQuAD logits; regression keeps its prediction MSE (or the paper's KL with --paper_compat).",
    )
    layer_loss: Optional[str] = option(
        None, help="Loss between matched layers: mse (the paper's; default), cosine, nmse, or one you register."
    )
    plugins: Optional[list[str]] = option(
        None,
        help="Python modules to import before anything else: they register your own methods, divergences "
        "or layer losses (docs/extending.md), e.g. --plugins my_project.ted_losses.",
    )
    # Teacher-signal cache (ted.method.teacher_cache, docs/teacher-cache.md): the teacher runs once, not every epoch.
    teacher_cache: str = option(
        "auto",
        help="auto | off | DIR. Store the teacher's logits / filtered states per training example once and "
        "train without the teacher after that. auto: when the run has more than one epoch and the cache fits "
        "--teacher_cache_max_gb (kept beside the output folder until the stage is written; a pipeline "
        "shares one per task); DIR: always, there, kept.",
    )
    teacher_cache_dtype: str = option(
        "auto",
        help="auto | float32 | float16 | bfloat16: how cached layer states (and a causal LM's top-k "
        "log-probabilities) are stored (auto: the run's precision, so a float32 run reproduces the online teacher "
        "exactly). Other logits are always float32.",
    )
    teacher_cache_max_gb: Optional[float] = option(
        None, help="Budget of --teacher_cache auto in GB (default: half of the free disk where it goes)."
    )
    teacher_cache_topk: Optional[int] = option(
        None,
        help="Causal-LM teachers: how many next-token log-probabilities (and their token ids) the cache keeps per "
        "scored token (default 64, at most the vocabulary). The KD term then renormalises the teacher over those "
        "k tokens (equal to the full term when k is the vocabulary size); see docs/teacher-cache.md.",
    )
    paper_compat: bool = option(
        False,
        help="Reproduce the original code exactly: MSE (and QA KL) over padding positions too, "
        "regression KL as a softmax across the batch.",
    )
    # Loss balancing (ted doctor, issue 14): the paper's weights were tuned for DeBERTa on full data sets; with
    # another pair or less data a weighted term can swamp the task loss. Off by default (no evidence yet).
    balance_losses: bool = option(
        False,
        help="Scale each distillation term that is on (alpha > 0) to a fixed ratio of the task loss, from their "
        "means over the first --balance_batches batches; kl_alpha / mse_alpha then only switch terms on.",
    )
    balance_kl_ratio: float = option(1.0, help="--balance_losses: weighted KL term / task loss.")
    balance_mse_ratio: float = option(1.0, help="--balance_losses: weighted layer MSE term / task loss.")
    balance_batches: int = option(8, help="--balance_losses: training batches whose mean losses fix the weights.")
    balance_every_step: bool = option(
        False, help="--balance_losses: re-balance on every batch (as NVIDIA ModelOpt does) instead of once."
    )


@dataclass
class TedTrainingOptions:
    """The Trainer options whose defaults ted sets (the paper's: per-epoch eval, keep best, AdamW without
    decay), mixed into `training_args.TedTrainingArguments` ahead of `TrainingArguments`. A stage's help shows
    them before the Trainer's own options (parsers.stage_parser)."""

    output_dir: Optional[str] = option(None, help="Stage folder to write.")
    eval_strategy: str = option("epoch", help="When to evaluate: epoch, steps or no.")
    save_strategy: str = option("epoch", help="When to checkpoint (follows eval).")
    learning_rate: float = option(5e-5, help="Peak AdamW learning rate.")
    num_train_epochs: float = option(3.0, help="Training epochs.")
    per_device_train_batch_size: int = option(32, help="Train batch size per device.")
    per_device_eval_batch_size: int = option(32, help="Eval batch size per device.")
    logging_steps: float = option(10, help="Log the loss terms every N steps.")
    save_total_limit: Optional[int] = option(1, help="Checkpoints kept during training.")
    report_to: Optional[list[str]] = option(
        help="tensorboard, wandb, mlflow or none.", default_factory=lambda: ["none"]
    )
    overwrite_output_dir: bool = option(False, help="Replace an existing stage folder at --output_dir.")
    logging_nan_inf_filter: bool = option(
        False,
        help="Replace nan/inf step losses in the logged loss (the Trainer's default). Off here: the "
        "check reads the loss on the host every step (a device sync), and a nan should be seen.",
    )


@dataclass
class DoctorArguments:
    _argument_group_name = "doctor options"

    doctor_eval_samples: int = option(256, help="Score the teacher and the Stage I heads on at most N dev examples.")
    doctor_batches: int = option(4, help="Training batches that measure the step-0 loss terms.")
    json: Optional[str] = option(None, help="Also write the findings to this JSON file.")


@dataclass
class InitStudentArguments:
    _argument_group_name = "student initialisation options"

    teacher_model_name_or_path: Optional[str] = option(
        None, help="The teacher to copy layers from: a hub id, a Hugging Face folder or a ted stage folder."
    )
    gguf_file: Optional[str] = option(
        None, help="A GGUF file inside the teacher's folder to load (dequantised to float32) instead of safetensors."
    )
    num_layers: Optional[int] = option(
        None, help="How many teacher layers the student keeps (chosen by --strategy). Or name them with --layers."
    )
    strategy: Optional[str] = option(
        None,
        help="How --num_layers layers are chosen: uniform (layer i*L//N for i=0..N-1: every k-th from layer 0), "
        "first, last, or block_influence (ShortGPT: the layers that change the hidden state most on the "
        "--train_file text). Default: block_influence when --train_file is given, else uniform.",
    )
    layers: Optional[str] = option(
        None, help="The teacher layers to keep, comma-separated (e.g. 0,3,5), instead of --num_layers/--strategy."
    )
    train_file: Optional[str] = option(
        None, help="Plain text to measure block influence on, one sample per non-empty line (e.g. training text)."
    )
    influence_samples: int = option(32, help="Block influence: use at most this many non-empty lines of --train_file.")
    influence_max_tokens: int = option(
        512, help="Block influence: measure on at most this many tokens in all (lines are cut to fit)."
    )
    influence_max_length: int = option(256, help="Block influence: cut each line to at most this many tokens.")
    output_dir: Optional[str] = option(None, help="The student folder to write (a stock Hugging Face model folder).")
    overwrite_output_dir: bool = option(False, help="Replace --output_dir when it is a folder ted wrote.")


@dataclass
class LmEvalArguments:
    _argument_group_name = "language-model evaluation options"

    model_name_or_path: Optional[str] = option(
        None, help="Causal LM: a hub id, a Hugging Face folder, or a folder with one .gguf file (or --gguf_file)."
    )
    task: Optional[str] = option(
        None, help="wikitext: perplexity of a raw text file (sliding window); lambada: LAMBADA last-word accuracy."
    )
    data: Optional[str] = option(
        None, help="wikitext: a raw text file (e.g. wiki.test.raw); lambada: a JSONL file of {'text': ...} rows."
    )
    context_length: Optional[int] = option(
        None, help="Tokens per window (wikitext) or longest input (lambada). Default: the model's positions."
    )
    stride: Optional[int] = option(
        None, help="wikitext: tokens the window moves by (default: context_length // 2); at most context_length."
    )
    limit: Optional[int] = option(
        None, help="Score the first N documents (wikitext: articles, split at ' = Title = ' lines) or examples."
    )
    convention: str = option(
        "hf",
        help="wikitext: hf (strided sliding window) or harness (lm-evaluation-harness: per-article rolling "
        "windows; word/byte perplexity, bits per byte).",
    )
    gguf_file: Optional[str] = option(
        None, help="The GGUF file inside the model folder to load (needed when the folder holds several)."
    )
    cache_dir: Optional[str] = option(None, help="Where hub downloads are cached.")
    per_device_eval_batch_size: int = option(4, help="Windows or examples per forward pass.")
    output_dir: Optional[str] = option(None, help="Also write the result to DIR/lm_eval_results.json.")


# Which option groups each stage command takes, in the order its runner expects them (training_args.COMMAND_ARGS
# is this with the Trainer's options added).
COMMAND_OPTIONS = {
    "finetune": (ModelArguments, DataArguments, TedTrainingOptions),
    "learn-filters": (ModelArguments, DataArguments, FilterArguments, TedTrainingOptions),
    "distill": (ModelArguments, DataArguments, FilterArguments, DistillArguments, TedTrainingOptions),
    "evaluate": (ModelArguments, DataArguments, TedTrainingOptions),
    # ted doctor takes everything ted distill takes, plus its own options.
    "doctor": (ModelArguments, DataArguments, FilterArguments, DistillArguments, DoctorArguments, TedTrainingOptions),
    "lm-eval": (LmEvalArguments,),
    "init-student": (InitStudentArguments,),
}
