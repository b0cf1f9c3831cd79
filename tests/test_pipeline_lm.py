"""`ted pipeline`, `ted report` and `ted doctor` on causal-LM runs (issue 11): a tiny Llama teacher, its student made
by `ted init-student`, KD / LWD (and TED) by CLI; the LM presets parse and plan without the hub."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

import ted
import tiny
from helpers import SHARED
from ted.cli.main import main
from ted.errors import TedInputError
from ted.pipelines import plan
from test_causal_lm import decoder_tokenizer, hand_next_token_loss, sentences, write_text
from tiny import one_thread  # noqa: F401  (module fixture)

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]

CONFIG = """
task: causal_lm
seeds: [3]
teacher: ./teacher
methods: [ted, kd, lwd]
text_split: {file: ./text.txt, dev_documents: 8}
common:
  block_size: 32
  num_train_epochs: 1
  per_device_train_batch_size: 4
  per_device_eval_batch_size: 16
  learning_rate: 1.0e-2
  logging_steps: 1
  dataloader_pin_memory: false
student_init: {num_layers: 2, strategy: block_influence}
student_finetune: {num_train_epochs: 2}
teacher_stage1: {filter_interval: 2, learning_rate: 1.0e-2}
student_stage1: {filter_interval: 1, learning_rate: 1.0e-2}
ted: {kl_alpha: 1, mse_alpha: 1}
kd: {kl_alpha: 1}
lwd: {kl_alpha: 1, mse_alpha: 1, teacher_filter_interval: 2}
"""


def write_teacher(folder: Path) -> Path:
    """A 4-layer tiny Llama (GQA, untied head) with its BOS-adding tokenizer."""
    tokenizer = decoder_tokenizer(bos=True)
    tiny.decoder("llama", len(tokenizer), seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def read(folder: Path, name: str = "ted_stage.json") -> dict:
    return json.loads((Path(folder) / name).read_text())


@pytest.fixture(scope="module")
def run(tmp_path_factory, one_thread):  # noqa: F811
    os.environ["TQDM_DISABLE"] = "1"
    root = tmp_path_factory.mktemp("lm_pipe")
    write_teacher(root / "teacher")
    write_text(root / "text.txt", 60, seed=0)
    (root / "cfg.yaml").write_text(CONFIG)
    out = root / "out"
    argv = ["pipeline", "--config", str(root / "cfg.yaml"), "--output_dir", str(out)]
    assert main(argv) == 0
    return {"root": root, "out": out, "argv": argv}


def dev_perplexity(model_dir: Path, dev: Path) -> float:
    """exp(mean next-token NLL) of a model folder over the dev file's 32-token blocks, by the hand loop."""
    import torch
    from transformers import AutoModelForCausalLM

    from ted.settings.options import DataArguments
    from ted.tasks import load_task

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    args = DataArguments(task_name="causal_lm", validation_file=str(dev), block_size=32)
    _, data = load_task(args, decoder_tokenizer(bos=True))
    total, count = 0.0, 0
    with torch.no_grad():
        for ids in data.eval_sets["validation"]["input_ids"]:
            row = torch.tensor([ids])
            t, c = hand_next_token_loss(model(input_ids=row).logits, row)
            total, count = total + t, count + c
    return math.exp(total / count)


def test_layout_lineage_and_scores(run):
    task = run["out"] / "causal_lm"
    root, seed = run["root"], task / "seed3"
    # Made once per task: the student, and the scores of the pre-trained teacher and of the untrained student.
    for role in ("student_init", "teacher", "initial_student"):
        assert read(task / role)["pipeline"] == {"task": "causal_lm", "seed": None, "role": role}
    assert sorted(p.name for p in seed.iterdir()) == ["kd", "lwd", "student", "student_stage1", "teacher_stage1", "ted"]
    assert read(seed / "teacher_stage1")["lineage"]["model"] == str(root / "teacher")  # the teacher itself
    assert read(seed / "ted")["lineage"]["student"] == str(seed / "student_stage1")
    init = read(task / "student_init")
    assert init["student"]["strategy"] == "block_influence" and len(init["student"]["layers"]) == 2
    assert init["args"]["train_file"] == str(task / "data" / "train.txt")  # block influence on the training text
    assert read(seed / "student")["lineage"]["model"] == str(task / "student_init")
    assert read(seed / "kd")["lineage"]["student"] == str(task / "student_init")  # baseline_init: pretrained
    assert read(seed / "lwd")["lineage"]["teacher"] == str(root / "teacher")  # no Stage 0 for the teacher
    assert read(task / "teacher")["stage"] == "evaluate" and not (task / "teacher" / "config.json").exists()
    # text_split: the last 8 documents are dev, the rest train, every stage reads them.
    docs = (root / "text.txt").read_text().strip().split("\n\n")
    assert (task / "data" / "dev.txt").read_text() == "\n\n".join(docs[-8:]) + "\n"
    assert (task / "data" / "train.txt").read_text() == "\n\n".join(docs[:-8]) + "\n"
    # The recorded dev perplexities are the hand loop's on the dev file.
    dev = task / "data" / "dev.txt"
    for folder, model in ((task / "teacher", root / "teacher"), (task / "initial_student", task / "student_init")):
        assert read(folder, "eval_results.json")["eval_perplexity"] == pytest.approx(
            dev_perplexity(model, dev), rel=1e-4
        )
    for role in ("student", "kd", "lwd", "ted"):
        kept = read(seed / role, "eval_results.json")["eval_perplexity"]
        assert kept == pytest.approx(dev_perplexity(seed / role, dev), rel=1e-4)
        assert kept < read(task / "initial_student", "eval_results.json")["eval_perplexity"]


def test_rerun_trains_nothing(run, monkeypatch):
    import ted.pipelines.runner as runner

    def refuse(**kwargs):
        raise AssertionError(f"a finished stage was run again: {kwargs['output_dir']}")

    monkeypatch.setattr(runner, "RUNNERS", {k: refuse for k in runner.RUNNERS})
    before = {p: p.stat().st_mtime_ns for p in run["out"].rglob("*")}
    assert main(run["argv"]) == 0
    assert {p: p.stat().st_mtime_ns for p in run["out"].rglob("*")} == before


def test_report_has_perplexity_lm_eval_columns_and_loss_plots(run, tmp_path):
    task = run["out"] / "causal_lm"
    kd = task / "seed3" / "kd"
    dev = task / "data" / "dev.txt"
    lambada = tmp_path / "lambada.jsonl"
    lambada.write_text("".join(json.dumps({"text": s[:-2]}) + "\n" for s in sentences(6, seed=9)))
    for name, data in (("wikitext", dev), ("lambada", lambada)):
        argv = [
            "lm-eval",
            "--model_name_or_path",
            kd,
            "--task",
            name,
            "--data",
            data,
            "--output_dir",
            kd / "lm_eval" / name,
        ]
        assert main([str(a) for a in argv]) == 0
    wiki = read(kd / "lm_eval" / "wikitext", "lm_eval_results.json")
    lamb = read(kd / "lm_eval" / "lambada", "lm_eval_results.json")
    md, _ = ted.report(str(run["out"]), output=str(tmp_path / "rep"), cka=False)
    text = Path(md).read_text()
    header = next(line for line in text.splitlines() if line.startswith("| model"))
    assert "dev perplexity ↓" in header and "WikiText ppl ↓" in header and "LAMBADA acc ↑" in header
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in text.splitlines() if line.startswith("| ")}
    assert set(rows) >= {"teacher (pre-trained)", "student (initialised, before training)", "student + KD"}
    assert rows["student + KD"][3] == f"{wiki['perplexity']:.2f}"
    assert rows["student + KD"][4] == f"{100 * lamb['accuracy']:.2f}"
    assert rows["student + LWD"][3] == "n/a"
    teacher = read(task / "teacher", "eval_results.json")["eval_perplexity"]
    assert rows["teacher (pre-trained)"][2] == f"{teacher:.2f}"
    assert (tmp_path / "rep" / "report_files" / "causal_lm_loss_terms.png").is_file()
    assert (tmp_path / "rep" / "report_files" / "causal_lm_stage1_layers.png").is_file()  # per-layer perplexity
    assert "TED − KD" in text
    assert "lower is better" in text


def lm_stage(folder: Path, role: str, seed: int, perplexity: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    task = {"name": "causal_lm", "head": "causal_lm", "label_list": None, "selection_metric": "perplexity"}
    info = {"stage": "distill", "task": task, "pipeline": {"role": role, "task": "causal_lm", "seed": seed}}
    (folder / "ted_stage.json").write_text(json.dumps(info))
    (folder / "eval_results.json").write_text(json.dumps({"eval_perplexity": perplexity}))
    (folder / "log_history.json").write_text("[]")


def test_significance_says_lower_perplexity(tmp_path):
    from ted.reporting import collect, tables

    for seed, (ted_ppl, kd_ppl, student_ppl) in enumerate([(20.0, 30.0, 25.0), (21.0, 30.5, 26.0), (20.5, 31.0, 25.0)]):
        for role, ppl in (("ted", ted_ppl), ("kd", kd_ppl), ("student", student_ppl), ("lwd", ted_ppl + seed)):
            lm_stage(tmp_path / "causal_lm" / f"seed{seed}" / role, role, seed, ppl)
    runs = collect.find_runs([tmp_path])["causal_lm"]
    header, rows = tables.significance_table(runs)
    by_pair = {row[0]: row for row in rows}
    assert "lower is better" in header[2]
    assert by_pair["TED − KD"][2] == "-10.00" and by_pair["TED − KD"][5] == "significant: TED lower perplexity"
    assert by_pair["KD − student"][5] == "significant: student lower perplexity"  # KD's perplexity is higher
    assert collect.constant_baseline(runs) is None


def test_lm_presets_parse_and_plan(tmp_path, monkeypatch):
    """Both LM presets resolve and plan offline (the hub ids are only names here)."""
    monkeypatch.setenv("TED_SHARED_DIR", str(tmp_path / "shared"))
    data = tmp_path / "shared" / "data" / "lm" / "wikitext-2"
    data.mkdir(parents=True)
    (data / "valid.txt").write_text("".join(f" = A{i} = \n \n text {i} .\n \n" for i in range(200)))
    (tmp_path / "shared" / "models" / "smollm2-135m-instruct-q4_1").mkdir(parents=True)
    [(task, cfg)] = plan.task_configs(
        [str(REPO / "configs" / "lm" / "smollm2_wikitext.yaml")], {"output_dir": str(tmp_path / "o")}
    )
    plan.check_models(cfg)
    specs = {s.role: s for s in plan.plan_seed(task, cfg, 42, tmp_path / "o" / task / "seed42")}
    assert specs["student_init"].kwargs["num_layers"] == 15 and specs["teacher"].command == "evaluate"
    assert specs["kd"].kwargs["block_size"] == 128
    jobs = plan.plan_jobs([str(REPO / "configs" / "lm" / "smollm2_wikitext.yaml")], {"output_dir": str(tmp_path / "o")})
    assert {j.spec.role for j in jobs} >= {"student_init", "teacher", "initial_student", "student", "kd", "lwd", "ted"}
    plan.validate([j.spec for j in jobs])
    [(task, cfg)] = plan.task_configs(
        [str(REPO / "configs" / "paper" / "gpt2_openwebtext.yaml")], {"output_dir": str(tmp_path / "p")}
    )
    plan.check_models(cfg)
    specs = {s.role: s for s in plan.plan_seed(task, cfg, 42, tmp_path / "p" / task / "seed42")}
    assert cfg["teacher"] == "gpt2" and specs["student_init"].kwargs["num_layers"] == 6
    assert specs["ted"].kwargs["dataset_name"] == "openwebtext" and specs["teacher"].command == "evaluate"
    assert specs["kd"].inputs["model_name_or_path"].role == "student_init"
    plan.validate(list(specs.values()))


@pytest.mark.skipif(not (SHARED / "models" / "smollm2-135m-instruct-q4_1").is_dir(), reason="no shared SmolLM2")
def test_smollm2_preset_plans_on_the_shared_assets(tmp_path, monkeypatch):
    monkeypatch.delenv("TED_SHARED_DIR", raising=False)
    config = str(REPO / "configs" / "lm" / "smollm2_wikitext.yaml")
    jobs = plan.plan_jobs([config], {"output_dir": str(tmp_path)})
    plan.validate([j.spec for j in jobs])
    dev = (tmp_path / "causal_lm" / "data" / "dev.txt").read_text()
    assert dev.startswith(" = ") and dev.count("\n = ") - dev.count("\n = = ") == 5  # 6 whole articles held out


def test_bad_lm_configs_fail_before_training(run, tmp_path):
    base = (run["root"] / "cfg.yaml").read_text()
    cases = [
        (base.replace("teacher: ./teacher", "teacher: ./teacher\nstudent: ./teacher"), "Keep one of them"),
        (base.replace("dev_documents: 8", "dev_documents: 600"), "leaves none for training"),
        (base.replace("dev_documents: 8", "dev_docs: 8"), "text_split needs exactly"),
        (base.replace("block_size: 32", "block_size: 32\n  train_file: ./text.txt"), "drop them from `common`"),
    ]
    for text, words in cases:
        cfg = run["root"] / "bad.yaml"
        cfg.write_text(text)
        with pytest.raises(TedInputError, match=words):
            ted.pipeline(str(cfg), output_dir=str(tmp_path / "o"))


def test_doctor_on_the_lm_run_compares_perplexities_with_a_unigram_baseline(run, tmp_path):
    from collections import Counter

    from ted.settings.options import DataArguments
    from ted.tasks import load_task

    task = run["out"] / "causal_lm"
    report = tmp_path / "doctor.json"
    argv = ["doctor", "--pipeline_config", run["root"] / "cfg.yaml", "--output_dir", run["out"], "--seed", "3"]
    assert main([str(a) for a in [*argv, "--method", "lwd", "--json", report]]) == 0
    data = json.loads(report.read_text())
    assert {"teacher_dev", "majority_baseline", "stage1_layers", "initial_terms", "suggested", "warnings"} <= set(data)
    assert data["baseline"] == "unigram baseline" and data["greater_is_better"] is False
    # The same dev blocks as the pipeline's evaluations: the same perplexities.
    assert data["teacher_dev"] == pytest.approx(
        read(task / "teacher", "eval_results.json")["eval_perplexity"], rel=1e-4
    )
    initial = read(task / "initial_student", "eval_results.json")["eval_perplexity"]
    assert data["student_dev"] == pytest.approx(initial, rel=1e-4)
    # The unigram baseline by hand: add-one smoothed training-token frequencies on the scored dev tokens.
    tok = decoder_tokenizer(bos=True)
    args = DataArguments(
        task_name="causal_lm", train_file=str(task / "data" / "train.txt"),
        validation_file=str(task / "data" / "dev.txt"), block_size=32,
    )  # fmt: skip
    _, blocks = load_task(args, tok)
    counts = Counter(t for row in blocks.train["input_ids"] for t in row[1:])
    total, vocab = sum(counts.values()), len(tok)
    dev = [t for row in blocks.eval_sets["validation"]["input_ids"] for t in row[1:]]
    nll = -sum(math.log((counts[t] + 1) / (total + vocab)) for t in dev) / len(dev)
    assert data["majority_baseline"] == pytest.approx(math.exp(nll), rel=1e-9)
    assert set(data["initial_terms"]) == {"pred", "kl", "mse"} and data["suggested"]["mse_alpha"] > 0
    # TED: each Stage I head's recorded dev perplexity, judged against the same baseline.
    assert main([str(a) for a in [*argv, "--method", "ted", "--json", report]]) == 0
    heads = json.loads(report.read_text())["stage1_layers"]
    recorded = read(task / "seed3" / "teacher_stage1", "stage1_layer_scores.json")
    assert {k: v["score"] for k, v in heads["teacher"].items()} == {k: v["perplexity"] for k, v in recorded.items()}
    assert all(v["at_chance"] == (v["score"] >= data["majority_baseline"]) for v in heads["student"].values())


def test_stage1_heads_not_below_the_unigram_perplexity_are_flagged():
    from ted.stages.doctor import Findings, check_stage1

    findings = Findings(
        metric="perplexity", majority_baseline=400.0, greater_is_better=False, baseline="unigram baseline"
    )
    scores = {"0": {"loss": 6.2, "perplexity": 480.0}, "2": {"perplexity": 400.0}, "4": {"perplexity": 35.0}}
    check_stage1(findings, "student", scores, dev_examples=16)
    assert [v["at_chance"] for v in findings.stage1_layers["student"].values()] == [True, True, False]
    assert "layer(s) 0, 2" in findings.warnings[0] and "unigram baseline 400" in findings.warnings[0]


def test_report_draws_layer_similarity_on_causal_lm_runs(run, tmp_path):
    """The CKA plot reads the Stage I folders and the dev blocks of a causal-LM run as it does an encoder run's."""
    from ted.reporting.collect import find_runs
    from ted.reporting.similarity import layer_cka

    runs = find_runs([run["out"]])["causal_lm"]
    seed = 3
    info = read(runs.stages["ted"][seed])
    pairs = info["lineage"]["layer_pairs"]
    found = layer_cka(
        str(runs.stages["teacher_stage1"][seed]),
        {"after TED": str(runs.stages["ted"][seed]), "after KD": str(runs.stages["kd"][seed])},
        pairs,
        info["args"],
    )
    assert found is not None and set(found) == {"after TED", "after KD"}
    assert all(len(v) == len(pairs) and all(0.0 <= x <= 1.0 + 1e-9 for x in v) for v in found.values())
    assert found["after TED"] != found["after KD"]
    md, _ = ted.report(str(run["out"]), output=str(tmp_path / "rep"))
    assert (tmp_path / "rep" / "report_files" / "causal_lm_layer_cka.png").is_file()
    assert "causal_lm_layer_cka.png" in Path(md).read_text()
