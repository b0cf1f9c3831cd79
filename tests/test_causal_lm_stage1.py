"""Stage I (`ted learn-filters`) and TED's Stage II for causal LMs: the lens heads reproduce the model's logits, the
chunked next-token loss equals the dense one, Stage I changes nothing but filters (and fresh heads), and TED runs
end to end by CLI on tiny GPT-2, Llama and Qwen2 models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import ted
from ted.errors import TedInputError
from ted.method.filters import TaskAwareFilters, new_filters
from ted.method.lens import (
    NextTokenFilterLearner,
    NextTokenFilterObjective,
    NextTokenHeads,
    final_norm,
    new_next_token_heads,
    nll_per_row,
)
from ted.method.losses import next_token_targets
from test_causal_lm import hand_next_token_loss, lm_flags, ted_cli, write_decoder, write_text
from tiny import decoder, one_thread, state_dict_of  # noqa: F401  (module fixture)

pytestmark = pytest.mark.usefixtures("one_thread")
ARCHS = ["gpt2", "llama", "qwen2"]
VOCAB = 40


def sample(n: int = 9, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, VOCAB, (1, n), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ARCHS)
def test_identity_filters_through_the_lens_give_the_models_own_logits(arch):
    """The last layer's identity filter + lens head = the model's logits exactly; an inner layer's = norm + LM head."""
    model = decoder(arch, VOCAB)
    layers = list(range(4))
    heads = new_next_token_heads(model, layers, model.config.hidden_size, "lens", sample())
    assert heads.config.post_norm_layer == 3  # Hugging Face's last hidden state is after the final norm
    filters = new_filters(model.config, layers, None, nonlinear=False)
    filters.start_as_identity()
    ids = sample(12, seed=1)
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
        filtered = filters(out.hidden_states)
        lm_head, norm = model.get_output_embeddings(), final_norm(model)
        torch.testing.assert_close(heads.head(3)(filtered[3]), out.logits, rtol=0, atol=0)
        for k in range(3):
            torch.testing.assert_close(heads.head(k)(filtered[k]), lm_head(norm(out.hidden_states[k + 1])))
    # Through the learner: the last filter's per-row NLL is the model's own next-token loss.
    learner = NextTokenFilterLearner(model, filters, heads).eval()
    with torch.no_grad():
        per_row = learner(labels=ids, input_ids=ids)
    total, count = hand_next_token_loss(out.logits, ids)
    assert per_row.shape == (1, 4, 2) and float(per_row[0, 3, 1]) == count == 11
    assert float(per_row[0, 3, 0]) == pytest.approx(total, rel=1e-5)


def test_a_lens_needs_filters_as_wide_as_the_model_and_logits_it_can_reproduce():
    model = decoder("llama", VOCAB)
    with pytest.raises(TedInputError, match="--filter_output_dim 16"):
        new_next_token_heads(model, [1], 16, "lens", sample())
    original = model.forward

    def scaled(*args, **kwargs):  # a family that scales its logits (e.g. Cohere)
        out = original(*args, **kwargs)
        out.logits = out.logits * 0.5
        return out

    model.forward = scaled
    with pytest.raises(TedInputError, match="--stage1_lm_head fresh"):
        new_next_token_heads(model, [1], 32, "lens", sample())
    fresh = new_next_token_heads(model, [1], 16, "fresh", sample())  # no check needed: its own head
    assert fresh.filter_head[0].weight.shape == (VOCAB, 16)


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_the_chunked_nll_equals_the_dense_cross_entropy_in_value_and_gradient(chunk):
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 30, bias=False)
    states = torch.randn(3, 7, 8, dtype=torch.float64, requires_grad=True)
    head.double()
    labels = torch.randint(0, 30, (3, 7))
    labels[1, :4] = -100  # a prompt
    labels[2, 5:] = -100  # padding
    targets = next_token_targets(labels)
    per_row = nll_per_row(head, states, targets, chunk, label_smoothing=0.1)
    (grad,) = torch.autograd.grad(per_row[:, 0].sum() / per_row[:, 1].sum(), states)

    dense = torch.nn.functional.cross_entropy(
        head(states).reshape(-1, 30), targets.reshape(-1), ignore_index=-100, reduction="none", label_smoothing=0.1
    ).view(3, 7)
    torch.testing.assert_close(per_row[:, 0], dense.sum(1).float(), rtol=1e-6, atol=1e-6)
    assert per_row[:, 1].tolist() == (targets != -100).sum(1).float().tolist() == [6.0, 3.0, 4.0]
    (expected,) = torch.autograd.grad(dense.sum() / (targets != -100).sum(), states)
    torch.testing.assert_close(grad, expected)


def test_the_objective_is_the_mean_over_filters_of_each_token_mean_loss():
    model = decoder("gpt2", VOCAB)
    filters = new_filters(model.config, [0, 2], None, nonlinear=False)
    heads = new_next_token_heads(model, [0, 2], 32, "fresh", sample())
    learner = NextTokenFilterLearner(model, filters, heads).train()
    ids = torch.randint(3, VOCAB, (2, 10), generator=torch.Generator().manual_seed(3))
    labels = ids.clone()
    labels[0, :6] = -100
    loss, terms, preds = NextTokenFilterObjective()(learner, {"input_ids": ids, "labels": labels})
    means = []
    for k, layer in enumerate([0, 2]):
        with torch.no_grad():
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
            logits = heads.filter_head[k](filters.filters[str(layer)](hidden[layer + 1]))
        total, count = hand_next_token_loss(logits, labels)
        means.append(total / count)
        assert float(terms[f"filter_layer{layer}"].detach()) == pytest.approx(total / count, rel=1e-5)
    assert float(loss.detach()) == pytest.approx(sum(means) / 2, rel=1e-5)
    assert preds.shape == (2, 2, 2) and preds[:, 0, 1].tolist() == [4.0, 9.0]
    loss.backward()  # gradients reach the filters and heads only
    assert all(p.grad is None for p in model.parameters())
    assert filters.filters["0"].weight.grad is not None and heads.filter_head[1].weight.grad is not None


def stage1(tmp_path: Path, model: Path, out: Path, interval: int, **extra: object) -> dict:
    train, dev = write_text(tmp_path / "train.txt", 40, seed=0), write_text(tmp_path / "dev.txt", 12, seed=1)
    flags = lm_flags(train, dev, **{"filter_interval": interval, "learning_rate": 5e-3, **extra})
    ted_cli("learn-filters", "--model_name_or_path", model, "--output_dir", out, *flags)
    return json.loads((out / "stage1_layer_scores.json").read_text())


@pytest.mark.parametrize("arch", ARCHS)
def test_learn_filters_by_cli_trains_only_the_filters_and_scores_each_layer(tmp_path, arch, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    base = write_decoder(tmp_path / "base", arch)
    out = tmp_path / "stage1"
    scores = stage1(tmp_path, base, out, interval=1)
    assert sorted(scores) == ["0", "1"]
    for s in scores.values():
        assert s["loss"] == pytest.approx(math.log(s["perplexity"])) and s["tokens"] > 0
    before, after = state_dict_of(base), state_dict_of(out)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    lens = NextTokenHeads.load(out)
    assert lens.config.mode == "lens" and lens.config.post_norm_layer == 1
    assert not any(lens.state_dict())  # a lens owns no weights: they are the model's
    stage = json.loads((out / "ted_stage.json").read_text())
    assert stage["task"]["head"] == "causal_lm" and stage["args"]["stage1_lm_head"] == "lens"
    # The filters moved away from the identity they started at.
    filters = TaskAwareFilters.load(out)
    assert not torch.equal(filters.filters["0"].weight, torch.eye(32))


def test_fresh_heads_are_saved_and_the_last_layer_lens_starts_at_the_models_perplexity(tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    base = write_decoder(tmp_path / "base", "llama")
    fresh = stage1(tmp_path, base, tmp_path / "fresh", interval=2, stage1_lm_head="fresh", filter_output_dim=8)
    heads = NextTokenHeads.load(tmp_path / "fresh")
    assert heads.config.mode == "fresh" and heads.filter_head[0].weight.shape[1] == 8 and list(fresh) == ["1"]
    # A learning rate of 0: the identity filter on the last layer scores the model's own perplexity.
    untrained = stage1(tmp_path, base, tmp_path / "lens0", interval=2, learning_rate=0, weight_decay=0)
    ted_cli("evaluate", "--model_name_or_path", base, "--validation_file", tmp_path / "dev.txt", "--block_size", 32,
            "--task_name", "causal_lm", "--output_dir", tmp_path / "scored", "--disable_tqdm", True)  # fmt: skip
    own = json.loads((tmp_path / "scored" / "eval_results.json").read_text())["eval_perplexity"]
    assert untrained["1"]["perplexity"] == pytest.approx(own, rel=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])
def test_ted_by_cli_on_a_causal_lm_pair(tmp_path, arch, monkeypatch):
    """Stage I on a 2-layer teacher (interval 2) and a 1-layer student made from it, then TED: the layer term
    compares the student's filtered layer 0 with the teacher's filtered layer 1."""
    monkeypatch.setenv("TQDM_DISABLE", "1")
    teacher = write_decoder(tmp_path / "teacher", arch)
    student = tmp_path / "student"
    ted.init_student(teacher_model_name_or_path=str(teacher), layers="1", output_dir=str(student))
    stage1(tmp_path, teacher, tmp_path / "t1", interval=2)
    stage1(tmp_path, student, tmp_path / "s1", interval=1)
    out = tmp_path / "ted"
    flags = lm_flags(tmp_path / "train.txt", tmp_path / "dev.txt", method="ted", kl_alpha=1, mse_alpha=5,
                     teacher_filter_interval=2)  # fmt: skip
    ted_cli("distill", "--model_name_or_path", tmp_path / "s1", "--teacher_model_name_or_path", tmp_path / "t1",
            "--output_dir", out, *flags)  # fmt: skip
    log = json.loads((out / "log_history.json").read_text())
    terms = {k for e in log for k in e}
    assert {"loss_pred", "loss_kl", "loss_mse", "loss_mse_layer0"} <= terms
    results = json.loads((out / "eval_results.json").read_text())
    assert math.isfinite(results["eval_perplexity"])
    stage = json.loads((out / "ted_stage.json").read_text())
    assert stage["method"] == "ted"
