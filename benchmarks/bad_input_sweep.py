"""Bad-input sweep: the installed `ted` command, as a user runs it, on a list of mistakes.

For each case: exit code 2, exactly one line on stderr starting `ted <command>: error:` (or `ted: error:`),
no traceback, no OUTPUT / OUTPUT.incomplete / temporary folder left, and every file that was in the work
folder before is still there, unchanged. Prints one row per case with the seconds to the error, then a
summary line `N passed, M failed`.

    .venv/bin/python benchmarks/bad_input_sweep.py --work /tmp/bad_inputs

Not a unit test (a subprocess per case, about 1-5 s each); tests/test_cli_errors.py, test_data_errors.py,
test_model_inputs.py and test_output_safety.py check the same behaviours in-process.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
TED = str(Path(sys.executable).with_name("ted"))


def build_assets(work: Path) -> dict[str, Path]:
    import tiny

    tok = tiny.build_tokenizer()
    a = {"work": work}
    a["train"], a["dev"] = tiny.write_data(work / "data", n_train=16, n_dev=8)
    a["reg_train"], a["reg_dev"] = tiny.write_data(work / "reg", n_train=8, n_dev=4, regression=True)
    a["model"] = tiny.write_model(work / "model", tok, head_labels=["neg", "pos"])
    a["stage1"] = tiny.write_stage1_model(work / "stage1", tok, layers=2, filter_layers=[0, 1], interval=1, seed=1)
    a["plain"] = tiny.write_model(work / "plain", tok)  # no head, no filters
    files = work / "files"
    files.mkdir()
    (files / "empty.csv").write_text("")
    (files / "header.csv").write_text("sentence,label\n")
    (files / "latin1.csv").write_bytes("sentence,label\ncaf\xe9 ok,pos\n".encode("latin-1"))
    (files / "ragged.tsv").write_text("sentence\tlabel\ngood\tpos\nbad\tneg\textra\n")
    (files / "broken.jsonl").write_text('{"sentence": "a", "label": "pos"}\n{"sentence": "b", "label":\n')
    (files / "mixed.csv").write_text("sentence,label\na,pos\nb,neg\nc,1\nd,0.5\n")
    (files / "badreg.csv").write_text("sentence,label\na,0.5\nb,n/a\nc,1.5\n")
    (files / "typo.yaml").write_text("learning_rat: 0.001\n")
    (files / "squad_bad.json").write_text(
        json.dumps(
            {
                "version": "v2.0",
                "data": [
                    {
                        "title": "t",
                        "paragraphs": [
                            {
                                "context": "short context",
                                "qas": [
                                    {
                                        "id": "q1",
                                        "question": "what?",
                                        "is_impossible": False,
                                        "answers": [{"text": "context", "answer_start": 40}],
                                    }
                                ],
                            }
                        ],
                    }
                ],
            }
        )
    )
    (files / "preds_bad.json").write_text(json.dumps({"q1": 3}))
    damaged = work / "damaged"
    shutil.copytree(a["model"], damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:500])
    a["damaged"], a["files"] = damaged, files
    # Real stage folders (a fine-tuned model and its Stage I), for the export cases.
    flags = [
        "--train_file",
        str(a["train"]),
        "--validation_file",
        str(a["dev"]),
        "--max_seq_length",
        "32",
        "--num_train_epochs",
        "1",
        "--disable_tqdm",
        "true",
    ]
    a["ft_stage"], a["s1_stage"] = work / "ft_stage", work / "s1_stage"
    for command, source, out in (
        ("finetune", a["model"], a["ft_stage"]),
        ("learn-filters", a["ft_stage"], a["s1_stage"]),
    ):
        subprocess.run(
            [TED, command, "--model_name_or_path", str(source), "--output_dir", str(out), *flags],
            check=True,
            capture_output=True,
        )
    (work / "userdir").mkdir()
    (work / "userdir" / "notes.txt").write_text("mine")
    (work / "afile").write_text("not a folder")
    return a


def cases(a: dict[str, Path]) -> list[tuple[str, list[str]]]:
    f, out = a["files"], str(a["work"] / "OUT")
    data = ["--train_file", str(a["train"]), "--validation_file", str(a["dev"]), "--max_seq_length", "32"]
    ft = ["finetune", "--model_name_or_path", str(a["model"]), "--output_dir", out]
    dist = ["distill", "--model_name_or_path", str(a["stage1"]), "--teacher_model_name_or_path", str(a["stage1"])]
    dist += ["--output_dir", out, *data, "--filter_output_dim", "16"]
    with_file = lambda name: [
        *ft,
        "--train_file",
        str(f / name),
        "--validation_file",
        str(a["dev"]),
        "--max_seq_length",
        "32",
    ]  # noqa: E731
    return [
        ("no arguments", []),
        ("unknown command", ["distil"]),
        ("unknown flag", [*ft, *data, "--learnin_rate", "1e-3"]),
        ("abbreviated flag", [*ft, *data, "--learning_rat", "1e-3"]),
        ("typo in config file", [*ft, *data, "--config", str(f / "typo.yaml")]),
        ("missing config file", [*ft, *data, "--config", str(f / "nope.yaml")]),
        ("batch size 0", [*ft, *data, "--per_device_train_batch_size", "0"]),
        ("eval batch size -1", [*ft, *data, "--per_device_eval_batch_size", "-1"]),
        ("epochs 0", [*ft, *data, "--num_train_epochs", "0"]),
        ("max_seq_length 5", [*ft, *data, "--max_seq_length", "5"]),
        ("max_seq_length beyond positions", [*ft, *data, "--max_seq_length", "100"]),
        ("default max_seq_length beyond positions", [*ft, "--train_file", str(a["train"])]),
        ("max_train_samples 0", [*ft, *data, "--max_train_samples", "0"]),
        ("duplicate label_list", [*ft, *data, "--label_list", "neg", "pos", "neg"]),
        ("negative learning rate", [*ft, *data, "--learning_rate", "-1"]),
        ("gradient accumulation 0", [*ft, *data, "--gradient_accumulation_steps", "0"]),
        ("dropout 1.5", [*ft, *data, "--hidden_dropout_prob", "1.5"]),
        (
            "label smoothing on regression",
            [
                *ft,
                "--train_file",
                str(a["reg_train"]),
                "--validation_file",
                str(a["reg_dev"]),
                "--max_seq_length",
                "32",
                "--label_smoothing_factor",
                "0.1",
            ],
        ),
        ("negative kl_alpha", [*dist, "--kl_alpha", "-1"]),
        ("negative mse_alpha", [*dist, "--mse_alpha", "-5"]),
        ("temperature 0", [*dist, "--kl_alpha", "1", "--temperature", "0"]),
        ("method kd with mse", [*dist, "--method", "kd", "--mse_alpha", "5"]),
        ("unknown method", [*dist, "--method", "tedd", "--mse_alpha", "5"]),
        ("TED without filters", [*dist[:2], str(a["plain"]), *dist[3:], "--mse_alpha", "5"]),
        ("LWD projector width", [*dist, "--filter_disabled", "--mse_alpha", "5", "--filter_output_dim", "8"]),
        ("missing teacher", ["distill", "--model_name_or_path", str(a["stage1"]), "--output_dir", out, *data]),
        (
            "missing model folder",
            ["finetune", "--model_name_or_path", str(a["work"] / "runs" / "x" / "teacher"), "--output_dir", out, *data],
        ),
        ("damaged weights", ["finetune", "--model_name_or_path", str(a["damaged"]), "--output_dir", out, *data]),
        ("unknown task", [*ft, "--task_name", "rtee"]),
        ("empty data file", with_file("empty.csv")),
        ("header-only csv", with_file("header.csv")),
        ("non-UTF-8 csv", with_file("latin1.csv")),
        ("ragged tsv", with_file("ragged.tsv")),
        ("broken jsonl", with_file("broken.jsonl")),
        ("mixed label types", with_file("mixed.csv")),
        ("bad regression value", [*with_file("badreg.csv"), "--task_type", "regression"]),
        ("missing data file", with_file("nope.csv")),
        (
            "SQuAD answer past its context",
            [
                "finetune",
                "--model_name_or_path",
                str(a["plain"]),
                "--output_dir",
                out,
                "--task_name",
                "squad_v2",
                "--train_file",
                str(f / "squad_bad.json"),
                "--validation_file",
                str(f / "squad_bad.json"),
                "--max_seq_length",
                "32",
                "--doc_stride",
                "16",
            ],
        ),
        (
            "output dir is a file",
            ["finetune", "--model_name_or_path", str(a["model"]), "--output_dir", str(a["work"] / "afile"), *data],
        ),
        ("output dir is .", ["finetune", "--model_name_or_path", str(a["model"]), "--output_dir", ".", *data]),
        (
            "overwrite a user folder",
            [
                "finetune",
                "--model_name_or_path",
                str(a["model"]),
                "--output_dir",
                str(a["work"] / "userdir"),
                "--overwrite_output_dir",
                *data,
            ],
        ),
        (
            "output inside the model",
            ["finetune", "--model_name_or_path", str(a["model"]), "--output_dir", str(a["model"] / "sub"), *data],
        ),
        ("export a plain HF folder", ["export", str(a["plain"]), "--output_dir", out]),
        ("export a Stage I folder", ["export", str(a["s1_stage"]), "--output_dir", out]),
        (
            "export onto itself",
            ["export", str(a["ft_stage"]), "--output_dir", str(a["ft_stage"]), "--overwrite_output_dir"],
        ),
        ("export into the stage", ["export", str(a["ft_stage"]), "--output_dir", str(a["ft_stage"] / "x")]),
        (
            "export over a user folder",
            ["export", str(a["ft_stage"]), "--output_dir", str(a["work"] / "userdir"), "--overwrite_output_dir"],
        ),
        ("a distill option given to finetune", [*ft, *data, "--kl_alpha", "1"]),
        ("score-squad non-string prediction", ["score-squad", str(f / "squad_bad.json"), str(f / "preds_bad.json")]),
        ("pipeline missing config", ["pipeline", "--config", str(f / "nope.yaml"), "--output_dir", out]),
        ("report of a missing folder", ["report", str(a["work"] / "norun"), "--output", out]),
    ]


def snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def leftovers(work: Path) -> list[str]:
    names = [p for p in work.rglob("*") if p.name.endswith((".incomplete", ".tmp")) or ".old-" in p.name]
    return [str(p) for p in names] + ([str(work / "OUT")] if (work / "OUT").exists() else [])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--work", default="/tmp/ted_bad_inputs", help="scratch folder (replaced)")
    args = parser.parse_args(argv)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    assets = build_assets(work)
    passed = failed = 0
    for name, argv_ in cases(assets):
        before = snapshot(work)
        start = time.perf_counter()
        proc = subprocess.run([TED, *argv_], capture_output=True, text=True, cwd=work)
        seconds = time.perf_counter() - start
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        problems = []
        if proc.returncode != 2:
            problems.append(f"exit {proc.returncode}")
        errors = [line for line in lines if line.startswith("ted") and ": error: " in line]
        if not argv_:  # `ted` alone prints its usage (the command list) instead of an error line
            errors = [line for line in lines if line.startswith("usage: ted")]
        if len(errors) != 1 or "Traceback" in proc.stderr:
            problems.append(f"stderr: {proc.stderr.strip()[-300:]!r}")
        left = leftovers(work)
        if left:
            problems.append(f"left {left}")
        lost = [path for path, digest in before.items() if snapshot(work).get(path) != digest]
        if lost:
            problems.append(f"changed or removed {lost[:3]}")
        for extra in left:
            shutil.rmtree(extra, ignore_errors=True)
        ok = not problems
        passed, failed = passed + ok, failed + (not ok)
        shown = errors[0] if errors else "; ".join(problems)
        print(f"{'ok  ' if ok else 'FAIL'} {seconds:5.2f}s  {name}: {shown[:160]}")
        if problems and errors:
            print(f"      {'; '.join(problems)}")
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
