"""`ted lm-eval` and GGUF causal LMs: sliding-window perplexity and LAMBADA against plain per-token loops and a
bigram model whose logits are known, the command's output, and GGUF folders (detection, errors, exact weights)."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch

from helpers import shared_dir
from ted.cli.main import main
from ted.errors import TedInputError
from ted.lm.lambada import encode_pair, score_lambada, split_example
from ted.lm.perplexity import encode_text, perplexity, split_documents, windows
from ted.stages.models import check_model_source, load_causal_lm, load_tokenizer
from tiny import (
    build_tokenizer,
    one_thread,  # noqa: F401  (module fixture)
)

TEXT = "the movie was good . the plot was bad . a film it was not very good , the movie ."
WIKI = " = First = \n the movie was good \n = = Part = = \n the plot was bad \n = Second = \n a film it was \n"
LAMBADA_ROWS = ["the movie was very good", "the plot was not bad", "it was a great film", "the film was awful"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(extra=(".", ","))


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory, tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    special = tokenizer.sep_token_id
    config = GPT2Config(
        vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=special,
        eos_token_id=special,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("gpt2")
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def gpt2(gpt2_dir):
    return load_causal_lm(str(gpt2_dir))


def logprob(model, context: list[int], token: int) -> float:
    """log p(token | context) from one forward pass on the context alone: the plain loop the scorers must equal."""
    with torch.no_grad():
        logits = model(torch.tensor([context])).logits[0, -1]
    return float(torch.log_softmax(logits.double(), -1)[token])


# ------------------------------------------------------------------------------------------ perplexity


def test_whole_text_in_one_window_is_the_plain_per_token_perplexity(gpt2, tokenizer):
    ids = encode_text(tokenizer, TEXT)
    nll = [-logprob(gpt2, ids[:i], ids[i]) for i in range(1, len(ids))]
    result = perplexity(gpt2, ids, context_length=64, stride=32)
    assert result["tokens"] == len(ids) - 1
    assert result["perplexity"] == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-5)


@pytest.mark.parametrize(("n", "length", "stride"), [(20, 8, 3), (20, 8, 7), (9, 4, 1), (17, 5, 5), (5, 16, 8)])
def test_windows_score_each_token_at_most_once_with_its_context(n, length, stride):
    spans = windows(n, length, stride)
    scored = [t for w in spans for t in range(w.first, w.end)]
    assert len(scored) == len(set(scored)) and all(w.end - w.begin <= length and w.first > w.begin for w in spans)
    if stride < length:
        assert scored == list(range(1, n))  # every token but the first, once
        assert all(w.first - w.begin >= min(length - stride, w.first) for w in spans)
    else:  # the first token of each window has no context inside it (Hugging Face's windows do the same)
        assert len(scored) == n - len(spans)


def test_strided_perplexity_equals_per_token_loop_with_each_windows_context(gpt2, tokenizer):
    ids = encode_text(tokenizer, TEXT)
    nll = [-logprob(gpt2, ids[w.begin : t], ids[t]) for w in windows(len(ids), 8, 3) for t in range(w.first, w.end)]
    for batch_size in (1, 4):  # padding of a shorter last window changes nothing
        result = perplexity(gpt2, ids, context_length=8, stride=3, batch_size=batch_size)
        assert result == {
            "perplexity": pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-5),
            "tokens": len(ids) - 1,
            "context_length": 8,
            "stride": 3,
        }


def test_documents_split_at_article_headings_and_join_back():
    documents = split_documents(WIKI)
    assert [d.splitlines()[0] for d in documents] == [" = First = ", " = Second = "]
    assert "".join(documents) == WIKI


# ---------------------------------------------------------------------------------------------- LAMBADA


class Bigram(torch.nn.Module):
    """logits[t] = table[token t]: every probability is known in advance."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table)

    def forward(self, input_ids, attention_mask=None):
        return type("Out", (), {"logits": self.table[input_ids]})()


def test_lambada_accuracy_and_perplexity_on_a_bigram_model(tokenizer):
    vocab = tokenizer.get_vocab()
    table = torch.zeros(len(tokenizer), len(tokenizer))
    table[vocab["very"], vocab["good"]] = 5.0  # "very" -> "good": the first row is right
    table[vocab["not"], vocab["good"]] = 5.0  # "not" -> "good" (target "bad"): wrong
    model = Bigram(table)
    texts = LAMBADA_ROWS[:2]
    result = score_lambada(model, tokenizer, texts, max_length=32, batch_size=2)
    logp = torch.log_softmax(table.double(), -1)
    expected = [float(logp[vocab["very"], vocab["good"]]), float(logp[vocab["not"], vocab["bad"]])]
    assert result == {
        "accuracy": 0.5,
        "accuracy_stderr": pytest.approx(statistics.stdev([1, 0]) / math.sqrt(2)),
        "perplexity": pytest.approx(math.exp(-sum(expected) / 2)),
        "examples": 2,
    }
    assert score_lambada(model, tokenizer, texts[:1], max_length=32)["accuracy_stderr"] is None


def test_lambada_target_is_the_last_word_with_its_space(tokenizer):
    assert split_example("a b  c d") == ("a b  c", " d")
    context, target = encode_pair(tokenizer, "the movie was very ", "good")  # the trailing space moves over
    assert context == tokenizer("the movie was very", add_special_tokens=False)["input_ids"]
    assert target == [tokenizer.get_vocab()["good"]]


def test_lambada_on_gpt2_equals_the_plain_loop(gpt2, tokenizer):
    hits, total = [], 0.0
    for text in LAMBADA_ROWS:
        context, target = encode_pair(tokenizer, *split_example(text))
        lps = [logprob(gpt2, context + target[:k], tok) for k, tok in enumerate(target)]
        total += sum(lps)
        with torch.no_grad():
            logits = gpt2(torch.tensor([context + target])).logits[0, len(context) - 1 : -1]
        hits.append(int((logits.argmax(-1) == torch.tensor(target)).all()))
    result = score_lambada(gpt2, tokenizer, LAMBADA_ROWS, max_length=64, batch_size=3)
    assert result["accuracy"] == sum(hits) / 4 and result["examples"] == 4
    assert result["accuracy_stderr"] == pytest.approx(statistics.stdev(hits) / 2)
    assert result["perplexity"] == pytest.approx(math.exp(-total / 4), rel=1e-5)


def test_lambada_equals_lm_evaluation_harness(gpt2, tokenizer):
    huggingface = pytest.importorskip("lm_eval.models.huggingface", reason="lm-eval (lm-evaluation-harness) absent")
    from lm_eval.api.instance import Instance

    # add_bos_token=False: this BERT-style word-level tokenizer would add [CLS] ... [SEP] by default.
    lm = huggingface.HFLM(
        pretrained=gpt2, tokenizer=tokenizer, batch_size=1, device="cpu", add_bos_token=False,
        prefix_token_id=tokenizer.cls_token_id,
    )  # fmt: skip
    requests = [
        Instance(request_type="loglikelihood", doc={"text": t}, arguments=split_example(t), idx=0) for t in LAMBADA_ROWS
    ]
    answers = lm.loglikelihood(requests, disable_tqdm=True)
    ours = score_lambada(gpt2, tokenizer, LAMBADA_ROWS, max_length=64, batch_size=2)
    assert ours["accuracy"] == sum(greedy for _, greedy in answers) / len(answers)
    # The harness's `perplexity` aggregation (lm_eval.api.metrics, which needs sacrebleu): exp(-mean(items)).
    assert ours["perplexity"] == pytest.approx(math.exp(-sum(ll for ll, _ in answers) / len(answers)), rel=1e-6)


# ---------------------------------------------------------------------------------------------- command


def write_data(tmp_path):
    text = tmp_path / "wiki.raw"
    text.write_text(WIKI * 3, encoding="utf-8")
    lambada = tmp_path / "lambada.jsonl"
    lambada.write_text("".join(json.dumps({"text": t}) + "\n" for t in LAMBADA_ROWS), encoding="utf-8")
    return text, lambada


def run_cli(capsys, *argv) -> dict:
    assert main(["lm-eval", *map(str, argv)]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_command_prints_one_json_line_and_writes_the_results_file(gpt2_dir, tmp_path, capsys):
    text, lambada = write_data(tmp_path)
    out = tmp_path / "out"
    result = run_cli(capsys, "--model_name_or_path", gpt2_dir, "--task", "wikitext", "--data", text)
    assert result["context_length"] == 64 and result["stride"] == 32 and result["tokens"] > 0
    limited = run_cli(
        capsys, "--model_name_or_path", gpt2_dir, "--task", "wikitext", "--data", text, "--limit", "1",
        "--context_length", "16", "--stride", "4", "--output_dir", out,
    )  # fmt: skip
    assert (limited["context_length"], limited["stride"], limited["limit"]) == (16, 4, 1)
    assert limited["tokens"] < result["tokens"]
    assert json.loads((out / "lm_eval_results.json").read_text()) == limited
    scores = run_cli(capsys, "--model_name_or_path", gpt2_dir, "--task", "lambada", "--data", lambada, "--limit", 3)
    assert scores["examples"] == 3 and 0 <= scores["accuracy"] <= 1 and scores["perplexity"] > 1
    import ted

    assert ted.lm_eval(model_name_or_path=str(gpt2_dir), task="lambada", data=str(lambada), limit=3) == scores


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--task", "wikitxt"], "did you mean wikitext?"),
        (["--task", "wikitext", "--data", "/nonexistent.txt"], "does not exist"),
        (["--task", "wikitext", "--context_length", "8", "--stride", "9"], "--stride 9 is longer"),
        (["--task", "wikitext", "--context_length", "65"], "64 positions"),
        (["--task", "lambada", "--stride", "4"], "wikitext only"),
        (["--task", "wikitext", "--limit", "0"], "--limit must be at least 1"),
    ],
)
def test_bad_input_is_one_line_before_the_model_loads(gpt2_dir, tmp_path, capsys, monkeypatch, flags, message):
    import ted.stages.models as models

    monkeypatch.setattr(models, "load_causal_lm", lambda *a, **k: pytest.fail("the model was loaded"))
    text, _ = write_data(tmp_path)
    data = [] if "--data" in flags else ["--data", str(text)]
    assert main(["lm-eval", "--model_name_or_path", str(gpt2_dir), *flags, *data]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("ted lm-eval: error: ") and message in err, err


# ------------------------------------------------------------------------------------------------- GGUF


def llama_model(vocab_size: int):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=False,
    )  # fmt: skip
    return AutoModelForCausalLM.from_config(config).eval()


def write_gguf(path, model, tokens: list[str] | None = None) -> None:
    """A float32 GGUF of a Llama as llama.cpp's converter writes it (Q and K rows permuted for its RoPE);
    `tokens`: a byte-level BPE vocabulary in the GGUF's tokenizer metadata."""
    import gguf

    config = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(config.vocab_size)
    if tokens:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_types([3] + [1] * (len(tokens) - 1))
        writer.add_token_merges(["Ġ t", "h e", "Ġt he"])
        writer.add_eos_token_id(0)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)

    def permute(weight, heads):
        return weight.reshape(heads, 2, weight.shape[0] // heads // 2, -1).swapaxes(1, 2).reshape(weight.shape)

    for key, value in model.state_dict().items():
        array = value.numpy()
        if key.endswith("q_proj.weight"):
            array = permute(array, config.num_attention_heads)
        elif key.endswith("k_proj.weight"):
            array = permute(array, config.num_key_value_heads)
        writer.add_tensor(names.get_name(key, try_suffixes=(".weight", ".bias")), array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory, tokenizer):
    pytest.importorskip("gguf")
    folder = tmp_path_factory.mktemp("gguf")
    model = llama_model(len(tokenizer))
    write_gguf(folder / "tiny.gguf", model)
    tokenizer.save_pretrained(folder)
    return folder, model


def test_folder_with_one_gguf_loads_the_exact_weights(gguf_dir, tokenizer):
    folder, reference = gguf_dir
    assert not (folder / "config.json").exists()
    assert check_model_source(str(folder)) == "tiny.gguf"
    model = load_causal_lm(str(folder))
    ids = torch.tensor([encode_text(tokenizer, TEXT)])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)
    assert not model.training
    assert load_tokenizer(str(folder)).get_vocab() == tokenizer.get_vocab()  # the folder's own tokenizer files


def test_lm_eval_command_on_a_gguf_folder(gguf_dir, tmp_path, capsys):
    text, _ = write_data(tmp_path)
    result = run_cli(capsys, "--model_name_or_path", gguf_dir[0], "--task", "wikitext", "--data", text)
    assert result["context_length"] == 64 and result["tokens"] > 0


def test_gguf_errors_are_clear(gguf_dir, tmp_path):
    folder, _ = gguf_dir
    two = tmp_path / "two"
    two.mkdir()
    data = (folder / "tiny.gguf").read_bytes()
    (two / "a.gguf").write_bytes(data)
    (two / "b.gguf").write_bytes(data[: len(data) - 100])  # truncated
    with pytest.raises(TedInputError, match=r"2 \.gguf files \(a\.gguf, b\.gguf\): pass --gguf_file"):
        check_model_source(str(two))
    assert check_model_source(str(two), "a.gguf") == "a.gguf"
    with pytest.raises(TedInputError, match="b.gguf is damaged"):
        check_model_source(str(two), "b.gguf")
    with pytest.raises(TedInputError, match="c.gguf is not in"):
        check_model_source(str(two), "c.gguf")
    with pytest.raises(TedInputError, match="file name inside the model folder"):
        check_model_source(str(two), str(two / "a.gguf"))
    (two / "a.gguf").unlink()
    with pytest.raises(TedInputError, match="b.gguf is damaged"):  # the only one: detected, then refused
        check_model_source(str(two))
    (two / "b.gguf").unlink()
    with pytest.raises(TedInputError, match="no config.json"):
        check_model_source(str(two))


def test_gguf_without_tokenizer_files_brings_its_own_tokenizer(tmp_path):
    pytest.importorskip("gguf")
    tokens = ["<|endoftext|>", "Ġ", *"abcdefghijklmnopqrstuvwxyz", "Ġt", "he", "Ġthe"]
    write_gguf(tmp_path / "m.gguf", llama_model(len(tokens)), tokens)
    tok = load_tokenizer(str(tmp_path))
    assert tok("the cat the", add_special_tokens=False)["input_ids"] == [21, 29, 1, 4, 2, 21, 30]
    assert load_causal_lm(str(tmp_path)).config.vocab_size == len(tokens)


# ---------------------------------------------------------------------------------- the shared SmolLM2

SMOLLM2 = shared_dir() / "models" / "smollm2-135m-instruct-q4_1"
LAMBADA_FILE = shared_dir() / "data" / "lm" / "lambada_openai" / "lambada_test.jsonl"


@pytest.mark.slow
@pytest.mark.shared
@pytest.mark.skipif(
    not (SMOLLM2.is_dir() and LAMBADA_FILE.is_file()),
    reason=f"shared SmolLM2 / LAMBADA not found under {SMOLLM2.parents[1]}",
)
def test_shared_smollm2_gguf_on_three_lambada_passages(tmp_path, capsys):
    # About 35 s: the GGUF is dequantised on load (ASSET.md: ~30 s).
    result = run_cli(
        capsys, "--model_name_or_path", SMOLLM2, "--task", "lambada", "--data", LAMBADA_FILE, "--limit", 3,
        "--output_dir", tmp_path,
    )  # fmt: skip
    assert result["examples"] == 3 and 0 <= result["accuracy"] <= 1 and 1 < result["perplexity"] < 1e4
    assert (tmp_path / "lm_eval_results.json").is_file()
