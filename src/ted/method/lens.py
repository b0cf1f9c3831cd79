"""Stage I for causal LMs: one next-token head per filter, and its loss computed a few tokens at a time.

A filter on layer i of a decoder reads `hidden_states[i + 1]` as for encoders. Its head predicts the next token:

* `lens` (default): the model's own final norm and LM head, frozen and shared by every filter, so each filter
  learns to translate its layer into the model's output space (the "tuned lens"); no |V| x d head per filter.
  Hugging Face's last `hidden_states` entry is already after the final norm for GPT-2- and Llama-family
  models, so the head of a filter on that layer is the LM head alone, and an identity filter there gives the
  model's own logits exactly. Which case a model is in is measured, not assumed (`output_path`).
* `fresh`: a new trainable `filter_output_dim x V` linear head per filter.

The loss never holds a head's [B, T, V] logits: each chunk of scored tokens is projected, scored and dropped,
and recomputed in the backward (activation checkpointing), so only one chunk's logits live at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ted.errors import TedInputError
from ted.method import model_parts
from ted.method.chunked import default_chunk_tokens
from ted.method.heads import HEADS_CONFIG, HEADS_WEIGHTS
from ted.method.losses import next_token_targets
from ted.method.saved_module import SavedModule
from ted.method.tied import TiedWeights

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from ted.method.filters import TaskAwareFilters

LENS, FRESH = "lens", "fresh"


@dataclass
class NextTokenHeadsConfig:
    mode: str  # "lens" or "fresh"
    layers: list[int]
    input_dim: int
    vocab_size: int
    # The layer whose Hugging Face hidden state is already after the final norm (the lens adds only the LM head);
    # None when every hidden state is before it.
    post_norm_layer: Optional[int] = None
    initializer_range: float = 0.02
    kind: str = "causal_lm"


class NextTokenHeads(SavedModule):
    """The Stage I heads of a causal LM. A `lens` set has no weights of its own: `bind` lends it the model's."""

    WEIGHTS, CONFIG, WHAT, config_class = HEADS_WEIGHTS, HEADS_CONFIG, "Stage I heads", NextTokenHeadsConfig

    def __init__(self, config: NextTokenHeadsConfig) -> None:
        super().__init__()
        self.config = config
        # Not submodules: the frozen norm and LM head belong to the backbone (moved and saved with it).
        self._output: Optional[tuple[nn.Module, nn.Module]] = None
        if config.mode == FRESH:
            self.filter_head = nn.ModuleList(
                nn.Linear(config.input_dim, config.vocab_size, bias=False) for _ in config.layers
            )
            for head in self.filter_head:
                nn.init.normal_(head.weight, mean=0.0, std=config.initializer_range)

    @property
    def chunk_tokens(self) -> int:
        """Tokens projected at once by the loss: about 4M logits (ted.method.chunked)."""
        return default_chunk_tokens(self.config.vocab_size)

    def bind(self, model: PreTrainedModel) -> NextTokenHeads:
        """Lend a `lens` set the model's final norm and LM head (a `fresh` set needs nothing)."""
        if self.config.mode == LENS:
            self._output = (final_norm(model), model.get_output_embeddings())
        return self

    def head(self, k: int) -> Callable[[torch.Tensor], torch.Tensor]:
        """Filter k's head: filtered states [n, d] -> next-token logits [n, V]."""
        if self.config.mode == FRESH:
            return self.filter_head[k]
        if self._output is None:
            raise RuntimeError("lens heads are not bound to a model: call bind(model) first")
        norm, lm_head = self._output
        if self.config.layers[k] == self.config.post_norm_layer:
            return lm_head
        return lambda states: lm_head(norm(states))


def final_norm(model: PreTrainedModel) -> nn.Module:
    """The norm a decoder applies to its last layer before the LM head."""
    norm = model_parts.final_norm(model)
    if norm is None:
        raise TedInputError(
            f"Cannot find the final norm of this {type(model).__name__} (looked for "
            f"{', '.join(model_parts.FINAL_NORM_NAMES)} beside its layers), so Stage I cannot use the model's own "
            "output head. Use --stage1_lm_head fresh."
        )
    return norm


def output_path(model: PreTrainedModel, input_ids: torch.Tensor) -> Optional[int]:
    """Whether the last hidden state is before or after the final norm, measured on `input_ids` [1, n]: returns
    the last layer's index when the LM head alone reproduces the model's logits from it, None when norm + LM head
    does. A model whose logits are neither (soft-capping, logit scaling) cannot use the lens: refused."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(input_ids=input_ids, output_hidden_states=True)
            last, logits = out.hidden_states[-1], out.logits.float()
            lm_head = model.get_output_embeddings()
            if torch.allclose(lm_head(last).float(), logits, rtol=1e-4, atol=1e-4):
                return len(out.hidden_states) - 2
            if torch.allclose(lm_head(final_norm(model)(last)).float(), logits, rtol=1e-4, atol=1e-4):
                return None
    finally:
        model.train(was_training)
    raise TedInputError(
        f"{type(model).__name__}'s logits are not its LM head applied to its (normed) last hidden state (it may "
        "scale or cap them), so the lens heads would not reproduce them. Use --stage1_lm_head fresh."
    )


def new_next_token_heads(
    model: PreTrainedModel, layers: list[int], input_dim: int, mode: str, sample_ids: torch.Tensor
) -> NextTokenHeads:
    """Heads for one filter set; a lens needs filters as wide as the model and is checked on `sample_ids`."""
    hidden, vocab = model.config.hidden_size, model.get_output_embeddings().out_features
    post_norm = None
    if mode == LENS:
        if input_dim != hidden:
            raise TedInputError(
                f"The lens heads read filter outputs in the model's own space ({hidden} wide), so "
                f"--filter_output_dim {input_dim} cannot apply. Drop it, or use --stage1_lm_head fresh."
            )
        post_norm = output_path(model, sample_ids)
    config = NextTokenHeadsConfig(
        mode=mode,
        layers=list(layers),
        input_dim=input_dim,
        vocab_size=vocab,
        post_norm_layer=post_norm,
        initializer_range=getattr(model.config, "initializer_range", 0.02),
    )
    return NextTokenHeads(config).bind(model)


def nll_per_row(
    head: Callable[[torch.Tensor], torch.Tensor],
    states: torch.Tensor,
    targets: torch.Tensor,
    chunk_tokens: int,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """[B, 2]: each row's summed next-token NLL under `head` and its number of scored tokens.

    `states` [B, T, d] (position t predicts `targets[:, t]`, -100 = not scored). Only scored positions are
    projected, `chunk_tokens` at a time, each chunk's logits recomputed in the backward instead of kept."""
    batch, length = targets.shape
    flat_targets = targets.reshape(-1)
    index = (flat_targets != -100).nonzero().squeeze(1)
    flat_states = states.reshape(batch * length, -1)
    sums = torch.zeros(batch, dtype=torch.float32, device=states.device)

    def chunk_nll(rows: torch.Tensor, chunk_targets: torch.Tensor) -> torch.Tensor:
        logits = head(rows).float()
        return F.cross_entropy(logits, chunk_targets, reduction="none", label_smoothing=label_smoothing)

    for chunk in index.split(chunk_tokens):
        rows, chunk_targets = flat_states.index_select(0, chunk), flat_targets.index_select(0, chunk)
        if rows.requires_grad:
            nll = checkpoint(chunk_nll, rows, chunk_targets, use_reentrant=False)
        else:
            nll = chunk_nll(rows, chunk_targets)
        sums = sums.index_add(0, chunk // length, nll)
    counts = (targets != -100).sum(dim=1).to(torch.float32)
    return torch.stack([sums, counts], dim=1)


class NextTokenFilterLearner(TiedWeights):
    """Stage I module of a causal LM: the frozen decoder (run without its LM head), the filters, their heads.

    Returns [B, K, 2]: per row and filter the summed next-token NLL and the scored tokens, so the Trainer gathers
    a few numbers per row instead of K x [B, T, V] logits."""

    def __init__(
        self, backbone: PreTrainedModel, filters: TaskAwareFilters, heads: NextTokenHeads, backbone_mode: str = "eval"
    ) -> None:
        super().__init__()
        self.backbone = backbone.requires_grad_(False)
        self.filters = filters
        self.heads = heads
        self.backbone_mode = backbone_mode

    def train(self, mode: bool = True) -> NextTokenFilterLearner:
        super().train(mode)
        self.backbone.train(mode and self.backbone_mode == "train")
        return self

    def forward(self, labels: torch.Tensor, label_smoothing: float = 0.0, **inputs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # the body only: the LM head's logits would be [B, T, V] for nothing
            hidden = self.backbone.base_model(**inputs, output_hidden_states=True).hidden_states
        targets = next_token_targets(labels)
        chunk = self.heads.chunk_tokens
        per_filter = [
            nll_per_row(self.heads.head(k), state, targets, chunk, label_smoothing)
            for k, state in enumerate(self.filters(hidden))
        ]
        return torch.stack(per_filter, dim=1)


class NextTokenFilterObjective:
    """Stage I loss of a causal LM: the mean over filters of each head's next-token cross-entropy (the mean over
    the batch's scored tokens); its predictions are the learner's per-row NLL sums, scored as perplexity."""

    label_smoothing: float = 0.0

    def __init__(self) -> None:
        from ted.method.kinds import get_kind

        self.kind = get_kind("causal_lm")

    def __call__(
        self, model: nn.Module, inputs: dict[str, torch.Tensor]
    ) -> tuple[Optional[torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
        from ted.method.modules import unwrap

        per_row = model(label_smoothing=self.label_smoothing, **inputs)  # [B, K, 2]
        totals = per_row.sum(dim=0)  # [K, 2]
        head_losses = totals[:, 0] / totals[:, 1].clamp_min(1)
        terms = {f"filter_layer{layer}": loss for layer, loss in zip(unwrap(model).filters.layers, head_losses)}
        return head_losses.mean(), terms, per_row
