"""The causal-LM kind (`--task_name causal_lm`): its loss, masks and metric, the text data, Stage 0 and evaluation."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import tiny
from ted.cli.main import main
from ted.errors import TedInputError
from ted.method.kinds import OutputKD, get_kind, kind_of_model
from ted.settings.options import DataArguments
from ted.tasks import load_task, task_from_name
from ted.tasks.causal_lm import fit_to_model
from tiny import FILLER, NEGATIVE, POSITIVE, one_thread  # noqa: F401  (module fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = POSITIVE + NEGATIVE + FILLER + [".", "Q:", "A:", "user", "assistant"]
KIND = get_kind("causal_lm")


def decoder_tokenizer(bos: bool = False):
    """A word-level tokenizer with <pad> <s> </s> <unk>; `bos`: it puts <s> in front of every text (Llama-style)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(["<pad>", "<s>", "</s>", "<unk>"] + WORDS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if bos:
        core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        model_max_length=64,
    )  # fmt: skip


def write_decoder(folder: Path, arch: str, seed: int = 0) -> Path:
    tokenizer = decoder_tokenizer(bos=arch == "llama")
    layers = {"n_layer": 2} if arch == "gpt2" else {"num_hidden_layers": 2}
    tiny.decoder(arch, len(tokenizer), seed, **layers).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def sentences(n: int, seed: int) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choices(POSITIVE + NEGATIVE + FILLER, k=rng.randint(3, 9))) + " ." for _ in range(n)]


def write_text(path: Path, n: int, seed: int = 0) -> Path:
    """Documents of one or two lines, separated by blank lines."""
    docs = sentences(n, seed)
    path.write_text("\n\n".join(d if i % 3 else d + "\n" + d for i, d in enumerate(docs)) + "\n")
    return path


def hand_next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """Sum over scored next tokens of -log p, and their count: the plain loop."""
    total, count = 0.0, 0
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            target = int(labels[b, t + 1])
            if target != -100:
                total -= float(torch.log_softmax(logits[b, t].double(), -1)[target])
                count += 1
    return total, count


# -- the kind -------------------------------------------------------------------------------------------------


def test_kind_is_registered_with_its_hugging_face_names():
    assert KIND.name == "causal_lm" and not KIND.sequence_level and KIND.token_labels
    assert KIND.auto_class().__name__ == "AutoModelForCausalLM" and KIND.pipeline_tag == "text-generation"
    assert KIND.default_selection_metric == "perplexity" and KIND.greater_is_better is False
    assert kind_of_model(["GPT2LMHeadModel"], 2).name == "causal_lm"
    assert kind_of_model(["LlamaForCausalLM"], 2).name == "causal_lm"
    assert kind_of_model(["BertForSequenceClassification"], 2).name == "classification"
    assert kind_of_model(["BertForQuestionAnswering"], 2).name == "span"


def test_best_checkpoint_selection_is_lower_perplexity():
    from transformers import TrainingArguments

    from ted.stages.training import training_arguments

    args = TrainingArguments(output_dir="unused", eval_strategy="epoch", save_strategy="epoch", report_to=[])
    lm = training_arguments(args, Path("w"), "perplexity", "causal_lm")
    assert lm.metric_for_best_model == "eval_perplexity" and lm.greater_is_better is False
    assert training_arguments(args, Path("w"), "accuracy", "classification").greater_is_better is True


def test_task_loss_is_the_shifted_cross_entropy_over_scored_tokens():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11)
    labels = torch.tensor([[3, 4, 5, 6, 7, 8], [-100, -100, 2, 9, -100, -100]])
    total, count = hand_next_token_loss(logits, labels)
    assert count == 5 + 2  # row 0: targets 1..5; row 1: targets 2 (after -100) and 3
    assert KIND.task_loss(logits, labels).item() == pytest.approx(total / count, rel=1e-6)
    # Label smoothing as torch's cross-entropy does it, on the same scored pairs.
    rows = torch.tensor([[0, 0], [0, 1], [0, 2], [0, 3], [0, 4], [1, 1], [1, 2]])
    targets = labels[rows[:, 0], rows[:, 1] + 1]
    expected = F.cross_entropy(logits[rows[:, 0], rows[:, 1]], targets, label_smoothing=0.1)
    assert KIND.task_loss(logits, labels, 0.1).item() == pytest.approx(expected.item(), rel=1e-6)
    # No scored token: 0, and backward still works.
    empty = logits.clone().requires_grad_()
    loss = KIND.task_loss(empty, torch.full((2, 6), -100))
    loss.backward()
    assert loss.item() == 0.0 and empty.grad.abs().sum() == 0


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_task_loss_equals_the_models_own_loss(tmp_path, arch):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(write_decoder(tmp_path / arch, arch)).eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11], [12, 13, 14, 15, 0, 0, 0]])
    mask = (torch.arange(7) < torch.tensor([[7], [4]])).long()
    labels = ids.masked_fill(mask == 0, -100)
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    assert KIND.task_loss(KIND.predictions(out), labels).item() == pytest.approx(out.loss.item(), rel=1e-5)


def test_metric_inputs_give_the_exact_perplexity_whatever_the_rows():
    torch.manual_seed(1)
    logits = torch.randn(3, 5, 9)
    labels = torch.tensor([[1, 2, 3, 4, 5], [-100, -100, 6, 7, -100], [8, 1, -100, -100, -100]])
    rows = KIND.metric_inputs(logits, labels)
    assert rows.shape == (3, 2) and rows[:, 1].tolist() == [4.0, 2.0, 1.0]
    total, count = hand_next_token_loss(logits, labels)
    metrics = task_from_name("causal_lm").compute_metrics(rows.numpy(), labels.numpy())
    assert metrics["tokens"] == count
    assert metrics["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-6)


def test_output_distillation_is_the_mean_divergence_over_scored_next_tokens():
    torch.manual_seed(2)
    student, teacher = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 4, 5], [1, 2, 3, -100, -100]])  # e.g. prompt tokens, padding
    temperature = 2.0
    kd = OutputKD(temperature)
    expected, count = 0.0, 0
    for b in range(2):
        for t in range(4):
            if labels[b, t + 1] != -100:
                p_t = torch.softmax(teacher[b, t].double() / temperature, -1)
                log_p_s = torch.log_softmax(student[b, t].double() / temperature, -1)
                expected += float((p_t * (p_t.log() - log_p_s)).sum())
                count += 1
    assert count == 3 + 2
    value = KIND.output_distillation(student, teacher, None, kd, labels=labels)
    assert value.item() == pytest.approx(expected / count * temperature**2, rel=1e-5)
    # Scored positions only: changing the teacher anywhere else changes nothing.
    moved = teacher.clone()
    moved[0, :2] += 5.0
    moved[:, 4] += 5.0
    moved[1, 2:] += 5.0
    assert KIND.output_distillation(student, moved, None, kd, labels=labels).item() == pytest.approx(value.item())
    # Without labels: every position followed by a real token.
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    full = KIND.output_distillation(student, teacher, mask, kd)
    same = KIND.output_distillation(student, teacher, None, kd, labels=torch.where(mask == 1, 1, -100))
    assert full.item() == pytest.approx(same.item())


def test_output_distillation_runs_in_chunks_with_the_dense_gradient():
    from ted.method.divergences import DIVERGENCES

    torch.manual_seed(3)
    labels = torch.tensor([[-100, 2, 3, 4, 5, 6, 7], [1, 2, 3, 4, -100, -100, -100]])
    teacher = torch.randn(2, 7, 11)
    for spec in ("forward_kl", "jsd:0.3", "tvd"):
        kd = OutputKD(3.0, divergence=DIVERGENCES.resolve(spec))
        student = torch.randn(2, 7, 11, requires_grad=True)
        KIND.output_distillation(student, teacher, None, kd, labels=labels).backward()
        dense_student = student.detach().clone().requires_grad_(True)
        scored = torch.nn.functional.pad(labels[:, 1:] != -100, (0, 1))
        dense = kd.divergence(dense_student, teacher, 3.0, scored.float()) * 2 / scored.sum()
        dense.backward()
        torch.testing.assert_close(student.grad, dense_student.grad, rtol=1e-5, atol=1e-7)


# -- data -----------------------------------------------------------------------------------------------------


def data_args(**kw) -> DataArguments:
    return DataArguments(task_name="causal_lm", **kw)


def test_text_documents_get_eos_and_are_packed_into_blocks(tmp_path):
    tok = decoder_tokenizer()
    (tmp_path / "a.txt").write_text("good movie .\nbad plot\n\n\n  \nthe film\n")
    _, data = load_task(data_args(validation_file=str(tmp_path / "a.txt"), block_size=4), tok)
    ids = tok("good movie . bad plot </s> the film </s>", add_special_tokens=False)["input_ids"]
    newline_doc = tok.convert_ids_to_tokens(ids)
    assert newline_doc[5] == "</s>" and newline_doc[-1] == "</s>"
    assert data.eval_sets["validation"]["input_ids"] == [ids[0:4], ids[4:8], ids[8:]]
    assert len(data.train) == 0
    # One document per line; the BOS a Llama-style tokenizer adds goes in front of each.
    bos_tok = decoder_tokenizer(bos=True)
    _, data = load_task(data_args(validation_file=str(tmp_path / "a.txt"), block_size=64, line_by_line=True), bos_tok)
    words = bos_tok.convert_ids_to_tokens(data.eval_sets["validation"]["input_ids"][0])
    assert " ".join(words) == "<s> good movie . </s> <s> bad plot </s> <s> the film </s>"


def test_max_samples_count_blocks_and_tables_read_the_text_column(tmp_path):
    tok = decoder_tokenizer()
    docs = sentences(20, seed=3)
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"id": i, "body": d}) + "\n" for i, d in enumerate(docs)))
    args = data_args(train_file=str(path), validation_file=str(path), text_column="body", block_size=8)
    _, data = load_task(args, tok)
    stream = [t for d in docs for t in tok(d, add_special_tokens=False)["input_ids"] + [2]]
    assert data.train["input_ids"] == [stream[i : i + 8] for i in range(0, len(stream), 8)]
    args.max_train_samples, args.max_eval_samples = 3, 2
    _, data = load_task(args, tok)
    assert len(data.train) == 3 and len(data.eval_sets["validation"]) == 2


@pytest.mark.parametrize(
    "files, extra, words",
    [
        ({"d.txt": " \n\n"}, {}, "is empty: it holds no text"),
        ({"d.csv": "body\nhello\n"}, {}, "column 'text' not found (--text_column); available columns: ['body']"),
        ({"d.csv": "prompt,answer\nQ: a,b\n"}, {"prompt_column": "prompt", "completion_column": "x"}, "'x' not found"),
        ({"d.txt": "a\n"}, {"text_column": "body"}, "need a CSV/JSON(L) file"),
        ({"d.csv": "prompt,answer\nQ: a,b\n"}, {"prompt_column": "prompt"}, "needs both --prompt_column and"),
        ({}, {}, "needs --validation_file"),
        ({"d.txt": "a\n"}, {"block_size": 1}, "--block_size 1 is too small"),
    ],
)
def test_bad_data_is_one_line(tmp_path, files, extra, words):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    dev = str(tmp_path / next(iter(files))) if files else None
    with pytest.raises(TedInputError) as err:
        args = fit_to_model(data_args(validation_file=dev, **extra), 64)
        load_task(args, decoder_tokenizer())
    assert words in str(err.value) and "\n" not in str(err.value)


def test_block_size_defaults_to_the_models_positions_up_to_1024():
    assert fit_to_model(data_args(), 64).block_size == 64
    assert fit_to_model(data_args(), 8192).block_size == 1024
    assert fit_to_model(data_args(), None).block_size == 1024
    with pytest.raises(TedInputError, match="--block_size 65 is longer than the model can read"):
        fit_to_model(data_args(block_size=65), 64)


def test_prompt_tokens_are_not_scored_by_the_loss_or_the_distillation_term(tmp_path):
    from ted.stages.common import make_collator

    tok = decoder_tokenizer(bos=True)
    path = tmp_path / "qa.csv"
    path.write_text("prompt,completion\nQ: good movie A:,great .\nQ: bad plot A:,awful film .\n")
    args = data_args(validation_file=str(path), prompt_column="prompt", completion_column="completion")
    _, data = load_task(fit_to_model(args, 64), tok)
    rows = data.eval_sets["validation"]
    assert tok.convert_ids_to_tokens(rows[0]["input_ids"]) == ["<s>", "Q:", "good", "movie", "A:", "great", ".", "</s>"]
    assert rows[0]["labels"][:5] == [-100] * 5 and rows[0]["labels"][5:] == rows[0]["input_ids"][5:]

    class NoMixedPrecision:
        fp16 = bf16 = False

    batch = make_collator(tok, NoMixedPrecision(), KIND)([rows[0], rows[1]])
    assert batch["input_ids"].shape == (2, 9) and batch["attention_mask"][0].tolist() == [1] * 8 + [0]
    assert batch["labels"][0, -1] == -100
    torch.manual_seed(4)
    logits = torch.randn(2, 9, len(tok), requires_grad=True)
    loss = KIND.task_loss(logits, batch["labels"])
    total, count = hand_next_token_loss(logits.detach(), batch["labels"])
    assert count == 3 + 4 and loss.item() == pytest.approx(total / count, rel=1e-6)
    # Gradients reach exactly the positions that predict a completion token.
    loss.backward()
    touched = logits.grad.abs().sum(-1) > 0
    expected = torch.zeros(2, 9, dtype=torch.bool)
    expected[0, 4:7] = True  # "A:" predicts "great", "great" ".", "." "</s>"
    expected[1, 4:8] = True
    assert torch.equal(touched, expected)
    teacher = torch.randn(2, 9, len(tok))
    student = logits.detach().clone().requires_grad_()
    kd = KIND.output_distillation(student, teacher, batch["attention_mask"], OutputKD(2.0), labels=batch["labels"])
    kd.backward()
    assert torch.equal(student.grad.abs().sum(-1) > 0, expected)


CHAT_TEMPLATE = (
    "{% for m in messages %}<s> {{ m['role'] }} {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<s> assistant {% endif %}"
)


def test_chat_messages_score_the_assistant_turns_only(tmp_path):
    tok = decoder_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    chat = [
        {"role": "user", "content": "good movie"},
        {"role": "assistant", "content": "great ."},
        {"role": "user", "content": "bad plot"},
        {"role": "assistant", "content": "awful"},
    ]
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": chat}) + "\n" + json.dumps({"messages": chat[:2]}) + "\n")
    args = fit_to_model(data_args(validation_file=str(path), messages_column="messages"), 64)
    rows = load_task(args, tok)[1].eval_sets["validation"]
    words = tok.convert_ids_to_tokens(rows[0]["input_ids"])
    assert " ".join(words) == (
        "<s> user good movie </s> <s> assistant great . </s> <s> user bad plot </s> <s> assistant awful </s>"
    )
    scored = [w for w, label in zip(words, rows[0]["labels"]) if label != -100]
    assert scored == ["great", ".", "</s>", "awful", "</s>"]
    assert len(rows) == 2 and rows[1]["input_ids"] == rows[0]["input_ids"][:10]
    # The loss reads exactly those tokens (as prompt/completion rows do).
    labels = torch.tensor([rows[0]["labels"]])
    logits = torch.randn(1, labels.shape[1], len(tok))
    total, count = hand_next_token_loss(logits, labels)
    assert count == 5 and KIND.task_loss(logits, labels).item() == pytest.approx(total / count, rel=1e-6)


@pytest.mark.parametrize(
    "template, record, words",
    [
        (CHAT_TEMPLATE, [{"role": "user", "content": "good"}], "no assistant message"),
        (CHAT_TEMPLATE, "good movie", "expected a list of messages"),
        (CHAT_TEMPLATE, [{"role": "user"}], "content of a 'user' message is not text"),
        ("{{ messages[-1]['content'] }}", [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
         "rewrites earlier turns"),
        (None, [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "needs a tokenizer with a"),
    ],
)  # fmt: skip
def test_bad_chats_are_one_line(tmp_path, template, record, words):
    tok = decoder_tokenizer()
    tok.chat_template = template
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": record}) + "\n")
    with pytest.raises(TedInputError, match=words):
        load_task(fit_to_model(data_args(validation_file=str(path), messages_column="messages"), 64), tok)


# -- Stage 0 and evaluate through the CLI -------------------------------------------------------------------------


def ted_cli(*argv: object) -> None:
    assert main([str(a) for a in argv]) == 0, argv


def lm_flags(train: Path, dev: Path, **extra: object) -> list[str]:
    flags = {
        "task_name": "causal_lm", "train_file": train, "validation_file": dev, "block_size": 32,
        "num_train_epochs": 2, "per_device_train_batch_size": 4, "per_device_eval_batch_size": 64,
        "learning_rate": 1e-2, "logging_steps": 1, "seed": 0, "disable_tqdm": True, "dataloader_pin_memory": False,
        **extra,
    }  # fmt: skip
    return [x for key, value in flags.items() for x in (f"--{key}", str(value))]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_finetune_then_evaluate_by_cli(tmp_path, arch, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("TQDM_DISABLE", "1")
    base = write_decoder(tmp_path / "base", arch)
    train, dev = write_text(tmp_path / "train.txt", 40, seed=0), write_text(tmp_path / "dev.txt", 12, seed=1)
    out = tmp_path / "stage"
    ted_cli("finetune", "--model_name_or_path", base, "--output_dir", out, *lm_flags(train, dev))

    results = json.loads((out / "eval_results.json").read_text())
    # One dev batch: the Trainer's eval_loss is then the token mean, so perplexity = exp(eval_loss).
    assert results["eval_perplexity"] == pytest.approx(math.exp(results["eval_loss"]), rel=1e-5)
    stage = json.loads((out / "ted_stage.json").read_text())
    assert stage["task"]["head"] == "causal_lm" and stage["args"]["block_size"] == 32
    assert (out / "generation_config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(model).__name__ == {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}[arch]
    tok = AutoTokenizer.from_pretrained(out)
    before = AutoModelForCausalLM.from_pretrained(base).eval()

    # The hand computation on the dev blocks: the trained model's token-mean NLL, and it beat the random start.
    _, data = load_task(data_args(validation_file=str(dev), block_size=32), tok)
    blocks = data.eval_sets["validation"]["input_ids"]

    def nll(m) -> tuple[float, int]:
        total, count = 0.0, 0
        with torch.no_grad():
            for ids in blocks:
                row = torch.tensor([ids])
                t, c = hand_next_token_loss(m(input_ids=row).logits, row)
                total, count = total + t, count + c
        return total, count

    total, count = nll(model)
    assert results["eval_tokens"] == count == sum(len(b) - 1 for b in blocks)
    assert results["eval_perplexity"] == pytest.approx(math.exp(total / count), rel=1e-4)
    assert results["eval_perplexity"] < math.exp(nll(before)[0] / count)

    # `ted evaluate` on the folder: its block size from ted_stage.json, the same perplexity.
    scored = tmp_path / "scored"
    ted_cli("evaluate", "--model_name_or_path", out, "--validation_file", dev, "--output_dir", scored,
            "--per_device_eval_batch_size", 3, "--disable_tqdm", True)  # fmt: skip
    again = json.loads((scored / "eval_results.json").read_text())
    assert again["eval_perplexity"] == pytest.approx(results["eval_perplexity"], rel=1e-5)


def test_bad_input_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import ted.stages.models as models

    base = write_decoder(tmp_path / "base", "gpt2")
    train, dev = write_text(tmp_path / "train.txt", 4), write_text(tmp_path / "dev.txt", 2)

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(models, "load_task_model", no_model)
    monkeypatch.setattr("ted.stages.common.load_task_model", no_model)
    cases = [
        (lm_flags(train, dev, block_size=65), "--block_size 65 is longer than the model can read"),
        (lm_flags(train, tmp_path / "none.txt"), "none.txt does not exist"),
        (lm_flags(train, dev, text_column="body"), "need a CSV/JSON(L) file"),
    ]
    for flags, words in cases:
        out = tmp_path / "out"
        assert main(["finetune", "--model_name_or_path", str(base), "--output_dir", str(out), *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err
        assert not out.exists()


def test_the_epoch_with_the_lowest_dev_perplexity_is_kept(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("TQDM_DISABLE", "1")
    base = write_decoder(tmp_path / "base", "llama")
    train, dev = write_text(tmp_path / "train.txt", 40, seed=0), write_text(tmp_path / "dev.txt", 12, seed=1)
    out = tmp_path / "stage"
    flags = lm_flags(train, dev, num_train_epochs=5, learning_rate=0.2, lr_scheduler_type="constant")
    ted_cli("finetune", "--model_name_or_path", base, "--output_dir", out, *flags)
    logged = [e["eval_perplexity"] for e in json.loads((out / "log_history.json").read_text()) if "eval_runtime" in e]
    kept = json.loads((out / "eval_results.json").read_text())["eval_perplexity"]
    assert logged[-2] < logged[-1]  # the run overshoots in its last epoch ...
    assert len(logged) == 5 and kept == pytest.approx(min(logged))  # ... and the best epoch, not the last, is kept
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = decoder_tokenizer(bos=True)
    _, data = load_task(data_args(validation_file=str(dev), block_size=32), tok)
    rows = [torch.tensor([ids]) for ids in data.eval_sets["validation"]["input_ids"]]
    with torch.no_grad():
        sums = [hand_next_token_loss(model(input_ids=r).logits, r) for r in rows]
    assert math.exp(sum(s for s, _ in sums) / sum(c for _, c in sums)) == pytest.approx(kept, rel=1e-4)


def test_prompt_completion_finetune_scores_completion_tokens_only(tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    base = write_decoder(tmp_path / "base", "gpt2")
    lines = ["prompt,completion"] + [f"Q: {s[:-2]} A:,{s}" for s in sentences(12, seed=5)]
    (tmp_path / "qa.csv").write_text("\n".join(lines) + "\n")
    qa = tmp_path / "qa.csv"
    out = tmp_path / "stage"
    flags = lm_flags(qa, qa, prompt_column="prompt", completion_column="completion", num_train_epochs=1)
    ted_cli("finetune", "--model_name_or_path", base, "--output_dir", out, *flags)
    results = json.loads((out / "eval_results.json").read_text())
    completions = [line.split(",", 1)[1] for line in lines[1:]]
    assert results["eval_tokens"] == sum(len(c.split()) + 1 for c in completions)  # each completion and its EOS


def test_a_gguf_folder_fine_tunes_as_a_plain_model(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    from transformers import AutoConfig

    from test_lm_eval import llama_model, write_gguf

    monkeypatch.setenv("TQDM_DISABLE", "1")
    tok = decoder_tokenizer()
    folder = tmp_path / "gguf"
    folder.mkdir()
    reference = llama_model(len(tok))
    write_gguf(folder / "tiny.gguf", reference)
    tok.save_pretrained(folder)
    train, dev = write_text(tmp_path / "train.txt", 20, seed=0), write_text(tmp_path / "dev.txt", 8, seed=1)
    # Scored before any training, the GGUF model is the reference model.
    scored = tmp_path / "scored"
    ted_cli("evaluate", "--task_name", "causal_lm", "--model_name_or_path", folder, "--validation_file", dev,
            "--block_size", 32, "--output_dir", scored, "--disable_tqdm", True)  # fmt: skip
    _, data = load_task(data_args(validation_file=str(dev), block_size=32), tok)
    total = count = 0
    with torch.no_grad():
        for ids in data.eval_sets["validation"]["input_ids"]:
            t, c = hand_next_token_loss(reference(input_ids=torch.tensor([ids])).logits, torch.tensor([ids]))
            total, count = total + t, count + c
    ppl = json.loads((scored / "eval_results.json").read_text())["eval_perplexity"]
    assert ppl == pytest.approx(math.exp(total / count), rel=1e-5)
    out = tmp_path / "stage"
    ted_cli("finetune", "--model_name_or_path", folder, "--output_dir", out, *lm_flags(train, dev, num_train_epochs=1))
    assert not hasattr(AutoConfig.from_pretrained(out), "quantization_config")
    assert (out / "model.safetensors").is_file()
