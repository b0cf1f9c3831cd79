"""Objectives: loss terms of Stage II (TED / KD / LWD), the frozen teacher, Stage I, and term logging."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from ted.method import losses
from ted.method.filters import FilterConfig, TaskAwareFilters
from ted.method.heads import new_heads
from ted.method.objectives import (
    DistillObjective,
    DistillStudent,
    DistillWeights,
    FilterLearner,
    FilterObjective,
    Teacher,
)
from tiny import one_thread  # noqa: F401  (module fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB, HIDDEN, OUT = 30, 32, 16
T_LAYERS, S_LAYERS = [1, 3], [0, 1]  # 4-layer teacher, interval 2; 2-layer student, interval 1


def _model(layers: int, seed: int, dropout: float = 0.0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=2,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    return BertForSequenceClassification(config)


def _filters(layers: list[int], seed: int) -> TaskAwareFilters:
    torch.manual_seed(seed)
    return TaskAwareFilters(FilterConfig(layers=layers, hidden_size=HIDDEN, output_dim=OUT))


def _batch(padded: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, VOCAB, (4, 7), generator=g)
    mask = torch.ones(4, 7, dtype=torch.long)
    if padded:
        mask[1, 4:] = 0
        mask[3, 2:] = 0
        input_ids[mask == 0] = 0
    return {"input_ids": input_ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1, 0])}


def _setup(kl_alpha=2.0, mse_alpha=3.0, paper_compat=False, with_filters=True):
    teacher_model = _model(4, seed=0)
    teacher = Teacher(teacher_model, _filters(T_LAYERS, 1) if with_filters else None, T_LAYERS, "classification")
    student = DistillStudent(_model(2, seed=2), _filters(S_LAYERS, 3) if mse_alpha > 0 else None)
    objective = DistillObjective("classification", teacher, DistillWeights(kl_alpha, mse_alpha, 2.0, paper_compat))
    return teacher, student.train(), objective


def test_kd_has_no_mse_term():
    _, student, objective = _setup(kl_alpha=1.5, mse_alpha=0.0)
    total, terms, preds = objective(student, _batch())
    assert set(terms) == {"pred", "kl"}
    assert preds.shape == (4, 2)
    torch.testing.assert_close(total, terms["pred"] + 1.5 * terms["kl"])


def test_ted_terms_and_total():
    teacher, student, objective = _setup(kl_alpha=2.0, mse_alpha=3.0)
    batch = _batch()
    total, terms, _ = objective(student, batch)
    assert set(terms) == {"pred", "kl", "mse", "mse_layer0", "mse_layer1"}  # keyed by student layer
    torch.testing.assert_close(terms["mse"], (terms["mse_layer0"] + terms["mse_layer1"]) / 2)
    torch.testing.assert_close(total, terms["pred"] + 2.0 * terms["kl"] + 3.0 * terms["mse"])

    # Recompute each term independently from the models' outputs.
    with torch.no_grad():
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        s_out = student.model(**inputs, output_hidden_states=True)
        t_out = teacher.model(**inputs, output_hidden_states=True)
        s_states = student.filters(s_out.hidden_states)
        t_states = teacher.filters(t_out.hidden_states)
    torch.testing.assert_close(terms["pred"], losses.classification_loss(s_out.logits, batch["labels"]))
    torch.testing.assert_close(terms["kl"], losses.kl_divergence(s_out.logits, t_out.logits, 2.0))
    for k, layer in enumerate(S_LAYERS):
        # student layer S_LAYERS[k] (through its filter) against teacher layer T_LAYERS[k] (through its filter)
        expected = losses.layer_mse(s_states[k], t_states[k], batch["attention_mask"])
        torch.testing.assert_close(terms[f"mse_layer{layer}"], expected)


def test_real_token_filtering_gives_the_masked_loss_and_gradients():
    # On CPU the filters see only the real tokens (padding dropped before filtering); the loss and every
    # student gradient must equal the masked MSE over all positions that accelerators compute.
    teacher, student, objective = _setup(kl_alpha=2.0, mse_alpha=3.0)
    batch = _batch()
    total, _, _ = objective(student, batch)
    total.backward()
    fast = {name: p.grad.clone() for name, p in student.named_parameters() if p.grad is not None}
    student.zero_grad()

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    s_out = student.model(**inputs, output_hidden_states=True)
    with torch.no_grad():
        t_out = teacher.model(**inputs, output_hidden_states=True)
        t_states = teacher.filters(t_out.hidden_states)
    s_states = student.filters(s_out.hidden_states)
    mse = torch.stack([losses.layer_mse(s, t, batch["attention_mask"]) for s, t in zip(s_states, t_states)]).mean()
    reference = (
        losses.classification_loss(s_out.logits, batch["labels"])
        + 2.0 * losses.kl_divergence(s_out.logits, t_out.logits, 2.0)
        + 3.0 * mse
    )
    torch.testing.assert_close(total, reference)
    reference.backward()
    assert fast.keys() == {name for name, p in student.named_parameters() if p.grad is not None}
    for name, p in student.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(fast[name], p.grad, msg=name)


def test_teacher_is_frozen_in_eval_mode_and_gets_no_gradient():
    teacher, student, objective = _setup()
    assert not teacher.model.training and not teacher.filters.training
    total, _, _ = objective(student, _batch())
    total.backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher.model.parameters())
    assert all(p.grad is None for p in teacher.filters.parameters())
    assert all(p.grad is not None for p in student.filters.parameters())
    assert student.model.bert.encoder.layer[0].attention.self.query.weight.grad is not None
    assert not teacher.model.training  # the objective never flips the teacher to train mode


def test_eval_mode_returns_only_the_task_loss():
    _, student, objective = _setup()
    batch = _batch()
    student.eval()
    loss, terms, preds = objective(student, batch)
    assert terms == {}
    with torch.no_grad():
        logits = student.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    torch.testing.assert_close(preds, logits)
    torch.testing.assert_close(loss, losses.classification_loss(logits, batch["labels"]))


def test_paper_compat_changes_mse_only_when_there_is_padding():
    def mse(paper_compat: bool, padded: bool) -> torch.Tensor:
        _, student, objective = _setup(paper_compat=paper_compat)
        return objective(student, _batch(padded))[1]["mse"]

    # Padding positions take part in the paper's MSE: a different number on a padded batch ...
    assert abs(mse(True, True).item() - mse(False, True).item()) > 1e-6
    # ... and exactly the same one when every token is real.
    torch.testing.assert_close(mse(True, False), mse(False, False))


def test_lwd_without_teacher_filters_reads_raw_teacher_layers():
    # LWD: the teacher's raw hidden_states[i + 1] are the targets of the student's projector.
    teacher, student, objective = _setup(with_filters=False)
    student.filters = TaskAwareFilters(
        FilterConfig(layers=S_LAYERS, hidden_size=HIDDEN, output_dim=HIDDEN, role="projector")
    )
    batch = _batch()
    _, terms, _ = objective(student, batch)
    with torch.no_grad():
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        t_hidden = teacher.model(**inputs, output_hidden_states=True).hidden_states
        s_states = student.filters(student.model(**inputs, output_hidden_states=True).hidden_states)
    expected = losses.layer_mse(s_states[1], t_hidden[T_LAYERS[1] + 1], batch["attention_mask"])
    torch.testing.assert_close(terms["mse_layer1"], expected)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_filter_learner_freezes_backbone(mode):
    backbone = _model(4, seed=0, dropout=0.5)
    filters = _filters(T_LAYERS, 1)
    heads = new_heads("classification", len(T_LAYERS), OUT, 2, backbone.config)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    learner = FilterLearner(backbone, filters, heads, backbone_mode=mode).train()
    assert heads.training and filters.training
    # The paper keeps the frozen backbone's dropout on ("train"); "eval" switches it off.
    assert backbone.training is (mode == "train")
    dropouts = [m for m in backbone.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(m.training is (mode == "train") for m in dropouts)

    objective = FilterObjective("classification")
    loss, terms, preds = objective(learner, _batch())
    assert set(terms) == {"filter_layer1", "filter_layer3"}
    torch.testing.assert_close(loss, (terms["filter_layer1"] + terms["filter_layer3"]) / 2)
    assert preds.shape == (4, 2, 2)  # [batch, filter, class]
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in backbone.parameters())
    assert all(p.grad is not None for p in filters.parameters())
    assert all(p.grad is not None for p in heads.parameters())
    torch.optim.SGD(learner.parameters(), lr=1.0).step()
    for key, value in backbone.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)

    if mode == "eval":  # no dropout anywhere in the backbone: two passes agree
        batch = {k: v for k, v in _batch().items() if k != "labels"}
        with torch.no_grad():
            a = backbone(**batch, output_hidden_states=True).hidden_states[-1]
            b = backbone(**batch, output_hidden_states=True).hidden_states[-1]
        torch.testing.assert_close(a, b)
    learner.eval()
    assert not backbone.training and not heads.training


def test_filter_learner_rejects_unknown_mode():
    with pytest.raises(ValueError, match="backbone_mode"):
        FilterLearner(
            _model(2, 0),
            _filters([0], 1),
            new_heads("classification", 1, OUT, 2, _model(2, 0).config),
            backbone_mode="frozen",
        )


def test_trainer_logs_every_loss_term(tmp_path):
    from datasets import Dataset
    from transformers import TrainingArguments

    from ted.method.trainer import TedTrainer

    teacher, student, objective = _setup(kl_alpha=1.0, mse_alpha=2.0)
    rows = {k: [] for k in ("input_ids", "attention_mask", "labels")}
    for _ in range(3):
        batch = _batch()
        for k in rows:
            rows[k] += batch[k].tolist()
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        logging_steps=1,
        per_device_train_batch_size=4,
        report_to=[],
        remove_unused_columns=False,
        save_strategy="no",
        eval_strategy="no",
        dataloader_pin_memory=False,
        use_cpu=True,
        disable_tqdm=True,
        learning_rate=1e-3,
    )
    trainer = TedTrainer(
        model=student,
        args=args,
        objective=objective,
        teacher=teacher,
        train_dataset=Dataset.from_dict(rows).with_format("torch"),
    )
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 3
    for entry in logged:
        for name in ("loss_pred", "loss_kl", "loss_mse", "loss_mse_layer0", "loss_mse_layer1"):
            assert name in entry and entry[name] > 0, (name, entry)
        # With one step per logging interval, the logged total is exactly the weighted sum of the terms.
        assert entry["loss"] == pytest.approx(entry["loss_pred"] + entry["loss_kl"] + 2.0 * entry["loss_mse"], rel=1e-4)
    assert not teacher.model.training  # Trainer.train() put the student in train mode, never the teacher
    assert all(p.grad is None for p in teacher.model.parameters())
