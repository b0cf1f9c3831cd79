"""SQuAD 2.0 through every stage: tiny models on a generated SQuAD-schema file, then the real MiniLM pair."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from helpers import SHARED, requires_shared
from ted.cli.main import main as ted_main
from tiny import WORDS, build_tokenizer, one_thread, write_model  # noqa: F401


def ted_cli(*argv) -> None:
    assert ted_main([str(a) for a in argv]) == 0, f"ted {' '.join(map(str, argv))} failed"


def write_squad(path: Path, n_articles: int, seed: int) -> Path:
    """Official SQuAD 2.0 schema; contexts longer than one window so overflow windows appear."""
    rng = random.Random(seed)
    data = []
    for a in range(n_articles):
        words = rng.choices(WORDS, k=40)
        context = " ".join(words)
        qas = []
        for q in range(4):
            if q == 3:
                qas.append({"id": f"a{a}q{q}", "question": " what was it", "answers": [], "is_impossible": True})
                continue
            i = rng.randrange(len(words) - 2)
            text = " ".join(words[i : i + 2])
            start = len(" ".join(words[:i])) + (1 if i else 0)
            assert context[start : start + len(text)] == text
            qas.append(
                {
                    "id": f"a{a}q{q}",
                    "question": f"where {words[i]}",
                    "is_impossible": False,
                    "answers": [{"text": text, "answer_start": start}],
                }
            )
        data.append({"title": f"t{a}", "paragraphs": [{"context": context, "qas": qas}]})
    path.write_text(json.dumps({"version": "v2.0", "data": data}))
    return path


@pytest.fixture(scope="module")
def squad_chain(tmp_path_factory, one_thread):  # noqa: F811
    root = tmp_path_factory.mktemp("squad")
    tok = build_tokenizer()
    train, dev = write_squad(root / "train.json", 6, 0), write_squad(root / "dev.json", 3, 1)
    teacher0 = write_model(root / "teacher_init", tok, layers=4, seed=1)
    student0 = write_model(root / "student_init", tok, layers=2, seed=2)
    q = [
        "--task_name",
        "squad_v2",
        "--train_file",
        train,
        "--validation_file",
        dev,
        "--max_seq_length",
        32,
        "--doc_stride",
        16,
        "--num_train_epochs",
        1,
        "--per_device_train_batch_size",
        8,
        "--per_device_eval_batch_size",
        8,
        "--dataloader_pin_memory",
        "False",
        "--learning_rate",
        1e-3,
        "--logging_steps",
        1,
    ]
    out = {name: root / name for name in ("t0", "s0", "t1", "s1", "ted", "kd", "lwd", "eval", "student")}
    ted_cli("finetune", "--model_name_or_path", teacher0, *q, "--output_dir", out["t0"])
    ted_cli("finetune", "--model_name_or_path", student0, *q, "--output_dir", out["s0"])
    ted_cli("learn-filters", "--model_name_or_path", out["t0"], *q, "--filter_interval", 2, "--output_dir", out["t1"])
    ted_cli("learn-filters", "--model_name_or_path", out["s0"], *q, "--filter_interval", 1, "--output_dir", out["s1"])
    ted_cli(
        "distill",
        "--teacher_model_name_or_path",
        out["t1"],
        "--model_name_or_path",
        out["s1"],
        *q,
        "--teacher_filter_interval",
        2,
        "--kl_alpha",
        10,
        "--mse_alpha",
        50,
        "--output_dir",
        out["ted"],
    )
    ted_cli(
        "distill",
        "--teacher_model_name_or_path",
        out["t0"],
        "--model_name_or_path",
        student0,
        *q,
        "--filter_disabled",
        "--kl_alpha",
        10,
        "--mse_alpha",
        0,
        "--output_dir",
        out["kd"],
    )
    ted_cli(
        "distill",
        "--teacher_model_name_or_path",
        out["t0"],
        "--model_name_or_path",
        student0,
        *q,
        "--filter_disabled",
        "--teacher_filter_interval",
        2,
        "--kl_alpha",
        10,
        "--mse_alpha",
        5,
        "--output_dir",
        out["lwd"],
    )
    ted_cli("evaluate", "--model_name_or_path", out["ted"], *q, "--output_dir", out["eval"])
    ted_cli("export", out["ted"], "--output_dir", out["student"])
    return {"dev": dev, **out}


def results(folder: Path) -> dict:
    return json.loads((folder / "eval_results.json").read_text())


@pytest.mark.parametrize("stage", ["t0", "s0", "ted", "kd", "lwd", "eval"])
def test_stage_reports_official_keys_and_prediction_files(squad_chain, stage):
    metrics = results(squad_chain[stage])
    for key in ("exact", "f1", "total", "HasAns_exact", "NoAns_f1", "best_f1"):
        assert f"eval_{key}" in metrics, (stage, sorted(metrics))
    assert metrics["eval_total"] == 12  # 3 articles x 4 questions: every question predicted
    for name in ("predictions.json", "nbest_predictions.json", "null_odds.json"):
        assert (squad_chain[stage] / name).is_file()


def test_stage1_scores_every_span_head(squad_chain):
    for stage, layers in (("t1", ["1", "3"]), ("s1", ["0", "1"])):
        scores = json.loads((squad_chain[stage] / "stage1_layer_scores.json").read_text())
        assert sorted(scores) == layers
        assert all("f1" in s and "exact" in s for s in scores.values())


def test_distill_logs_span_terms(squad_chain):
    history = json.loads((squad_chain["ted"] / "log_history.json").read_text())
    logged = set().union(*history)
    assert {"loss_pred", "loss_kl", "loss_mse", "loss_mse_layer0", "loss_mse_layer1"} <= logged
    kd_logged = set().union(*json.loads((squad_chain["kd"] / "log_history.json").read_text()))
    assert "loss_kl" in kd_logged and "loss_mse" not in kd_logged


def test_score_squad_matches_stage_metrics(squad_chain, capsys):
    stage = squad_chain["ted"]
    capsys.readouterr()
    ted_cli("score-squad", squad_chain["dev"], stage / "predictions.json", "--na_prob_file", stage / "null_odds.json")
    printed = json.loads(capsys.readouterr().out)
    metrics = results(stage)
    for key in ("exact", "f1", "HasAns_f1", "NoAns_exact", "best_f1", "best_f1_thresh"):
        assert printed[key] == pytest.approx(metrics[f"eval_{key}"]), key


def test_export_is_a_stock_question_answering_model(squad_chain):
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    exported = squad_chain["student"]
    assert not (exported / "filters.safetensors").exists() and not (exported / "predictions.json").exists()
    tok = AutoTokenizer.from_pretrained(exported)
    batch = tok("where good", "the movie was good", return_tensors="pt")
    a = AutoModelForQuestionAnswering.from_pretrained(exported).eval()
    b = AutoModelForQuestionAnswering.from_pretrained(squad_chain["ted"]).eval()
    with torch.no_grad():
        assert torch.equal(a(**batch).start_logits, b(**batch).start_logits)


def test_squad_v1_refuses_unanswerable_data(squad_chain, tmp_path):
    from ted.api import parse_kwargs
    from ted.errors import TedInputError
    from ted.stages.finetune import run_finetune

    groups = parse_kwargs(
        "finetune",
        dict(
            model_name_or_path=str(squad_chain["s0"]),
            task_name="squad",
            train_file=str(squad_chain["dev"]),
            validation_file=str(squad_chain["dev"]),
            max_seq_length=32,
            doc_stride=16,
            output_dir=str(tmp_path / "v1"),
        ),
    )
    with pytest.raises(TedInputError, match="squad_v2"):
        run_finetune(*groups)
    assert not (tmp_path / "v1").exists()


@pytest.mark.slow
@requires_shared
def test_real_minilm_pair_on_shared_squad(tmp_path):
    """all-MiniLM-L6-v2 teacher -> paraphrase-MiniLM-L3-v2 student on the shared SQuAD 2.0 files."""
    teacher, student = SHARED / "models/all-MiniLM-L6-v2", SHARED / "models/paraphrase-MiniLM-L3-v2"
    q = [
        "--task_name",
        "squad_v2",
        "--train_file",
        SHARED / "data/squad_v2/train-v2.0-first10articles.json",
        "--validation_file",
        SHARED / "data/squad_v2/dev-v2.0-4articles.json",
        "--max_train_samples",
        8,
        "--max_eval_samples",
        8,
        "--max_seq_length",
        128,
        "--doc_stride",
        64,
        "--num_train_epochs",
        1,
        "--per_device_train_batch_size",
        8,
        "--dataloader_pin_memory",
        "False",
        "--save_strategy",
        "no",
        "--disable_tqdm",
        "True",
    ]
    ted_cli("finetune", "--model_name_or_path", teacher, *q, "--output_dir", tmp_path / "t0")
    ted_cli(
        "learn-filters",
        "--model_name_or_path",
        tmp_path / "t0",
        *q,
        "--filter_interval",
        2,
        "--output_dir",
        tmp_path / "t1",
    )
    ted_cli(
        "learn-filters", "--model_name_or_path", student, *q, "--filter_interval", 1, "--output_dir", tmp_path / "s1"
    )
    ted_cli(
        "distill",
        "--teacher_model_name_or_path",
        tmp_path / "t1",
        "--model_name_or_path",
        tmp_path / "s1",
        *q,
        "--teacher_filter_interval",
        2,
        "--kl_alpha",
        10,
        "--mse_alpha",
        5000,
        "--output_dir",
        tmp_path / "ted",
    )
    stage = json.loads((tmp_path / "ted" / "ted_stage.json").read_text())
    assert stage["lineage"]["layer_pairs"] == [[0, 1], [1, 3], [2, 5]]
    metrics = results(tmp_path / "ted")
    assert metrics["eval_total"] == 8 and 0.0 <= metrics["eval_f1"] <= 100.0


def evaluate_ted_stage(chain: dict, out, batch_size: int) -> None:
    """`ted evaluate` on the chain's TED stage with only a dev file: the stage supplies task and windows."""
    ted_cli(
        "evaluate", "--model_name_or_path", chain["ted"], "--validation_file", chain["dev"],
        "--per_device_eval_batch_size", batch_size, "--dataloader_pin_memory", "False", "--output_dir", out,
    )  # fmt: skip


def test_evaluate_takes_task_and_windows_from_the_stage(squad_chain, tmp_path):
    """No --task_name, no --train_file, no window flags: the stage's ted_stage.json supplies them."""
    evaluate_ted_stage(squad_chain, tmp_path / "e", batch_size=8)
    alone, full = results(tmp_path / "e"), results(squad_chain["eval"])
    assert alone["eval_total"] == 12
    scores = [{k: v for k, v in r.items() if not k.endswith(("runtime", "per_second", "time"))} for r in (alone, full)]
    assert scores[0] == pytest.approx(scores[1])
    # Same windows (max_seq_length 32, doc_stride 16 from the stage, not 384 / 128): the same no-answer odds.
    odds = [json.loads((folder / "null_odds.json").read_text()) for folder in (tmp_path / "e", squad_chain["eval"])]
    assert odds[0] == pytest.approx(odds[1])
    # An explicit flag beats the stage: a wider stride than the window is refused, naming the flag.
    assert (
        ted_main(
            [
                str(a)
                for a in (
                    "evaluate",
                    "--model_name_or_path",
                    squad_chain["ted"],
                    "--validation_file",
                    squad_chain["dev"],
                    "--doc_stride",
                    64,
                    "--output_dir",
                    tmp_path / "x",
                )
            ]
        )
        == 2
    )


def test_evaluate_streams_span_logits(squad_chain, tmp_path, monkeypatch):
    """Like the stages, `ted evaluate` hands SQuAD logits to post-processing batch by batch."""
    from ted.squad.evaluator import SquadEvaluator

    calls = []
    original = SquadEvaluator.__call__

    def spy(self, prediction, compute_result=True):
        calls.append((len(prediction.predictions), compute_result))
        return original(self, prediction, compute_result)

    monkeypatch.setattr(SquadEvaluator, "__call__", spy)
    evaluate_ted_stage(squad_chain, tmp_path / "e", batch_size=4)
    assert len(calls) > 1 and all(n <= 4 for n, _ in calls), calls
    assert [done for _, done in calls] == [False] * (len(calls) - 1) + [True]
    assert results(tmp_path / "e")["eval_total"] == 12


def test_training_still_needs_a_train_file(squad_chain, tmp_path):
    assert (
        ted_main(
            [
                str(a)
                for a in (
                    "finetune",
                    "--model_name_or_path",
                    squad_chain["s0"],
                    "--task_name",
                    "squad_v2",
                    "--validation_file",
                    squad_chain["dev"],
                    "--max_seq_length",
                    32,
                    "--doc_stride",
                    16,
                    "--output_dir",
                    tmp_path / "ft",
                )
            ]
        )
        == 2
    )
    assert not (tmp_path / "ft").exists()
