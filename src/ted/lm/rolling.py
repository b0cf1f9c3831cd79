"""WikiText as lm-evaluation-harness's `wikitext` task (version 2.0) scores it: the rolling log-likelihood of
each article, reported as word perplexity, byte perplexity and bits per byte.

What the harness does, written here from its definitions:
- documents: the raw file cut into articles the way the `EleutherAI/wikitext_document_level` dataset cuts it
  (a new page at every line that, with `= = =` and `= =` squeezed and spaces stripped, reads `= Title =`);
- each page is detokenised (its `wikitext_detokenizer`) and encoded with the tokenizer's defaults;
- `loglikelihood_rolling`: the tokens are cut into disjoint windows of `context_length` predictions. The first
  window predicts the first token from a prefix token (BOS, or EOS when there is none); every later window
  reads from the token just before it, and the last, shorter one reaches back for a full window of context;
- words (`len(re.split(r"\\s+", page))`) and UTF-8 bytes are counted on the page *before* detokenisation;
- word_perplexity = exp(-Σ ll / Σ words), byte_perplexity = exp(-Σ ll / Σ bytes), bits_per_byte =
  -Σ ll / Σ bytes / ln 2, sums over documents.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from ted.errors import TedInputError
from ted.lm.perplexity import Window, encode_text
from ted.lm.scoring import score_rows

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

CONVENTION = "harness"
WHITESPACE = re.compile(r"\s+")


def _is_article_heading(line: str) -> bool:
    """` = Title = ` opens a page; section headings (` = = Part = = `) squeeze to `== Part ==` and do not."""
    squeezed = line.replace("= = =", "===").replace("= =", "==").strip()
    return squeezed.startswith("= ") and squeezed.endswith(" =")


def harness_pages(text: str) -> list[str]:
    """The pages `EleutherAI/wikitext_document_level` makes of a raw WikiText file: lines split at `\\n` and
    joined by it, a new page at each article heading; a page of blanks only is dropped (the dataset keeps a
    blank last page, which would score no tokens)."""
    pages: list[str] = []
    lines: list[str] = []
    for line in text.split("\n"):
        if _is_article_heading(line):
            pages.append("\n".join(lines))
            lines = []
        lines.append(line)
    pages.append("\n".join(lines))
    return [page for page in pages if page.strip()]


# The harness's `wikitext_detokenizer`: WikiText's spaced-out punctuation and @-@ separators undone, in order.
_REPLACEMENTS = (
    ("s '", "s'"),
    (re.compile(r"/' [0-9]/"), r"/'[0-9]/"),
    (" @-@ ", "-"),
    (" @,@ ", ","),
    (" @.@ ", "."),
    *((f" {mark} ", f"{mark} ") for mark in ":;.!?,"),
    (re.compile(r"\(\s*([^\)]*?)\s*\)"), r"(\1)"),
    (re.compile(r"\[\s*([^\]]*?)\s*\]"), r"[\1]"),
    (re.compile(r"{\s*([^}]*?)\s*}"), r"{\1}"),
    (re.compile(r"\"\s*([^\"]*?)\s*\""), r'"\1"'),
    (re.compile(r"'\s*([^']*?)\s*'"), r"'\1'"),
    ("= = = =", "===="),
    ("= = =", "==="),
    ("= =", "=="),
    (" \N{DEGREE SIGN} ", "\N{DEGREE SIGN}"),
    (" \n", "\n"),
    ("\n ", "\n"),
    (" N ", " 1 "),
    (" 's", "'s"),
)


def detokenize(page: str) -> str:
    """WikiText's tokenised spacing undone the harness's way (`wikitext_detokenizer`)."""
    for pattern, replacement in _REPLACEMENTS:
        page = pattern.sub(replacement, page) if isinstance(pattern, re.Pattern) else page.replace(pattern, replacement)
    return page


def word_count(page: str) -> int:
    """The harness's word count: pieces between runs of whitespace, the empty ones at either end included."""
    return len(WHITESPACE.split(page))


def rolling_windows(n_tokens: int, context_length: int) -> list[Window]:
    """The harness's disjoint rolling windows over `[prefix] + tokens` (positions counted in that sequence):
    window k predicts tokens k*L .. k*L+L-1 (sequence positions +1) from up to L inputs ending just before the
    last of them. The first starts at the prefix; a shorter last window reaches back for L inputs."""
    result = []
    for start in range(0, n_tokens, context_length):
        stop = min(start + context_length, n_tokens)
        result.append(Window(begin=max(0, stop - context_length), end=stop + 1, first=start + 1))
    return result


def prefix_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """What the first token of a document is predicted from: BOS, else EOS (the harness's prefix_token_id)."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise TedInputError(
            "The tokenizer has neither a BOS nor an EOS token, which --convention harness predicts each "
            "document's first token from. Use --convention hf."
        )
    return token


def rolling_scores(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pages: list[str],
    context_length: int,
    batch_size: int = 1,
) -> dict[str, Any]:
    """Σ of every page's rolling log-likelihood, as word/byte perplexity, bits per byte and token perplexity,
    with the counts (tokens scored, words, bytes, documents)."""
    prefix = prefix_token(tokenizer)
    rows, first = [], []
    for page in pages:
        sequence = [prefix] + encode_text(tokenizer, detokenize(page))
        for window in rolling_windows(len(sequence) - 1, context_length):
            rows.append(sequence[window.begin : window.end])
            first.append(window.first - window.begin)
    loglikelihood, tokens = 0.0, 0
    for logprobs, _ in score_rows(model, rows, first, batch_size):
        loglikelihood += float(logprobs.sum())
        tokens += len(logprobs)
    words = sum(word_count(page) for page in pages)
    n_bytes = sum(len(page.encode("utf-8")) for page in pages)
    return {
        "word_perplexity": math.exp(-loglikelihood / words),
        "byte_perplexity": math.exp(-loglikelihood / n_bytes),
        "bits_per_byte": -loglikelihood / n_bytes / math.log(2),
        "perplexity": math.exp(-loglikelihood / tokens),
        "loglikelihood": loglikelihood,
        "tokens": tokens,
        "words": words,
        "bytes": n_bytes,
        "documents": len(pages),
        "context_length": context_length,
        "stride": context_length,
        "convention": CONVENTION,
    }
