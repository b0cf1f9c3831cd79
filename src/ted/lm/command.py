"""`ted lm-eval`: WikiText perplexity or LAMBADA accuracy of a causal LM, one JSON object as the result."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

from ted.errors import TedInputError
from ted.settings.parsers import suggestion

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from ted.settings.options import LmEvalArguments

logger = logging.getLogger(__name__)

TASKS = ("wikitext", "lambada")
CONVENTIONS = ("hf", "harness")  # wikitext: Hugging Face's strided window, or lm-evaluation-harness's rolling one
RESULTS_FILE = "lm_eval_results.json"


def check_request(args: LmEvalArguments) -> None:
    """Everything that needs neither the model nor torch: the task, the data file, the window numbers."""
    if not args.task:
        raise TedInputError(f"No task given: pass --task {' or --task '.join(TASKS)}.")
    if args.task not in TASKS:
        raise TedInputError(f"Unknown --task {args.task!r}{suggestion(args.task, TASKS)}; choose {', '.join(TASKS)}.")
    if not args.data:
        raise TedInputError("No data given: pass --data FILE (wikitext: raw text; lambada: JSONL).")
    if not Path(args.data).is_file():
        raise TedInputError(f"--data {args.data} does not exist or is not a file.")
    for name in ("context_length", "stride", "limit"):
        value = getattr(args, name)
        if value is not None and value < (2 if name == "context_length" else 1):
            low = "2 (one token of context and one to score)" if name == "context_length" else "1"
            raise TedInputError(f"--{name} must be at least {low}, got {value}.")
    if args.task == "lambada" and args.stride is not None:
        raise TedInputError("--stride applies to --task wikitext only (LAMBADA scores one window per example).")
    if args.convention not in CONVENTIONS:
        raise TedInputError(
            f"Unknown --convention {args.convention!r}{suggestion(args.convention, CONVENTIONS)}; choose hf (Hugging "
            "Face's strided window) or harness (lm-evaluation-harness's rolling windows per article)."
        )
    if args.convention == "harness" and args.task != "wikitext":
        raise TedInputError("--convention applies to --task wikitext only (LAMBADA has one definition).")
    if args.convention == "harness" and args.stride is not None:
        raise TedInputError(
            "--stride applies to --convention hf only: the harness's windows are disjoint, each scoring up to "
            "--context_length tokens. Leave --stride out."
        )
    if args.stride is not None and args.context_length is not None and args.stride > args.context_length:
        raise TedInputError(
            f"--stride {args.stride} is longer than --context_length {args.context_length}: tokens between "
            "windows would never be scored. Pass a stride of at most the context length."
        )


def read_data(args: LmEvalArguments) -> Union[str, list[str]]:
    """wikitext: the text (its first --limit articles), or with --convention harness its pages (the first
    --limit); lambada: the example texts (the first --limit)."""
    from ted.lm.lambada import read_examples
    from ted.lm.perplexity import split_documents
    from ted.lm.rolling import harness_pages

    path = Path(args.data)
    if args.task == "lambada":
        return read_examples(path, args.limit)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise TedInputError(f"--data {path} is not UTF-8 text ({err}).") from None
    if args.convention == "harness":
        pages = harness_pages(text)[: args.limit]
        if not pages:
            raise TedInputError(f"--data {path} holds no text.")
        return pages
    if args.limit is not None:
        text = "".join(split_documents(text)[: args.limit])
    if not text.strip():
        raise TedInputError(f"--data {path} holds no text.")
    return text


def window_sizes(args: LmEvalArguments, limit: Optional[int]) -> tuple[int, Optional[int]]:
    """--context_length (default: the model's positions) and --stride (default: half of it), checked against
    what the model can read."""
    name = args.model_name_or_path
    context_length = args.context_length or limit
    if context_length is None:
        raise TedInputError(f"{name} has no fixed number of positions: pass --context_length.")
    if limit is not None and context_length > limit:
        raise TedInputError(
            f"--context_length {context_length} is longer than {name} can read ({limit} positions). "
            f"Pass --context_length {limit} or less."
        )
    if args.task == "lambada" or args.convention == "harness":
        return context_length, None
    stride = args.stride or max(1, context_length // 2)
    if stride > context_length:
        raise TedInputError(
            f"--stride {stride} is longer than the context length {context_length}: tokens between windows "
            "would never be scored. Pass a smaller --stride."
        )
    return context_length, stride


def run_lm_eval(args: LmEvalArguments) -> dict[str, Any]:
    """Check the request, load the model, score it; the result also goes to DIR/lm_eval_results.json."""
    from ted.stages.models import check_model_source, load_causal_lm, load_config, load_tokenizer, position_limit

    check_request(args)
    data = read_data(args)
    gguf = check_model_source(args.model_name_or_path, args.gguf_file)
    config = load_config(args.model_name_or_path, args.cache_dir, gguf)
    context_length, stride = window_sizes(args, position_limit(config))
    tokenizer = load_tokenizer(args.model_name_or_path, args.cache_dir, gguf)
    if args.convention == "harness":
        from ted.lm.rolling import prefix_token

        prefix_token(tokenizer)  # a tokenizer without BOS and EOS is refused before the model loads
    started = time.perf_counter()
    model = load_causal_lm(args.model_name_or_path, gguf, cache_dir=args.cache_dir)
    logger.info("Loaded %s in %.1f s", args.model_name_or_path, time.perf_counter() - started)
    started = time.perf_counter()
    scores = score(args, model, tokenizer, data, context_length, stride)
    logger.info("Scored in %.1f s", time.perf_counter() - started)
    result = {**scores, "task": args.task, "model": args.model_name_or_path, "data": args.data, "limit": args.limit}
    if args.output_dir:
        from ted.artifacts import atomic_write

        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        atomic_write(Path(args.output_dir) / RESULTS_FILE, json.dumps(result, indent=2) + "\n")
    return result


def score(
    args: LmEvalArguments,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: Union[str, list[str]],
    context_length: int,
    stride: Optional[int],
) -> dict[str, Any]:
    """The task's scores of a loaded model on the data read_data returned."""
    from ted.lm.lambada import score_lambada
    from ted.lm.perplexity import encode_text, perplexity
    from ted.lm.rolling import rolling_scores

    batch = args.per_device_eval_batch_size
    if args.task == "lambada":
        return score_lambada(model, tokenizer, data, context_length, batch)
    if args.convention == "harness":
        return rolling_scores(model, tokenizer, data, context_length, batch)
    ids = encode_text(tokenizer, data)
    if len(ids) < 2:
        raise TedInputError(f"--data {args.data} has {len(ids)} token(s): perplexity needs at least 2.")
    return {**perplexity(model, ids, context_length, stride, batch), "convention": "hf"}
