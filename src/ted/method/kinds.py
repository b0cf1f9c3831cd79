"""Head kinds: everything that differs between classification, regression and span (QA) heads, one object each.

A task names its kind (`Task.head`: "classification", "regression" or "span", the string stored in
`ted_stage.json`); every stage, objective, loss, metric and export asks the kind object instead of comparing
strings. Adding a kind means one new class here and one `KINDS.register` line ("causal_lm" is the latest).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Union

from ted.registry import Registry

if TYPE_CHECKING:
    import torch
    from transformers.models.auto.auto_factory import _BaseAutoModelClass
    from transformers.utils import ModelOutput

    from ted.method.divergences import Divergence

    # One tensor for a sequence-level head; (start, end) logits or positions for a span head.
    Predictions = Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]

KINDS: Registry = Registry("head kind")


@dataclass(frozen=True)
class OutputKD:
    """How a kind computes its output-distillation term: the temperature, the original code's variant
    (--paper_compat) and the --kd_loss divergence (None: the paper's T^2-scaled forward KL)."""

    temperature: float
    paper_compat: bool = False
    divergence: Optional[Divergence] = None
    # Causal LMs whose heads are padded to different multiples: compare the first `vocab_size` entries (the
    # tokenizer's tokens) only. None: the heads have one size.
    vocab_size: Optional[int] = None


class HeadKind:
    """A sequence-level head (classification by default): one prediction per example, read at one position."""

    name = "classification"
    label_keys: tuple[str, ...] = ("labels",)
    auto_class_name = "AutoModelForSequenceClassification"
    architecture_suffix = "ForSequenceClassification"
    pipeline_tag = "text-classification"
    problem_type: Optional[str] = "single_label_classification"
    # One prediction per example, read at one position (ted.method.pooling): its outputs are the task's
    # labels, and the Stage I feature cache can store just that position. A span head reads every token.
    sequence_level = True
    # Evaluation predictions are post-processed batch by batch (SQuAD) instead of gathered whole.
    streams_eval = False
    # Metrics are fractions to be shown in percent (SQuAD's official keys already are percent).
    metric_scale = 100.0
    # Labels are real-valued scores (float targets, one output) rather than class ids.
    scores = False
    # What a task of this kind keeps the best epoch by when it names nothing else, and which way is better.
    default_selection_metric = "accuracy"
    greater_is_better = True
    # Labels are one per token, padded with -100 by the batch collator (the causal-LM kind).
    token_labels = False
    # Why Stage II's teacher cache cannot store this kind's teacher signal yet (None: it can).
    teacher_cache_refusal: Optional[str] = None
    # How the teacher cache stores this kind's logits: "full" (all of them) or "topk" (a vocabulary: the top-k
    # next-token log-probabilities per position, ted.method.teacher_cache.topk).
    teacher_cache_logits = "full"

    def has_trained_head(self, architectures: Optional[list[str]]) -> bool:
        """Whether a saved model (its config's `architectures`) carries a trained head of this kind, rather than
        being a pre-trained backbone that would get a fresh, random one."""
        return any(a.endswith(self.architecture_suffix) for a in architectures or [])

    def num_labels(self, label_list: Optional[list[str]]) -> int:
        return len(label_list or [])

    def auto_class(self) -> type[_BaseAutoModelClass]:
        import transformers

        return getattr(transformers, self.auto_class_name)

    def predictions(self, outputs: ModelOutput) -> Predictions:
        """The prediction tensor(s) of a Hugging Face task model output."""
        return outputs.logits

    def stack(self, predictions: Predictions) -> torch.Tensor:
        """Predictions as one tensor for the Trainer to gather."""
        return predictions

    def unstack(self, stacked: torch.Tensor) -> Predictions:
        """The inverse of `stack` (Stage I heads return stacked logits)."""
        return stacked

    def split_labels(self, inputs: dict) -> tuple[dict, Any]:
        """Model inputs without the labels, and the labels (None when the batch has none)."""
        # feature_index only tells SQuAD evaluation which window a row is; the model never sees it.
        model_inputs = {k: v for k, v in inputs.items() if k not in self.label_keys and k != "feature_index"}
        found = [inputs.get(k) for k in self.label_keys]
        if any(v is None for v in found):
            return model_inputs, None
        return model_inputs, found[0] if len(found) == 1 else tuple(found)

    def trainer_labels(self, inputs: dict) -> Optional[torch.Tensor]:
        """What the Trainer passes to compute_metrics as label_ids."""
        return inputs.get("labels")

    def metric_inputs(self, predictions: Predictions, labels: Any) -> torch.Tensor:
        """What an evaluation hands to compute_metrics for a batch with labels: the stacked predictions (a
        causal LM hands each row's summed NLL and token count instead of [B, T, V] logits)."""
        return self.stack(predictions)

    def task_loss(self, predictions: Predictions, labels: Predictions, label_smoothing: float = 0.0) -> torch.Tensor:
        from ted.method import losses

        return losses.classification_loss(predictions, labels, label_smoothing)

    def distilled_positions(self, attention_mask: Optional[torch.Tensor], labels: Any) -> Optional[torch.Tensor]:
        """[B, T] (1 = counts) the positions whose layer states the layer term compares: the real tokens."""
        return attention_mask

    def output_distillation(
        self, student: Predictions, teacher: Predictions, mask: Optional[torch.Tensor], kd: OutputKD, labels: Any = None
    ) -> torch.Tensor:
        """The KD term between the student's and the teacher's predictions: `divergence` (--kd_loss, a
        ted.method.divergences function; default the paper's T^2-scaled forward KL) of the class distributions."""
        return (kd.divergence or _forward_kl())(student, teacher, kd.temperature)


@KINDS.register("classification")
class ClassificationKind(HeadKind):
    pass


@KINDS.register("regression")
class RegressionKind(HeadKind):
    name = "regression"
    problem_type = "regression"
    scores = True
    default_selection_metric = "spearmanr"

    def num_labels(self, label_list: Optional[list[str]]) -> int:
        return 1

    def task_loss(self, predictions: Predictions, labels: Predictions, label_smoothing: float = 0.0) -> torch.Tensor:
        # No classes to smooth over: stages refuse --label_smoothing_factor for regression up front.
        from ted.method import losses

        return losses.regression_loss(predictions, labels)

    def output_distillation(
        self, student: Predictions, teacher: Predictions, mask: Optional[torch.Tensor], kd: OutputKD, labels: Any = None
    ) -> torch.Tensor:
        """MSE between predictions; --paper_compat: the original code's KL as a softmax across the batch.
        (A score has no class distribution, so --kd_loss does not apply: distill refuses it up front.)"""
        from ted.method import losses

        if kd.paper_compat:
            return losses.regression_kl_paper(student, teacher, kd.temperature)
        return losses.regression_distillation(student, teacher)


@KINDS.register("span")
class SpanKind(HeadKind):
    """Extractive QA: start and end logits over every token of a window."""

    name = "span"
    label_keys = ("start_positions", "end_positions")
    auto_class_name = "AutoModelForQuestionAnswering"
    architecture_suffix = "ForQuestionAnswering"
    pipeline_tag = "question-answering"
    problem_type = None
    sequence_level = False
    streams_eval = True
    metric_scale = 1.0
    default_selection_metric = "f1"

    def num_labels(self, label_list: Optional[list[str]]) -> int:
        return 2

    def predictions(self, outputs: ModelOutput) -> tuple[torch.Tensor, torch.Tensor]:
        return outputs.start_logits, outputs.end_logits

    def stack(self, predictions: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        import torch

        return torch.stack(predictions, dim=-1)  # [B, T, 2]

    def unstack(self, stacked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return stacked[..., 0], stacked[..., 1]

    def trainer_labels(self, inputs: dict) -> Optional[torch.Tensor]:
        import torch

        if "start_positions" not in inputs:  # dev windows: post-processing needs their indices
            return inputs.get("feature_index")
        return torch.stack([inputs["start_positions"], inputs["end_positions"]], dim=-1)

    def task_loss(self, predictions: Predictions, labels: Predictions, label_smoothing: float = 0.0) -> torch.Tensor:
        from ted.method import losses

        return losses.span_loss(predictions[0], predictions[1], labels[0], labels[1], label_smoothing)

    def output_distillation(
        self, student: Predictions, teacher: Predictions, mask: Optional[torch.Tensor], kd: OutputKD, labels: Any = None
    ) -> torch.Tensor:
        """The mean of the start and end divergences over the window's tokens (padding too under --paper_compat).
        The mask has the logits' shape: padded tokens leave each softmax."""
        divergence = kd.divergence or _forward_kl()
        mask = None if kd.paper_compat else mask
        return (
            divergence(student[0], teacher[0], kd.temperature, mask)
            + divergence(student[1], teacher[1], kd.temperature, mask)
        ) / 2


@KINDS.register("causal_lm")
class CausalLMKind(HeadKind):
    """Next-token prediction: logits [B, T, V]; labels are the input ids, -100 where a token is not scored
    (padding, prompt tokens). Position t's logits predict token t + 1."""

    name = "causal_lm"
    auto_class_name = "AutoModelForCausalLM"
    # GPT-2's head class is GPT2LMHeadModel; the others end in ForCausalLM (str.endswith takes a tuple).
    architecture_suffix = ("ForCausalLM", "LMHeadModel")
    pipeline_tag = "text-generation"
    problem_type = None
    sequence_level = False
    metric_scale = 1.0
    default_selection_metric = "perplexity"
    greater_is_better = False
    token_labels = True
    teacher_cache_logits = "topk"

    def num_labels(self, label_list: Optional[list[str]]) -> int:
        return 0  # the vocabulary is the output; no label head is built

    def has_trained_head(self, architectures: Optional[list[str]]) -> bool:
        """Always: a causal LM's head is its LM head, pre-trained with the model (a headless GPT2Model folder's head
        is its tied input embeddings), whatever its config names (a config made from a GGUF file may name none)."""
        return True

    def task_loss(self, predictions: Predictions, labels: Predictions, label_smoothing: float = 0.0) -> torch.Tensor:
        from ted.method import losses

        return losses.next_token_loss(predictions, labels, label_smoothing)

    def metric_inputs(self, predictions: Predictions, labels: Any) -> torch.Tensor:
        from ted.method import losses

        return losses.next_token_nll_per_row(predictions, labels)

    def distilled_positions(self, attention_mask: Optional[torch.Tensor], labels: Any) -> Optional[torch.Tensor]:
        """The positions t whose next token t + 1 is scored (its label is not -100; without labels, is a real
        token): what the KD term and the layer term both count, so prompt tokens and padding count in neither."""
        import torch

        from ted.method import losses

        if labels is not None:
            return losses.next_token_targets(labels) != -100
        if attention_mask is not None:
            return torch.nn.functional.pad(attention_mask[:, 1:], (0, 1)) != 0
        return None

    def output_distillation(
        self, student: Predictions, teacher: Predictions, mask: Optional[torch.Tensor], kd: OutputKD, labels: Any = None
    ) -> torch.Tensor:
        """The divergence of the next-token distributions, mean over scored positions (times T^2 as the divergence
        scales it): position t counts when token t + 1 is scored (its label is not -100; without labels, when it is
        a real token). Unshifted [B, T, V] logits with a [B, T] mask: nothing of the logits is copied."""
        if kd.vocab_size is not None:  # views: nothing is copied
            student, teacher = student[..., : kd.vocab_size], teacher[..., : kd.vocab_size]
        scored = self.distilled_positions(mask, labels)
        if scored is None:
            import torch

            scored = torch.ones(student.shape[:2], dtype=torch.bool, device=student.device)
            scored[:, -1] = False
        divergence = kd.divergence or _forward_kl()
        # The divergences sum over kept positions and divide by the batch size: make that a mean over tokens.
        # In chunks of tokens: the float32 [B, T, V] temporaries of both distributions never exist whole
        # (method/chunked.py; value and gradient equal the dense divergence's).
        from ted.method.chunked import chunked

        per_row = chunked(divergence, student, teacher, kd.temperature, scored)
        return per_row * student.size(0) / scored.sum().clamp_min(1)


def _forward_kl() -> Divergence:
    from ted.method.divergences import DIVERGENCES

    return DIVERGENCES.get("forward_kl")


def get_kind(name: str) -> HeadKind:
    """The kind object for a task's `head` string."""
    return KINDS.get(name)()


def kind_of_model(architectures: Optional[list[str]], num_labels: int) -> HeadKind:
    """The kind of a saved task model: by its head's architecture name, a one-output sequence head being
    a regression head (as transformers reads `num_labels == 1`)."""
    kinds = [KINDS.get(name)() for name in KINDS.names()]
    for kind in kinds:
        if not kind.sequence_level and any(a.endswith(kind.architecture_suffix) for a in architectures or []):
            return kind
    return next(k for k in kinds if k.sequence_level and k.scores == (num_labels == 1))
