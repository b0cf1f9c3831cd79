"""`ted export` of a causal-LM stage (a stock AutoModelForCausalLM folder that generates as the stage's model without
ted), and `--gguf_file NAME` choosing the weights of a model folder with several GGUF files on the training commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import ted
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
