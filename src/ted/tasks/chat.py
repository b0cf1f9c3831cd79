"""Chat rows for causal_lm data: conversations rendered with the tokenizer's chat template, assistant turns scored.

A conversation is a list of `{"role": ..., "content": ...}` messages. It is rendered turn by turn: the text a
message adds is the template's rendering up to and including it minus the rendering before it (before an
assistant message, the rendering with the generation prompt, so the prompt that opens an assistant turn is not
scored). Each piece is tokenised on its own (no special tokens added: the template writes them) and the pieces are
joined; the tokens of assistant pieces (the reply and whatever closes it, e.g. an end-of-turn token) are the
labels, every other token gets -100. A template whose rendering of a longer chat does not start with the rendering
of a shorter one (some templates rewrite earlier turns) is refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ted.errors import TedInputError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE = -100


def check_conversation(value: Any, where: str) -> list[dict[str, str]]:
    """A list of {role, content} messages with at least one assistant turn, or a one-line error."""
    example = '[{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]'
    if not isinstance(value, list) or not value:
        raise TedInputError(f"{where}: expected a list of messages like {example}, got {value!r:.60}.")
    for message in value:
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)):
            raise TedInputError(f"{where}: every message needs a 'role' and a 'content' (like {example}).")
        if not isinstance(message.get("content"), str):
            raise TedInputError(f"{where}: the content of a {message['role']!r} message is not text.")
    if not any(m["role"] == "assistant" for m in value):
        raise TedInputError(f"{where}: no assistant message, so nothing in it would be scored.")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    if not messages:
        return ""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def conversation_pieces(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], where: str) -> list:
    """[(text, scored)] pieces whose concatenation is the rendering of the whole conversation."""
    pieces, before = [], ""
    for i, message in enumerate(messages):
        assistant = message["role"] == "assistant"
        if assistant:  # the generation prompt opens the turn and is not the model's to predict
            opened = _render(tokenizer, messages[:i], generation_prompt=True)
            if not opened.startswith(before):
                raise TedInputError(f"{where}: the chat template rewrites earlier turns; it cannot be split by turn.")
            pieces.append((opened[len(before) :], False))
            before = opened
        rendered = _render(tokenizer, messages[: i + 1], generation_prompt=False)
        if not rendered.startswith(before):
            raise TedInputError(f"{where}: the chat template rewrites earlier turns; it cannot be split by turn.")
        pieces.append((rendered[len(before) :], assistant))
        before = rendered
    return [(text, scored) for text, scored in pieces if text]


def chat_rows(tokenizer: PreTrainedTokenizerBase, conversations: list[list[dict[str, str]]], block_size: int) -> dict:
    """input_ids and labels (assistant tokens only) of each conversation, cut to block_size."""
    if not getattr(tokenizer, "chat_template", None):
        raise TedInputError("--messages_column needs a tokenizer with a chat template (tokenizer_config.json).")
    rows, labels = [], []
    for n, messages in enumerate(conversations):
        ids: list[int] = []
        scored: list[int] = []
        for text, is_scored in conversation_pieces(tokenizer, messages, f"conversation {n + 1}"):
            piece = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids += piece
            scored += piece if is_scored else [IGNORE] * len(piece)
        rows.append(ids[:block_size])
        labels.append(scored[:block_size])
    return {"input_ids": rows, "labels": labels}
