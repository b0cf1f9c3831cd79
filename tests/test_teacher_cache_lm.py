"""The teacher cache for causal LMs: the top-k next-token log-probabilities, the sparse KD term read from them,
the layer states at the scored positions, the CLI (build, reuse, auto), and what is refused."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import ted.method.teacher_cache as tc
from ted.cli.main import main
from ted.method.filters import new_filters
from ted.method.objectives import DistillObjective, DistillStudent, DistillWeights, Teacher
from ted.tasks import load_task
from ted.tasks.causal_lm import token_rows_collator
from test_causal_lm import data_args, decoder_tokenizer, lm_flags, write_text
from test_causal_lm_distill import pair
from tiny import one_thread  # noqa: F401  (module fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

HEAD = "causal_lm"
TEACHER_LAYERS = [0, 1]


def rows(n: int = 7, seed: int = 0):
    """Token rows of varied lengths; every other row has a prompt (labels -100) that no term may read."""
    import datasets

    rng = random.Random(seed)
    ids, labels = [], []
    for i in range(n):
        row = [rng.randrange(4, len(decoder_tokenizer())) for _ in range(rng.randint(4, 12))]
        prompt = rng.randint(1, len(row) - 2) if i % 2 else 0
        ids.append(row)
        labels.append([-100] * prompt + row[prompt:])
    return datasets.Dataset.from_dict({"input_ids": ids, "labels": labels})


def models(tmp_path: Path, scale: float = 1.0):
    """A 2-layer Llama teacher (LM head scaled by `scale`: larger is more peaked) and a 1-layer student."""
    from transformers import AutoModelForCausalLM

    t_path, s_path = pair(tmp_path, "llama")
    teacher = AutoModelForCausalLM.from_pretrained(t_path).eval()
    with torch.no_grad():
        teacher.lm_head.weight.mul_(scale)
    return teacher, AutoModelForCausalLM.from_pretrained(s_path)


def cached(tmp_path: Path, teacher: Teacher, data, k: int, need_states: bool, dtype: str = "float32"):
    """Build the cache of `data` (batches of 3, sorted by length) and return its collator, seam and components."""
    tok = decoder_tokenizer()
    collator = token_rows_collator(tok, None)
    components = tc.plan_components(
        head=HEAD, teacher=teacher, need_logits=True, need_states=need_states, dataset=data,
        compute_dtype=None, store_dtype=dtype, topk=k,
    )  # fmt: skip
    tc.build(tmp_path, components, teacher, data, tok, torch.device("cpu"), batch_size=3, collator=collator)
    stores = {c.name: tc.Store(tmp_path / c.folder_name, c) for c in components}
    vocab = components[0].description["vocab"]
    seam = tc.CachedTeacher(HEAD, list(teacher.layers), vocab_size=vocab)
    return tc.CachedSignalCollator(collator, stores, flat_states=True, head=HEAD), seam, components


def batches(data, cache_collator, order: list[int]):
    """The same rows as a training batch with the cached signal and as a plain batch for the online teacher."""
    indexed = data.add_column(tc.EXAMPLE_INDEX, list(range(len(data))))
    features = [indexed[i] for i in order]
    plain = token_rows_collator(decoder_tokenizer(), None)([data[i] for i in order])
    return cache_collator(features), plain


def terms_and_grads(objective, student, batch):
    student.zero_grad()
    total, terms, _ = objective(student, dict(batch))
    total.backward()
    grads = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    return {k: float(v.detach()) for k, v in terms.items()}, grads


def hand_sparse_kd(teacher_logits, student_logits, labels, k: int, temperature: float) -> float:
    """The documented term, float64, position by position: the teacher renormalised over its top k at T, the
    student's full-vocabulary log-softmax at T gathered there, T^2 sum q (log q - log p_s), mean over scored."""
    total, count = 0.0, 0
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            if int(labels[b, t + 1]) == -100:
                continue
            log_p = torch.log_softmax(teacher_logits[b, t].double(), -1)
            top = log_p.topk(k).indices
            log_q = torch.log_softmax(log_p[top] / temperature, -1)
            log_s = torch.log_softmax(student_logits[b, t].double() / temperature, -1)[top]
            total += temperature**2 * float((log_q.exp() * (log_q - log_s)).sum())
            count += 1
    return total / count


# -- the KD term from the top-k cache --------------------------------------------------------------------------


def test_the_cached_kd_term_is_the_renormalised_top_k_kl_of_a_hand_loop(tmp_path):
    teacher_model, student_model = models(tmp_path)
    data, k, temperature = rows(), 5, 2.0
    teacher = Teacher(teacher_model, None, [], HEAD)
    collate, seam, components = cached(tmp_path / "cache", teacher, data, k, need_states=False)
    assert [c.name for c in components] == ["topk_logprobs", "topk_ids"] and components[0].row_shape == (k,)
    order = [3, 0, 6, 1, 5]
    batch, plain = batches(data, collate, order)
    objective = DistillObjective(HEAD, seam, DistillWeights(1.0, 0.0, temperature))
    student = DistillStudent(student_model, None).train()
    terms, _ = terms_and_grads(objective, student, batch)
    with torch.no_grad():
        inputs = {"input_ids": plain["input_ids"], "attention_mask": plain["attention_mask"]}
        t_logits, s_logits = teacher_model(**inputs).logits, student_model(**inputs).logits
        expected = hand_sparse_kd(t_logits, s_logits, plain["labels"], k, temperature)
    assert terms["kl"] == pytest.approx(expected, rel=1e-5)
    # What was stored: each scored position's k ids, most likely first, and their log-probabilities.
    scored = sum(sum(1 for x in row[1:] if x != -100) for row in data["labels"])
    ids = tc.Store(tmp_path / "cache" / components[1].folder_name, components[1]).values()
    assert ids.shape == (scored, k) and ids.dtype == "int32"


@pytest.mark.parametrize(("method", "kd_loss"), [("kd", "forward_kl"), ("lwd", "forward_kl"), ("ted", "jsd:0.3")])
def test_k_equal_to_the_vocabulary_reproduces_the_online_terms_and_gradients(tmp_path, method, kd_loss):
    teacher_model, student_model = models(tmp_path)
    data = rows()
    vocab = teacher_model.config.vocab_size
    need_states = method != "kd"
    torch.manual_seed(0)
    filters = new_filters(teacher_model.config, [1], 16, nonlinear=False) if method == "ted" else None
    teacher = Teacher(teacher_model, filters, [1] if need_states else [], HEAD)
    width = 16 if method == "ted" else teacher_model.config.hidden_size
    projector = new_filters(student_model.config, [0], width, nonlinear=False) if need_states else None
    collate, seam, _ = cached(tmp_path / "cache", teacher, data, vocab, need_states)
    weights = DistillWeights(0.7, 0.3 if need_states else 0.0, 2.0, kd_loss=kd_loss)
    student = DistillStudent(student_model, projector).train()
    batch, plain = batches(data, collate, [6, 2, 4, 1])
    online = terms_and_grads(DistillObjective(HEAD, teacher, weights), student, plain)
    from_cache = terms_and_grads(DistillObjective(HEAD, seam, weights), student, batch)
    assert online[0].keys() == from_cache[0].keys() >= {"pred", "kl"} | ({"mse"} if need_states else set())
    for name, value in online[0].items():
        assert from_cache[0][name] == pytest.approx(value, rel=1e-5, abs=1e-7), name
    assert online[1].keys() == from_cache[1].keys()
    for name, grad in online[1].items():
        assert torch.allclose(from_cache[1][name], grad, rtol=1e-4, atol=1e-7), name


def test_a_small_k_is_close_on_a_peaked_teacher_and_not_on_a_flat_one(tmp_path):
    errors = {}
    for scale in (1.0, 150.0):
        teacher_model, student_model = models(tmp_path / str(scale), scale)
        data = rows()
        teacher = Teacher(teacher_model, None, [], HEAD)
        collate, seam, _ = cached(tmp_path / str(scale) / "cache", teacher, data, 3, need_states=False)
        batch, plain = batches(data, collate, list(range(len(data))))
        weights = DistillWeights(1.0, 0.0, 1.0)
        student = DistillStudent(student_model, None).train()
        full = terms_and_grads(DistillObjective(HEAD, teacher, weights), student, plain)[0]["kl"]
        top3 = terms_and_grads(DistillObjective(HEAD, seam, weights), student, batch)[0]["kl"]
        errors[scale] = abs(top3 - full) / full
    # k = 3 of 24 tokens: the peaked teacher keeps 99.8% of its mass there (0.4% off), the flat one 15%.
    assert errors[150.0] < 0.01 and errors[1.0] > 1


def test_16_bit_top_k_values_stay_close(tmp_path):
    teacher_model, student_model = models(tmp_path)
    data = rows()
    teacher = Teacher(teacher_model, None, [], HEAD)
    results = {}
    for dtype in ("float32", "float16", "bfloat16"):
        collate, seam, components = cached(tmp_path / dtype, teacher, data, 8, need_states=False, dtype=dtype)
        assert components[0].dtype == dtype and components[1].dtype == "int32"
        batch, _ = batches(data, collate, list(range(len(data))))
        student = DistillStudent(student_model, None).train()
        results[dtype] = terms_and_grads(DistillObjective(HEAD, seam, DistillWeights(1.0, 0.0)), student, batch)[0]
    assert results["float16"]["kl"] == pytest.approx(results["float32"]["kl"], rel=2e-3)
    assert results["bfloat16"]["kl"] == pytest.approx(results["float32"]["kl"], rel=2e-2)


# -- keys, sizes, refusals -------------------------------------------------------------------------------------


def test_the_key_follows_k_and_the_labels_but_the_states_do_not_follow_k(tmp_path):
    teacher_model, _ = models(tmp_path)
    teacher = Teacher(teacher_model, None, [1], HEAD)
    data = rows()

    def keys(k, dataset=data):
        plan = tc.plan_components(
            head=HEAD, teacher=teacher, need_logits=True, need_states=True, dataset=dataset,
            compute_dtype=None, store_dtype="float32", topk=k,
        )  # fmt: skip
        return {c.name: c.key for c in plan}

    base = keys(8)
    assert set(base) == {"topk_logprobs", "topk_ids", "states"} and keys(8) == base
    assert keys(16)["topk_ids"] != base["topk_ids"] and keys(16)["states"] == base["states"]
    assert keys(None) == keys(tc.DEFAULT_TOPK) and keys(10_000) == keys(teacher_model.config.vocab_size)
    other = data.map(lambda r: {"labels": [-100] + r["labels"][1:]})  # same tokens, another prompt: other positions
    assert all(keys(8, other)[name] != key for name, key in base.items())


@pytest.mark.parametrize(
    ("spec", "ok"),
    [("forward_kl", True), ("skew_kl:0.2", True), ("tvd", True), ("jsd:0.5", True), ("skew_rkl:0.1", True),
     ("reverse_kl", False), ("jsd:1", False), ("skew_rkl:0", False)],
)  # fmt: skip
def test_which_divergences_the_top_k_cache_serves(spec, ok):
    conflict = tc.divergence_conflict(spec)
    assert (conflict is None) == ok
    if not ok:
        assert f"--kd_loss {spec}" in conflict and "forward_kl, skew_kl, tvd" in conflict


def test_refusals_come_before_the_models_load(tmp_path, capsys, monkeypatch):
    import ted.stages.distill_setup as setup
    import ted.stages.models as models_module

    teacher, student = pair(tmp_path, "gpt2")
    train, dev = write_text(tmp_path / "train.txt", 4), write_text(tmp_path / "dev.txt", 2)

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(models_module, "load_task_model", no_model)
    monkeypatch.setattr(setup, "load_task_model", no_model)
    cases = [
        (
            ["--teacher_cache", tmp_path / "cache", "--kd_loss", "reverse_kl", "--temperature", 1],
            "--kd_loss reverse_kl cannot be computed",
        ),
        (["--teacher_cache", tmp_path / "cache"], "at --temperature 2 hold too little of its softened distribution"),
        (["--teacher_cache_topk", 0], "--teacher_cache_topk must be a positive whole number"),
    ]
    for flags, words in cases:
        out = tmp_path / "out"
        argv = ["distill", "--model_name_or_path", student, "--teacher_model_name_or_path", teacher,
                "--output_dir", out, "--method", "kd", "--kl_alpha", 1, *flags, *lm_flags(train, dev)]  # fmt: skip
        assert main([str(a) for a in argv]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err
        assert not out.exists() and not (tmp_path / "cache").exists()


# -- end to end ------------------------------------------------------------------------------------------------


def distill(tmp_path: Path, name: str, method: str, *extra: object) -> dict:
    train, dev = write_text(tmp_path / "train.txt", 24, seed=0), write_text(tmp_path / "dev.txt", 6, seed=1)
    out = tmp_path / name
    flags = {"kd": [], "lwd": ["--mse_alpha", 1, "--teacher_filter_interval", 2]}[method]
    argv = ["distill", "--model_name_or_path", tmp_path / "student", "--teacher_model_name_or_path",
            tmp_path / "teacher", "--output_dir", out, "--method", method, "--kl_alpha", 1, *flags,
            *lm_flags(train, dev, num_train_epochs=2, temperature=1), *extra]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    return json.loads((out / "ted_stage.json").read_text())


def test_kd_then_lwd_by_cli_build_and_reuse_one_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    pair(tmp_path, "llama")
    cache = tmp_path / "cache"
    kd = distill(tmp_path, "kd", "kd", "--teacher_cache", cache, "--teacher_cache_topk", 8)["teacher_cache"]
    assert kd["used"] and kd["built"] == ["topk_logprobs", "topk_ids"] and kd["topk"] == 8
    assert 0 < kd["topk_mass"]["min"] <= kd["topk_mass"]["mean"] <= 1
    # One row of 8 per scored position: every position of a 32-token training block but its last.
    _, data = load_task(data_args(train_file=str(tmp_path / "train.txt"), validation_file=str(tmp_path / "dev.txt"),
                                  block_size=32), decoder_tokenizer(bos=True))  # fmt: skip
    blocks = data.train["input_ids"]
    offsets = np.load(cache / kd["entries"]["topk_ids"] / "offsets.npy")
    assert np.diff(offsets).tolist() == [len(b) - 1 for b in blocks]
    assert kd["bytes"] == 2 * (int(offsets[-1]) * 8 * 4 + (len(blocks) + 1) * 8)  # float32 log-probs + int32 ids

    again = distill(tmp_path, "kd2", "kd", "--teacher_cache", cache, "--teacher_cache_topk", 8)["teacher_cache"]
    assert again["used"] and again["built"] == [] and again["entries"] == kd["entries"]

    lwd = distill(tmp_path, "lwd", "lwd", "--teacher_cache", cache, "--teacher_cache_topk", 8)["teacher_cache"]
    assert lwd["built"] == ["states"] and lwd["entries"]["topk_ids"] == kd["entries"]["topk_ids"]
    log = json.loads((tmp_path / "lwd" / "log_history.json").read_text())
    assert all(math.isfinite(e["loss_kl"]) and math.isfinite(e["loss_mse"]) for e in log if "loss_kl" in e)


def test_auto_caches_a_causal_lm_over_two_epochs_and_records_why_not_otherwise(tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    pair(tmp_path, "gpt2")
    auto = distill(tmp_path, "auto", "kd")["teacher_cache"]
    assert auto["used"] and auto["reason"].startswith("auto: 2 epochs")
    assert auto["topk"] == min(tc.DEFAULT_TOPK, len(decoder_tokenizer())) == 24  # k is at most the vocabulary
    assert not tc.default_root(tmp_path / "auto").exists()  # the per-run cache is gone with the run
    refused = distill(tmp_path, "rkl", "kd", "--kd_loss", "reverse_kl")["teacher_cache"]
    assert not refused["used"] and "--kd_loss reverse_kl cannot be computed" in refused["reason"]
    softened = distill(tmp_path, "t2", "kd", "--temperature", 2)["teacher_cache"]  # the last flag wins
    assert not softened["used"] and "at --temperature 2 hold too little" in softened["reason"]
