"""Which token a sequence-level head reads, per model family, and what a decoder classifier needs to read it right.

Encoders (BERT, RoBERTa, DeBERTa, ...) summarise a sequence in token 0 ([CLS] / <s>): rule `first`. A decoder-only
model (GPT-2, Llama, Qwen2, Mistral, ...) sees the whole sequence only at its LAST REAL token, which is what Hugging
Face's `*ForSequenceClassification` reads: rule `last`. That index differs per row and with the padding side, so
it is read from the attention mask: the last position whose mask is 1, for left and right padding alike.
(Hugging Face finds it as the rightmost token that is not `config.pad_token_id`; the two agree unless a real
token equals the pad token, e.g. an EOS the tokenizer appends when the pad token is EOS.)

A model is decoder-only when its model type has a causal-LM class in transformers but no masked-LM class and it is
not an encoder-decoder. `config.is_decoder` cannot tell (GPT-2 and Llama configs leave it False); BERT-family
encoders have a causal-LM class too (and a masked-LM one); BART-family models are encoder-decoders.

A decoder classifier also needs a pad token in its config (Hugging Face's head finds the last token with it) and
position ids that count real tokens only: with left padding, GPT-2's absolute positions would otherwise start at
the number of pads. `prepare_decoder_classifier` sets both up on a loaded model (as `generate()` does for positions).
"""

from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING, Any, Optional

from ted.errors import TedInputError

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

FIRST, LAST = "first", "last"
# Set on a model once its forward pre-hook fills position ids from the attention mask (installed once).
_POSITIONS_HOOK = "_ted_positions_from_mask"


def is_decoder_only(config: PretrainedConfig) -> bool:
    """Whether a model is decoder-only (GPT-2, Llama, Qwen2, ...): see the module docstring for the rule."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", None)
    return (
        model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
        and model_type not in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES
        and not getattr(config, "is_encoder_decoder", False)
    )


def pooled_token(config: PretrainedConfig) -> str:
    """The rule of the token a sequence-level head of this model reads: `last` (decoder-only) or `first`."""
    return LAST if is_decoder_only(config) else FIRST


def last_real_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B] index of the last position whose mask is not 0, for left or right padding (0 for an all-zero row)."""
    import torch

    positions = torch.arange(attention_mask.size(-1), device=attention_mask.device)
    return (positions * (attention_mask != 0)).argmax(-1)  # real positions strictly increase: one maximum


def pool(states: torch.Tensor, rule: str, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """[B, T, H] -> [B, H]: token 0 (`first`), or each row's last real token (`last`; without a mask, position
    T - 1, which is also the one position of a cached feature row)."""
    if rule == FIRST:
        return states[:, 0]
    if rule != LAST:
        raise ValueError(f"unknown pooling rule {rule!r} (expected {FIRST!r} or {LAST!r})")
    if attention_mask is None:
        return states[:, -1]
    import torch

    rows = torch.arange(states.size(0), device=states.device)
    return states[rows, last_real_positions(attention_mask).to(states.device)]


def mask_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids counting real tokens only (0 at each row's first real token), 1 at padding, as `generate()`
    computes them: a left-padded row gets the positions it would have unpadded."""
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 1)


def _positions_from_mask(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    mask = kwargs.get("attention_mask")
    if kwargs.get("position_ids") is None and mask is not None and mask.dim() == 2:
        kwargs["position_ids"] = mask_position_ids(mask)
    return args, kwargs


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    """A tokenizer without a pad token (GPT-2, Llama) pads with its EOS token; one without either is refused.
    (A plain tokenizing function, which has no special tokens at all, is left as it is.)"""
    if getattr(tokenizer, "pad_token_id", 0) is not None:
        return
    if tokenizer.eos_token is None:
        raise TedInputError(
            f"The tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has neither a pad token nor an EOS token to "
            "pad batches with. Save it with one (tokenizer.pad_token = ...; tokenizer.save_pretrained(...))."
        )
    tokenizer.pad_token = tokenizer.eos_token
    logger.info("The tokenizer has no pad token: padding with its EOS token %r", tokenizer.eos_token)


def prepare_decoder_classifier(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """What a decoder-only sequence classifier needs; encoders are left untouched.

    * `config.pad_token_id` = the tokenizer's pad token (EOS when it has none), which Hugging Face's head uses to
      find each row's last token; a stage folder saves it, so later stages and the export read the same token.
    * Position ids from the attention mask on every forward that passes none (a forward pre-hook), so a left-padded
      batch gives the same results as a right-padded one; real tokens of a right-padded row keep their positions.
    """
    if not is_decoder_only(model.config):
        return
    ensure_pad_token(tokenizer)
    if model.config.pad_token_id != tokenizer.pad_token_id:
        logger.info(
            "Setting the model's pad_token_id to the tokenizer's pad token %r (id %d, was %s): the classification "
            "head reads the last token before it",
            tokenizer.pad_token,
            tokenizer.pad_token_id,
            model.config.pad_token_id,
        )
        model.config.pad_token_id = tokenizer.pad_token_id
    if "position_ids" in inspect.signature(model.forward).parameters and not getattr(model, _POSITIONS_HOOK, False):
        model.register_forward_pre_hook(_positions_from_mask, with_kwargs=True)
        setattr(model, _POSITIONS_HOOK, True)
