"""Stage II (`ted distill`) for causal LMs: KD and LWD end to end by CLI, the loss against a hand computation, the
teacher cache used or skipped (refusals: tests/test_teacher_cache_lm.py), and `ted doctor` on the same options."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import ted
from ted.cli.main import main
from ted.method.filters import new_filters
from ted.method.kinds import get_kind
from ted.method.objectives import DistillObjective, DistillStudent, DistillWeights, Teacher
from ted.tasks import load_task
from ted.tasks.causal_lm import token_rows_collator
from test_causal_lm import data_args, decoder_tokenizer, hand_next_token_loss, lm_flags, write_decoder, write_text
from tiny import one_thread  # noqa: F401  (module fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

NO_DROPOUT = {"gpt2": dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0), "llama": {}}


def pair(tmp_path: Path, arch: str) -> tuple[Path, Path]:
    """A 2-layer teacher and a 1-layer student made from it by `ted init-student` (one tokenizer)."""
    teacher = write_decoder(tmp_path / "teacher", arch)
    student = tmp_path / "student"
    ted.init_student(teacher_model_name_or_path=str(teacher), layers="1", output_dir=str(student))
    return teacher, student


def dev_perplexity(folder: Path, dev: Path, bos: bool) -> tuple[float, int]:
    """The saved model's perplexity on the dev blocks by the hand loop."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    _, data = load_task(data_args(validation_file=str(dev), block_size=32), decoder_tokenizer(bos=bos))
    total = count = 0
    with torch.no_grad():
        for ids in data.eval_sets["validation"]["input_ids"]:
            t, c = hand_next_token_loss(model(input_ids=torch.tensor([ids])).logits, torch.tensor([ids]))
            total, count = total + t, count + c
    return math.exp(total / count), count


@pytest.mark.parametrize(
    ("arch", "method", "temperature"), [("gpt2", "kd", 2), ("llama", "kd", 1), ("llama", "lwd", 1)]
)
def test_distill_by_cli_writes_a_stock_causal_lm_and_keeps_the_lowest_perplexity(
    tmp_path, arch, method, temperature, monkeypatch
):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("TQDM_DISABLE", "1")
    teacher, student = pair(tmp_path, arch)
    train, dev = write_text(tmp_path / "train.txt", 40, seed=0), write_text(tmp_path / "dev.txt", 12, seed=1)
    out = tmp_path / "out"
    extra = {"kd": {}, "lwd": {"mse_alpha": 1, "teacher_filter_interval": 2}}[method]
    flags = lm_flags(train, dev, num_train_epochs=4, learning_rate=0.2, lr_scheduler_type="constant",
                     temperature=temperature, **extra)  # fmt: skip
    argv = ["distill", "--model_name_or_path", student, "--teacher_model_name_or_path", teacher,
            "--output_dir", out, "--method", method, "--kl_alpha", 1, *flags]  # fmt: skip
    assert main([str(a) for a in argv]) == 0

    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}[arch]
    assert model.config.num_hidden_layers == 1 if arch == "llama" else model.config.n_layer == 1
    stage = json.loads((out / "ted_stage.json").read_text())
    assert stage["method"] == method and stage["task"]["head"] == "causal_lm"
    cache = stage["teacher_cache"]  # auto over 4 epochs: the teacher's top-k (and LWD's states) stored once ...
    stored = {"topk_logprobs", "topk_ids"} | ({"states"} if method == "lwd" else set())
    if temperature == 1:
        assert cache["used"] and set(cache["entries"]) == stored
    else:  # ... but only at T=1: softened, the teacher's top k hold too little of its distribution
        assert not cache["used"] and "at --temperature 2 hold too little" in cache["reason"]
    assert stage["lineage"]["layer_pairs"] == ([[0, 1]] if method == "lwd" else [])
    assert (out / "filters.safetensors").is_file() == (method == "lwd")  # LWD's projector, beside the model

    results = json.loads((out / "eval_results.json").read_text())
    ppl, count = dev_perplexity(out, dev, bos=arch == "llama")
    assert results["eval_tokens"] == count and results["eval_perplexity"] == pytest.approx(ppl, rel=1e-4)
    log = json.loads((out / "log_history.json").read_text())
    logged = [e["eval_perplexity"] for e in log if "eval_runtime" in e]
    assert len(logged) == 4 and results["eval_perplexity"] == pytest.approx(min(logged))
    terms = {k for e in log for k in e}
    assert {"loss_kl", "loss_pred"} <= terms and ("loss_mse" in terms) == (method == "lwd")


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_the_loss_is_next_token_ce_plus_the_weighted_kd_and_layer_terms(tmp_path, arch):
    """One padded batch with unscored (prompt) tokens: total = CE + kl_alpha * T^2 KL (mean over scored next
    tokens) + mse_alpha * MSE of the projected student layer against the teacher's raw layer over the same
    positions (neither prompt tokens nor padding count)."""
    from transformers import AutoModelForCausalLM

    t_path, s_path = pair(tmp_path, arch)
    teacher_model = AutoModelForCausalLM.from_pretrained(t_path, **NO_DROPOUT[arch])
    student = AutoModelForCausalLM.from_pretrained(s_path, **NO_DROPOUT[arch])
    torch.manual_seed(0)
    projector = new_filters(student.config, [0], teacher_model.config.hidden_size, nonlinear=False, role="projector")
    module = DistillStudent(student, projector).train()
    kl_alpha, mse_alpha, temperature = 0.7, 0.3, 2.0
    objective = DistillObjective(
        "causal_lm", Teacher(teacher_model, None, [1], "causal_lm"), DistillWeights(kl_alpha, mse_alpha, temperature)
    )
    vocab = len(decoder_tokenizer())
    rows = [list(range(4, 13)), list(range(5, 11)), list(range(6, 14))]
    features = [{"input_ids": r} for r in rows]
    features[2]["labels"] = [-100, -100, -100] + rows[2][3:]  # a prompt: its tokens are not scored
    batch = token_rows_collator(decoder_tokenizer(), None)(features)
    total, terms, _ = objective(module, dict(batch))

    with torch.no_grad():
        s_out = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True)
        t_out = teacher_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                              output_hidden_states=True)  # fmt: skip
    s_logits, t_logits = s_out.logits.double(), t_out.logits.double()
    ce = kl = 0.0
    scored = 0
    for b, row in enumerate(batch["labels"]):
        for t in range(len(row) - 1):
            if int(row[t + 1]) == -100:
                continue
            scored += 1
            ce -= float(torch.log_softmax(s_logits[b, t], -1)[int(row[t + 1])])
            log_ps = torch.log_softmax(s_logits[b, t] / temperature, -1)
            log_pt = torch.log_softmax(t_logits[b, t] / temperature, -1)
            kl += temperature**2 * float((log_pt.exp() * (log_pt - log_ps)).sum())
    assert scored == 8 + 5 + 5 and s_logits.shape[-1] == vocab
    linear = projector.filters["0"]
    squares, elements = 0.0, 0
    with torch.no_grad():
        for b, row in enumerate(batch["labels"]):
            for t in [t for t in range(len(row) - 1) if int(row[t + 1]) != -100]:  # the KD term's positions
                projected = linear(s_out.hidden_states[1][b, t]).double()
                squares += float((projected - t_out.hidden_states[2][b, t].double()).pow(2).sum())
                elements += projected.numel()
    expected = {"pred": ce / scored, "kl": kl / scored, "mse": squares / elements}
    for name, value in expected.items():
        assert float(terms[name].detach()) == pytest.approx(value, rel=1e-4), name
    weighted = expected["pred"] + kl_alpha * expected["kl"] + mse_alpha * expected["mse"]
    assert float(total.detach()) == pytest.approx(weighted, rel=1e-4)


def test_the_has_trained_head_check_accepts_any_causal_lm():
    kind = get_kind("causal_lm")
    for architectures in (["GPT2LMHeadModel"], ["LlamaForCausalLM"], ["GPT2Model"], None):
        assert kind.has_trained_head(architectures)
    assert get_kind("classification").has_trained_head(["BertForSequenceClassification"])
    assert not get_kind("classification").has_trained_head(["BertModel"])


def test_doctor_measures_the_step0_terms_of_a_causal_lm_distill(tmp_path, capsys):
    teacher, student = pair(tmp_path, "llama")
    train, dev = write_text(tmp_path / "train.txt", 16), write_text(tmp_path / "dev.txt", 4)
    report = tmp_path / "doctor.json"
    argv = ["doctor", "--model_name_or_path", student, "--teacher_model_name_or_path", teacher, "--json", report,
            "--method", "lwd", "--kl_alpha", 1, "--mse_alpha", 1, "--teacher_filter_interval", 2,
            *lm_flags(train, dev)]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    found = json.loads(report.read_text())
    assert set(found["initial_terms"]) == {"pred", "kl", "mse"} and found["layer_map"] == [[0, 1]]
    # The doctor scores causal LMs now: perplexities beside a unigram baseline (tests/test_pipeline_lm.py checks them).
    assert found["baseline"] == "unigram baseline" and found["teacher_dev"] > 1 and found["student_dev"] > 1


def test_lm_heads_padded_to_different_sizes_are_compared_over_the_tokenizers_tokens(tmp_path, capsys):
    """A teacher head padded with 8 extra rows: KD compares the tokenizer's tokens (a view, same value as on the
    sliced logits); a head smaller than the tokenizer is refused before training."""
    from transformers import AutoModelForCausalLM

    from ted.method.kinds import OutputKD

    teacher, student = pair(tmp_path, "llama")
    tokens = len(decoder_tokenizer(bos=True))
    padded = AutoModelForCausalLM.from_pretrained(teacher)
    padded.resize_token_embeddings(tokens + 8)
    padded.save_pretrained(tmp_path / "padded")
    decoder_tokenizer(bos=True).save_pretrained(tmp_path / "padded")

    kind, mask = get_kind("causal_lm"), torch.ones(2, 5)
    s_logits, t_logits = torch.randn(2, 5, tokens), torch.randn(2, 5, tokens + 8)
    sliced = kind.output_distillation(s_logits, t_logits, mask, OutputKD(2.0, vocab_size=tokens))
    assert float(sliced) == pytest.approx(float(kind.output_distillation(s_logits, t_logits[..., :tokens], mask,
                                                                          OutputKD(2.0))))  # fmt: skip

    train, dev = write_text(tmp_path / "train.txt", 16), write_text(tmp_path / "dev.txt", 4)
    flags = lm_flags(train, dev, num_train_epochs=1)
    out = tmp_path / "kd"
    assert main([str(a) for a in ["distill", "--model_name_or_path", student, "--teacher_model_name_or_path",
                                  tmp_path / "padded", "--output_dir", out, "--method", "kd", "--kl_alpha", 1,
                                  *flags]]) == 0  # fmt: skip
    assert math.isfinite(json.loads((out / "eval_results.json").read_text())["eval_perplexity"])

    small = AutoModelForCausalLM.from_pretrained(student)
    small.resize_token_embeddings(tokens - 2)
    small.save_pretrained(tmp_path / "small")
    decoder_tokenizer(bos=True).save_pretrained(tmp_path / "small")
    capsys.readouterr()
    assert main([str(a) for a in ["distill", "--model_name_or_path", tmp_path / "small",
                                  "--teacher_model_name_or_path", teacher, "--output_dir", tmp_path / "bad",
                                  "--method", "kd", "--kl_alpha", 1, *flags]]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert f"the student's {tokens - 2}" in err and f"tokenizer has {tokens} tokens" in err
    assert not (tmp_path / "bad").exists()
