"""Decoder sequence classification (issue 11): GPT-2, Llama and Qwen2 as `AutoModelForSequenceClassification`.

The position rule (`ted.method.pooling`: token 0 for encoders, each row's last real token for decoders) on hand-made
masks and against Hugging Face's own heads; the pad token from EOS; left and right padding giving the same logits,
Stage I head outputs, cached features and Stage II loss; and every stage by CLI (finetune, init-student,
learn-filters, distill with ted / kd / lwd, evaluate, export) checked against per-example (unpadded) hand passes.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

import tiny
from ted.cli.main import main
from ted.errors import TedInputError
from ted.method.feature_cache import pooled_token_features
from ted.method.filters import TaskAwareFilters, new_filters
from ted.method.heads import StageOneHeads, new_heads
from ted.method.objectives import (
    CachedFilterLearner,
    DistillObjective,
    DistillStudent,
    DistillWeights,
    FilterLearner,
    Teacher,
)
from ted.method.pooling import FIRST, LAST, last_real_positions, pool, pooled_token, prepare_decoder_classifier
from tiny import one_thread  # noqa: F401  (module fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0-3; EOS is 2
EOS = 2
# How each family's tokenizer comes: GPT-2 and Llama without a pad token (EOS becomes it), Llama with a BOS in
# front, Qwen2 with a pad token of its own (id 0, not EOS). GPT-2 is padded on the left here (absolute positions).
CASES = {
    "gpt2": dict(pad=False, bos=False, side="left"),
    "llama": dict(pad=False, bos=True, side="left"),
    "qwen2": dict(pad=True, bos=False, side="right"),
}
PAD_ID = {"gpt2": EOS, "llama": EOS, "qwen2": 0}  # what the pad token must become
TEXTS = ["good movie", "the film was not very bad at all it was fine", "poor", "a great plot"]


def decoder_tokenizer(arch: str):
    """A tokenizer over tiny.WORDS shaped like `arch`'s (see CASES): word-level for GPT-2 and Llama; for Qwen2 a
    byte-level BPE `Qwen2Tokenizer` (transformers loads a qwen2 folder's tokenizer as that class whatever it says)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Tokenizer

    case = CASES[arch]
    if arch == "qwen2":
        core = Tokenizer(models.BPE())
        core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        trainer = trainers.BpeTrainer(
            vocab_size=1000, special_tokens=SPECIALS, initial_alphabet=alphabet, show_progress=False
        )
        core.train_from_iterator([" ".join(tiny.WORDS)] * 3 + tiny.WORDS, trainer)  # merges up to whole words
        model = json.loads(core.to_str())["model"]
        return Qwen2Tokenizer(
            vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]], unk_token=None, eos_token="</s>",
            pad_token="<pad>", padding_side=case["side"], model_max_length=64,
        )  # fmt: skip
    core = Tokenizer(models.WordLevel({t: i for i, t in enumerate(SPECIALS + tiny.WORDS)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if case["bos"]:
        core.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>" if case["pad"] else None, padding_side=case["side"], model_max_length=64,
    )  # fmt: skip


@functools.cache
def vocab_size(arch: str) -> int:
    return len(decoder_tokenizer(arch))


def decoder_config(arch: str, layers: int = 2, **extra):
    """A tiny config of `arch` without a pad token id (as GPT-2's and Llama's come), dropout off."""
    size = {"n_layer": layers} if arch == "gpt2" else {"num_hidden_layers": layers}
    no_dropout = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0) if arch == "gpt2" else {}
    shape = {**tiny.DECODERS[arch], **size, **no_dropout}
    return AutoConfig.for_model(arch, vocab_size=vocab_size(arch), bos_token_id=1, eos_token_id=EOS, **shape, **extra)


def classifier(arch: str, seed: int = 0, layers: int = 2):
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(decoder_config(arch, layers, num_labels=2)).eval()


def padded(tokenizer, side: str, texts: list[str] = TEXTS) -> dict[str, torch.Tensor]:
    tokenizer.padding_side = side
    return dict(tokenizer(texts, padding=True, return_tensors="pt"))


# -- the position rule ------------------------------------------------------------------------------------------


def test_last_real_position_on_hand_made_masks():
    masks = torch.tensor(
        [
            [1, 1, 1, 0, 0],  # right padding
            [0, 0, 1, 1, 1],  # left padding
            [1, 1, 1, 1, 1],  # no padding
            [1, 0, 0, 0, 0],  # one token, right padding
            [0, 0, 0, 0, 1],  # one token, left padding
        ]
    )
    assert last_real_positions(masks).tolist() == [2, 4, 4, 0, 4]
    states = torch.arange(5 * 5 * 2, dtype=torch.float).view(5, 5, 2)  # state[b, t] = (10b + 2t, 10b + 2t + 1)
    expected = torch.tensor([[4.0, 5], [18, 19], [28, 29], [30, 31], [48, 49]])
    assert torch.equal(pool(states, LAST, masks), expected)
    assert torch.equal(pool(states, LAST), states[:, 4])  # no mask: the last position (one-position cached rows)
    assert torch.equal(pool(states, FIRST, masks), states[:, 0])
    with pytest.raises(ValueError, match="unknown pooling rule"):
        pool(states, "mean", masks)


@pytest.mark.parametrize(
    "model_type, rule",
    [("bert", FIRST), ("roberta", FIRST), ("deberta-v2", FIRST), ("distilbert", FIRST), ("electra", FIRST),
     ("bart", FIRST), ("plbart", FIRST), ("t5", FIRST),
     ("gpt2", LAST), ("llama", LAST), ("qwen2", LAST), ("mistral", LAST), ("gemma", LAST), ("opt", LAST)],
)  # fmt: skip
def test_rule_by_model_family(model_type, rule):
    """Encoders (which also have causal-LM classes) and encoder-decoders read token 0; decoder-only models the last."""
    assert pooled_token(AutoConfig.for_model(model_type)) == rule


@pytest.mark.parametrize("arch", list(CASES))
@pytest.mark.parametrize("side", ["left", "right"])
def test_rule_reads_the_token_hugging_face_heads_read(arch, side):
    tokenizer = decoder_tokenizer(arch)
    model = classifier(arch)
    prepare_decoder_classifier(model, tokenizer)
    batch = padded(tokenizer, side)
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
        by_rule = model.score(pool(out.hidden_states[-1], LAST, batch["attention_mask"]))
    assert (batch["attention_mask"] == 0).any()  # the batch is padded
    torch.testing.assert_close(out.logits, by_rule, rtol=0, atol=0)


# -- the pad token ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(CASES))
def test_pad_token_is_the_tokenizers_and_eos_when_it_has_none(arch, caplog):
    tokenizer = decoder_tokenizer(arch)
    model = classifier(arch)
    assert model.config.pad_token_id is None
    with caplog.at_level("INFO", logger="ted.method.pooling"):
        prepare_decoder_classifier(model, tokenizer)
    assert tokenizer.pad_token_id == model.config.pad_token_id == PAD_ID[arch]
    assert ("no pad token" in caplog.text) == (not CASES[arch]["pad"])
    # With it, a right-padded batch scores every row as it scores alone (Qwen2: pad 0, EOS 2, so EOS would be wrong).
    with torch.no_grad():
        alone = torch.cat([model(**tokenizer([t], return_tensors="pt")).logits for t in TEXTS])
        torch.testing.assert_close(model(**padded(tokenizer, "right")).logits, alone)


def test_a_wrong_pad_id_in_the_config_is_replaced_by_the_tokenizers():
    tokenizer = decoder_tokenizer("llama")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(decoder_config("llama", pad_token_id=5, num_labels=2))
    prepare_decoder_classifier(model.eval(), tokenizer)
    assert model.config.pad_token_id == EOS


def test_a_tokenizer_without_pad_nor_eos_is_refused():
    tokenizer = decoder_tokenizer("gpt2")
    tokenizer.eos_token = None
    with pytest.raises(TedInputError, match="neither a pad token nor an EOS token"):
        prepare_decoder_classifier(classifier("gpt2"), tokenizer)


def test_encoders_are_left_alone():
    tokenizer = tiny.build_tokenizer()
    model = AutoModelForSequenceClassification.from_config(tiny.model_config("bert", len(tokenizer), 2, 7))
    prepare_decoder_classifier(model, tokenizer)
    assert model.config.pad_token_id == 7 and not model._forward_pre_hooks
    assert new_heads("classification", 1, 16, 2, model.config).config.pooling == FIRST


# -- left or right padding: the same results ------------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(CASES))
def test_left_and_right_padding_give_the_same_logits_heads_features_and_loss(arch):
    tokenizer = decoder_tokenizer(arch)
    teacher, student = classifier(arch, seed=0), classifier(arch, seed=1)
    for model in (teacher, student):
        prepare_decoder_classifier(model, tokenizer)
    left, right = padded(tokenizer, "left"), padded(tokenizer, "right")
    assert not torch.equal(left["input_ids"], right["input_ids"])
    with torch.no_grad():
        alone = torch.cat([teacher(**tokenizer([t], return_tensors="pt")).logits for t in TEXTS])
        torch.testing.assert_close(teacher(**left).logits, alone)
        torch.testing.assert_close(teacher(**right).logits, alone)

    # Stage I: the heads read each row's last real token, whichever side the padding is on.
    torch.manual_seed(2)
    filters = new_filters(teacher.config, [0, 1], 16, nonlinear=True)
    heads = new_heads("classification", 2, 16, 2, teacher.config)
    assert heads.config.pooling == LAST
    learner = FilterLearner(teacher, filters, heads, backbone_mode="eval").eval()
    with torch.no_grad():
        by_side = {side: learner(**batch) for side, batch in (("left", left), ("right", right))}
        singles = [learner(**tokenizer([t], return_tensors="pt")) for t in TEXTS]
    for k in range(2):
        one_by_one = torch.cat([s[k] for s in singles])
        torch.testing.assert_close(by_side["left"][k], one_by_one)
        torch.testing.assert_close(by_side["right"][k], one_by_one)

    # The Stage I feature cache (length-sorted padded batches of 3 rows) stores the same token: same head outputs.
    from datasets import Dataset

    rows = Dataset.from_dict({**tokenizer(TEXTS), "labels": [1, 0, 0, 1]})
    for side in ("left", "right"):
        tokenizer.padding_side = side
        cache = pooled_token_features(teacher, rows, [0, 1], tokenizer, torch.device("cpu"), batch_size=3)
        with torch.no_grad():
            cached = CachedFilterLearner(filters, heads).eval()(features=cache.features)
        for k in range(2):
            torch.testing.assert_close(cached[k], by_side["right"][k])

    # Stage II: TED's loss (task + KL + filtered-state MSE over real tokens) is the same for both sides.
    torch.manual_seed(3)
    t_filters = new_filters(teacher.config, [0, 1], 16, nonlinear=True)
    s_filters = new_filters(student.config, [0, 1], 16, nonlinear=True)
    objective = DistillObjective(
        "classification", Teacher(teacher, t_filters, [0, 1], "classification"), DistillWeights(1.0, 1.0)
    )
    module = DistillStudent(student, s_filters).train()
    losses = {}
    for side, batch in (("left", left), ("right", right)):
        total, terms, _ = objective(module, {**batch, "labels": torch.tensor([1, 0, 0, 1])})
        losses[side] = (total, terms["kl"], terms["mse"])
    for a, b in zip(losses["left"], losses["right"], strict=True):
        torch.testing.assert_close(a, b)
    assert losses["left"][1] > 0 and losses["left"][2] > 0


def test_without_mask_positions_a_left_padded_gpt2_would_differ():
    """What the position ids from the mask fix: stock GPT-2 shifts a left-padded row's absolute positions."""
    tokenizer = decoder_tokenizer("gpt2")
    model = classifier("gpt2")
    model.config.pad_token_id = EOS
    tokenizer.pad_token = tokenizer.eos_token
    with torch.no_grad():
        stock = model(**padded(tokenizer, "left")).logits
        right = model(**padded(tokenizer, "right")).logits
        prepare_decoder_classifier(model, tokenizer)
        fixed = model(**padded(tokenizer, "left")).logits
        assert torch.equal(model(**padded(tokenizer, "right")).logits, right)  # right padding: bit-identical
    assert (stock - right).abs().max() > 1e-3
    torch.testing.assert_close(fixed, right)


# -- every stage by CLI -------------------------------------------------------------------------------------------


def ted_cli(*argv: object) -> None:
    assert main([str(a) for a in argv]) == 0, argv


def write_base(folder: Path, arch: str) -> Path:
    """A pre-trained-looking causal LM (no classification head) and its tokenizer; no pad token id."""
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(decoder_config(arch)).save_pretrained(folder)
    decoder_tokenizer(arch).save_pretrained(folder)
    return folder


def dev_rows(dev: Path) -> tuple[list[str], list[int]]:
    with dev.open() as f:
        rows = list(csv.DictReader(f))
    return [r["sentence"] for r in rows], [int(r["label"] == "pos") for r in rows]


def single_logits(folder: Path, texts: list[str]) -> torch.Tensor:
    """A stage folder's logits, one unpadded example at a time, with stock transformers."""
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        return torch.cat([model(**tokenizer([t], return_tensors="pt")).logits for t in texts])


@pytest.fixture(scope="module", params=list(CASES))
def chain(request, tmp_path_factory, one_thread):  # noqa: F811
    """finetune -> init-student (teacher layer 1) -> learn-filters (both) -> distill ted / kd / lwd -> evaluate ->
    export, for one family. One dev batch of 16 padded rows, so dev numbers are means over one padded batch."""
    arch = request.param
    root = tmp_path_factory.mktemp(arch)
    train, dev = tiny.write_data(root / "data", n_train=32, n_dev=16)
    flags = tiny.train_flags(train, dev)
    p = {name: root / name for name in ("t", "s0", "t1", "s1", "ted", "kd", "lwd", "eval", "export")}
    base = write_base(root / "base", arch)
    ted_cli("finetune", "--model_name_or_path", base, "--output_dir", p["t"], *flags)
    ted_cli("init-student", "--teacher_model_name_or_path", p["t"], "--layers", 1, "--output_dir", p["s0"])
    # The teacher's Stage I runs on cached features (the default), the student's on the backbone every batch.
    ted_cli("learn-filters", "--model_name_or_path", p["t"], "--output_dir", p["t1"], "--filter_interval", 2, *flags)
    ted_cli("learn-filters", "--model_name_or_path", p["s0"], "--output_dir", p["s1"], "--filter_interval", 1,
            "--stage1_backbone_mode", "train", *flags)  # fmt: skip
    pairs = ["--teacher_filter_interval", 2, "--filter_interval", 1]
    for method, student, teacher, weights in (
        ("ted", p["s1"], p["t1"], ["--kl_alpha", 1, "--mse_alpha", 10, *pairs]),
        ("kd", p["s0"], p["t"], ["--kl_alpha", 1]),
        ("lwd", p["s0"], p["t"], ["--mse_alpha", 5, *pairs]),
    ):
        ted_cli("distill", "--method", method, "--model_name_or_path", student, "--teacher_model_name_or_path",
                teacher, "--output_dir", p[method], *weights, *flags)  # fmt: skip
    ted_cli("evaluate", "--model_name_or_path", p["ted"], "--output_dir", p["eval"], *flags)
    ted_cli("export", p["ted"], "--output_dir", p["export"])
    p.update(arch=arch, dev=dev)
    return p


def test_every_folder_keeps_the_pad_token(chain):
    for name in ("t", "s0", "t1", "s1", "ted", "kd", "lwd", "export"):
        config = json.loads((chain[name] / "config.json").read_text())
        tokenizer = AutoTokenizer.from_pretrained(chain[name])
        assert config["pad_token_id"] == tokenizer.pad_token_id == PAD_ID[chain["arch"]], name
        assert tokenizer.padding_side == CASES[chain["arch"]]["side"], name  # the user's choice is kept
        assert config["architectures"][0].endswith("ForSequenceClassification"), name
    assert AutoConfig.from_pretrained(chain["s0"]).num_hidden_layers == 1  # GPT-2 writes n_layer


@pytest.mark.parametrize("stage", ["t", "ted", "kd", "lwd"])
def test_padded_dev_logits_equal_one_example_at_a_time(chain, stage):
    """The dev predictions a stage kept (one padded batch) = its saved model on each unpadded example."""
    texts, labels = dev_rows(chain["dev"])
    saved = np.load(chain[stage] / "eval_predictions.npz")
    assert saved["labels"].tolist() == labels
    torch.testing.assert_close(torch.from_numpy(saved["predictions"]), single_logits(chain[stage], texts))
    method = json.loads((chain[stage] / "ted_stage.json").read_text())["method"]
    assert method == (None if stage == "t" else stage)


@pytest.mark.parametrize("stage", ["t1", "s1"])
def test_stage1_dev_loss_equals_the_heads_on_one_example_at_a_time(chain, stage):
    """Stage I's dev loss (mean over heads of the mean CE) by hand from the saved filters and heads, one unpadded
    example at a time: the heads read the last real token of the padded dev batch."""
    folder = chain[stage]
    texts, labels = dev_rows(chain["dev"])
    backbone = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    filters, heads = TaskAwareFilters.load(folder).eval(), StageOneHeads.load(folder).eval()
    assert heads.config.pooling == LAST
    per_head = [[] for _ in filters.layers]
    with torch.no_grad():
        for text in texts:
            hidden = backbone(**tokenizer([text], return_tensors="pt"), output_hidden_states=True).hidden_states
            for k, logits in enumerate(heads(filters(hidden))):
                per_head[k].append(logits)
    target = torch.tensor(labels)
    losses = [F.cross_entropy(torch.cat(rows), target) for rows in per_head]
    results = json.loads((folder / "eval_results.json").read_text())
    assert results["eval_loss"] == pytest.approx(float(torch.stack(losses).mean()), rel=1e-5)
    for layer, rows in zip(filters.layers, per_head, strict=True):
        accuracy = float((torch.cat(rows).argmax(-1) == target).float().mean())
        assert results[f"eval_layer{layer}_accuracy"] == pytest.approx(accuracy)


def test_teacher_cache_trains_as_the_online_teacher(chain, tmp_path):
    """TED over 2 epochs with the teacher's logits and filtered states cached (built in padded batches, read back
    for the student's batches, left-padded for GPT-2 and Llama) takes the same steps as with the teacher online."""
    train, dev = chain["dev"].parent / "train.csv", chain["dev"]
    flags = tiny.train_flags(train, dev, num_train_epochs=2, per_device_train_batch_size=8)
    runs = {}
    for cache in ("off", tmp_path / "cache"):
        out = tmp_path / ("online" if cache == "off" else "cached")
        ted_cli("distill", "--method", "ted", "--model_name_or_path", chain["s1"], "--teacher_model_name_or_path",
                chain["t1"], "--kl_alpha", 1, "--mse_alpha", 10, "--teacher_filter_interval", 2, "--filter_interval",
                1, "--teacher_cache", cache, "--output_dir", out, *flags)  # fmt: skip
        log = json.loads((out / "log_history.json").read_text())
        runs[out.name] = [(e["loss"], e["loss_kl"], e["loss_mse"]) for e in log if "loss" in e and "loss_kl" in e]
    assert json.loads((tmp_path / "cached" / "ted_stage.json").read_text())["teacher_cache"]["used"] is True
    assert len(runs["online"]) == 8  # 2 epochs x 4 steps, logged every step
    for online, cached in zip(runs["online"], runs["cached"], strict=True):
        assert cached == pytest.approx(online, rel=1e-5, abs=1e-7)


def test_evaluate_scores_the_stage_as_it_scored_itself(chain):
    texts, labels = dev_rows(chain["dev"])
    accuracy = float((single_logits(chain["ted"], texts).argmax(-1) == torch.tensor(labels)).float().mean())
    assert json.loads((chain["eval"] / "eval_results.json").read_text())["eval_accuracy"] == pytest.approx(accuracy)


def test_export_predicts_with_stock_transformers_as_the_stage(chain):
    """In a process without ted: a right-padded batch through the export (its config's pad id finds the last token)."""
    texts, _ = dev_rows(chain["dev"])
    script = (
        "import json, sys, torch\n"
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
        "model = AutoModelForSequenceClassification.from_pretrained(sys.argv[1]).eval()\n"
        "tok = AutoTokenizer.from_pretrained(sys.argv[1]); tok.padding_side = 'right'\n"
        "batch = tok(json.loads(sys.argv[2]), padding=True, return_tensors='pt')\n"
        "with torch.no_grad(): print(json.dumps(model(**batch).logits.tolist()))\n"
        "assert 'ted' not in sys.modules\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", script, str(chain["export"]), json.dumps(texts)],
        capture_output=True, text=True, check=True, env=env,
    )  # fmt: skip
    exported = torch.tensor(json.loads(out.stdout.strip().splitlines()[-1]))
    torch.testing.assert_close(exported, single_logits(chain["ted"], texts))


def test_glue_pairs_with_a_decoder(tmp_path):
    """A GLUE task from TSV files (RTE: sentence pairs) fine-tuned from a decoder without a pad token."""
    import random

    rng = random.Random(0)

    def words(most: int) -> str:
        return " ".join(rng.choices(tiny.WORDS, k=rng.randint(1, most)))

    folder = tmp_path / "glue" / "RTE"
    folder.mkdir(parents=True)
    pairs = {}
    for split, n in (("train", 24), ("dev", 12)):
        rows = [(words(8), words(5), rng.choice(["entailment", "not_entailment"])) for _ in range(n)]
        lines = ["index\tsentence1\tsentence2\tlabel"] + [f"{i}\t{a}\t{b}\t{y}" for i, (a, b, y) in enumerate(rows)]
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n")
        pairs[split] = rows
    base = write_base(tmp_path / "base", "llama")
    out = tmp_path / "rte"
    flags = tiny.train_flags("x", "y")[4:]  # the common flags without --train_file / --validation_file
    ted_cli("finetune", "--model_name_or_path", base, "--task_name", "rte", "--data_dir", tmp_path / "glue",
            "--output_dir", out, *flags)  # fmt: skip
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        alone = torch.cat([model(**tokenizer([a], [b], return_tensors="pt")).logits for a, b, _ in pairs["dev"]])
    saved = np.load(out / "eval_predictions.npz")
    torch.testing.assert_close(torch.from_numpy(saved["predictions"]), alone)
    assert model.config.pad_token_id == EOS and model.config.id2label == {0: "entailment", 1: "not_entailment"}
