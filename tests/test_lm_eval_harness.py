"""`ted lm-eval --task wikitext --convention harness`: lm-evaluation-harness's rolling WikiText scores (pages,
detokenizer, word and byte counts, disjoint rolling windows) against hand-written values, a plain per-token loop,
and, where the `lm_eval` package imports, the harness itself."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

import tiny
from helpers import shared_dir
from ted.cli.main import main
from ted.errors import TedInputError
from ted.lm.perplexity import encode_text
from ted.lm.rolling import detokenize, harness_pages, prefix_token, rolling_scores, rolling_windows, word_count
from test_causal_lm import decoder_tokenizer, write_decoder
from test_lm_eval import logprob, run_cli
from tiny import one_thread  # noqa: F401  (module fixture)

RAW = (
    " \n = Alpha = \n \n Alpha is a film , the movie was good . \n \n = = Plot = = \n \n The plot @-@ line was bad"
    " ( very ) . \n = Qualified for the next round \n = Beta = \n \n Beta 's film was 1 @,@ 000 \N{DEGREE SIGN} long"
    ' " good " . \n \n'
)
# The pages by hand: the blank first line makes no page; section headings and a heading-like legend without
# its closing ` =` do not split.
PAGES = [
    " = Alpha = \n \n Alpha is a film , the movie was good . \n \n = = Plot = = \n \n The plot @-@ line was bad"
    " ( very ) . \n = Qualified for the next round ",
    ' = Beta = \n \n Beta \'s film was 1 @,@ 000 \N{DEGREE SIGN} long " good " . \n \n',
]
DETOKENIZED = [
    " = Alpha =\n\nAlpha is a film, the movie was good.\n\n== Plot ==\n\nThe plot-line was bad (very).\n= Qualified"
    " for the next round ",
    ' = Beta =\n\nBeta\'s film was 1,000\N{DEGREE SIGN}long "good".\n\n',
]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_pages_detokenizer_and_counts_by_hand():
    assert harness_pages(RAW) == PAGES
    assert harness_pages(RAW.replace("\n", "\r\n").replace("\r\n", "\n")) == PAGES
    assert [detokenize(page) for page in PAGES] == DETOKENIZED
    # Words: whitespace-separated pieces plus the empty piece at each end where the page starts/ends in a space.
    assert [word_count(page) for page in PAGES] == [1 + 3 + 10 + 5 + 10 + 6 + 1, 1 + 3 + 13 + 1]
    assert len(PAGES[1].encode("utf-8")) == len(PAGES[1]) + 1  # the degree sign is two bytes


def test_rolling_windows_by_hand():
    # 7 tokens, 3 per window, over [prefix, t0..t6]: t0-t2 from the prefix; t3-t5 from t2; t6 from t3 t4 t5.
    assert [(w.begin, w.end, w.first) for w in rolling_windows(7, 3)] == [(0, 4, 1), (3, 7, 4), (4, 8, 7)]
    assert [(w.begin, w.end, w.first) for w in rolling_windows(2, 3)] == [(0, 3, 1)]
    assert [(w.begin, w.end, w.first) for w in rolling_windows(6, 3)] == [(0, 4, 1), (3, 7, 4)]


def plain_loglikelihood(model, sequence: list[int], length: int) -> tuple[float, int]:
    """Σ log p of every token after the prefix sequence[0]: token i (sequence[i + 1]) lies in the window that
    predicts tokens up to e = min(next multiple of `length`, n) and is read after the inputs sequence[e - length:]."""
    n, total = len(sequence) - 1, 0.0
    for i in range(n):
        e = min((i // length + 1) * length, n)
        total += logprob(model, sequence[max(0, e - length) : i + 1], sequence[i + 1])
    return total, n


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_rolling_scores_equal_the_plain_loop(arch):
    tok = decoder_tokenizer(bos=arch == "llama")
    model = tiny.decoder(arch, len(tok), **({"n_layer": 2} if arch == "gpt2" else {"num_hidden_layers": 2}))
    pages = [" the movie was good . the plot was bad . a film it was not very good ", " = a = \n the film "]
    total, tokens = 0.0, 0
    for page in pages:
        sequence = [tok.bos_token_id] + encode_text(tok, detokenize(page))
        if arch == "llama":  # the tokenizer's own BOS is a token to predict, from the prefix BOS (as the harness)
            assert sequence[:2] == [tok.bos_token_id] * 2
        ll, n = plain_loglikelihood(model, sequence, 5)
        total, tokens = total + ll, tokens + n
    for batch_size in (1, 3):  # padding of short windows changes nothing
        result = rolling_scores(model, tok, pages, 5, batch_size)
        words = sum(len(p.split()) + 2 for p in pages)  # " ... ": an empty piece at either end of each page
        n_bytes = sum(len(p) for p in pages)
        assert result == {
            "word_perplexity": pytest.approx(math.exp(-total / words), rel=1e-6),
            "byte_perplexity": pytest.approx(math.exp(-total / n_bytes), rel=1e-6),
            "bits_per_byte": pytest.approx(-total / n_bytes / math.log(2), rel=1e-6),
            "perplexity": pytest.approx(math.exp(-total / tokens), rel=1e-6),
            "loglikelihood": pytest.approx(total, rel=1e-6),
            "tokens": tokens,
            "words": words,
            "bytes": n_bytes,
            "documents": 2,
            "context_length": 5,
            "stride": 5,
            "convention": "harness",
        }


def test_prefix_is_bos_else_eos_else_an_error():
    tok = decoder_tokenizer()
    assert prefix_token(tok) == tok.bos_token_id
    tok.bos_token = None
    assert prefix_token(tok) == tok.eos_token_id
    tok.eos_token = None
    with pytest.raises(TedInputError, match="neither a BOS nor an EOS"):
        prefix_token(tok)


# ---------------------------------------------------------------------------------------------- command


def test_command_scores_the_first_pages(tmp_path, capsys):
    model = write_decoder(tmp_path / "m", "gpt2")
    data = tmp_path / "wiki.raw"
    data.write_text(RAW.replace("\n", "\r\n"), encoding="utf-8", newline="")  # CRLF is read as \n
    flags = ["--model_name_or_path", model, "--task", "wikitext", "--data", data, "--convention", "harness"]
    both = run_cli(capsys, *flags, "--context_length", 8)
    first = run_cli(capsys, *flags, "--limit", 1, "--output_dir", tmp_path / "out")
    assert (both["documents"], first["documents"], first["context_length"], first["stride"]) == (2, 1, 64, 64)
    assert first["words"] == word_count(PAGES[0]) and first["bytes"] == len(PAGES[0].encode("utf-8"))
    assert both["words"] == sum(map(word_count, PAGES)) and both["convention"] == "harness"
    assert json.loads((tmp_path / "out" / "lm_eval_results.json").read_text()) == first
    assert first["bits_per_byte"] == pytest.approx(math.log2(first["byte_perplexity"]))
    hf = run_cli(capsys, "--model_name_or_path", model, "--task", "wikitext", "--data", data)
    assert hf["convention"] == "hf" and "words" not in hf


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--task", "wikitext", "--convention", "harnes"], "did you mean harness?"),
        (["--task", "wikitext", "--convention", "harness", "--stride", "4"], "--stride applies to --convention hf"),
        (["--task", "lambada", "--convention", "harness"], "--task wikitext only"),
    ],
)
def test_bad_convention_flags_are_one_line_before_the_model_loads(tmp_path, capsys, monkeypatch, flags, message):
    import ted.stages.models as models

    monkeypatch.setattr(models, "load_causal_lm", lambda *a, **k: pytest.fail("the model was loaded"))
    data = tmp_path / "wiki.raw"
    data.write_text(RAW, encoding="utf-8")
    assert main(["lm-eval", "--model_name_or_path", str(tmp_path), *flags, "--data", str(data)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


# ------------------------------------------------------------------------------ lm-evaluation-harness itself


def harness_preprocessing():
    """The harness's wikitext task functions, loaded from their file (importing lm_eval.tasks needs sacrebleu)."""
    spec = importlib.util.find_spec("lm_eval")
    path = Path(spec.submodule_search_locations[0]) / "tasks" / "wikitext" / "preprocess_wikitext.py"
    module_spec = importlib.util.spec_from_file_location("preprocess_wikitext", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_rolling_scores_equal_lm_evaluation_harness(arch):
    huggingface = pytest.importorskip("lm_eval.models.huggingface", reason="lm-eval (lm-evaluation-harness) absent")
    from lm_eval import utils
    from lm_eval.api.instance import Instance

    for n in range(1, 12):  # the window definition itself
        theirs = [utils.make_disjoint_window(p) for p in utils.get_rolling_token_windows(list(range(n)), -1, 4, 1)]
        ours = [([-1, *range(n)][w.begin : w.first], [-1, *range(n)][w.first : w.end]) for w in rolling_windows(n, 4)]
        assert [(c[-(5 - len(p)) :], p) for c, p in theirs] == ours  # the harness keeps the last 4 + 1 tokens

    tasks = harness_preprocessing()
    tok = decoder_tokenizer(bos=arch == "llama")
    model = tiny.decoder(arch, len(tok), **({"n_layer": 2} if arch == "gpt2" else {"num_hidden_layers": 2}))
    lm = huggingface.HFLM(pretrained=model, tokenizer=tok, batch_size=2, device="cpu", max_length=6)
    pages = harness_pages(RAW + RAW.replace("Beta", "Gamma"))
    assert [tasks.wikitext_detokenizer({"page": p}) for p in pages] == [detokenize(p) for p in pages]
    requests = [
        Instance(request_type="loglikelihood_rolling", doc={"page": p}, arguments=(detokenize(p),), idx=i)
        for i, p in enumerate(pages)
    ]
    items = [tasks.process_results({"page": p}, [ll]) for p, ll in zip(pages, lm.loglikelihood_rolling(requests))]
    total = sum(item["word_perplexity"][0] for item in items)
    words = sum(item["word_perplexity"][1] for item in items)
    n_bytes = sum(item["byte_perplexity"][1] for item in items)
    ours = rolling_scores(model, tok, pages, 6, 3)
    assert (ours["words"], ours["bytes"]) == (words, n_bytes)
    # The harness's aggregations (lm_eval.api.metrics, which needs sacrebleu): weighted perplexity, bits per byte.
    assert ours["word_perplexity"] == pytest.approx(math.exp(-total / words), rel=1e-6)
    assert ours["byte_perplexity"] == pytest.approx(math.exp(-total / n_bytes), rel=1e-6)
    assert ours["bits_per_byte"] == pytest.approx(-total / n_bytes / math.log(2), rel=1e-6)


WIKI_RAW = shared_dir() / "data" / "lm" / "wikitext-2-raw" / "wiki.test.raw"


@pytest.mark.skipif(not WIKI_RAW.is_file(), reason=f"{WIKI_RAW} not found")
def test_the_shared_wikitext_test_has_62_pages_and_the_harness_detokenizes_them_alike():
    pages = harness_pages(WIKI_RAW.read_text(encoding="utf-8"))
    assert len(pages) == 62 and pages[0].startswith(" = Robert Boulter = \n")
    try:
        tasks = harness_preprocessing()
    except (AttributeError, TypeError):  # lm_eval absent: find_spec gave None
        pytest.skip("lm-eval (lm-evaluation-harness) absent")
    assert all(tasks.wikitext_detokenizer({"page": p}) == detokenize(p) for p in pages)
