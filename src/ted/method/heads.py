"""Stage I heads: one freshly initialised prediction head per filter.

Classification / regression heads read one token of their filter's output (the paper's context
pooler: dense -> activation -> dropout -> classifier): token 0 for encoders, each row's last real token
for decoder-only models (the rule of `ted.method.pooling`, chosen from the model's config and saved with
the heads). Span heads predict start/end logits at every token. Keys `filter_pooler.{k}.dense.*` and
`filter_head.{k}.*` follow the paper's names, k being the rank of the filter in increasing layer order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch
from torch import nn
from transformers.activations import ACT2FN

from ted.method.kinds import get_kind
from ted.method.pooling import FIRST, pool, pooled_token
from ted.method.saved_module import SavedModule

if TYPE_CHECKING:
    from transformers import PretrainedConfig

HEADS_WEIGHTS = "stage1_heads.safetensors"
HEADS_CONFIG = "stage1_heads.json"


@dataclass
class HeadsConfig:
    kind: str  # the task's head kind (ted.method.kinds): "classification", "regression" or "span"
    num_heads: int
    input_dim: int
    num_labels: int
    activation: str = "gelu"
    pooler_dropout: float = 0.0
    classifier_dropout: float = 0.1
    initializer_range: float = 0.02
    pooling: str = FIRST  # the token sequence-level heads read: ted.method.pooling's "first" or "last"


class _Pooler(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)


class StageOneHeads(SavedModule):
    WEIGHTS, CONFIG, WHAT, config_class = HEADS_WEIGHTS, HEADS_CONFIG, "Stage I heads", HeadsConfig

    def __init__(self, config: HeadsConfig) -> None:
        super().__init__()
        self.config = config
        self.sequence_level = get_kind(config.kind).sequence_level
        out = config.num_labels  # span heads: 2 (start, end)
        if self.sequence_level:
            self.filter_pooler = nn.ModuleList(_Pooler(config.input_dim) for _ in range(config.num_heads))
            self.pooler_dropout = nn.Dropout(config.pooler_dropout)
            self.activation = ACT2FN[config.activation]
            self.dropout = nn.Dropout(config.classifier_dropout)
        self.filter_head = nn.ModuleList(nn.Linear(config.input_dim, out) for _ in range(config.num_heads))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=config.initializer_range)
                nn.init.zeros_(module.bias)

    def forward(
        self, filter_states: list[torch.Tensor], attention_mask: Optional[torch.Tensor] = None
    ) -> list[torch.Tensor]:
        """Logits per head: [B, C] for classification / regression, [B, T, 2] for spans. A `last` head needs the
        attention mask of [B, T] states to find each row's last real token (states of one position need none)."""
        if not self.sequence_level:
            return [head(state) for head, state in zip(self.filter_head, filter_states, strict=True)]
        logits = []
        for pooler, head, state in zip(self.filter_pooler, self.filter_head, filter_states, strict=True):
            token = pool(state, self.config.pooling, attention_mask)
            pooled = self.activation(pooler.dense(self.pooler_dropout(token)))
            logits.append(head(self.dropout(pooled)))
        return logits


def new_heads(
    kind: str, num_heads: int, input_dim: int, num_labels: int, model_config: PretrainedConfig
) -> StageOneHeads:
    """Heads for one filter set; dropouts come from the model config as in the paper's pooler, and the token they
    read from the model's family (`ted.method.pooling.pooled_token`)."""
    classifier_dropout = next(
        (
            v
            for v in (
                getattr(model_config, "cls_dropout", None),
                getattr(model_config, "classifier_dropout", None),
                getattr(model_config, "hidden_dropout_prob", None),
            )
            if v is not None
        ),
        0.0,
    )
    return StageOneHeads(
        HeadsConfig(
            kind=kind,
            num_heads=num_heads,
            input_dim=input_dim,
            num_labels=num_labels,
            activation=getattr(model_config, "pooler_hidden_act", "gelu") or "gelu",
            pooler_dropout=getattr(model_config, "pooler_dropout", 0.0) or 0.0,
            classifier_dropout=classifier_dropout,
            initializer_range=getattr(model_config, "initializer_range", 0.02),
            pooling=pooled_token(model_config),
        )
    )
