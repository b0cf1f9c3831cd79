"""`ted init-student`: which layers each strategy keeps, and the layer-dropped student folder it writes."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tiny
from helpers import shared_dir
from ted.errors import TedInputError
from ted.method import layer_selection as ls
from ted.settings.options import InitStudentArguments
from ted.stages.init_student import build_student, find_layer_list, init_student, run_init_student
from tiny import DECODERS, build_tokenizer, one_thread, write_model  # noqa: F401  (module fixture)

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_decoder(arch: str, vocab: int = 40, seed: int = 0, **overrides):
    return tiny.decoder(arch, vocab, seed, **overrides)


def make_identity(model, layer: int) -> None:
    """Zero the residual branches' output projections: the block returns its input, so its BI is 0."""
    block = find_layer_list(model)[1][layer]
    for name, param in block.named_parameters():
        if name.endswith(("o_proj.weight", "down_proj.weight", "c_proj.weight", "c_proj.bias")):
            param.data.zero_()


def dropped_by_surgery(teacher, keep: list[int]):
    """The reference: a deep copy whose layer list is replaced by the kept layer modules themselves."""
    ref = copy.deepcopy(teacher)
    name, layers = find_layer_list(ref)
    parent_name, _, attr = name.rpartition(".")
    parent = ref.get_submodule(parent_name) if parent_name else ref
    setattr(parent, attr, torch.nn.ModuleList([layers[i] for i in keep]))
    ref.config.num_hidden_layers = len(keep)
    if getattr(ref.config, "layer_types", None):
        ref.config.layer_types = [ref.config.layer_types[i] for i in keep]
    return ref


def tokenizer():
    """The word-level test tokenizer, grown past the ids IDS uses."""
    return build_tokenizer(extra=tuple(f"w{i}" for i in range(30)))


IDS = torch.tensor([[5, 9, 3, 17, 22, 8, 30], [4, 4, 11, 2, 6, 35, 12]])


# -- which layers each strategy keeps ------------------------------------------------------------------------


def test_uniform_keeps_every_kth_layer_from_layer_0():
    assert ls.uniform_layers(30, 15) == list(range(0, 30, 2))  # the ASSET's even layers
    assert ls.uniform_layers(12, 6) == [0, 2, 4, 6, 8, 10]  # DistilBERT
    assert ls.uniform_layers(12, 4) == [0, 3, 6, 9]
    assert ls.uniform_layers(10, 4) == [0, 2, 5, 7]  # i * 10 // 4
    assert ls.uniform_layers(5, 5) == [0, 1, 2, 3, 4]


def test_first_last_and_explicit():
    assert ls.first_layers(6, 2) == [0, 1]
    assert ls.last_layers(6, 2) == [4, 5]
    assert ls.select_layers(6, layers=[5, 0, 3]) == [0, 3, 5]
    assert ls.parse_layers(" 0, 3,5 ") == [0, 3, 5]
    assert ls.select_layers(6, 3, "last") == [3, 4, 5]


def test_block_influence_keeps_the_highest_scores_in_order_ties_to_lower_index():
    assert ls.top_influence_layers([0.9, 0.1, 0.5, 0.1, 0.7], 3) == [0, 2, 4]
    assert ls.top_influence_layers([0.2, 0.2, 0.2, 0.9], 2) == [0, 3]
    assert ls.select_layers(5, 2, "block_influence", scores=[0.9, 0.1, 0.5, 0.1, 0.7]) == [0, 4]


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: ls.uniform_layers(4, 0), "1 to 4"),
        (lambda: ls.first_layers(4, 5), "1 to 4"),
        (lambda: ls.check_layers([0, 4], 4), "out of range"),
        (lambda: ls.check_layers([1, 1], 4), "more than once"),
        (lambda: ls.check_layers([], 4), "empty"),
        (lambda: ls.parse_layers("0,a"), "comma-separated"),
        (lambda: ls.select_layers(4, 2, layers=[0, 1]), "not both"),
        (lambda: ls.select_layers(4), "--num_layers"),
        (lambda: ls.select_layers(4, 2, "middle"), "not one of"),
        (lambda: ls.select_layers(4, 2, "block_influence"), "--train_file"),
    ],
)
def test_bad_choices_are_one_actionable_line(call, words):
    with pytest.raises(TedInputError, match=words) as err:
        call()
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_block_influence_finds_the_identity_layers(arch):
    model = tiny_decoder(arch, num_hidden_layers=6) if arch == "llama" else tiny_decoder(arch, n_layer=6)
    for layer in (1, 2, 4):
        make_identity(model, layer)
    scores = ls.block_influence(model, find_layer_list(model)[1], [{"input_ids": IDS}])
    assert all(abs(scores[i]) < 1e-6 for i in (1, 2, 4)) and min(scores[i] for i in (0, 3, 5)) > 1e-3
    assert ls.select_layers(6, 3, "block_influence", scores=scores) == [0, 3, 5]


def test_block_influence_is_one_minus_mean_cosine_over_real_tokens_only():
    model = tiny_decoder("llama")
    hidden = model(IDS, output_hidden_states=True).hidden_states  # [l] enters layer l; the last entry is normed
    cos = [torch.nn.functional.cosine_similarity(hidden[i], hidden[i + 1], dim=-1) for i in range(3)]
    scores = ls.block_influence(model, model.model.layers, [{"input_ids": IDS}])
    for i in range(3):
        assert scores[i] == pytest.approx(1 - cos[i].mean().item(), abs=1e-6)
    # Padding is not counted: one padded batch scores like the two rows on their own.
    padded = {"input_ids": IDS.clone(), "attention_mask": torch.ones_like(IDS)}
    padded["input_ids"][1, 4:], padded["attention_mask"][1, 4:] = 0, 0
    alone = [{"input_ids": IDS[:1]}, {"input_ids": IDS[1:, :4]}]
    assert ls.block_influence(model, model.model.layers, [padded]) == pytest.approx(
        ls.block_influence(model, model.model.layers, alone), abs=1e-6
    )


# -- the student folder -------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", sorted(DECODERS))
def test_decoder_student_loads_with_stock_transformers_and_matches_surgery(tmp_path, arch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = tokenizer()
    teacher = tiny_decoder(arch, vocab=len(tok))
    folder = tmp_path / "teacher"
    teacher.save_pretrained(folder)
    tok.save_pretrained(folder)
    for keep, name in (([0, 1, 2, 3], "copy"), ([0, 3], "two")):
        out = init_student(teacher, tok, keep, tmp_path / name, strategy="explicit", teacher_name="t")
        student = AutoModelForCausalLM.from_pretrained(out).eval()
        assert student.config.num_hidden_layers == len(keep) and type(student) is type(teacher)
        tied = student.get_output_embeddings().weight is student.get_input_embeddings().weight
        assert tied == (arch != "llama")
        with torch.no_grad():
            reference = teacher if name == "copy" else dropped_by_surgery(teacher, keep)
            expected = reference(IDS, use_cache=False).logits  # surgery keeps the old layer_idx: no cache
            assert torch.equal(student(IDS, use_cache=False).logits, expected)
        # As the teacher's own folder loads it (AutoTokenizer may pick a class from config.json's model_type).
        assert AutoTokenizer.from_pretrained(out).get_vocab() == AutoTokenizer.from_pretrained(folder).get_vocab()
        assert (out / "generation_config.json").is_file() and (out / "model.safetensors").is_file()
        info = json.loads((out / "ted_stage.json").read_text())
        assert info["stage"] == "init_student" and info["student"]["layers"] == keep
        assert info["student"]["teacher_layers"] == 4 and info["lineage"]["teacher"] == "t"


def test_quantization_config_is_dropped_and_qwen2_layer_types_cut(tmp_path):
    teacher = tiny_decoder("qwen2", use_sliding_window=True, sliding_window=4, max_window_layers=2)
    teacher.config.quantization_config = {"quant_method": "gguf"}  # what a GGUF-loaded teacher carries
    student = build_student(teacher, [1, 2])
    assert not hasattr(student.config, "quantization_config")
    assert student.config.layer_types == [teacher.config.layer_types[i] for i in (1, 2)]
    assert student.config.layer_types == ["full_attention", "sliding_attention"]


@pytest.mark.parametrize(
    "arch, head", [("bert", None), ("bert", ["neg", "pos"]), ("roberta", ["neg", "pos"]), ("deberta-v2", None)]
)
def test_encoder_student_keeps_its_head_and_matches_surgery(tmp_path, arch, head):
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    tokenizer = build_tokenizer()
    teacher_dir = write_model(tmp_path / arch, tokenizer, arch=arch, layers=3, head_labels=head)
    text = tmp_path / "text.txt"
    text.write_text("the movie was good\nbad plot\n")
    args = InitStudentArguments(
        teacher_model_name_or_path=str(teacher_dir), layers="2,0", output_dir=str(tmp_path / "student")
    )
    args.train_file = str(text)  # with explicit layers the scores are only recorded
    result = run_init_student(args)
    assert result.extra["layers"] == [0, 2] and result.extra["strategy"] == "explicit"
    assert len(result.extra["block_influence"]) == 3 and all(0 < s < 2 for s in result.extra["block_influence"])
    cls = AutoModel if head is None else AutoModelForSequenceClassification
    teacher, student = cls.from_pretrained(teacher_dir).eval(), cls.from_pretrained(result.output_dir).eval()
    assert AutoConfig.from_pretrained(result.output_dir).architectures == [type(teacher).__name__]
    batch = tokenizer(["the movie was good", "bad plot"], padding=True, return_tensors="pt")
    with torch.no_grad():
        got, want = student(**batch), dropped_by_surgery(teacher, [0, 2])(**batch)
    key = "last_hidden_state" if head is None else "logits"
    assert torch.equal(got[key], want[key])


def _decoder_folder(tmp_path: Path, identity: tuple[int, ...] = ()) -> Path:
    tok = tokenizer()
    teacher = tiny_decoder("llama", vocab=len(tok), num_hidden_layers=6)
    for layer in identity:
        make_identity(teacher, layer)
    folder = tmp_path / "teacher"
    teacher.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_run_init_student_measures_block_influence_on_the_train_file(tmp_path):
    teacher = _decoder_folder(tmp_path, identity=(0, 2, 5))
    text = tmp_path / "train.txt"
    text.write_text("the movie was good\n\n  \nbad plot it was not very fine\na film\n")
    args = InitStudentArguments(
        teacher_model_name_or_path=str(teacher), num_layers=3, train_file=str(text), output_dir=str(tmp_path / "s")
    )
    result = run_init_student(args)
    info = json.loads((Path(result.output_dir) / "ted_stage.json").read_text())
    assert info["student"]["strategy"] == "block_influence"  # the default when --train_file is given
    assert info["student"]["layers"] == [1, 3, 4] == result.extra["layers"]
    scores = info["student"]["block_influence"]
    assert len(scores) == 6 and all(abs(scores[i]) < 1e-6 for i in (0, 2, 5))
    assert info["args"]["num_layers"] == 3
    assert json.loads((Path(result.output_dir) / "config.json").read_text())["num_hidden_layers"] == 3


@pytest.mark.slow  # a fresh interpreter importing torch + transformers: 6-17 s on the shared 2-core machine
def test_student_loads_in_a_process_without_ted(tmp_path):
    teacher = _decoder_folder(tmp_path)
    out = run_init_student(
        InitStudentArguments(teacher_model_name_or_path=str(teacher), num_layers=2, output_dir=str(tmp_path / "s"))
    ).output_dir
    code = (
        "import sys; from transformers import AutoModelForCausalLM; "
        f"m = AutoModelForCausalLM.from_pretrained({out!r}); "
        "print(m.config.num_hidden_layers, 'ted' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["2", "False"]


@pytest.mark.parametrize(
    "flags, words",
    [
        (dict(), "exactly one"),
        (dict(num_layers=2, layers="0,1"), "exactly one"),
        (dict(layers="0,1", strategy="first"), "leave out --strategy"),
        (dict(num_layers=2, strategy="random"), "not one of"),
        (dict(num_layers=2, strategy="block_influence"), "--train_file"),
        (dict(num_layers=2, train_file="missing.txt"), "not a file"),
        (dict(num_layers=7), "1 to 6"),
        (dict(layers="0,6"), "out of range"),
        (dict(layers="1,1"), "more than once"),
        (dict(num_layers=2, output_dir=None), "--output_dir is required"),
        (dict(num_layers=2, influence_max_length=0), ">= 1"),
    ],
)
def test_bad_input_is_refused_before_anything_is_written(tmp_path, flags, words):
    teacher = _decoder_folder(tmp_path)
    args = InitStudentArguments(teacher_model_name_or_path=str(teacher), output_dir=str(tmp_path / "s"))
    for key, value in flags.items():
        setattr(args, key, value)
    with pytest.raises(TedInputError, match=words):
        run_init_student(args)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher"]


def test_existing_output_is_kept_unless_overwrite_and_a_failure_leaves_nothing(tmp_path, monkeypatch):
    teacher = _decoder_folder(tmp_path)
    out = tmp_path / "s"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    args = InitStudentArguments(teacher_model_name_or_path=str(teacher), num_layers=2, output_dir=str(out))
    with pytest.raises(TedInputError, match="already exists"):
        run_init_student(args)
    args.overwrite_output_dir = True
    with pytest.raises(TedInputError, match="not a folder ted wrote"):
        run_init_student(args)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]

    (out / "mine.txt").unlink()
    out.rmdir()
    run_init_student(args)  # a ted folder: replaced on a second run with --overwrite_output_dir
    first = (out / "ted_stage.json").read_text()

    from transformers import PreTrainedTokenizerBase

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", fail)
    args.num_layers = 3
    with pytest.raises(OSError, match="disk full"):
        run_init_student(args)
    assert (out / "ted_stage.json").read_text() == first  # the old student, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s", "teacher"]  # no half-written sibling
    args.output_dir = str(tmp_path / "new")
    with pytest.raises(OSError, match="disk full"):
        run_init_student(args)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s", "teacher"]


# -- the shared SmolLM2 teacher ------------------------------------------------------------------------------

SMOLLM = shared_dir() / "models" / "smollm2-135m-instruct-q4_1"
WIKI = shared_dir() / "data" / "lm" / "wikitext-2-raw" / "wiki.test.raw"
ASSET_BI15 = [0, 1, 5, 8, 10, 11, 19, 20, 21, 22, 23, 24, 27, 28, 29]


@pytest.mark.slow
@pytest.mark.skipif(
    not (SMOLLM / "SmolLM2-135M-Instruct.Q4_1.gguf").is_file() or not WIKI.is_file(),
    reason=f"shared SmolLM2 GGUF or WikiText-2 raw not found under {shared_dir()} (set TED_SHARED_DIR)",
)
def test_smollm2_block_influence_15_layers(tmp_path, capsys):
    pytest.importorskip("gguf", reason="loading a GGUF teacher needs the gguf package")
    lines = [ln.strip() for ln in WIKI.read_text(encoding="utf-8").splitlines()]
    body = [ln for ln in lines if ln and not ln.startswith("=")]
    text = tmp_path / "sample.txt"
    text.write_text("\n".join(body[100:110]) + "\n")  # the ASSET's sample: non-heading lines 100-109
    args = InitStudentArguments(
        teacher_model_name_or_path=str(SMOLLM),
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        num_layers=15,
        train_file=str(text),
        influence_max_tokens=4096,  # all ten lines, each cut to 256 tokens (the default), as ASSET.md measured
        output_dir=str(tmp_path / "student"),
    )
    result = run_init_student(args)
    layers, scores = result.extra["layers"], result.extra["block_influence"]
    overlap = sorted(set(layers) & set(ASSET_BI15))
    with capsys.disabled():
        print(f"\nSmolLM2 BI-15: {layers}\n  overlap with ASSET.md: {len(overlap)}/15 {overlap}")
        print("  scores:", [round(s, 3) for s in scores])
    assert len(layers) == 15 and {0, 29} <= set(layers)  # the two layers ASSET.md found far above the rest
    assert len(overlap) >= 13  # 15/15 here (transformers 5.24, torch 2.13 CPU); the scores of 4, 6, 11 are close
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(result.output_dir)
    assert student.config.num_hidden_layers == 15 and not hasattr(student.config, "quantization_config")
    assert student.get_output_embeddings().weight is student.get_input_embeddings().weight


def test_the_command_line_and_the_python_api(tmp_path, capsys):
    import ted
    from ted.cli.main import main

    teacher = _decoder_folder(tmp_path, identity=(0, 2, 5))
    assert main(["init-student", "--teacher_model_name_or_path", str(teacher), "--layers", "1,3",
                 "--output_dir", str(tmp_path / "cli")]) == 0  # fmt: skip
    assert json.loads((tmp_path / "cli" / "config.json").read_text())["num_hidden_layers"] == 2
    assert main(["init-student", "--teacher_model_name_or_path", str(teacher), "--num_layers", "9",
                 "--output_dir", str(tmp_path / "bad")]) == 2  # fmt: skip
    assert "1 to 6" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    result = ted.init_student(teacher_model_name_or_path=str(teacher), num_layers="2", output_dir=str(tmp_path / "api"))
    assert json.loads((Path(result.output_dir) / "ted_stage.json").read_text())["student"]["layers"] == [0, 3]
