"""Stage II teacher-signal cache (ted.method.teacher_cache): exactness, fingerprints, atomic builds, the auto policy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import (
    BertConfig,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    DataCollatorWithPadding,
    RobertaConfig,
    RobertaForQuestionAnswering,
    RobertaForSequenceClassification,
)

import tiny
from ted.cli.main import main
from ted.method import teacher_cache as tc
from ted.method.filters import FilterConfig, TaskAwareFilters
from ted.method.objectives import DistillObjective, DistillStudent, DistillWeights, Teacher
from tiny import one_thread  # noqa: F401  (module fixture)

pytestmark = pytest.mark.usefixtures("one_thread")
HERE = Path(__file__).resolve().parent
T_LAYERS, S_LAYERS = [1, 3], [0, 1]
LOSS_KEYS = ("loss", "loss_pred", "loss_kl", "loss_mse", "loss_mse_layer0", "loss_mse_layer1")
METHOD_FLAGS = {
    "ted": ["--teacher_filter_interval", "2", "--filter_output_dim", "16", "--kl_alpha", "1", "--mse_alpha", "10"],
    "kd": ["--method", "kd", "--kl_alpha", "1"],
    "lwd": ["--method", "lwd", "--filter_disabled", "true", "--teacher_filter_interval", "2", "--mse_alpha", "10"],
}


# ----------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    tok = tiny.build_tokenizer()
    train, dev = tiny.write_data(root / "data", n_train=24, n_dev=8)
    teacher = tiny.write_stage1_model(root / "t", tok, 4, T_LAYERS, 2, seed=0)
    student = tiny.write_stage1_model(root / "s", tok, 2, S_LAYERS, 1, seed=1)
    return {"root": root, "train": train, "dev": dev, "teacher": teacher, "student": student}


def distill(assets, out: Path, cache: str, method: str = "ted", *extra, train=None, expect: int = 0) -> Path:
    argv = ["distill"] + tiny.train_flags(
        train or assets["train"], assets["dev"], num_train_epochs=2, per_device_train_batch_size=8
    )
    argv += ["--teacher_model_name_or_path", str(assets["teacher"]), "--model_name_or_path", str(assets["student"])]
    argv += METHOD_FLAGS[method] + ["--teacher_cache", cache, "--output_dir", str(out), "--report_to", "none"]
    assert main(argv + [str(e) for e in extra]) == expect
    return out


def read(folder: Path, name: str):
    return json.loads((folder / name).read_text())


def losses_of(folder: Path) -> list[dict]:
    return [{k: e[k] for k in LOSS_KEYS if k in e} for e in read(folder, "log_history.json") if "loss" in e]


def assert_same_run(a: Path, b: Path) -> None:
    la, lb = losses_of(a), losses_of(b)
    assert len(la) == len(lb) == 6  # 2 epochs x 3 steps, logged every step
    for x, y in zip(la, lb):
        assert x.keys() == y.keys()
        for k in x:
            assert y[k] == pytest.approx(x[k], rel=1e-5, abs=1e-7), (k, x, y)
    wa, wb = tiny.state_dict_of(a), tiny.state_dict_of(b)
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["ted", "kd", "lwd"])
def test_float32_cache_trains_exactly_like_the_online_teacher(assets, tmp_path, method):
    online = distill(assets, tmp_path / "online", "off", method)
    cached = distill(assets, tmp_path / "cached", str(tmp_path / "tc"), method)
    assert_same_run(online, cached)
    record = read(cached, "ted_stage.json")["teacher_cache"]
    expected = {"ted": ["logits", "states"], "kd": ["logits"], "lwd": ["states"]}[method]  # what the loss reads
    assert record["used"] and record["built"] == expected
    assert record["dtype"].get("states", "float32") == "float32" and record["bytes_per_example"] > 0
    assert read(online, "ted_stage.json")["teacher_cache"] == {"used": False, "reason": "--teacher_cache off"}


def test_reused_when_unchanged_and_rebuilt_when_the_data_changes(assets, tmp_path):
    cache = tmp_path / "tc"
    distill(assets, tmp_path / "a", str(cache))
    second = read(distill(assets, tmp_path / "b", str(cache)), "ted_stage.json")["teacher_cache"]
    assert second["built"] == [] and second["build_seconds"] == 0.0
    lines = assets["train"].read_text().splitlines()
    changed = tmp_path / "train.csv"
    changed.write_text("\n".join([lines[0], lines[2], lines[1], *lines[3:]]) + "\n")  # same rows, other order
    third = read(distill(assets, tmp_path / "c", str(cache), train=changed), "ted_stage.json")["teacher_cache"]
    assert third["built"] == ["logits", "states"]
    assert len(list(cache.glob("states-*"))) == 2


def test_auto_caches_in_a_per_run_folder_and_removes_it(assets, tmp_path):
    out = distill(assets, tmp_path / "run", "auto")
    record = read(out, "ted_stage.json")["teacher_cache"]
    assert record["used"] and record["reason"].startswith("auto: 2 epochs")
    assert Path(record["root"]) == tc.default_root(out) and not Path(record["root"]).exists()


def test_auto_falls_back_on_one_epoch_and_over_budget(assets, tmp_path, caplog):
    caplog.set_level("INFO", logger="ted.method.teacher_cache")
    one = distill(assets, tmp_path / "one", "auto", "ted", "--num_train_epochs", "1")
    assert "single epoch" in read(one, "ted_stage.json")["teacher_cache"]["reason"]
    big = distill(assets, tmp_path / "big", "auto", "ted", "--teacher_cache_max_gb", "1e-9")
    reason = read(big, "ted_stage.json")["teacher_cache"]["reason"]
    assert "over --teacher_cache_max_gb 1e-09" in reason and reason in caplog.text
    assert not tc.default_root(big).exists()


def test_explicit_folder_over_budget_or_with_paper_compat_is_refused(assets, tmp_path, capsys):
    distill(assets, tmp_path / "o", str(tmp_path / "tc"), "ted", "--teacher_cache_max_gb", "1e-9", expect=2)
    assert "over --teacher_cache_max_gb" in capsys.readouterr().err
    distill(assets, tmp_path / "p", str(tmp_path / "tc"), "ted", "--paper_compat", "true", expect=2)
    assert "padding positions" in capsys.readouterr().err
    assert not (tmp_path / "p").exists() and not (tmp_path / "tc").exists()  # refused before anything was written
    auto = distill(assets, tmp_path / "q", "auto", "ted", "--paper_compat", "true")
    assert "padding positions" in read(auto, "ted_stage.json")["teacher_cache"]["reason"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--teacher_cache_dtype", "int8"], "--teacher_cache_dtype must be one of"),
        (["--teacher_cache_max_gb", "0"], "--teacher_cache_max_gb must be a positive"),
        (["--teacher_cache_topk", "20"], "causal language model"),
    ],
)
def test_bad_cache_options_are_refused(assets, tmp_path, capsys, flags, message):
    distill(assets, tmp_path / "o", "auto", "ted", *flags, expect=2)
    assert message in capsys.readouterr().err


def test_cache_inside_the_output_folder_is_refused(assets, tmp_path, capsys):
    distill(assets, tmp_path / "o", str(tmp_path / "o" / "cache"), expect=2)
    assert "inside --output_dir" in capsys.readouterr().err


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.mark.slow
@pytest.mark.parametrize("point", ["teacher_cache_batch:2", "teacher_cache_manifest"])
def test_a_killed_build_is_never_read(assets, tmp_path, point):
    cache = tmp_path / "tc"
    argv = ["distill"] + tiny.train_flags(assets["train"], assets["dev"], num_train_epochs=2)
    argv += ["--teacher_model_name_or_path", str(assets["teacher"]), "--model_name_or_path", str(assets["student"])]
    argv += METHOD_FLAGS["ted"] + ["--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8"]
    argv += ["--teacher_cache", str(cache), "--output_dir", str(tmp_path / "killed"), "--report_to", "none"]
    env = {**_env(), "TED_TEST_CRASH_AT": point}
    proc = subprocess.run([sys.executable, "-m", "ted.cli.main", *argv], env=env, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert list(cache.glob(".*.building")) and not list(cache.glob("states-*"))  # nothing complete to read
    online = distill(assets, tmp_path / "online", "off")
    again = distill(assets, tmp_path / "again", str(cache))
    assert read(again, "ted_stage.json")["teacher_cache"]["built"] == ["logits", "states"]
    assert not list(cache.glob(".*.building"))
    assert_same_run(online, again)


@pytest.mark.slow
def test_two_processes_build_and_read_one_cache(assets, tmp_path):
    cache, report = tmp_path / "tc", tmp_path / "report"
    argv = tiny.train_flags(assets["train"], assets["dev"], num_train_epochs=2, per_device_train_batch_size=4)
    argv += ["--teacher_model_name_or_path", str(assets["teacher"]), "--model_name_or_path", str(assets["student"])]
    argv += METHOD_FLAGS["ted"] + ["--teacher_cache", str(cache), "--report_to", "none"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [str(HERE / "ddp_driver.py"), str(report), "distill", *argv, "--output_dir", str(tmp_path / "two")]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = read(tmp_path / "two", "ted_stage.json")["teacher_cache"]
    assert record["used"] and record["built"] == ["logits", "states"]
    # Every process read what the 2-process build wrote: a 1-process run reuses it and, with the same global
    # batch, takes the same steps as the 2-process run (dynamic padding per half only moves float rounding).
    one = distill(assets, tmp_path / "one", str(cache))
    assert read(one, "ted_stage.json")["teacher_cache"]["built"] == []
    online = distill(assets, tmp_path / "online", "off")
    assert_same_run(online, one)
    h1, h2 = losses_of(one), losses_of(tmp_path / "two")
    assert h2[-1]["loss_mse"] == pytest.approx(h1[-1]["loss_mse"], rel=5e-2)


# ----------------------------------------------------------------------------------------- the seam, per head

VOCAB, HIDDEN, OUT = 30, 32, 16


def _config(layers: int, arch: str = "bert", **extra):
    kind = RobertaConfig if arch == "roberta" else BertConfig
    return kind(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=0,
        **extra,
    )


def _model(head: str, layers: int, seed: int, arch: str = "bert"):
    """BERT, or RoBERTa for left padding: BERT's absolute positions count padding on the left, so there even the
    online teacher's output at a real token depends on how much padding its batch has (see docs/teacher-cache.md);
    RoBERTa numbers positions from the real tokens."""
    torch.manual_seed(seed)
    roberta = arch == "roberta"
    if head == "span":
        return (RobertaForQuestionAnswering if roberta else BertForQuestionAnswering)(_config(layers, arch))
    kind = RobertaForSequenceClassification if roberta else BertForSequenceClassification
    return kind(_config(layers, arch, num_labels=1 if head == "regression" else 2))


def _filters(layers, seed):
    torch.manual_seed(seed)
    return TaskAwareFilters(FilterConfig(layers=layers, hidden_size=HIDDEN, output_dim=OUT))


def _rows(head: str, n: int = 12, seed: int = 0, max_len: int = 12) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    rows = {"input_ids": [], "attention_mask": [], "token_type_ids": []}
    for i in range(n):
        length = 3 + i % (max_len - 3)
        rows["input_ids"].append(torch.randint(5, VOCAB, (length,), generator=g).tolist())
        rows["attention_mask"].append([1] * length)
        rows["token_type_ids"].append([0] * length)
    if head == "span":
        rows["start_positions"] = [1] * n
        rows["end_positions"] = [2] * n
    else:
        rows["labels"] = [float(i % 3) / 2 if head == "regression" else i % 2 for i in range(n)]
    return Dataset.from_dict(rows)


class _Tok:
    """What the build and DataCollatorWithPadding need of a tokenizer: `pad`, with a choosable padding side."""

    def __init__(self, side: str):
        from tiny import build_tokenizer

        self.inner = build_tokenizer()
        self.inner.padding_side = side

    def pad(self, *args, **kwargs):
        return self.inner.pad(*args, **kwargs)


def _teacher(head: str, method: str, arch: str = "bert") -> Teacher:
    filters = _filters(T_LAYERS, 1) if method == "ted" else None
    return Teacher(_model(head, 4, 0, arch), filters, T_LAYERS, head)


def _cached(tmp_path, head, method, rows, dtype="float32", side="right", flat=True):
    teacher = _teacher(head, method, "roberta" if side == "left" else "bert")
    components = tc.plan_components(
        head=head,
        teacher=teacher,
        need_logits=True,
        need_states=method != "kd",
        dataset=rows,
        compute_dtype=None,
        store_dtype=dtype,
    )
    tok = _Tok(side)
    tc.build(tmp_path, components, teacher, rows, tok, torch.device("cpu"), batch_size=5)
    stores = {c.name: tc.Store(tmp_path / c.folder_name, c) for c in components}
    collator = tc.CachedSignalCollator(DataCollatorWithPadding(tok.inner), stores, flat_states=flat)
    return teacher, collator


def _objective_and_grads(objective, student, batch):
    student.zero_grad()
    total, terms, _ = objective(student, batch)
    total.backward()
    grads = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    return total.detach(), {k: v.detach() for k, v in terms.items()}, grads


@pytest.mark.parametrize("head", ["classification", "regression", "span"])
@pytest.mark.parametrize("method", ["ted", "kd", "lwd"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_cached_objective_equals_online_per_head(tmp_path, head, method, side):
    # Left padding: a classification / regression head reads position 0, which is then padding, so the online
    # teacher's logits depend on the batch; states at real tokens and span logits do not, and must match.
    kl_alpha = 0.0 if side == "left" and head != "span" else 1.0
    if not kl_alpha and method == "kd":
        pytest.skip("KD reads only the logits")
    rows = _rows(head)
    teacher, collator = _cached(tmp_path, head, method, rows, side=side)
    filters = _filters(S_LAYERS, 3) if method == "ted" else None
    if method == "lwd":
        filters = TaskAwareFilters(FilterConfig(layers=S_LAYERS, hidden_size=HIDDEN, output_dim=HIDDEN))
    student = DistillStudent(_model(head, 2, 2, "roberta" if side == "left" else "bert"), filters).train()
    weights = DistillWeights(kl_alpha, 0.0 if method == "kd" else 3.0, 2.0)
    online = DistillObjective(head, teacher, weights)
    cached = DistillObjective(head, tc.CachedTeacher(head, T_LAYERS), weights)
    indexed = rows.add_column(tc.EXAMPLE_INDEX, list(range(len(rows))))
    for order in ([3, 0, 11, 7], [5, 9, 1, 2, 10]):  # shuffled, mixed lengths: padding differs from the build
        features = [indexed[i] for i in order]
        plain = DataCollatorWithPadding(collator.collator.tokenizer)(
            [{k: v for k, v in f.items() if k != tc.EXAMPLE_INDEX} for f in features]
        )
        a = _objective_and_grads(online, student, plain)
        b = _objective_and_grads(cached, student, collator(features))
        torch.testing.assert_close(b[0], a[0], rtol=1e-5, atol=1e-6)
        assert b[1].keys() == a[1].keys()
        for name in a[2]:
            torch.testing.assert_close(b[2][name], a[2][name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("flat", [True, False])
@pytest.mark.parametrize("head", ["classification", "span"])
def test_both_state_layouts_give_the_teacher_outputs(tmp_path, flat, head):
    """The CPU real-token path (token_index) and the accelerator masked path (padded states), either layout."""
    rows = _rows(head)
    teacher, collator = _cached(tmp_path, head, "ted", rows, flat=flat)
    features = [rows.add_column(tc.EXAMPLE_INDEX, list(range(len(rows))))[i] for i in (4, 0, 8)]
    batch = collator(features)
    inputs = tc.strip_batch_keys({k: v for k, v in batch.items() if k not in ("labels", "start_positions")})
    inputs.pop("end_positions", None)
    mask = batch["attention_mask"]
    token_index = mask.flatten().nonzero().squeeze(1)
    seam = tc.CachedTeacher(head, T_LAYERS)
    for index in (token_index, None):
        t_preds, t_states = teacher(inputs, with_states=True, token_index=index)
        c_preds, c_states = seam(batch, with_states=True, token_index=index)
        if head == "span":
            for t, c in zip(t_preds, c_preds):
                torch.testing.assert_close(c[mask == 1], t[mask == 1], rtol=1e-5, atol=1e-6)
        else:
            torch.testing.assert_close(c_preds, t_preds, rtol=1e-5, atol=1e-6)
        for t, c in zip(t_states, c_states):
            if index is None:  # padded: compare the real tokens (padding is masked out of the loss)
                t, c = t[mask == 1], c[mask == 1]
            torch.testing.assert_close(c, t, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype, bound", [("float16", 2e-3), ("bfloat16", 2e-2)])
def test_16_bit_states_stay_close(tmp_path, dtype, bound):
    rows = _rows("classification")
    teacher, exact = _cached(tmp_path / "a", "classification", "ted", rows)
    _, half = _cached(tmp_path / "b", "classification", "ted", rows, dtype=dtype)
    student = DistillStudent(_model("classification", 2, 2), _filters(S_LAYERS, 3)).train()
    features = [rows.add_column(tc.EXAMPLE_INDEX, list(range(len(rows))))[i] for i in range(8)]
    objective = DistillObjective("classification", tc.CachedTeacher("classification", T_LAYERS), DistillWeights(1, 3))
    a = _objective_and_grads(objective, student, exact(features))
    b = _objective_and_grads(objective, student, half(features))
    assert b[1]["mse"].item() == pytest.approx(a[1]["mse"].item(), rel=bound)
    assert b[1]["kl"].item() == a[1]["kl"].item()  # logits are always float32


# ----------------------------------------------------------------------------------------- fingerprints


def _plan(head: str, teacher, rows, dtype: str = "float32", compute=None) -> list:
    """The components a TED run on `rows` stores: logits and states."""
    return tc.plan_components(
        head=head,
        teacher=teacher,
        need_logits=True,
        need_states=True,
        dataset=rows,
        compute_dtype=compute,
        store_dtype=dtype,
    )


def _keys(head="classification", rows=None, teacher=None, dtype="float32", compute=None) -> dict[str, str]:
    teacher = teacher or _teacher(head, "ted")
    components = _plan(head, teacher, rows if rows is not None else _rows(head), dtype, compute)
    return {c.name: c.key for c in components}


def test_every_input_of_the_key_changes_it(tmp_path):
    base = _keys()
    assert _keys() == base  # deterministic
    other_weights = _teacher("classification", "ted")
    with torch.no_grad():
        other_weights.model.classifier.weight[0, 0] += 1e-3
    other_filters = _teacher("classification", "ted")
    with torch.no_grad():
        next(other_filters.filters.parameters()).view(-1)[0] += 1e-3
    rows = _rows("classification")
    truncated = rows.map(lambda r: {k: r[k][:5] for k in ("input_ids", "attention_mask", "token_type_ids")})
    other_tokens = rows.map(lambda r: {"input_ids": [VOCAB - 1 - t for t in r["input_ids"]]})  # a tokenizer / text
    other_data = _rows("classification", seed=1)  # the data file's content
    fewer = rows.select(range(10))  # --max_train_samples
    assert _keys(teacher=other_weights)["logits"] != base["logits"]
    assert _keys(teacher=other_filters) == {"logits": base["logits"], "states": _keys(teacher=other_filters)["states"]}
    assert _keys(teacher=other_filters)["states"] != base["states"]
    for changed in (truncated, other_tokens, other_data, fewer):
        assert set(_keys(rows=changed).values()).isdisjoint(base.values())
    assert _keys(dtype="float16") == {"logits": base["logits"], "states": _keys(dtype="float16")["states"]}
    assert _keys(dtype="float16")["states"] != base["states"]
    assert set(_keys(compute=torch.bfloat16).values()).isdisjoint(base.values())
    # A changed key is a different folder: the old entry is never read for it.
    teacher = _teacher("classification", "ted")
    plan = _plan("classification", teacher, rows)
    tc.build(tmp_path, plan, teacher, rows, _Tok("right"), torch.device("cpu"), batch_size=4)
    assert all(tc.is_complete(tmp_path / c.folder_name, c) for c in plan)
    moved = _plan("classification", teacher, truncated)
    assert not any(tc.is_complete(tmp_path / c.folder_name, c) for c in moved)
    (tmp_path / plan[1].folder_name / "values.npy").write_bytes(b"")  # a damaged entry is not complete
    assert not tc.is_complete(tmp_path / plan[1].folder_name, plan[1])


def test_real_lengths_follow_each_rows_own_mask():
    rows = Dataset.from_dict(
        {"input_ids": [[1, 2, 3, 0], [4, 5, 0, 0]], "attention_mask": [[1, 1, 1, 0], [1, 1, 0, 0]]}
    )
    assert tc.real_lengths(rows).tolist() == [3, 2]
    assert tc.real_lengths(rows.select([1])).tolist() == [2]


# ----------------------------------------------------------------------------------------- pipeline sharing

PIPELINE = """
task: custom
seeds: [3]
teacher: ./t0
student: ./s0
methods: [ted, kd, lwd]
common:
  train_file: ./data/train.csv
  validation_file: ./data/dev.csv
  max_seq_length: 32
  num_train_epochs: 2
  per_device_train_batch_size: 8
  per_device_eval_batch_size: 8
  dataloader_pin_memory: false
  learning_rate: 1.0e-3
  hidden_dropout_prob: 0
  attention_probs_dropout_prob: 0
teacher_finetune: {num_train_epochs: 1}
student_finetune: {num_train_epochs: 1}
teacher_stage1: {filter_interval: 2, num_train_epochs: 1}
student_stage1: {filter_interval: 1, num_train_epochs: 1}
ted: {kl_alpha: 1, mse_alpha: 10}
kd: {kl_alpha: 1}
lwd: {kl_alpha: 1, mse_alpha: 5}
"""


def test_pipeline_methods_share_one_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    tok = tiny.build_tokenizer()
    tiny.write_data(tmp_path / "data", n_train=24, n_dev=8)
    tiny.write_model(tmp_path / "t0", tok, "bert", layers=4, seed=0)
    tiny.write_model(tmp_path / "s0", tok, "bert", layers=2, seed=1)
    (tmp_path / "cfg.yaml").write_text(PIPELINE)
    out = tmp_path / "out"
    assert main(["pipeline", "--config", str(tmp_path / "cfg.yaml"), "--output_dir", str(out)]) == 0
    seed = out / "custom" / "seed3"
    records = {m: read(seed / m, "ted_stage.json")["teacher_cache"] for m in ("ted", "kd", "lwd")}
    shared = out / "custom" / "teacher_cache"
    assert all(r["used"] and Path(r["root"]) == shared for r in records.values())
    # Stage I keeps the fine-tuned teacher's weights, so TED, KD and LWD read the same logits: TED builds them
    # (and its filtered states), KD reuses them, LWD builds only its raw states.
    assert records["ted"]["built"] == ["logits", "states"]
    assert records["kd"]["built"] == [] and records["lwd"]["built"] == ["states"]
    assert records["ted"]["entries"]["logits"] == records["kd"]["entries"]["logits"]
    assert records["lwd"]["entries"]["logits"] == records["kd"]["entries"]["logits"]
    assert shared.is_dir() and not tc.default_root(seed / "kd").exists()


def test_epochs_count_max_steps_and_accumulation():
    from types import SimpleNamespace

    args = SimpleNamespace(max_steps=3, gradient_accumulation_steps=2, num_train_epochs=5.0)
    assert tc.epochs_of(args, batches_per_epoch=3) == 2.0  # 3 optimizer steps x 2 batches = 6 batches
    assert tc.epochs_of(SimpleNamespace(max_steps=-1, gradient_accumulation_steps=1, num_train_epochs=5.0), 3) == 5.0


def test_dataloader_workers_read_the_same_rows(tmp_path):
    """The collator (and its memory-mapped stores) is pickled into DataLoader workers, which prefetch the reads."""
    from torch.utils.data import DataLoader

    rows = _rows("classification")
    _, collator = _cached(tmp_path, "classification", "ted", rows)
    indexed = rows.add_column(tc.EXAMPLE_INDEX, list(range(len(rows))))
    features = [indexed[i] for i in range(len(indexed))]
    here = list(DataLoader(features, batch_size=5, collate_fn=collator))
    workers = list(DataLoader(features, batch_size=5, collate_fn=collator, num_workers=2))
    assert len(here) == len(workers) == 3
    for a, b in zip(here, workers):
        assert a.keys() == b.keys() and tc.STATES_KEY in a
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=0)


def test_a_second_builder_waits_and_then_reuses(tmp_path):
    import threading

    from filelock import FileLock

    from ted.method.teacher_cache.builder import _build_missing

    rows = _rows("classification")
    teacher = _teacher("classification", "ted")
    plan = _plan("classification", teacher, rows)
    tmp_path.mkdir(exist_ok=True)
    reports = []
    with FileLock(str(tmp_path / tc.LOCK_FILE)):  # another run is building into this folder
        waiting = threading.Thread(
            target=lambda: reports.append(
                tc.build(tmp_path, plan, teacher, rows, _Tok("right"), torch.device("cpu"), batch_size=4)
            )
        )
        waiting.start()
        waiting.join(timeout=1.0)
        assert waiting.is_alive() and not reports  # it waits for the lock
        _build_missing(tmp_path, plan, teacher, rows, _Tok("right"), torch.device("cpu"), 4)  # the other run
    waiting.join(timeout=60)
    assert reports == [{"built": [], "build_seconds": 0.0}]  # complete when it got the lock: nothing rebuilt
